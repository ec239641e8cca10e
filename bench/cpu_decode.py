# SPDX-License-Identifier: Apache-2.0
"""Side-by-side CPU decode benchmark: swisslm (fp32, int8, int4, GGUF files as loaded by default)
vs llama.cpp on the same GGUF files vs CTranslate2 (int8, float32) vs transformers fp32 eager, on
the same model, prompt, threads and machine, in one run.

    swisslm bench decode [--model M] [--batch-sizes 1,8] [--new-tokens 128] [--threads 2]
    swisslm bench decode --llama-cpp BUILD/bin --gguf-dir MODELS [--rounds 3]
    python bench/cpu_decode.py ...            (same thing)

llama.cpp (`--llama-cpp DIR`, a build with llama-batched-bench): each `ours-<type>` peer that runs
a GGUF file (ours-q4_1: the Q4_1 file, by default the embedded one, loaded the default way;
ours-q8_0: the Q8_0 file; ours-f32: the F32 file, or else the Q4_1 file, with dtype float32) gets
a `llama.cpp-<type>` row on the same file. llama-batched-bench runs one batch size per call
(`-npp P -ntg N -npl B`: B sequences, each its own P-token prompt, N new tokens) inside the same
interleaved rounds as our workers; its figure is B * N / (prompt time + generation time), the
definition ours uses (generate() wall time, prompt included). Its peak RSS comes from
/usr/bin/time, its load time is the process's wall time minus the timed work. Without the
binaries the llama.cpp rows are skipped with a note.

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
# ours-q4_1 / ours-q8_0 / ours-f32: our load of a GGUF file of that type (see the docstring)
GGUF_TYPES = ("q4_1", "q8_0", "f32")
PEERS = ("ours-fp32", "ours-int8", "ours-int4", *(f"ours-{t}" for t in GGUF_TYPES), "ct2-int8", "ct2-float32",
         "hf-fp32-eager")
DEFAULT_PEERS = "ours-fp32,ours-int8,ct2-int8,ct2-float32,hf-fp32-eager"
LLAMA_DEFAULT_PEERS = ",".join(f"ours-{t}" for t in GGUF_TYPES)  # with --llama-cpp and no --peers
LLAMA = "llama.cpp"
LLAMA_BATCHED = "llama-batched-bench"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="HF folder or .gguf (default: embedded SmolLM2-135M)")
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="interleaved runs per peer and batch size (best kept)")
    p.add_argument("--peers", default=None,
                   help=f"comma list from {','.join(PEERS)} (default: {DEFAULT_PEERS}; with --llama-cpp: "
                        f"{LLAMA_DEFAULT_PEERS})")
    p.add_argument("--llama-cpp", default=None, metavar="DIR",
                   help=f"llama.cpp build dir with {LLAMA_BATCHED}: a {LLAMA}-<type> row beside each ours-<type> "
                        "GGUF peer (skipped with a note when absent)")
    p.add_argument("--gguf-dir", default=None, metavar="DIR",
                   help="folder with the *Q4_1.gguf / *Q8_0.gguf / *F32.gguf files of the model (Q4_1 default: "
                        "--model if a .gguf, else the embedded file)")
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
    paths: dict[str, Path] = gguf_files(args)
    if not any(p in peers for p in ("ours-fp32", "ours-int8", "ours-int4", "ct2-int8", "ct2-float32",
                                    "hf-fp32-eager")):
        return paths  # GGUF peers only: no HF export needed
    hf_dir = base / "hf"
    if src is not None and src.is_dir() and "swisslm" not in json.loads((src / "config.json").read_text()):
        hf_dir = src
    elif not (hf_dir / "config.json").exists():
        import swisslm

        log.warning("exporting %s to %s", src or "the embedded model", hf_dir)
        swisslm.AutoModel.from_pretrained(src, dtype="float32").save_pretrained(hf_dir)
    paths["hf"] = hf_dir
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


def gguf_files(args: argparse.Namespace) -> dict[str, Path]:
    """{"gguf-q4_1": file, ...} for the GGUF types found: Q4_1 = --model when it is a .gguf, else one
    in --gguf-dir, else the embedded file; Q8_0 / F32 only from --gguf-dir."""
    found: dict[str, Path] = {}
    if args.gguf_dir:
        for f in sorted(Path(args.gguf_dir).glob("*.gguf")):
            for t in GGUF_TYPES:
                if f.stem.lower().endswith(t) and f"gguf-{t}" not in found:
                    found[f"gguf-{t}"] = f
    if args.model and str(args.model).endswith(".gguf"):
        found["gguf-q4_1"] = Path(args.model)
    elif "gguf-q4_1" not in found and not args.model:
        from swisslm.io.embedded import default_model_path

        found["gguf-q4_1"] = default_model_path()
    return found


def gguf_for(peer: str, paths: dict[str, Any]) -> tuple[str | None, str | None]:
    """(file, dtype) an ours-<type> GGUF peer loads: dtype None = the library's default path."""
    t = peer.split("-", 1)[1]
    if t == "f32":  # the F32 file, or the Q4_1 file expanded: the same weights
        f = paths.get("gguf-f32") or paths.get("gguf-q4_1")
        return (str(f) if f else None), "float32"
    f = paths.get(f"gguf-{t}")
    return (str(f) if f else None), None


