# SPDX-License-Identifier: Apache-2.0
"""Load benchmark for `swisslm serve`: concurrent streaming clients on loopback.

The servers run as child processes on 127.0.0.1 (free ports); this process is the load
generator: C concurrent clients, each sending streaming /v1/completions requests back to back
for D seconds (fixed max_tokens with ignore_eos, greedy, so every request asks the same work).
Three modes:

- `batching` (default without --llama-cpp): `swisslm serve --max-batch C` (continuous batching)
  vs `--max-batch 1` (one request at a time), and the throughput ratio.
- `peers` (default with --llama-cpp DIR): `swisslm serve` vs llama.cpp's `llama-server` on the
  same GGUF (the embedded Q4_1 file unless --model), `--parallel 8` slots (--llama-parallel),
  continuous batching, the same threads. Issue 20 part 6.
- `prefix`: every prompt starts with the same ~300-token system text (--system-tokens) and ends
  in a short question of its own; `swisslm serve` with its prefix cache on vs off
  (NO_PREFIX_CACHE_FLAG), and llama-server with --cache-prompt on vs off when --llama-cpp is
  given. Issue 20 part 3: time to first token p50, cache on vs off.

All servers of a mode are started once, warmed up with one request, and loaded in turn, round
after round (--rounds): on a shared machine the load drifts, and interleaving exposes every
server to the same drift. Each round's figures are kept; the table shows the range over rounds.

Reported per server and round: requests, errors, requests/s, output tokens/s, p50/p99 time to
first token and inter-token latency (client side, SSE arrival times), and the server's peak RSS
(VmHWM of its process, read from /proc after the load; the RSS after the warm-up for scale).

    python bench/serve_load.py [--mode batching|peers|prefix] [--llama-cpp DIR] [--model M]
                               [--clients 32] [--duration 60] [--max-tokens 64] [--rounds 2] [--json]
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
from dataclasses import dataclass, field
from pathlib import Path

import httpx

PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain why the sky is blue to a ten year old.",
    "List some ideas for a weekend trip in the mountains.",
    "What are the main differences between a violin and a viola?",
]
# The flag that turns `swisslm serve`'s prefix cache off (one place to change if it is renamed).
NO_PREFIX_CACHE_FLAG = "--no-prefix-cache"
LLAMA_SERVER = "llama-server"
# Shared system text of the prefix mode, repeated and cut to --system-tokens tokens.
SYSTEM_TEXT = ("You are a careful assistant for a public library. Answer questions about opening hours, "
               "lending rules, interlibrary loans, reading rooms, digital archives and events. Be brief, "
               "polite and precise; when unsure, say so and suggest asking the front desk. ")
QUESTIONS = ["When does the reading room open on Saturdays?", "How many books can I borrow at once?",
             "Can I renew a loan online?", "Do you have a quiet room for studying?",
             "How do I request a book from another library?", "Is there a fee for a library card?",
             "Can children borrow audio books?", "Where are the old newspapers kept?"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vm_hwm_mib(pid: int) -> float | None:
    """Peak resident set (VmHWM) of a live process in MiB, or its current RSS where the kernel
    does not report a peak; None when the process is gone."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if ":" in line)
    except OSError:
        return None
    for key in ("VmHWM", "VmRSS"):
        if key in fields:
            return round(int(fields[key].split()[0]) / 1024, 1)
    return None


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


@dataclass
class Server:
    """One server child process: its command line, and the request fields it needs."""

    name: str
    cmd: list[str]
    port: int
    extra_body: dict = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    rss_after_warmup_mb: float | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float) -> None:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name}: server exited with {self.proc.returncode} before it was ready")
            try:  # llama-server answers 503 while it loads the model
                if httpx.get(f"{self.base}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise SystemExit(f"{self.name}: server did not become ready in {timeout:.0f} s")

    def warm_up(self) -> None:
        """One request, so lazy allocations are not billed to the load."""
        httpx.post(f"{self.base}/v1/completions", timeout=300,
                   json={"model": "bench", "prompt": "warm up", "max_tokens": 4, **self.extra_body})
        self.rss_after_warmup_mb = rss_mib(self.proc.pid)

    def peak_rss_mb(self) -> float | None:
        return vm_hwm_mib(self.proc.pid) if self.proc else None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def swisslm_server(args: argparse.Namespace, name: str, max_batch: int, extra: list[str] = ()) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "swisslm.cli.serve", "--host", "127.0.0.1", "--port", str(port),
           "--max-batch", str(max_batch), "--max-model-len", str(args.max_model_len), "--log-level", "warning",
           "--served-model-name", "bench", "--max-queue", str(max(256, 2 * args.clients)), *extra]
    if args.model:
        cmd += ["--model", args.model]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    return Server(name, cmd, port)


