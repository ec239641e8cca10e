# SPDX-License-Identifier: Apache-2.0
"""Side-by-side CPU decode benchmark: swisslm (fp32, int8, int4) vs CTranslate2 (int8, float32)
vs transformers fp32 eager, on the same model, prompt, threads and machine, in one run.

    swisslm bench decode [--model M] [--batch-sizes 1,8] [--new-tokens 128] [--threads 2]
    python bench/cpu_decode.py ...            (same thing)

A benchmark harness, so it lives in bench/, outside the library; `swisslm bench decode` loads
this file from a source checkout (cli/bench.py).

Each peer runs in its own worker process (so each one's peak RSS is its own) and the controller
interleaves them round by round: peer A bs1, peer B bs1, ..., then the next round. On a shared
machine the load drifts; interleaving exposes every peer to the same drift, and the best of
`--rounds` runs is each peer's figure (the least-disturbed run). Greedy, EOS ignored, prompt of
~16 tokens repeated over the batch. ctranslate2 / transformers are bench-only extras
(`pip install -e ".[bench]"`); a peer whose package is missing is reported as skipped.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PROMPT = ("The history of the printing press begins in the fifteenth century, when a goldsmith in "
          "Mainz")
PEERS = ("ours-fp32", "ours-int8", "ours-int4", "ours-gguf", "ct2-int8", "ct2-float32", "hf-fp32-eager")
DEFAULT_PEERS = "ours-fp32,ours-int8,ct2-int8,ct2-float32,hf-fp32-eager"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="HF folder or .gguf (default: embedded SmolLM2-135M)")
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="interleaved runs per peer and batch size (best kept)")
    p.add_argument("--peers", default=DEFAULT_PEERS, help=f"comma list from {','.join(PEERS)}")
    p.add_argument("--compile", choices=["on", "off"], default="off",
                   help="torch.compile our one-token step (see the report for when it pays)")
    p.add_argument("--workdir", default=None,
                   help="cache for the exported HF folder and converted models (default ~/.cache/swisslm/bench)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


# -- preparation (controller) ----------------------------------------------------------------


def _prepare(args: argparse.Namespace, peers: list[str]) -> dict[str, Path]:
    """Export/convert the model once into the workdir: HF folder, quantized folders, CT2 folders."""
    work = Path(args.workdir or Path.home() / ".cache" / "swisslm" / "bench")
    src = Path(args.model) if args.model else None
    tag = (src.name if src else "default-smollm2").replace(".", "_")
    base = work / tag
    paths: dict[str, Path] = {}
    hf_dir = base / "hf"
    if src is not None and src.is_dir() and "swisslm" not in json.loads((src / "config.json").read_text()):
        hf_dir = src
    elif not (hf_dir / "config.json").exists():
        import swisslm

        log.warning("exporting %s to %s", src or "the embedded model", hf_dir)
        swisslm.AutoModel.from_pretrained(src, dtype="float32").save_pretrained(hf_dir)
    paths["hf"] = hf_dir
    if "ours-gguf" in peers:  # the .gguf itself, run quantized as `swisslm generate` does by default
        from swisslm.io.embedded import default_model_path

        gguf_file = src if src is not None and src.suffix == ".gguf" else default_model_path() if src is None else None
        if gguf_file is not None:
            paths["gguf"] = gguf_file
    for scheme in ("int8", "int4"):
        if f"ours-{scheme}" in peers:
            qdir = base / scheme
            if not (qdir / "config.json").exists():
                import swisslm
                from swisslm.io.quantized import save_quantized
                from swisslm.quant import quantize_

                m = swisslm.AutoModel.from_pretrained(hf_dir)
                save_quantized(quantize_(m, scheme), qdir, m.tokenizer)
                del m
            paths[scheme] = qdir
    for ct in ("int8", "float32"):
        if f"ct2-{ct}" in peers:
            cdir = base / f"ct2-{ct}"
            if not (cdir / "model.bin").exists():
                try:
                    import ctranslate2.converters
                except ImportError:
                    continue
                ctranslate2.converters.TransformersConverter(str(hf_dir)).convert(
                    str(cdir), quantization=ct, force=True)
            paths[f"ct2-{ct}"] = cdir
    return paths


# -- worker (one per peer) ---------------------------------------------------------------------


def peak_rss() -> int:
    """Peak resident set size of this process in bytes. VmHWM, not ru_maxrss: Linux carries
    ru_maxrss over fork+exec, so a worker would report its parent's peak when that was higher."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _Peer:
    def __init__(self, name: str, paths: dict[str, str], threads: int, compile_step: bool) -> None:
        self.name = name
        if name.startswith("ours"):
            import torch

            import swisslm

            torch.set_num_threads(threads)
            kind = name.split("-")[1]
            folder = paths["hf"] if kind == "fp32" else paths[kind]
            self.model = swisslm.AutoModel.from_pretrained(folder)
            if compile_step:
                from swisslm.quant import compile_

                compile_(self.model)
        elif name.startswith("ct2"):
            import ctranslate2

            self.gen = ctranslate2.Generator(paths[name], device="cpu", compute_type=name.split("-")[1],
                                             intra_threads=threads, inter_threads=1)
            from tokenizers import Tokenizer

            self.tok = Tokenizer.from_file(str(Path(paths["hf"]) / "tokenizer.json"))
        else:
            import torch
            import transformers

            torch.set_num_threads(threads)
            self.model = transformers.AutoModelForCausalLM.from_pretrained(
                paths["hf"], dtype=torch.float32, attn_implementation="eager").eval()

    def run(self, ids: list[int], batch: int, new: int) -> tuple[float, int]:
        """(seconds, new tokens per row actually produced) for one greedy generation."""
        if self.name.startswith("ct2"):
            toks = [self.tok.id_to_token(i) for i in ids]
            t = time.perf_counter()
            res = self.gen.generate_batch([toks] * batch, max_length=new, min_length=new, sampling_topk=1,
                                          beam_size=1, include_prompt_in_result=False)
            dt = time.perf_counter() - t
            return dt, len(res[0].sequences_ids[0])
        import torch

        x = torch.tensor([ids] * batch)
        t = time.perf_counter()
        with torch.no_grad():
            if self.name.startswith("ours"):
                out = self.model.generate(x, max_new_tokens=new, eos_token_id=[])
            else:
                out = self.model.generate(x, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                          pad_token_id=0)
        dt = time.perf_counter() - t
        return dt, out.shape[1] - len(ids)