# -- llama.cpp (a subprocess per run) -----------------------------------------------------------


def llama_skip_reason(llama_dir: str | None) -> str | None:
    """Why llama.cpp rows cannot run, or None."""
    if llama_dir is None:
        return None
    exe = Path(llama_dir) / LLAMA_BATCHED
    if not exe.is_file() or not os.access(exe, os.X_OK):
        return f"{exe} not found (build llama.cpp, see ../shared/tools/llamacpp/README.md)"
    return None


def parse_batched_bench(stdout: str) -> list[dict[str, Any]]:
    """Rows of `llama-batched-bench --output-format jsonl` (one JSON object per line: pp, tg, pl,
    t_pp, t_tg, t, speed_tg, ...); other lines are ignored."""
    rows = []
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            row = json.loads(line)
            if {"pl", "tg", "t"} <= row.keys():
                rows.append(row)
    return rows


def parse_time_file(text: str) -> tuple[float, int] | None:
    """(wall seconds, peak RSS bytes) from `/usr/bin/time -f '%e %M'` output (last line)."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return None
    try:
        wall, kb = lines[-1].split()[:2]
        return float(wall), int(kb) * 1024
    except ValueError:
        return None


def run_llama(llama_dir: str, gguf: str, batch: int, prompt: int, new: int, threads: int,
              workdir: Path) -> dict[str, Any]:
    """One llama-batched-bench call: {"seconds", "new", "peak_rss", "load_s", "speed_tg"}."""
    exe = str(Path(llama_dir) / LLAMA_BATCHED)
    ctx = max(2048, batch * (prompt + new) + 64)
    cmd = [exe, "-m", gguf, "-c", str(ctx), "-npp", str(prompt), "-ntg", str(new), "-npl", str(batch),
           "-t", str(threads), "--output-format", "jsonl"]
    timer = Path("/usr/bin/time")
    tfile = workdir / "llama-time.txt"
    if timer.is_file():
        cmd = [str(timer), "-f", "%e %M", "-o", str(tfile), *cmd]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{LLAMA_BATCHED} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    rows = [r for r in parse_batched_bench(proc.stdout) if r["pl"] == batch]
    if not rows:
        raise RuntimeError(f"{LLAMA_BATCHED}: no result row for -npl {batch} in its output")
    r = rows[0]
    timed = parse_time_file(tfile.read_text()) if timer.is_file() and tfile.exists() else None
    if timed:
        wall = timed[0]
    return {"seconds": float(r["t"]), "new": int(r["tg"]), "peak_rss": timed[1] if timed else 0,
            "load_s": max(0.0, wall - float(r["t"])), "speed_tg": float(r.get("speed_tg", 0.0))}


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
            t0 = time.perf_counter()
            if kind in GGUF_TYPES:
                gguf, dtype = gguf_for(name, paths)
                kw = {"dtype": dtype} if dtype else {}  # no dtype: whatever the library's default path is
                self.model = swisslm.AutoModel.from_pretrained(gguf, **kw)
            else:
                folder = paths["hf"] if kind == "fp32" else paths[kind]
                self.model = swisslm.AutoModel.from_pretrained(folder)
            self.load_s = time.perf_counter() - t0
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
    print(json.dumps({"ready": True, "load_s": getattr(peer, "load_s", None)}), flush=True)
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


def prompt_ids(paths: dict[str, Path], n: int) -> list[int]:
    """The first n tokens of PROMPT (repeated if short) with the model's tokenizer: the HF folder's
    tokenizer.json, or the GGUF file's."""
    if "hf" in paths:
        from tokenizers import Tokenizer

        ids = Tokenizer.from_file(str(paths["hf"] / "tokenizer.json")).encode(PROMPT, add_special_tokens=False).ids
    else:
        from swisslm.auto import load_tokenizer

        ids = list(load_tokenizer(next(iter(paths.values()))).encode(PROMPT, add_special_tokens=False))
    while len(ids) < n:
        ids = ids + ids
    return ids[:n]