def llama_server(args: argparse.Namespace, name: str, extra: list[str] = ()) -> Server:
    port = free_port()
    cmd = [str(Path(args.llama_cpp) / LLAMA_SERVER), "-m", gguf_path(args), "--host", "127.0.0.1",
           "--port", str(port), "--parallel", str(args.llama_parallel), "--cont-batching",
           "-c", str(args.llama_parallel * args.max_model_len), "-t", str(args.threads or os.cpu_count() or 1),
           "--no-webui", "--log-disable", *extra]
    # ignore_eos is llama-server's own field (its OpenAI routes pass unknown fields to the sampler)
    return Server(name, cmd, port, extra_body={"ignore_eos": True})


def gguf_path(args: argparse.Namespace) -> str:
    """The GGUF both servers load: --model when it is a .gguf, else the embedded file."""
    if args.model:
        return args.model
    from swisslm.io.embedded import default_model_path

    return str(default_model_path())


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def count_sse(lines: list[str]) -> dict:
    """What one streamed completion said, from its SSE lines: content chunks (= tokens, both servers
    send one per token), the usage's completion_tokens when the server sends it, and an error."""
    chunks, usage, error = 0, None, None
    for line in lines:
        if not line.startswith("data: ") or line.strip() == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if "error" in chunk:
            error = chunk["error"]
            continue
        if chunk.get("usage"):
            usage = chunk["usage"].get("completion_tokens", usage)
        if any(c.get("text") for c in chunk.get("choices") or ()):
            chunks += 1
    return {"chunks": chunks, "usage": usage, "error": error}


async def client_loop(http: httpx.AsyncClient, url: str, i: int, stop_at: float, body_for, stats: dict) -> None:
    n = 0
    while time.perf_counter() < stop_at:
        body = body_for(i, n)
        n += 1
        t0 = time.perf_counter()
        last = None
        tokens = 0
        usage = None
        try:
            async with http.stream("POST", url, json=body) as r:
                if r.status_code != 200:
                    await r.aread()
                    stats["errors"] += 1
                    continue
                failed = False
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    seen = count_sse([line])
                    now = time.perf_counter()
                    if seen["error"] is not None:
                        failed = True
                        break
                    if seen["usage"] is not None:
                        usage = seen["usage"]
                    if not seen["chunks"]:
                        continue
                    tokens += 1
                    if last is None:
                        stats["ttft"].append(now - t0)
                    else:
                        stats["itl"].append(now - last)
                    last = now
            if failed:
                stats["errors"] += 1
                continue
            stats["tokens"] += usage if usage is not None else tokens
            stats["requests"] += 1
        except httpx.HTTPError:
            stats["errors"] += 1


async def drive(port: int, clients: int, duration: float, body_for) -> dict:
    stats = {"requests": 0, "tokens": 0, "errors": 0, "ttft": [], "itl": []}
    url = f"http://127.0.0.1:{port}/v1/completions"
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as http:
        t0 = time.perf_counter()
        stop_at = t0 + duration
        await asyncio.gather(*(client_loop(http, url, i, stop_at, body_for, stats) for i in range(clients)))
        elapsed = time.perf_counter() - t0  # includes draining the requests in flight at the deadline
    return {"elapsed_s": round(elapsed, 2), "requests": stats["requests"], "errors": stats["errors"],
            "requests_per_s": stats["requests"] / elapsed, "output_tokens_per_s": stats["tokens"] / elapsed,
            "output_tokens": stats["tokens"],
            "ttft_p50_ms": _ms(pct(stats["ttft"], 50)), "ttft_p99_ms": _ms(pct(stats["ttft"], 99)),
            "itl_p50_ms": _ms(pct(stats["itl"], 50)), "itl_p99_ms": _ms(pct(stats["itl"], 99))}


def _fmt(v: object) -> str:
    return "-" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)


