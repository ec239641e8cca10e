# SPDX-License-Identifier: Apache-2.0
"""swisslm quantize SRC DST --scheme int8|int4: a weight-only quantized checkpoint for fast CPU
decode (loads with `swisslm.AutoModel.from_pretrained(DST)` straight into quantized layers)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..progress import add_quiet_arg, progress_bar, progress_enabled
from .common import UsageError


def register(sub) -> None:
    p = sub.add_parser("quantize", help="write a weight-only int8/int4 checkpoint")
    p.add_argument("src", help="HF folder or .gguf file ('default' = the embedded SmolLM2)")
    p.add_argument("dst", help="output folder")
    p.add_argument("--scheme", choices=["int8", "int4"], required=True, help="weight format")
    p.add_argument("--group-size", type=int, choices=[32, 64, 128], default=32,
                   help="int4: input columns per scale (the LM head stays int8)")
    p.add_argument("--no-head", action="store_true", default=False, help="keep the LM head in float")
    p.add_argument("--no-embeddings", action="store_true", default=False, help="keep the token embedding in float")
    p.add_argument("--force", action="store_true", default=False, help="overwrite a non-empty DST")
    p.add_argument("--json", action="store_true", default=False, help="print one JSON object")
    add_quiet_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..api import AutoModel
    from ..io.quantized import save_quantized
    from ..quant import quantize_

    dst = Path(args.dst)
    if dst.exists() and not dst.is_dir():
        raise UsageError(f"{dst}: exists and is not a folder")
    if dst.is_dir() and any(dst.iterdir()) and not args.force:
        raise UsageError(f"{dst}: folder is not empty (use --force to overwrite)")
    src = None if args.src == "default" else args.src
    bar = progress_bar(3, desc=f"load {args.src}", unit="stage", enabled=progress_enabled(args.quiet))
    with bar:
        model = AutoModel.from_pretrained(src, dtype="float32")  # quantize_ starts from float weights
        if getattr(model, "quantization", None):
            raise UsageError(f"{args.src}: already quantized ({model.quantization['scheme']})")
        bar.update(1)
        bar.set_description(f"quantize {args.scheme}")
        quantize_(model, args.scheme, group_size=args.group_size, head=not args.no_head,
                  embeddings=not args.no_embeddings)
        bar.update(1)
        bar.set_description(f"write {dst}")
        save_quantized(model, dst)
        bar.update(1)
    size = sum(f.stat().st_size for f in dst.glob("*.safetensors"))
    if args.json:
        print(json.dumps({"src": args.src, "dst": str(dst), "scheme": args.scheme,
                          "group_size": args.group_size, "modules": len(model.quantization["modules"]),
                          "bytes": size}))
    else:
        print(f"{dst}: {args.scheme}, {len(model.quantization['modules'])} modules, {size / 2**20:.1f} MiB")
    return 0