def _load_avg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    from swisslm.cli.common import UsageError

    peer_list = args.peers if args.peers is not None else (LLAMA_DEFAULT_PEERS if args.llama_cpp else DEFAULT_PEERS)
    peers = [p.strip() for p in peer_list.split(",") if p.strip()]
    bad = [p for p in peers if p not in PEERS]
    if bad:
        raise UsageError(f"unknown peer(s) {bad}; choose from {list(PEERS)}")
    try:
        sizes = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        raise UsageError(f"--batch-sizes must be a comma list of integers, got {args.batch_sizes!r}") from None
    if args.threads < 1 or args.new_tokens < 1 or args.rounds < 1 or any(b < 1 for b in sizes):
        raise UsageError("--threads, --new-tokens, --rounds and batch sizes must be >= 1")
    if args.gguf_dir is not None and not Path(args.gguf_dir).is_dir():
        raise UsageError(f"--gguf-dir {args.gguf_dir}: not a folder")
    load_before = _load_avg()
    paths = _prepare(args, peers)
    skipped: dict[str, str] = {}
    for name in [p for p in peers if p.split("-", 1)[1] in GGUF_TYPES]:
        if gguf_for(name, paths)[0] is None:
            t = name.split("-", 1)[1]
            skipped[name] = f"no {t.upper()} GGUF file (pass --gguf-dir with a *{t.upper()}.gguf)"
            peers.remove(name)
    # llama.cpp rows: one per GGUF peer of ours, on the same file
    llama: dict[str, str] = {}
    gguf_peers = [p for p in peers if p.split("-", 1)[1] in GGUF_TYPES]
    why = llama_skip_reason(args.llama_cpp)
    if args.llama_cpp is not None and why:
        skipped[LLAMA] = why
    elif args.llama_cpp is not None and not gguf_peers:
        skipped[LLAMA] = f"its rows pair with GGUF peers of ours ({LLAMA_DEFAULT_PEERS}); none in --peers"
    elif args.llama_cpp is not None:
        for name in gguf_peers:  # same file as ours: the F32 row needs the F32 file (llama.cpp does not expand)
            t = name.split("-", 1)[1]
            f = paths.get(f"gguf-{t}")
            if f is None:
                skipped[f"{LLAMA}-{t}"] = f"no {t.upper()} GGUF file (pass --gguf-dir)"
            else:
                llama[f"{LLAMA}-{t}"] = str(f)
    ids = prompt_ids(paths, args.prompt_tokens)
    cfg = {"paths": {k: str(v) for k, v in paths.items()}, "threads": args.threads, "compile": args.compile == "on"}
    procs: dict[str, subprocess.Popen] = {}
    load_s: dict[str, float | None] = {}
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
            load_s[name] = msg.get("load_s")
    order = [n for n in peers if n in procs] + list(llama)
    results: dict[str, dict[int, dict[str, Any]]] = {n: {} for n in order}
    rounds_load: list[float | None] = []
    work = Path(args.workdir or Path.home() / ".cache" / "swisslm" / "bench")
    work.mkdir(parents=True, exist_ok=True)
    try:
        for b in sizes:  # warm-up (and compile) outside the timed rounds
            for proc in procs.values():
                _ask(proc, {"ids": ids, "batch": b, "new": min(8, args.new_tokens)})
        for _ in range(args.rounds):
            rounds_load.append(_load_avg())
            for b in sizes:
                for name in order:
                    if name in procs:
                        r = _ask(procs[name], {"ids": ids, "batch": b, "new": args.new_tokens})
                    else:
                        r = run_llama(args.llama_cpp, llama[name], b, len(ids), args.new_tokens, args.threads, work)
                        load_s[name] = r["load_s"] if load_s.get(name) is None else min(load_s[name], r["load_s"])
                    best = results[name].get(b)
                    peak = max(r["peak_rss"], best["peak_rss"]) if best else r["peak_rss"]
                    if best is None or r["seconds"] < best["seconds"]:
                        results[name][b] = r
                    results[name][b]["peak_rss"] = peak
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
        for name in order:
            r = results[name][b]
            table.append({"peer": name, "batch": b, "tokens_per_s": b * r["new"] / r["seconds"],
                          "seconds": r["seconds"], "new_tokens": r["new"], "peak_rss_mib": r["peak_rss"] / 2**20,
                          "load_s": load_s.get(name)})
    return {"model": args.model or "embedded SmolLM2-135M-Instruct", "threads": args.threads,
            "new_tokens": args.new_tokens, "prompt_tokens": len(ids), "rounds": args.rounds,
            "compile": args.compile, "load_avg_1min": load_before, "load_avg_rounds": rounds_load,
            "load_avg_after": _load_avg(), "cpu": f"{_cpu_name()}, {os.cpu_count()} CPUs",
            "isa": _isa_flags(), "kernels": _kernels_in_use(),
            "files": {k: str(v) for k, v in paths.items()
                      if k.startswith("gguf-") and any(gguf_for(n, paths)[0] == str(v) for n in procs)},
            "rows": table, "skipped": skipped}