def _ms(x: float | None) -> float | None:
    return None if x is None else round(1000 * x, 2)


def system_prompt(args: argparse.Namespace) -> str:
    """SYSTEM_TEXT repeated and cut to --system-tokens tokens of the served model's tokenizer."""
    from swisslm.auto import load_tokenizer

    tok = load_tokenizer(args.model) if args.model else load_tokenizer(None)
    text = SYSTEM_TEXT
    while len(tok.encode(text, add_special_tokens=False)) < args.system_tokens:
        text += SYSTEM_TEXT
    ids = list(tok.encode(text, add_special_tokens=False))[: args.system_tokens]
    return tok.decode(ids)


def body_maker(args: argparse.Namespace, server: Server, system: str | None):
    def body_for(i: int, n: int) -> dict:
        if system is None:
            prompt = PROMPTS[(i + n) % len(PROMPTS)]
        else:  # shared prefix, then a question of the client's own
            prompt = f"{system}\n\nQuestion: {QUESTIONS[(i + n) % len(QUESTIONS)]} (#{i}.{n})\nAnswer:"
        return {"model": "bench", "prompt": prompt, "max_tokens": args.max_tokens, "temperature": 0,
                "stream": True, "ignore_eos": True, "stream_options": {"include_usage": True},
                **server.extra_body}
    return body_for


def servers_for(args: argparse.Namespace) -> list[Server]:
    llama = args.llama_cpp is not None
    if args.mode == "batching":
        return [swisslm_server(args, "continuous batching", args.clients),
                swisslm_server(args, "one at a time", 1)]
    if args.mode == "peers":
        out = [swisslm_server(args, "swisslm serve", args.max_batch or args.clients)]
        if llama:
            out.append(llama_server(args, f"llama-server -np {args.llama_parallel}"))
        return out
    out = [swisslm_server(args, "swisslm cache on", args.max_batch or args.clients),
           swisslm_server(args, "swisslm cache off", args.max_batch or args.clients, [NO_PREFIX_CACHE_FLAG])]
    if llama:
        out += [llama_server(args, "llama-server cache on", ["--cache-prompt"]),
                llama_server(args, "llama-server cache off", ["--no-cache-prompt"])]
    return out


def llama_skip_reason(args: argparse.Namespace) -> str | None:
    if args.llama_cpp is None:
        return "no --llama-cpp DIR given" if args.mode != "batching" else None
    exe = Path(args.llama_cpp) / LLAMA_SERVER
    if not exe.is_file() or not os.access(exe, os.X_OK):
        return f"{exe} not found (build llama.cpp with the llama-server target, ../shared/tools/llamacpp/)"
    return None


def run_load(args: argparse.Namespace) -> dict:
    notes = []
    why = llama_skip_reason(args)
    if why is not None:
        notes.append(f"skipped llama-server: {why}")
        args.llama_cpp = None
    if args.mode == "peers" and args.model is None:
        args.model = gguf_path(args)  # both servers load the same file
    system = system_prompt(args) if args.mode == "prefix" else None
    servers = servers_for(args)
    rounds: list[dict[str, dict]] = []
    loads = [round(os.getloadavg()[0], 2)]
    try:
        for s in servers:
            s.start(args.startup_timeout)
            s.warm_up()
        for _ in range(args.rounds):
            this = {}
            for s in servers:
                res = asyncio.run(drive(s.port, args.clients, args.duration, body_maker(args, s, system)))
                res["load_avg_1min"] = round(os.getloadavg()[0], 2)
                this[s.name] = res
            rounds.append(this)
            loads.append(round(os.getloadavg()[0], 2))
        peak = {s.name: s.peak_rss_mb() for s in servers}
    finally:
        for s in servers:
            s.stop()
    summary = {}
    for s in servers:
        rs = [r[s.name] for r in rounds]
        summary[s.name] = {"rounds": rs, "rss_after_warmup_mb": s.rss_after_warmup_mb, "peak_rss_mb": peak[s.name],
                           "errors": sum(r["errors"] for r in rs), "requests": sum(r["requests"] for r in rs),
                           "command": " ".join(s.cmd)}
    report = {"mode": args.mode, "clients": args.clients, "duration_s": args.duration, "max_tokens": args.max_tokens,
              "rounds": args.rounds, "threads": args.threads, "load_avg": loads, "cpu": _cpu_name(),
              "servers": summary, "notes": notes}
    if system is not None:
        report["system_tokens"] = args.system_tokens
    return report


