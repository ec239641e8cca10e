# SPDX-License-Identifier: Apache-2.0
"""swisslm merge BASE ADAPTER OUT: fold a PEFT-format LoRA adapter into BASE, write an HF folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import UsageError


def register(sub) -> None:
    p = sub.add_parser("merge", help="merge a LoRA adapter (PEFT format) into a model and save an HF folder")
    p.add_argument("base", help="HF folder or .gguf file of the base model ('default' = embedded SmolLM2)")
    p.add_argument("adapter", help="adapter folder (adapter_config.json + adapter_model.safetensors)")
    p.add_argument("out", help="output HF folder")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the written weights")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..finetune.merge import merge_adapter_folder

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out}: output folder exists and is not empty")
    base = None if args.base == "default" else args.base
    merge_adapter_folder(base, args.adapter, out, dtype=args.dtype)
    if args.json:
        print(json.dumps({"base": args.base, "adapter": args.adapter, "out": str(out)}))
    else:
        print(f"merged {args.adapter} into {args.base} -> {out}")
    return 0
