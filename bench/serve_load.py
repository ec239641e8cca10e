# SPDX-License-Identifier: Apache-2.0
"""Load benchmark for `swisslm serve`: continuous batching vs one request at a time.

The server runs as a child process on 127.0.0.1 (a free port); this process is the load
generator: C concurrent clients, each sending streaming /v1/completions requests back to back
for D seconds (fixed max_tokens with ignore_eos, so every request asks the same work). The same
load is served twice, by `--max-batch C` (continuous batching) and by `--max-batch 1` (one
request at a time), and the throughput ratio is printed with both absolute figures.

Reported per mode: requests/s, output tokens/s, p50/p99 time to first token and inter-token
latency (client side, SSE arrival times), error count, server RSS before/after the load.

    python bench/serve_load.py [--model M] [--clients 32] [--duration 60] [--max-tokens 64] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time

import httpx
import psutil

PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain why the sky is blue to a ten year old.",
    "List some ideas for a weekend trip in the mountains.",
    "What are the main differences between a violin and a viola?",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, max_batch: int, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "swisslm.cli.serve", "--host", "127.0.0.1", "--port", str(port),
           "--max-batch", str(max_batch), "--max-model-len", str(args.max_model_len), "--log-level", "warning",
           "--served-model-name", "bench", "--max-queue", str(max(256, 2 * args.clients))]
    if args.model:
        cmd += ["--model", args.model]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.Popen(cmd)
    deadline = time.monotonic() + args.startup_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise SystemExit("server did not become ready in time")


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


async def client_loop(http: httpx.AsyncClient, url: str, i: int, stop_at: float, max_tokens: int,
                      stats: dict) -> None:
    n = 0
    while time.perf_counter() < stop_at:
        body = {"model": "bench", "prompt": PROMPTS[(i + n) % len(PROMPTS)], "max_tokens": max_tokens,
                "temperature": 0, "stream": True, "ignore_eos": True, "stream_options": {"include_usage": True}}
        n += 1
        t0 = time.perf_counter()
        last = None
        try:
            async with http.stream("POST", url, json=body) as r:
                if r.status_code != 200:
                    await r.aread()
                    stats["errors"] += 1
                    continue
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    now = time.perf_counter()
                    if chunk.get("usage"):
                        stats["tokens"] += chunk["usage"]["completion_tokens"]
                        continue
                    if "error" in chunk:
                        stats["errors"] += 1
                        break
                    if last is None:
                        stats["ttft"].append(now - t0)
                    else:
                        stats["itl"].append(now - last)
                    last = now
            stats["requests"] += 1
        except httpx.HTTPError:
            stats["errors"] += 1


async def drive(port: int, clients: int, duration: float, max_tokens: int) -> dict:
    stats = {"requests": 0, "tokens": 0, "errors": 0, "ttft": [], "itl": []}
    url = f"http://127.0.0.1:{port}/v1/completions"
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as http:
        t0 = time.perf_counter()
        stop_at = t0 + duration
        await asyncio.gather(*(client_loop(http, url, i, stop_at, max_tokens, stats) for i in range(clients)))
        elapsed = time.perf_counter() - t0  # includes draining the requests in flight at the deadline
    return {"elapsed_s": elapsed, "requests": stats["requests"], "errors": stats["errors"],
            "requests_per_s": stats["requests"] / elapsed, "output_tokens_per_s": stats["tokens"] / elapsed,
            "output_tokens": stats["tokens"],
            "ttft_p50_ms": _ms(pct(stats["ttft"], 50)), "ttft_p99_ms": _ms(pct(stats["ttft"], 99)),
            "itl_p50_ms": _ms(pct(stats["itl"], 50)), "itl_p99_ms": _ms(pct(stats["itl"], 99))}


def _fmt(v: object) -> str:
    return "-" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)


def _ms(x: float | None) -> float | None:
    return None if x is None else round(1000 * x, 2)


def run_mode(args: argparse.Namespace, max_batch: int) -> dict:
    port = free_port()
    proc = start_server(args, max_batch, port)
    try:
        server = psutil.Process(proc.pid)
        # Warm-up: one request, so lazy allocations are not billed to the load.
        httpx.post(f"http://127.0.0.1:{port}/v1/completions", timeout=120,
                   json={"model": "bench", "prompt": "warm up", "max_tokens": 4})
        rss_before = server.memory_info().rss / 2**20
        result = asyncio.run(drive(port, args.clients, args.duration, args.max_tokens))
        result["rss_before_mb"] = round(rss_before, 1)
        result["rss_after_mb"] = round(server.memory_info().rss / 2**20, 1)
        result["max_batch"] = max_batch
        return result
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="checkpoint to serve (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load per mode")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--max-model-len", type=int, default=512)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--startup-timeout", type=float, default=600.0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    batched = run_mode(args, args.clients)
    serial = run_mode(args, 1)
    ratio = batched["output_tokens_per_s"] / serial["output_tokens_per_s"] if serial["output_tokens_per_s"] else None
    report = {"clients": args.clients, "duration_s": args.duration, "max_tokens": args.max_tokens,
              "continuous_batching": batched, "one_at_a_time": serial,
              "throughput_ratio": None if ratio is None else round(ratio, 2)}
    if args.json:
        print(json.dumps(report))
        return 0
    keys = ["requests", "errors", "requests_per_s", "output_tokens_per_s", "ttft_p50_ms", "ttft_p99_ms",
            "itl_p50_ms", "itl_p99_ms", "rss_before_mb", "rss_after_mb"]
    print(f"{args.clients} clients x {args.duration:.0f} s, max_tokens {args.max_tokens}")
    print(f"{'':22}{'continuous batching':>22}{'one at a time':>16}")
    for k in keys:
        print(f"{k:22}{_fmt(batched[k]):>22}{_fmt(serial[k]):>16}")
    print(f"throughput ratio (output tokens/s, batched / one at a time): {report['throughput_ratio']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
