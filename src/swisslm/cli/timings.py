# SPDX-License-Identifier: Apache-2.0
"""Where a command's time goes: `SWISSLM_TIMINGS=1 swisslm generate ...` prints one line to stderr,

    swisslm-timings {"main_unix": ..., "phases": {"import torch": 1.21, "load": 0.62, ...}, "total": 2.4}

with each phase in seconds (`total`: main() entered to exit; `main_unix`: wall clock at entry, so a
caller that noted when it started the process gets the interpreter start-up as the difference).
bench/startup.py reads it. Off (the default) a phase costs one branch. Standard library only.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

ENABLED = os.environ.get("SWISSLM_TIMINGS", "") not in ("", "0")
_phases: dict[str, float] = {}
_start = time.perf_counter()
_start_unix = time.time()


def start() -> None:
    """Mark main()'s entry: `total` and `main_unix` count from here."""
    global _start, _start_unix
    _start, _start_unix = time.perf_counter(), time.time()
    _phases.clear()


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Time the block under `name` (repeated names add up)."""
    if not ENABLED:
        yield
        return
    t = time.perf_counter()
    try:
        yield
    finally:
        _phases[name] = _phases.get(name, 0.0) + time.perf_counter() - t


def report() -> None:
    if not ENABLED:
        return
    out = {"main_unix": _start_unix, "phases": {k: round(v, 4) for k, v in _phases.items()},
           "total": round(time.perf_counter() - _start, 4)}
    sys.stderr.write(f"swisslm-timings {json.dumps(out)}\n")
    sys.stderr.flush()
