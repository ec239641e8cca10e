# SPDX-License-Identifier: Apache-2.0
"""Metric sinks: a CSV file per run (always) and TensorBoard (when `tensorboard` is installed).

`metrics.csv` has one row per optimizer step. Columns are fixed by the first row written (new
keys that appear later, e.g. eval_loss, are added by rewriting the header once). Floats are
written with `repr`, so two runs can be compared bit for bit. On resume the rows after the
checkpoint's step are dropped first: they belong to the interrupted run's lost steps.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.csv"
    with open(p, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


class CSVLogger:
    def __init__(self, run_dir: str | Path, resume_step: int | None = None) -> None:
        self.path = Path(run_dir) / "metrics.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fields: list[str] = []
        self.rows: list[dict[str, float]] = []
        if self.path.is_file():
            keep = [r for r in read_metrics(self.path) if resume_step is not None and r["step"] <= resume_step]
            self.rows = keep
            self.fields = list(dict.fromkeys(k for r in keep for k in r))
            self._rewrite()

    def _rewrite(self) -> None:
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields)
            w.writeheader()
            for r in self.rows:
                w.writerow({k: _fmt(v) for k, v in r.items()})
        os.replace(tmp, self.path)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": float(step), **{k: float(v) for k, v in metrics.items()}}
        self.rows.append(row)
        new = [k for k in row if k not in self.fields]
        if new or not self.path.is_file():
            self.fields += new
            self._rewrite()
            return
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields).writerow({k: _fmt(v) for k, v in row.items()})

    def close(self) -> None:
        pass


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 2**53 else repr(float(v))


class TensorBoardLogger:
    """Optional: `pip install tensorboard`. Created only when the package imports."""

    def __init__(self, run_dir: str | Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        self.writer.close()


def default_loggers(run_dir: str | Path, resume_step: int | None = None, tensorboard: bool = True) -> list:
    loggers: list = [CSVLogger(run_dir, resume_step)]
    if tensorboard:
        try:
            loggers.append(TensorBoardLogger(run_dir))
        except ImportError:
            logger.debug("tensorboard not installed; metrics go to metrics.csv only")
    return loggers
