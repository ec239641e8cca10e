# SPDX-License-Identifier: Apache-2.0
"""`swisslm bench decode` end to end on a tiny model (what it runs and reports, never how fast:
speed goals live in the benchmark's own output, not in timed tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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


# -- llama.cpp as a peer: the parsers and the plumbing, on captured and faked outputs ------------

harness = load_bench("cpu_decode")

# `llama-batched-bench -c 2048 -npp 16 -ntg 16 -npl 1,8 -t 2 --output-format jsonl` on the embedded
# Q4_1 file (a loaded machine: the speeds are low), with the markdown lines it may print around it
BATCHED_SAMPLE = """
llama_batched_bench: n_kv_max = 2048, n_batch = 2048, n_ubatch = 512, flash_attn = -1, is_pp_shared = 0
{"n_kv_max": 2048, "n_batch": 2048, "n_ubatch": 512, "flash_attn": -1, "is_pp_shared": 0, "n_gpu_layers": -1, \
"n_threads": 2, "n_threads_batch": 2, "pp": 16, "tg": 16, "pl": 1, "n_kv": 32, "t_pp": 5.623258, "speed_pp": 2.845325, \
"t_tg": 13.483488, "speed_tg": 1.186637, "t": 19.106747, "speed": 1.674801}
{"n_kv_max": 2048, "n_batch": 2048, "n_ubatch": 512, "flash_attn": -1, "is_pp_shared": 0, "n_gpu_layers": -1, \
"n_threads": 2, "n_threads_batch": 2, "pp": 16, "tg": 16, "pl": 8, "n_kv": 256, "t_pp": 9.508167, \
"speed_pp": 13.462111, "t_tg": 39.550755, "speed_tg": 3.236348, "t": 49.058922, "speed": 5.218215}
"""


def test_parse_batched_bench_reads_each_parallel_level():
    rows = harness.parse_batched_bench(BATCHED_SAMPLE)
    assert [(r["pl"], r["tg"], r["t"]) for r in rows] == [(1, 16, 19.106747), (8, 16, 49.058922)]
    assert harness.parse_time_file("Command exited with non-zero status 1\n70.99 179652\n") == (70.99, 179652 * 1024)
    assert harness.parse_time_file("") is None


def test_run_llama_against_a_fake_build(tmp_path):
    # A stand-in llama-batched-bench that prints the captured rows: run_llama picks the -npl row,
    # reports B * tg / t like our own rows, and its peak RSS and load time from /usr/bin/time.
    fake = tmp_path / "bin" / "llama-batched-bench"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\ncat <<'EOF'\n" + BATCHED_SAMPLE + "EOF\n")
    fake.chmod(0o755)
    assert harness.llama_skip_reason(str(fake.parent)) is None
    r = harness.run_llama(str(fake.parent), "m.gguf", 8, 16, 16, 2, tmp_path)
    assert r["seconds"] == 49.058922 and r["new"] == 16 and r["speed_tg"] == 3.236348
    assert r["load_s"] == 0.0  # the fake's wall time is below the reported work time
    assert (r["peak_rss"] > 0) == Path("/usr/bin/time").is_file()
    with pytest.raises(RuntimeError, match="no result row"):
        harness.run_llama(str(fake.parent), "m.gguf", 4, 16, 16, 2, tmp_path)


def test_format_table_pairs_ours_with_llama_cpp_on_the_same_file():
    rows = [{"peer": p, "batch": b, "tokens_per_s": t, "seconds": 1.0, "new_tokens": 128, "peak_rss_mib": 100.0,
             "load_s": 0.2} for p, b, t in (("ours-q4_1", 1, 260.0), ("ours-q8_0", 1, 150.0),
                                             ("llama.cpp-q4_1", 1, 130.0), ("llama.cpp-q8_0", 1, 100.0))]
    res = {"model": "m", "prompt_tokens": 16, "new_tokens": 128, "threads": 2, "rounds": 2, "compile": "off",
           "load_avg_1min": 0.5, "load_avg_rounds": [0.5, 0.6], "load_avg_after": 0.7, "rows": rows,
           "skipped": {}, "cpu": "AMD EPYC, 2 CPUs", "isa": "avx2 fma", "kernels": "avx2 fp32 kernel"}
    lines = format_table(res).splitlines()
    assert any(ln.endswith("vs llama.cpp same file") for ln in lines)
    q4 = next(ln for ln in lines if ln.split()[1:2] == ["ours-q4_1"])
    q8 = next(ln for ln in lines if ln.split()[1:2] == ["ours-q8_0"])
    assert q4.split()[-1] == "2.00x" and q8.split()[-1] == "1.50x"
    assert "ISA: avx2 fma" in lines[1] and "rounds: [0.5, 0.6]" in lines[0]


def test_bench_decode_llama_cpp_missing_prints_the_skip_note(tiny_folder, tmp_path):
    proc = _bench("--model", str(tiny_folder), "--peers", "ours-fp32", "--batch-sizes", "1", "--new-tokens", "2",
                  "--prompt-tokens", "4", "--rounds", "1", "--threads", "1", "--workdir", str(tmp_path),
                  "--llama-cpp", str(tmp_path / "no-build"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"skipped llama.cpp: {tmp_path / 'no-build' / 'llama-batched-bench'} not found" in proc.stdout