def _isa_flags() -> str:
    """The SIMD extensions that matter to both tools' CPU kernels, as /proc/cpuinfo lists them."""
    want = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return " ".join(w for w in want if w in have) or "none of " + ",".join(want)
    except OSError:
        pass
    return platform.machine()


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


def _is_ours(name: str) -> bool:
    return name.startswith("ours")


def format_table(res: dict[str, Any]) -> str:
    rows = res["rows"]
    names = list(dict.fromkeys(r["peer"] for r in rows))
    ours = [p for p in names if _is_ours(p)]
    # ratio columns: every non-ours peer except llama.cpp, which gets one "same file" column
    peers = [p for p in names if not _is_ours(p) and not p.startswith(LLAMA)]
    llama = [p for p in names if p.startswith(LLAMA)]
    lines = [f"CPU decode: {res['model']}, {res['prompt_tokens']}-token prompt, {res['new_tokens']} new tokens "
             f"greedy (EOS ignored), {res['threads']} threads, best of {res['rounds']} interleaved rounds, "
             f"compile={res['compile']}, load avg {res['load_avg_1min']}"
             + (f" (rounds: {res['load_avg_rounds']}, after: {res['load_avg_after']})" if res.get("load_avg_rounds")
                else "")]
    if "cpu" in res:
        lines.append(f"machine: {res['cpu']}; ISA: {res.get('isa', '?')}; swisslm kernels: {res['kernels']}")
    for k, f in res.get("files", {}).items():
        lines.append(f"{k}: {f}")
    head = f"{'batch':>5} {'peer':<15} {'tok/s':>9} {'peak RSS MiB':>13} {'load s':>7}  "
    head += "  ".join(f"vs {p:<13}" for p in peers)
    if llama:
        head += ("  " if peers else "") + f"vs {LLAMA} same file"
    lines.append(head)
    for b in dict.fromkeys(r["batch"] for r in rows):
        by = {r["peer"]: r for r in rows if r["batch"] == b}
        for name in ours + peers + llama:
            r = by[name]
            ratios = ""
            if name in ours:
                ratios = "  ".join(f"{r['tokens_per_s'] / by[p]['tokens_per_s']:>5.2f}x{'':<10}" for p in peers)
                twin = f"{LLAMA}-{name.split('-', 1)[1]}"
                if twin in by:
                    ratios += ("  " if peers else "") + f"{r['tokens_per_s'] / by[twin]['tokens_per_s']:>5.2f}x"
            load = "-" if r.get("load_s") is None else f"{r['load_s']:.2f}"
            lines.append(f"{b:>5} {name:<15} {r['tokens_per_s']:>9.1f} {r['peak_rss_mib']:>13.0f} {load:>7}  {ratios}")
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
