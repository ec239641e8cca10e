# SPDX-License-Identifier: Apache-2.0
"""`swisslm` starts instantly: no torch for --help, and every check that needs no model runs
before torch is imported. Each test runs the CLI in a fresh interpreter and reports whether
torch got imported there, which proves the order (no timing asserts: these are not benchmarks)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from swisslm.cli import build_parser
from swisslm.cli.common import UsageError
from swisslm.cli.validate import check_model_path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "numpy", "transformers", "fastapi", "uvicorn", "gguf", "tokenizers", "safetensors")

# Runs swisslm's main() on the argv lines given on stdin (one JSON list per line) and prints, per
# run, its exit status and which heavy packages were imported by then.
RUNNER = f"""
import json, sys
from swisslm.cli import main
for line in sys.stdin:
    argv = json.loads(line)
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    heavy = [m for m in {HEAVY!r} if m in sys.modules]
    sys.__stdout__.write("RESULT " + json.dumps({{"argv": argv, "rc": rc, "heavy": heavy}}) + "\\n")
"""


def run_main(*argvs: list[str], timeout: float = 120) -> tuple[list[dict], str]:
    """Run main() on each argv in one fresh interpreter; (results, stderr)."""
    proc = subprocess.run([sys.executable, "-c", RUNNER], input="".join(json.dumps(a) + "\n" for a in argvs),
                          capture_output=True, text=True, timeout=timeout)
    results = [json.loads(ln[7:]) for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert len(results) == len(argvs), proc.stderr
    return results, proc.stderr


def all_commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path of the parser: (), ("generate",), ..., ("bench", "decode")."""
    out = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += all_commands(sub, (*prefix, name))
    return out


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_every_help_imports_no_heavy_package():
    commands = all_commands(build_parser())
    assert ("generate",) in commands and ("bench", "decode") in commands and len(commands) > 16
    results, stderr = run_main(*([*c, "--help"] for c in commands))
    for r in results:  # the first offender is the one named: later runs inherit its imports
        assert r["rc"] == 0, (r, stderr)
        assert r["heavy"] == [], f"`swisslm {' '.join(r['argv'])}` imported {r['heavy']}"


def test_help_shows_defaults(capsys):
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "--max-new-tokens MAX_NEW_TOKENS most tokens to generate (default: 128)" in text
    assert "--top-p TOP_P nucleus sampling: smallest set of tokens with this mass (default: 1.0)" in text
    assert "(default: None)" not in text and "(default: False)" not in text  # nothing to show
    assert "--threads THREADS CPU threads (default: physical cores)" in text  # said once, by the help
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--port PORT TCP port to listen on (default: 8000)" in text
    with pytest.raises(SystemExit):
        parser.parse_args(["chat", "--help"])
    assert "(default: 512)" in capsys.readouterr().out  # chat's own max_new_tokens default


@pytest.mark.parametrize("argv, needle", [
    (["generate", "x", "--top-p", "2"], "--top-p must be in (0, 1], got 2.0"),
    (["generate", "x", "--temperature", "-1"], "--temperature must be >= 0"),
    (["generate", "x", "--top-k", "-1"], "--top-k must be >= 0"),
    (["generate", "x", "--min-p", "1.5"], "--min-p must be in [0, 1]"),
    (["generate", "x", "--repetition-penalty", "0"], "--repetition-penalty must be > 0"),
    (["generate", "x", "--max-new-tokens", "0"], "--max-new-tokens must be > 0"),
    (["generate", "x", "--threads", "0"], "--threads must be >= 1"),
    (["generate", "", "--stream"], "the prompt is empty"),  # all forms: tests/test_bad_input.py
    (["generate", "x", "--model", "./missing.gguf"], "--model ./missing.gguf: no such file or folder"),
    (["chat", "--top-p", "0"], "--top-p must be in (0, 1]"),
    (["serve", "--port", "70000"], "--port must be in [1, 65535]"),
    (["serve", "--max-batch", "0"], "--max-batch must be > 0"),
    (["info", "--model", "/no/such/folder"], "no such file or folder"),
])
def test_bad_options_fail_before_torch_is_imported(argv, needle):
    (r,), stderr = run_main(argv)
    assert r["rc"] == 2
    assert needle in one_error_line(stderr)
    assert "torch" not in r["heavy"], "the check ran only after torch was imported (a model load)"


def test_busy_port_fails_before_torch_is_imported():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        (r,), stderr = run_main(["serve", "--port", str(port)])
    assert r["rc"] == 2 and "torch" not in r["heavy"]
    assert f"--port {port}: address 127.0.0.1:{port} is already in use" in one_error_line(stderr)


def test_free_port_passes_the_check():
    from swisslm.cli.validate import check_port

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    check_port("127.0.0.1", port)  # released again: serve can bind it
    check_port("127.0.0.1", port)


@pytest.mark.parametrize("value", ["model.gguf", "./m", "/abs/m", "runs/exp1/final", "ORG/never-downloaded"])
def test_missing_models_are_refused_before_loading(value, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UsageError, match="^--model .*no such file or folder"):
        check_model_path(value)


