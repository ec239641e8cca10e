# SPDX-License-Identifier: Apache-2.0
"""swisslm convert SRC DST: GGUF file or HF folder -> HF folder (safetensors)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..progress import add_quiet_arg, progress_bar, progress_enabled
from .common import UsageError


def register(sub) -> None:
    p = sub.add_parser("convert", help="convert a GGUF file or HF folder to an HF folder")
    p.add_argument("src", help="GGUF file or HF folder")
    p.add_argument("dst", help="output HF folder")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the written weights")
    p.add_argument("--force", action="store_true", default=False, help="write into a non-empty DST folder")
    add_quiet_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..api import AutoModel

    dst = Path(args.dst)
    if dst.exists() and (not dst.is_dir() or (any(dst.iterdir()) and not args.force)):
        raise UsageError(f"{dst} exists and is not an empty folder (use --force to write into it)")
    if Path(args.src).resolve() == dst.resolve():
        raise UsageError("SRC and DST are the same path")
    # the two stages (read + dequantize, write) take seconds each on a large model: say which runs
    bar = progress_bar(2, desc=f"load {args.src}", unit="stage", enabled=progress_enabled(args.quiet))
    with bar:
        model = AutoModel.from_pretrained(args.src, dtype=args.dtype)
        bar.update(1)
        bar.set_description(f"write {dst}")
        model.save_pretrained(dst)
        bar.update(1)
    print(f"wrote {dst} ({model.config.family}, {model.num_parameters():,} parameters)")
    return 0
