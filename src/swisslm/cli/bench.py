# SPDX-License-Identifier: Apache-2.0
"""swisslm bench <what>: side-by-side benchmarks against peers (code in bench/ and swisslm.bench*).

Each benchmark is one entry in BENCHMARKS: a function `add_<name>(sub)` that adds its parser.
"""

from __future__ import annotations


def add_decode(sub) -> None:
    p = sub.add_parser("decode", help="CPU decode tokens/s: ours (fp32, int8, int4) vs CTranslate2 vs transformers")
    from ..quant.bench import add_arguments, run

    add_arguments(p)
    p.set_defaults(func=run)


BENCHMARKS = (add_decode,)


def register(sub) -> None:
    p = sub.add_parser("bench", help="side-by-side benchmarks against peers")
    bsub = p.add_subparsers(dest="bench", required=True, parser_class=type(p))
    for add in BENCHMARKS:
        add(bsub)