def worker_main(argv: list[str]) -> int:
    """`python bench/cpu_decode.py --worker NAME JSON`: serve run requests on stdin."""
    name, cfg = argv[1], json.loads(argv[2])
    try:
        peer = _Peer(name, cfg["paths"], cfg["threads"], cfg["compile"])
    except ImportError as e:
        print(json.dumps({"skipped": f"{e.name or e} not installed"}), flush=True)
        return 0
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if req.get("quit"):
            break
        dt, n = peer.run(req["ids"], req["batch"], req["new"])
        print(json.dumps({"seconds": dt, "new": n, "peak_rss": peak_rss()}), flush=True)
    return 0


# -- controller ------------------------------------------------------------------------------


def _spawn(name: str, cfg: dict[str, Any]) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(cfg["threads"]), TOKENIZERS_PARALLELISM="false",
               PYTHONWARNINGS="ignore")
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", name, json.dumps(cfg)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)


def _ask(proc: subprocess.Popen, req: dict[str, Any]) -> dict[str, Any]:
    proc.stdin.write(json.dumps(req) + "\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError("benchmark worker died (see its stderr above)")
    return json.loads(line)


def prompt_ids(hf_dir: Path, n: int) -> list[int]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    ids = tok.encode(PROMPT, add_special_tokens=False).ids
    while len(ids) < n:
        ids = ids + ids
    return ids[:n]


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    from swisslm.cli.common import UsageError

    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    bad = [p for p in peers if p not in PEERS]
    if bad:
        raise UsageError(f"unknown peer(s) {bad}; choose from {list(PEERS)}")
    try:
        sizes = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        raise UsageError(f"--batch-sizes must be a comma list of integers, got {args.batch_sizes!r}") from None
    if args.threads < 1 or args.new_tokens < 1 or args.rounds < 1 or any(b < 1 for b in sizes):
        raise UsageError("--threads, --new-tokens, --rounds and batch sizes must be >= 1")
    paths = _prepare(args, peers)
    ids = prompt_ids(paths["hf"], args.prompt_tokens)
    cfg = {"paths": {k: str(v) for k, v in paths.items()}, "threads": args.threads, "compile": args.compile == "on"}
    procs: dict[str, subprocess.Popen] = {}
    skipped: dict[str, str] = {}
    for name in peers:
        if name.startswith("ct2") and name not in paths:
            skipped[name] = "ctranslate2 not installed"
            continue
        proc = _spawn(name, cfg)
        msg = json.loads(proc.stdout.readline() or '{"skipped": "worker failed to start"}')
        if "skipped" in msg:
            skipped[name] = msg["skipped"]
            proc.wait()
        else:
            procs[name] = proc
    results: dict[str, dict[int, dict[str, Any]]] = {n: {} for n in procs}
    try:
        for b in sizes:  # warm-up (and compile) outside the timed rounds
            for proc in procs.values():
                _ask(proc, {"ids": ids, "batch": b, "new": min(8, args.new_tokens)})
        for _ in range(args.rounds):
            for b in sizes:
                for name, proc in procs.items():
                    r = _ask(proc, {"ids": ids, "batch": b, "new": args.new_tokens})
                    best = results[name].get(b)
                    if best is None or r["seconds"] < best["seconds"]:
                        results[name][b] = r
                    results[name][b]["peak_rss"] = r["peak_rss"]
                    time.sleep(0.1)  # let the previous peer's spinning threads go idle
    finally:
        for proc in procs.values():
            try:
                proc.stdin.write(json.dumps({"quit": True}) + "\n")
                proc.stdin.flush()
            except BrokenPipeError:
                pass
            proc.wait()
    table = []
    for b in sizes:
        for name in procs:
            r = results[name][b]
            table.append({"peer": name, "batch": b, "tokens_per_s": b * r["new"] / r["seconds"],
                          "seconds": r["seconds"], "new_tokens": r["new"], "peak_rss_mib": r["peak_rss"] / 2**20})
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {"model": args.model or "embedded SmolLM2-135M-Instruct", "threads": args.threads,
            "new_tokens": args.new_tokens, "prompt_tokens": len(ids), "rounds": args.rounds,
            "compile": args.compile, "load_avg_1min": load, "cpu": f"{_cpu_name()}, {os.cpu_count()} CPUs",
            "kernels": _kernels_in_use(), "rows": table, "skipped": skipped}


def _cpu_name() -> str:
    """The CPU's model name, so a saved table says what machine it is from."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _kernels_in_use() -> str:
    """Which of our decode kernels the workers run (the same machine, so the same answer)."""
    from swisslm import kernels

    return f"{kernels.f32_isa()} fp32 kernel" if kernels.available() else "off (torch operators)"


def format_table(res: dict[str, Any]) -> str:
    rows = res["rows"]
    ours = [p for p in dict.fromkeys(r["peer"] for r in rows) if p.startswith("ours")]
    peers = [p for p in dict.fromkeys(r["peer"] for r in rows) if not p.startswith("ours")]
    lines = [f"CPU decode: {res['model']}, {res['prompt_tokens']}-token prompt, {res['new_tokens']} new tokens "
             f"greedy (EOS ignored), {res['threads']} threads, best of {res['rounds']} interleaved rounds, "
             f"compile={res['compile']}, load avg {res['load_avg_1min']}"]
    if "cpu" in res:
        lines.append(f"machine: {res['cpu']}; swisslm kernels: {res['kernels']}")
    head = f"{'batch':>5} {'peer':<15} {'tok/s':>9} {'peak RSS MiB':>13}  " + "  ".join(f"vs {p:<13}" for p in peers)
    lines.append(head)
    for b in dict.fromkeys(r["batch"] for r in rows):
        by = {r["peer"]: r for r in rows if r["batch"] == b}
        for name in ours + peers:
            r = by[name]
            ratios = ""
            if name in ours:
                ratios = "  ".join(f"{r['tokens_per_s'] / by[p]['tokens_per_s']:>5.2f}x{'':<10}" for p in peers)
            lines.append(f"{b:>5} {name:<15} {r['tokens_per_s']:>9.1f} {r['peak_rss_mib']:>13.0f}  {ratios}")
    if "ours-fp32" in ours:
        for q in ("ours-int8", "ours-int4"):
            if q in ours:
                b0 = rows[0]["batch"]
                f = next(r for r in rows if r["peer"] == "ours-fp32" and r["batch"] == b0)
                i = next(r for r in rows if r["peer"] == q and r["batch"] == b0)
                lines.append(f"peak RSS {q} / ours-fp32: {i['peak_rss_mib'] / f['peak_rss_mib']:.2f}")
    for name, why in res["skipped"].items():
        lines.append(f"skipped {name}: {why}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    res = run_benchmark(args)
    print(json.dumps(res) if args.json else format_table(res))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        sys.exit(worker_main(sys.argv[1:]))
    parser = argparse.ArgumentParser(prog="bench/cpu_decode.py", description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
