# SPDX-License-Identifier: Apache-2.0
"""swisslm adapters combine A B [...] --weights 0.8 0.5 --method linear|cat|svd OUT

Weighted combination of PEFT LoRA adapters (PEFT's add_weighted_adapter maths, on the files;
finetune/combine.py), written as a PEFT adapter folder that `swisslm merge`, `load_adapter` and
`peft.PeftModel.from_pretrained` read.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import UsageError


def register(sub) -> None:
    p = sub.add_parser("adapters", help="LoRA adapter arithmetic (combine adapters with weights)")
    asub = p.add_subparsers(dest="adapters_command", required=True, parser_class=type(p))
    c = asub.add_parser("combine", help="weighted combination of PEFT LoRA adapters -> a PEFT adapter folder")
    c.add_argument("paths", nargs="+", metavar="PATH", help="adapter folders A B ..., then the output folder OUT")
    # --weights / --method take the trailing positionals too, so OUT may follow them
    # (`A B --weights 0.8 0.5 --method svd OUT`): argparse alone would reject a positional there.
    c.add_argument("--weights", nargs="+", required=True, metavar="W", help="one weight per adapter")
    c.add_argument("--method", nargs="+", default=["linear"], metavar="METHOD",
                   help="linear (equal ranks), cat (exact, rank = sum) or svd (rank-truncated) (default: linear)")
    c.add_argument("--svd-rank", type=int, default=None, help="rank of the svd result (default: the largest rank)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=run)


def _split_trailing(args: argparse.Namespace) -> None:
    """Numbers after --weights are weights, the rest are paths; --method's first word is the method."""
    weights, extra = [], []
    for w in args.weights:
        try:
            if extra:
                raise ValueError
            weights.append(float(w))
        except ValueError:
            extra.append(w)
    if not weights:
        raise UsageError(f"--weights: {args.weights[0]!r} is not a number")
    method, *more = args.method
    if method not in ("linear", "cat", "svd"):
        raise UsageError(f"--method must be linear, cat or svd, got {method!r}")
    args.weights, args.method, args.paths = weights, method, list(args.paths) + extra + more


def run(args: argparse.Namespace) -> int:
    _split_trailing(args)
    if len(args.paths) < 2:
        raise UsageError("give at least one adapter folder and the output folder")
    *adapters, out = args.paths
    if len(args.weights) != len(adapters):
        raise UsageError(f"{len(adapters)} adapter(s) but {len(args.weights)} weight(s)")
    if args.svd_rank is not None and args.svd_rank <= 0:
        raise UsageError(f"--svd-rank must be > 0, got {args.svd_rank}")
    if args.svd_rank is not None and args.method != "svd":
        raise UsageError("--svd-rank needs --method svd")
    for a in adapters:
        if not Path(a).is_dir():
            raise UsageError(f"{a}: not an adapter folder")
    o = Path(out)
    if o.exists() and (not o.is_dir() or any(o.iterdir())):
        raise UsageError(f"{o}: output exists and is not an empty folder")
    from ..finetune.combine import write_combined  # torch stays out of `--help`

    write_combined(adapters, args.weights, o, args.method, args.svd_rank)
    cfg = json.loads((o / "adapter_config.json").read_text())
    if args.json:
        print(json.dumps({"adapters": adapters, "weights": args.weights, "method": args.method, "out": str(o),
                          "r": cfg["r"]}))
    else:
        print(f"combined {len(adapters)} adapter(s) ({args.method}, r={cfg['r']}) -> {o}")
    return 0
