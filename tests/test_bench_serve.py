# SPDX-License-Identifier: Apache-2.0
"""bench/serve_load.py's parts that need no server: SSE counting (both servers' chunk shapes), the
peak-RSS probe, the llama-server skip note, argument checks and the report table. The load itself
is a benchmark, never a timed test."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

from swisslm.cli.bench import BENCH_DIR


def _load():
    spec = importlib.util.spec_from_file_location("swisslm_bench_serve_load", BENCH_DIR / "serve_load.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


serve_load = _load()

# /v1/completions streams as captured: swisslm serve (usage chunk last) and llama-server (no usage
# unless asked, a final chunk with finish_reason and empty text)
SWISSLM_SSE = [
    'data: {"id": "cmpl-1", "choices": [{"index": 0, "text": " The", "finish_reason": null}]}',
    "",
    'data: {"id": "cmpl-1", "choices": [{"index": 0, "text": " sky", "finish_reason": "length"}]}',
    'data: {"id": "cmpl-1", "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 2}}',
    "data: [DONE]",
]
LLAMA_SSE = [
    'data: {"choices":[{"text":" Once","index":0,"logprobs":null,"finish_reason":null}],"object":"text_completion"}',
    'data: {"choices":[{"text":" upon","index":0,"logprobs":null,"finish_reason":null}],"object":"text_completion"}',
    'data: {"choices":[{"text":"","index":0,"logprobs":null,"finish_reason":"length"}],"object":"text_completion"}',
    "data: [DONE]",
]


def test_count_sse_reads_tokens_and_usage_from_either_server():
    assert serve_load.count_sse(SWISSLM_SSE) == {"chunks": 2, "usage": 2, "error": None}
    assert serve_load.count_sse(LLAMA_SSE) == {"chunks": 2, "usage": None, "error": None}
    err = serve_load.count_sse(['data: {"error": {"message": "queue full"}}'])
    assert err["error"] == {"message": "queue full"} and err["chunks"] == 0


def test_peak_rss_of_a_live_process_and_none_for_a_gone_one():
    now = serve_load.rss_mib(os.getpid())  # read first: the peak read after can only be higher
    peak = serve_load.vm_hwm_mib(os.getpid())
    assert now is not None and peak is not None and peak >= now > 10
    assert serve_load.vm_hwm_mib(2**22 + 12345) is None


def test_llama_server_missing_gives_the_skip_note(tmp_path):
    args = serve_load.parse_args(["--llama-cpp", str(tmp_path)])
    assert args.mode == "peers" and args.rounds == 2 and args.llama_parallel == 8 and args.clients == 32
    assert f"{tmp_path / 'llama-server'} not found" in serve_load.llama_skip_reason(args)
    assert serve_load.llama_skip_reason(serve_load.parse_args([])) is None  # batching mode: no peer wanted
    assert "no --llama-cpp" in serve_load.llama_skip_reason(serve_load.parse_args(["--mode", "prefix"]))


def test_servers_of_each_mode(tmp_path):
    args = serve_load.parse_args(["--mode", "prefix", "--llama-cpp", str(tmp_path), "--model", "m.gguf",
                                  "--threads", "2", "--llama-parallel", "4"])
    servers = serve_load.servers_for(args)
    assert [s.name for s in servers] == ["swisslm cache on", "swisslm cache off", "llama-server cache on",
                                         "llama-server cache off"]
    assert serve_load.NO_PREFIX_CACHE_FLAG in servers[1].cmd and serve_load.NO_PREFIX_CACHE_FLAG not in servers[0].cmd
    llama = servers[3].cmd
    assert llama[llama.index("--parallel") + 1] == "4" and llama[llama.index("-t") + 1] == "2"
    assert "--no-cache-prompt" in llama and llama[llama.index("-m") + 1] == "m.gguf"
    assert servers[2].extra_body == {"ignore_eos": True}


@pytest.mark.parametrize("argv,msg", [(["--clients", "0"], "--clients"), (["--duration", "0"], "--duration"),
                                      (["--mode", "prefix", "--system-tokens", "500"], "--max-model-len")])
def test_bad_arguments_exit_2(argv, msg, capsys):
    with pytest.raises(SystemExit) as e:
        serve_load.parse_args(argv)
    assert e.value.code == 2 and msg in capsys.readouterr().err


def test_format_report_gives_ranges_over_rounds_and_the_ratio():
    def rnd(tps, ttft):
        return {"output_tokens_per_s": tps, "requests_per_s": 1.0, "ttft_p50_ms": ttft, "ttft_p99_ms": 2 * ttft,
                "itl_p50_ms": 50.0, "itl_p99_ms": 90.0, "errors": 0, "requests": 10}

    report = {"mode": "prefix", "clients": 32, "duration_s": 60.0, "max_tokens": 64, "rounds": 2, "threads": 2,
              "load_avg": [0.1, 0.2, 0.3], "cpu": "AMD EPYC, 2 CPUs", "system_tokens": 300, "notes": ["a note"],
              "servers": {"swisslm cache on": {"rounds": [rnd(200.0, 100.0), rnd(210.0, 120.0)], "errors": 0,
                                                "requests": 20, "rss_after_warmup_mb": 300.0, "peak_rss_mb": 320.0},
                          "swisslm cache off": {"rounds": [rnd(150.0, 400.0), rnd(160.0, 420.0)], "errors": 0,
                                                 "requests": 20, "rss_after_warmup_mb": 300.0,
                                                 "peak_rss_mb": 330.0}}}
    text = serve_load.format_report(report)
    assert "200.00-210.00" in text and "300-token shared system prompt" in text
    assert "TTFT p50, swisslm cache off / swisslm cache on (best rounds): 4.00x" in text
    assert text.endswith("a note")
