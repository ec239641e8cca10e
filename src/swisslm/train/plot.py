# SPDX-License-Identifier: Apache-2.0
"""Loss / learning-rate / throughput curves of a run (matplotlib, imported lazily)."""

from __future__ import annotations

from pathlib import Path

from ..config import ConfigError
from .metrics import read_metrics


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
    steps = [r["step"] for r in rows]
    panels = [("loss", "loss"), ("lr", "learning rate")]
    if any("tokens_per_s" in r for r in rows):
        panels.append(("tokens_per_s", "tokens / s"))
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.6 * len(panels)), sharex=True)
    for ax, (key, title) in zip(axes, panels):
        xs = [s for s, r in zip(steps, rows) if key in r]
        ax.plot(xs, [r[key] for r in rows if key in r], label=key, lw=1.2)
        if key == "loss" and any("eval_loss" in r for r in rows):
            ax.plot([s for s, r in zip(steps, rows) if "eval_loss" in r],
                    [r["eval_loss"] for r in rows if "eval_loss" in r], "o-", label="eval_loss", ms=3)
            ax.legend()
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("step")
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
