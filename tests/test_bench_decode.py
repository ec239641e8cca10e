# SPDX-License-Identifier: Apache-2.0
"""`swisslm bench decode` end to end on a tiny model (what it runs and reports, never how fast:
speed goals live in the benchmark's own output, not in timed tests)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import swisslm
from swisslm.cli.bench import load_bench
from swisslm.config import ModelConfig

format_table = load_bench("cpu_decode").format_table


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, smollm2):
    # A tiny random Llama with SmolLM2's vocabulary, saved with its tokenizer (the benchmark
    # encodes its prompt with the folder's tokenizer.json).
    cfg = ModelConfig(vocab_size=smollm2.config.vocab_size, hidden_size=32, num_layers=2, num_heads=4,
                      num_kv_heads=2, intermediate_size=64, max_position_embeddings=64, tie_embeddings=True)
    model = swisslm.AutoModel.from_config(cfg, seed=0).eval()
    model.tokenizer = smollm2.tokenizer
    return model.save_pretrained(tmp_path_factory.mktemp("bench") / "tiny")


def _bench(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "swisslm", "bench", "decode", *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


def test_bench_decode_reports_every_peer_batch_and_rss_ratio(tiny_folder, tmp_path):
    proc = _bench("--model", str(tiny_folder), "--peers", "ours-fp32,ours-int8,ours-int4", "--batch-sizes", "1,3",
                  "--new-tokens", "3", "--prompt-tokens", "5", "--rounds", "2", "--threads", "1",
                  "--workdir", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout)
    assert {(r["peer"], r["batch"]) for r in res["rows"]} == {
        (p, b) for p in ("ours-fp32", "ours-int8", "ours-int4") for b in (1, 3)}
    for r in res["rows"]:
        assert r["new_tokens"] == 3 and r["tokens_per_s"] > 0 and r["peak_rss_mib"] > 0
    assert res["prompt_tokens"] == 5 and res["rounds"] == 2 and res["threads"] == 1
    assert "CPUs" in res["cpu"] and ("fp32 kernel" in res["kernels"] or "torch" in res["kernels"])
    # the quantized folders were written once into the workdir, next to the HF folder it used
    assert (tmp_path / "tiny" / "int8" / "config.json").exists() and (tmp_path / "tiny" / "int4").is_dir()
    table = format_table(res)
    assert "peak RSS ours-int8 / ours-fp32:" in table and "peak RSS ours-int4 / ours-fp32:" in table
    assert "machine:" in table and table.count("ours-fp32") >= 2


def test_format_table_gives_each_ours_row_its_ratio_to_each_peer():
    rows = [{"peer": p, "batch": 1, "tokens_per_s": t, "seconds": 1.0, "new_tokens": 8, "peak_rss_mib": m}
            for p, t, m in (("ours-fp32", 30.0, 1000.0), ("ours-int8", 90.0, 450.0), ("ct2-int8", 30.0, 600.0),
                            ("hf-fp32-eager", 10.0, 1000.0))]
    res = {"model": "m", "prompt_tokens": 16, "new_tokens": 8, "threads": 2, "rounds": 1, "compile": "off",
           "load_avg_1min": 0.5, "rows": rows, "skipped": {"ct2-float32": "ctranslate2 not installed"}}
    lines = format_table(res).splitlines()
    fp32 = next(ln for ln in lines if ln.split()[1:2] == ["ours-fp32"])
    int8 = next(ln for ln in lines if ln.split()[1:2] == ["ours-int8"])
    assert fp32.split()[-2:] == ["1.00x", "3.00x"] and int8.split()[-2:] == ["3.00x", "9.00x"]
    assert "peak RSS ours-int8 / ours-fp32: 0.45" in lines
    assert "skipped ct2-float32: ctranslate2 not installed" in lines


@pytest.mark.parametrize("args,msg", [(["--peers", "ours-fp64"], "unknown peer"),
                                     (["--batch-sizes", "1,x"], "--batch-sizes"),
                                     (["--rounds", "0"], ">= 1")])
def test_bench_decode_bad_arguments_give_one_line_errors(args, msg, tmp_path):
    proc = _bench(*args, "--workdir", str(tmp_path))
    assert proc.returncode != 0
    assert msg in proc.stderr and "Traceback" not in proc.stderr
