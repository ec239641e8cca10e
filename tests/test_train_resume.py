# SPDX-License-Identifier: Apache-2.0
"""kill -9 during training, and during a checkpoint write, then `--resume`: the loss sequence is
bit-identical to an uninterrupted run (CPU, fixed seed, 1 thread)."""

from __future__ import annotations

import signal
import subprocess
import time

from train_helpers import run_swisslm, subprocess_env, swisslm_cmd, synthetic_tokens, tiny_train_config, write_yaml

from swisslm.train import CheckpointManager
from swisslm.train.checkpoint import FAULT_ENV
from swisslm.train.config import parse_train_config
from swisslm.train.metrics import read_metrics
from swisslm.train.run import run_training

STEPS, EVERY = 36, 4


def _last_step(run_dir) -> int:
    try:
        rows = read_metrics(run_dir)
    except (FileNotFoundError, ValueError, KeyError):
        return 0
    return int(rows[-1]["step"]) if rows else 0


def test_kill9_and_crash_in_checkpoint_write_then_resume_is_bit_exact(tmp_path):
    data = synthetic_tokens(tmp_path / "data", n=4096)
    sections = dict(training={"max_steps": STEPS, "grad_accum": 2},
                    checkpoint={"every": EVERY, "keep_last": 2},
                    schedule={"name": "wsd", "warmup_steps": 5, "decay_steps": 30})
    # the uninterrupted reference, in this process
    run_training(parse_train_config(tiny_train_config(tmp_path / "ref", data, **sections)))
    ref = [r["loss"] for r in read_metrics(tmp_path / "ref")]
    assert len(ref) == STEPS

    run_dir = tmp_path / "run"
    cfg = write_yaml(tmp_path / "cfg.yaml", tiny_train_config(run_dir, data, **sections))
    # 1) SIGKILL from outside while it trains
    proc = subprocess.Popen(swisslm_cmd("train", str(cfg)), env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while _last_step(run_dir) < 8 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(60) == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = _last_step(run_dir)
    assert 8 <= killed_at < STEPS
    mgr = CheckpointManager(run_dir / "checkpoints")
    resume_from = int(mgr.latest().name.split("-")[1])
    assert resume_from <= killed_at and resume_from % EVERY == 0

    # 2) resume, and die (SIGKILL) half-way through writing the next checkpoint but one
    crash_step = resume_from + 2 * EVERY
    r = run_swisslm("train", str(cfg), "--resume", check=False,
                    env_extra={FAULT_ENV: f"checkpoint_write:{crash_step}"})
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert (run_dir / "checkpoints" / f".tmp-step-{crash_step:08d}").is_dir()  # the torn write
    assert mgr.latest().name == f"step-{crash_step - EVERY:08d}"  # ... never became a checkpoint

    # 3) resume again: runs to the end; the torn temp dir is cleaned up
    run_swisslm("train", str(cfg), "--resume")
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))
    rows = read_metrics(run_dir)
    assert [int(r["step"]) for r in rows] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in rows] == ref  # bit-exact, not approximately equal
    assert [p.name for p in mgr.checkpoints()] == [f"step-{STEPS - EVERY:08d}", f"step-{STEPS:08d}"]
