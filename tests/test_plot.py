# SPDX-License-Identifier: Apache-2.0
"""`swisslm plot`: which metrics.csv columns become panels (pre-training vs preference runs)."""

from __future__ import annotations

import csv

import pytest

from swisslm.train.plot import panels

REWARD_COLS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins")


def _write_metrics(run, rows):
    run.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(run / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def _dpo_rows():
    rows = []
    for step in range(1, 7):
        r = {"step": step, "loss": 0.69 - 0.05 * step, "lr": 1e-3, "tokens_per_s": 100.0 + step,
             "rewards/chosen": 0.1 * step, "rewards/rejected": -0.1 * step, "rewards/accuracies": min(1.0, 0.2 * step),
             "rewards/margins": 0.2 * step}
        if step % 3 == 0:  # evaluated every 3 steps: sparse eval_ columns
            r |= {"eval_loss": 0.6, "eval_rewards/margins": 0.15 * step, "eval_rewards/accuracies": 0.5}
        rows.append(r)
    return rows


def test_panels_of_a_pretraining_run_have_no_rewards():
    rows = [{"step": 1, "loss": 3.0, "lr": 1e-3}, {"step": 2, "loss": 2.5, "lr": 1e-3, "eval_loss": 2.7}]
    assert panels(rows) == [("loss", ["loss", "eval_loss"]), ("learning rate", ["lr"])]


def test_panels_of_a_preference_run_include_every_reward_column():
    got = dict(panels(_dpo_rows()))
    assert got["rewards"] == ["rewards/chosen", "rewards/rejected", "rewards/margins", "eval_rewards/margins"]
    assert got["reward accuracy"] == ["rewards/accuracies", "eval_rewards/accuracies"]
    assert got["loss"] == ["loss", "eval_loss"] and got["tokens / s"] == ["tokens_per_s"]
    plotted = {k for _, keys in panels(_dpo_rows()) for k in keys}
    assert set(REWARD_COLS) <= plotted


def test_plot_cli_writes_png_for_a_preference_run(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from swisslm.cli import main

    run = tmp_path / "dpo-run"
    _write_metrics(run, _dpo_rows())
    out = tmp_path / "c.png"
    assert main(["plot", str(run), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert capsys.readouterr().out.strip() == str(out)


def test_plot_refuses_a_csv_without_plottable_columns(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from swisslm.cli import main

    _write_metrics(tmp_path / "odd", [{"step": 1, "something": 2.0}])
    assert main(["plot", str(tmp_path / "odd")]) == 2
    assert "none of the plotted columns" in capsys.readouterr().err
