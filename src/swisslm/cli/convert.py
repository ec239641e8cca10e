# SPDX-License-Identifier: Apache-2.0
"""swisslm convert SRC DST: any checkpoint -> an HF folder (safetensors), or -> a GGUF file when DST
ends in .gguf (`--type f32|f16|q8_0|q4_0|q4_1|q4_k|q6_k`, llama.cpp's conventions)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..progress import add_quiet_arg, progress_bar, progress_enabled
from .common import UsageError

# io/gguf_writer.py's GGUF_TYPES, spelled out so that --help stays free of torch and gguf
GGUF_TYPE_NAMES = ("f32", "f16", "q8_0", "q4_0", "q4_1", "q4_k", "q6_k")


def register(sub) -> None:
    p = sub.add_parser("convert", help="convert a checkpoint to an HF folder or a GGUF file (DST ending in .gguf)")
    p.add_argument("src", help="HF folder, GGUF file, swisslm checkpoint folder or cached hub id")
    p.add_argument("dst", help="output HF folder, or a .gguf file")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="dtype of the written weights of an HF folder (default float32)")
    p.add_argument("--type", dest="gguf_type", default=None, choices=GGUF_TYPE_NAMES,
                   help="tensor type of a GGUF output (default f16); norms and biases stay f32")
    p.add_argument("--force", action="store_true", default=False,
                   help="write into a non-empty DST folder / replace an existing DST file")
    add_quiet_arg(p)
    p.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> bool:
    """Refuse bad combinations before anything loads; True when the output is a GGUF file."""
    dst = Path(args.dst)
    to_gguf = dst.suffix.lower() == ".gguf"
    if Path(args.src).resolve() == dst.resolve():
        raise UsageError("SRC and DST are the same path")
    if to_gguf:
        if args.dtype is not None:
            raise UsageError("--dtype is for an HF folder output; a GGUF output takes --type")
        if dst.is_dir():
            raise UsageError(f"{dst} is a folder; a GGUF output is a file")
        if dst.exists() and not args.force:
            raise UsageError(f"{dst} exists (use --force to replace it)")
        if not dst.parent.is_dir():
            raise UsageError(f"{dst.parent}: no such folder for the GGUF file")
    else:
        if args.gguf_type is not None:
            raise UsageError(f"--type is for a GGUF output; {dst} does not end in .gguf")
        if dst.exists() and (not dst.is_dir() or (any(dst.iterdir()) and not args.force)):
            raise UsageError(f"{dst} exists and is not an empty folder (use --force to write into it)")
    return to_gguf


def run(args: argparse.Namespace) -> int:
    to_gguf = _check_args(args)
    from ..api import AutoModel

    dst = Path(args.dst)
    # the two stages (read + dequantize, write) take seconds each on a large model: say which runs
    bar = progress_bar(2, desc=f"load {args.src}", unit="stage", enabled=progress_enabled(args.quiet))
    with bar:
        # plain torch modules: the export reads the state dict as the checkpoint names it
        model = AutoModel.from_pretrained(args.src, dtype="float32" if to_gguf else (args.dtype or "float32"),
                                          backend="torch")
        bar.update(1)
        bar.set_description(f"write {dst}")
        if to_gguf:
            from ..io.gguf_writer import save_gguf

            qtype = args.gguf_type or "f16"
            counts = save_gguf(model, dst, qtype, tokenizer=model.tokenizer)
        else:
            model.save_pretrained(dst)
        bar.update(1)
    if to_gguf:
        types = ", ".join(f"{n} {t}" for t, n in sorted(counts.items()))
        print(f"wrote {dst} ({model.config.family}, {model.num_parameters():,} parameters, "
              f"{qtype}: tensors {types})")
    else:
        print(f"wrote {dst} ({model.config.family}, {model.num_parameters():,} parameters)")
    return 0