def _span(values: list) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    lo, hi = min(vals), max(vals)
    return _fmt(lo) if lo == hi else f"{_fmt(lo)}-{_fmt(hi)}"


def format_report(report: dict) -> str:
    lines = [f"mode {report['mode']}: {report['clients']} clients x {report['duration_s']:.0f} s, max_tokens "
             f"{report['max_tokens']} (ignore_eos, greedy), {report['rounds']} interleaved round(s), threads "
             f"{report['threads'] or 'default'}" + (f", {report['system_tokens']}-token shared system prompt"
                                                    if "system_tokens" in report else ""),
             f"machine: {report['cpu']}; load avg before/after each round: {report['load_avg']}"]
    names = list(report["servers"])
    keys = ["output_tokens_per_s", "requests_per_s", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms"]
    width = max(22, *(len(n) + 2 for n in names))
    lines.append(f"{'':22}" + "".join(f"{n:>{width}}" for n in names))
    for k in keys:
        lines.append(f"{k:22}" + "".join(f"{_span([r[k] for r in report['servers'][n]['rounds']]):>{width}}"
                                         for n in names))
    for k in ("requests", "errors", "rss_after_warmup_mb", "peak_rss_mb"):
        lines.append(f"{k:22}" + "".join(f"{_fmt(report['servers'][n][k]):>{width}}" for n in names))
    if len(names) >= 2:
        a, b = names[0], names[1]
        best = {n: max(r["output_tokens_per_s"] for r in report["servers"][n]["rounds"]) for n in (a, b)}
        if report["mode"] == "prefix":
            p50 = {n: min((r["ttft_p50_ms"] for r in report["servers"][n]["rounds"] if r["ttft_p50_ms"]),
                          default=None) for n in (a, b)}
            if p50[a] and p50[b]:
                lines.append(f"TTFT p50, {b} / {a} (best rounds): {p50[b] / p50[a]:.2f}x")
        elif best[b]:
            lines.append(f"output tokens/s, {a} / {b} (best rounds): {best[a] / best[b]:.2f}x")
    lines += report["notes"]
    return "\n".join(lines)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} CPUs"
    except OSError:
        pass
    return f"unknown CPU, {os.cpu_count()} CPUs"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["batching", "peers", "prefix"], default=None,
                   help="default: peers with --llama-cpp, else batching")
    p.add_argument("--model", default=None,
                   help="checkpoint to serve (default: the embedded SmolLM2-135M-Instruct GGUF; llama-server "
                        "needs a .gguf)")
    p.add_argument("--llama-cpp", default=None, metavar="DIR", help=f"llama.cpp build dir with {LLAMA_SERVER}")
    p.add_argument("--llama-parallel", type=int, default=8, help="llama-server --parallel slots")
    p.add_argument("--max-batch", type=int, default=None, help="swisslm serve --max-batch (default: --clients)")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load per server and round")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default: 2; batching: 1)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--max-model-len", type=int, default=512)
    p.add_argument("--system-tokens", type=int, default=300, help="prefix mode: tokens of the shared system prompt")
    p.add_argument("--threads", type=int, default=None, help="threads of every server (default: each one's own)")
    p.add_argument("--startup-timeout", type=float, default=600.0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.mode is None:
        args.mode = "peers" if args.llama_cpp else "batching"
    if args.rounds is None:
        args.rounds = 1 if args.mode == "batching" else 2
    for name in ("clients", "rounds", "max_tokens", "llama_parallel", "system_tokens"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.duration <= 0:
        p.error("--duration must be > 0")
    if args.mode == "prefix" and args.system_tokens + 32 + args.max_tokens > args.max_model_len:
        p.error(f"--max-model-len {args.max_model_len} is too short for --system-tokens {args.system_tokens} "
                f"+ a question + --max-tokens {args.max_tokens}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    report = run_load(args)
    if args.mode == "batching":
        names = list(report["servers"])
        a, b = (max(r["output_tokens_per_s"] for r in report["servers"][n]["rounds"]) for n in names)
        report["throughput_ratio"] = round(a / b, 2) if b else None
    print(json.dumps(report) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
