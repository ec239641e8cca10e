# SPDX-License-Identifier: Apache-2.0
"""swisslm bench <what>: side-by-side benchmarks against peers. The harnesses live in bench/ of a
source checkout (not in the library); each is loaded from its file.

Each benchmark is one entry in BENCHMARKS: a function `add_<name>(sub)` that adds its parser.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH_DIR = Path(__file__).resolve().parents[3] / "bench"


def load_bench(name: str) -> ModuleType:
    """bench/<name>.py as a module (the source checkout's; an installed wheel has no bench/)."""
    from .common import UsageError

    path = BENCH_DIR / f"{name}.py"
    if not path.is_file():
        raise UsageError(f"swisslm bench needs a source checkout: {path} not found")
    mod_name = f"swisslm_bench_{name}"
    if mod_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(mod_name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[mod_name]


def add_decode(sub) -> None:
    p = sub.add_parser("decode", help="CPU decode tokens/s: ours (fp32, int8, int4) vs CTranslate2 vs transformers")
    if not (BENCH_DIR / "cpu_decode.py").is_file():  # installed without bench/: fail when run, not at parse
        p.set_defaults(func=lambda args: load_bench("cpu_decode"))  # raises the UsageError naming the file
        return
    harness = load_bench("cpu_decode")
    harness.add_arguments(p)
    p.set_defaults(func=harness.run)


BENCHMARKS = (add_decode,)


def register(sub) -> None:
    p = sub.add_parser("bench", help="side-by-side benchmarks against peers")
    bsub = p.add_subparsers(dest="bench", required=True, parser_class=type(p))
    for add in BENCHMARKS:
        add(bsub)