def test_existing_paths_cached_hub_ids_and_default_pass(tmp_path, monkeypatch):
    from hub_helpers import cache_repo

    (tmp_path / "m.gguf").write_bytes(b"")
    check_model_path(str(tmp_path / "m.gguf"))
    check_model_path(str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    cache_repo(tmp_path / "hub", "org/name", folder)
    check_model_path("org/name")
    check_model_path("default")
    check_model_path(None)


def test_chat_says_it_is_loading_before_importing_torch(smollm2_path):
    """Not a TTY: no banner, but a `loading ...` line on stderr at once, before torch is even
    imported (-X importtime writes each import to stderr as it happens, so the order shows)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "swisslm", "chat", "--max-new-tokens", "3",
                           "--threads", "1"], input="Hi\n", capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stderr.splitlines()
    loading = next(i for i, ln in enumerate(lines) if ln.startswith("loading "))
    torch_line = next(i for i, ln in enumerate(lines)
                      if ln.startswith("import time:") and ln.split("|")[-1].strip().startswith("torch"))
    assert loading < torch_line
    assert "SmolLM2" in lines[loading]
    assert proc.stdout.strip()  # and then it answered the piped line


def test_generate_output_is_complete_and_timings_are_reported(smollm2_path):
    """generate leaves through os._exit (no torch teardown): its output must still be flushed
    whole into a pipe; SWISSLM_TIMINGS=1 adds one line of phases on stderr."""
    import os

    env = {**os.environ, "SWISSLM_TIMINGS": "1"}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "swisslm", "generate", "The capital of France is",
                           "--max-new-tokens", "3", "--threads", "1", "--json"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["num_new_tokens"] == 3
    imported = {ln.split("|")[-1].strip() for ln in proc.stderr.splitlines() if ln.startswith("import time:")}
    unneeded = ("fastapi", "uvicorn", "transformers", "torch._dynamo", "swisslm.serve", "swisslm.train",
                "swisslm.finetune", "swisslm.quant")
    parser_only = {"swisslm.quant", "swisslm.quant.bench"}  # torch-free: `bench decode`'s options
    # the embedded .gguf runs its blocks quantized by default: those layers are used
    parser_only |= {"swisslm.quant.layers", "swisslm.quant.gguf_blocks"}
    assert not [m for m in imported if m.startswith(unneeded) and m not in parser_only], \
        "generate imported what it never uses"
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("swisslm-timings ")]
    t = json.loads(line.split(" ", 1)[1])
    assert set(t["phases"]) == {"import torch", "import swisslm", "load", "kernels", "generate"}
    assert t["total"] >= sum(t["phases"].values()) > 0
    # bench/startup.py's table is built from exactly this line
    spec = importlib.util.spec_from_file_location("bench_startup", ROOT / "bench" / "startup.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert set(t["cpu"]) == set(t["phases"]) and t["cpu_before_main"] > 0
    run = {"wall": t["total"] + 0.5, "before_main": 0.3, "main": t["total"], "phases": t["phases"], "after_main": 0.2,
           "cpu": t["cpu"], "cpu_before_main": t["cpu_before_main"], "cpu_total": 9.0}
    split = {"header": 0.1, "dequant": 0.2, "cpu": {"header": 0.1, "dequant": 0.2}}
    assert bench.breakdown_cpu(run, run, split)["model load"] == t["cpu"]["load"]
    rows = bench.breakdown(run, run, split)
    assert set(rows) == set(bench.ROWS) and rows["model load"] == t["phases"]["load"]
    assert rows["rest of generation"] == 0.0 and rows["first token"] == t["phases"]["generate"]
    parts = sum(v for k, v in rows.items() if not k.startswith("  ") and k != "total")
    assert parts == pytest.approx(rows["total"])


def test_package_names_resolve_lazily():
    """`import swisslm` and its torch-free modules load no torch; the public names still work."""
    code = ("import sys, swisslm, swisslm.config, swisslm.io.errors; assert 'torch' not in sys.modules; "
            "from swisslm import *; import torch; assert AutoModel.__module__ == 'swisslm.auto'; "
            "assert set(swisslm.__all__) <= set(dir(swisslm)); print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "ok", proc.stderr


def test_help_formatter_shows_defaults_even_without_help_text():
    from swisslm.cli import _Parser

    p = _Parser(prog="x")
    p.add_argument("--lr", type=float, default=3e-5)  # no help text: argparse alone prints nothing
    p.add_argument("--name", default="run", help="run name")
    p.add_argument("--flag", action="store_true", help="a flag")
    p.add_argument("--opt", default=None, help="optional")
    p.add_argument("--port", type=int, default=1, help="port (default: the first free one)")
    text = " ".join(p.format_help().split())
    assert "--lr LR default: 3e-05" in text and "--name NAME run name (default: run)" in text
    assert "--flag a flag --opt OPT optional --port PORT port (default: the first free one) " in text + " "
