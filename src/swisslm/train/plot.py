# SPDX-License-Identifier: Apache-2.0
"""Curves of a run (matplotlib, imported lazily): loss, learning rate, throughput and, for
preference runs (`swisslm finetune --trainer dpo|orpo|reward`), TRL's reward metrics.

Which columns go in which panel is decided by `panels()`, a pure function of the metrics rows,
so what is drawn can be tested without looking at pixels."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..config import ConfigError
from .metrics import read_metrics

# (panel title, columns). A column shows up with its eval_ twin when that exists; a panel with
# none of its columns in the run is left out (a pre-training run has no reward panels).
PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("loss", ("loss",)),
    ("learning rate", ("lr",)),
    ("tokens / s", ("tokens_per_s",)),
    ("rewards", ("rewards/chosen", "rewards/rejected", "rewards/margins")),
    ("reward accuracy", ("rewards/accuracies",)),
)


def panels(rows: Sequence[dict[str, float]]) -> list[tuple[str, list[str]]]:
    """[(title, [column, ...])] of the panels to draw: each listed column and its `eval_`
    variant, kept only when some row carries it."""
    present = {k for r in rows for k in r}
    out = []
    for title, cols in PANELS:
        keys = [k for c in cols for k in (c, f"eval_{c}") if k in present]
        if keys:
            out.append((title, keys))
    return out


def plot_run(run_dir: str | Path, out: Path | None = None) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("swisslm plot needs matplotlib: pip install matplotlib") from None
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    if not rows:
        raise ConfigError(f"{run_dir}/metrics.csv has no rows yet")
    out = out or run_dir / "curves.png"
    chosen = panels(rows)
    if not chosen:
        raise ConfigError(f"{run_dir}/metrics.csv has none of the plotted columns "
                          f"({', '.join(c for _, cols in PANELS for c in cols)})")
    fig, axes = plt.subplots(len(chosen), 1, figsize=(8, 2.6 * len(chosen)), sharex=True, squeeze=False)
    for ax, (title, keys) in zip(axes[:, 0], chosen):
        for key in keys:
            pts = [(r["step"], r[key]) for r in rows if key in r and "step" in r]
            # eval rows are sparse (every --eval-steps): markers keep single points visible
            style = "o-" if key.startswith("eval_") else "-"
            ax.plot([s for s, _ in pts], [v for _, v in pts], style, label=key, lw=1.2, ms=3)
        if len(keys) > 1:
            ax.legend(fontsize=8)
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
