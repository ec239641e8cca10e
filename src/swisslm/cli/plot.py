# SPDX-License-Identifier: Apache-2.0
"""swisslm plot RUN_DIR [-o FILE]: loss, learning-rate, throughput and (preference runs) reward
curves of a run as a PNG.

Needs matplotlib (`pip install matplotlib`, or `pip install swisslm[dev]`); it is imported only
here, so training itself never depends on it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import UsageError


def register(sub) -> None:
    p = sub.add_parser("plot", help="plot a run's loss, lr, throughput and reward curves to a PNG")
    p.add_argument("run_dir", help="a `swisslm train` run_dir or `swisslm finetune` --output (holds metrics.csv)")
    p.add_argument("-o", "--output", default=None, help="PNG path (default: RUN_DIR/curves.png)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..train.plot import plot_run

    run_dir = Path(args.run_dir)
    if not (run_dir / "metrics.csv").is_file():
        raise UsageError(f"{run_dir}: no metrics.csv (not a training run folder)")
    out = plot_run(run_dir, Path(args.output) if args.output else None)
    print(out)
    return 0
