# SPDX-License-Identifier: Apache-2.0
"""Options and helpers shared by subcommands.

Importing this module must stay cheap (no torch): every subcommand imports it to build its
parser, and `swisslm --help` builds them all. torch is imported inside the functions that run
a command.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any


class UsageError(ValueError):
    """A wrong argument or combination of arguments; exits 2 with one line."""


def add_model_args(p: argparse.ArgumentParser, quant: bool = True) -> None:
    p.add_argument("--model", default=None,
                   help="HF folder, .gguf file, or ORG/NAME[@REV][/FILE.gguf] from the local HF cache "
                        "(default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="weight and activation dtype (default: a .gguf runs its Q4_0/Q4_1/Q4_K/Q8_0/Q5_K/Q6_K "
                        "blocks quantized with fp32 activations, anything else loads float32; "
                        "float32 expands a .gguf)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: physical cores)")
    if quant:
        p.add_argument("--quant", choices=["int8", "int4"], default=None,
                       help="weight-only quantize on load (fast CPU decode)")


def set_threads(n: int | None) -> None:
    import torch

    if n is None:
        n = physical_cores()
    if n < 1:
        raise UsageError(f"--threads must be >= 1, got {n}")
    torch.set_num_threads(n)


def physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def load_with_message(args: argparse.Namespace) -> Any:
    """`load_model_from_args` with a line on stderr first, so a load of seconds is never silent.

    On a terminal the line ends with "ready (N s)" once loaded; otherwise (a pipe, a log file)
    it is one plain "loading MODEL..." line."""
    name = args.model or "the embedded SmolLM2-135M-Instruct"
    tty = sys.stderr.isatty()
    sys.stderr.write(f"loading {name}..." + (" " if tty else "\n"))
    sys.stderr.flush()
    t = time.perf_counter()
    model = load_model_from_args(args)
    if tty:
        sys.stderr.write(f"ready ({time.perf_counter() - t:.1f} s)\n")
        sys.stderr.flush()
    return model


def load_model_from_args(args: argparse.Namespace) -> Any:
    from .timings import phase

    with phase("import torch"):
        import torch
    with phase("import swisslm"):
        from ..api import AutoModel

    set_threads(getattr(args, "threads", None))
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: CUDA is not available on this machine")
    with phase("load"):
        path = None if args.model in (None, "default") else args.model  # `default`: the embedded model
        # --quant requantizes float weights: a GGUF is expanded first, as before
        dtype = args.dtype or ("float32" if getattr(args, "quant", None) else None)
        model = AutoModel.from_pretrained(path, dtype=dtype, device=args.device)
    if getattr(args, "quant", None):
        from ..quant import quantize_

        with phase("quantize"):
            quantize_(model, args.quant)
    return model


def require_tokenizer(model: Any) -> Any:
    if model.tokenizer is None:
        raise UsageError(f"{model.source}: the checkpoint has no tokenizer (tokenizer.json)")
    return model.tokenizer


def check_positive(name: str, value: int) -> int:
    if value <= 0:
        raise UsageError(f"{name} must be > 0, got {value}")
    return value
