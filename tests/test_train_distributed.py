# SPDX-License-Identifier: Apache-2.0
"""2-process gloo data parallelism (DDP and FSDP2 through torchrun) gives the losses of 1 process
with the same global batch (2 micro-batches accumulated), and their checkpoints are interchangeable."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import subprocess_env, synthetic_tokens, tiny_train_config, write_yaml

from swisslm.train.config import parse_train_config
from swisslm.train.metrics import read_metrics
from swisslm.train.run import run_training

STEPS = 4


def _torchrun(cfg, *overrides: str) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "swisslm", "train", str(cfg), *[a for o in overrides for a in ("--set", o)]]
    r = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-4000:]


@pytest.mark.timeout(600)
def test_ddp_and_fsdp2_match_one_process(tmp_path):
    data = synthetic_tokens(tmp_path / "data", n=4096)
    sections = dict(training={"max_steps": STEPS, "micro_batch_size": 2, "grad_accum": 2},
                    schedule={"name": "cosine", "warmup_steps": 1})
    run_training(parse_train_config(tiny_train_config(tmp_path / "one", data, **sections)))
    ref = [r["loss"] for r in read_metrics(tmp_path / "one")]
    ref_w = load_file(tmp_path / "one" / "checkpoints" / f"step-{STEPS:08d}" / "model.safetensors")

    cfg = write_yaml(tmp_path / "cfg.yaml", tiny_train_config(tmp_path / "x", data, **sections))
    for mode in ("ddp", "fsdp"):
        run_dir = tmp_path / mode
        _torchrun(cfg, f"run_dir={run_dir}", "training.grad_accum=1", f"training.parallel={mode}")
        rows = read_metrics(run_dir)
        assert [int(r["step"]) for r in rows] == list(range(1, STEPS + 1))
        # same global batch and token-mean loss; only the all-reduce summation order differs
        assert [r["loss"] for r in rows] == pytest.approx(ref, rel=1e-5), mode
        assert rows[-1]["tokens"] == STEPS * 4 * 16
        w = load_file(run_dir / "checkpoints" / f"step-{STEPS:08d}" / "model.safetensors")
        assert w.keys() == ref_w.keys()  # full, unsharded, same names (no module./FSDP prefixes)
        for k in ref_w:
            torch.testing.assert_close(w[k], ref_w[k], rtol=1e-4, atol=1e-5, msg=f"{mode}: {k}")

    # an FSDP2 checkpoint resumes in a single process (world size changes are allowed)
    one_more = tiny_train_config(tmp_path / "fsdp", data, **{**sections, "training": {
        **sections["training"], "max_steps": STEPS + 1}})
    run_training(parse_train_config(one_more), resume=True)
    assert int(read_metrics(tmp_path / "fsdp")[-1]["step"]) == STEPS + 1
