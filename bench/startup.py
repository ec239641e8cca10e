# SPDX-License-Identifier: Apache-2.0
"""End-to-end start-up of `swisslm generate "The capital of France is"`: where the seconds go.

    python bench/startup.py [--runs 5] [--threads 2] [--max-new-tokens 128] [--json]

Each run is a fresh `python -m swisslm generate ...` subprocess on the embedded SmolLM2 GGUF with
SWISSLM_TIMINGS=1, which makes the CLI print its phases (cli/timings.py); the wall time is taken
around the subprocess. Phases:

    python + swisslm.cli   interpreter start to main() (this script notes the launch time)
    import torch           the CLI's first `import torch`
    import swisslm         api / core / generation modules
    model load             AutoModel.from_pretrained: GGUF header + tokenizer, dequantization
                           to fp32, name mapping, building the model
      of which header, dequant   the same steps timed alone in a side process (for the split)
    kernels                building (cold: a C compile) or loading the CPU decode kernels
    first token            prefill + one decode step (a run with --max-new-tokens 1)
    rest of generation     the remaining tokens
    parse, checks, output  the rest of main(): building the parser, option checks, printing
    interpreter exit       main() returned to process gone

"cold" is the first run with an empty kernel cache (a fresh XDG_CACHE_HOME) after dropping the OS
page cache when this process may (root, /proc/sys/vm/drop_caches writable; the report says
whether it could); "warm" repeats with the cache built, and the median of --runs is reported.
On a shared machine the figures move with the load: the report gives the load average and CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROMPT = "The capital of France is"
ROWS = ("python + swisslm.cli", "import torch", "import swisslm", "model load", "  of which GGUF header",
        "  of which dequant", "kernels", "first token", "rest of generation", "parse, checks, output",
        "interpreter exit", "total")

# Times the two load steps that dominate a GGUF load, alone, in a fresh process (prints JSON).
LOAD_SPLIT = """
import json, sys, time
import torch
torch.set_num_threads(int(sys.argv[1]))
from swisslm.io.embedded import default_model_path
from swisslm.io.gguf import iter_gguf_tensors, open_gguf
t0 = time.perf_counter()
reader = open_gguf(default_model_path())
t1 = time.perf_counter()
for _ in iter_gguf_tensors(reader):
    pass
t2 = time.perf_counter()
print(json.dumps({"header": t1 - t0, "dequant": t2 - t1}))
"""


def drop_page_cache() -> str:
    """Drop the OS page cache (needs root and a writable /proc/sys/vm); say what happened."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return "dropped"
    except OSError as e:
        return f"not dropped ({e.strerror})"


def run_cli(threads: int, max_new_tokens: int, cache: Path) -> dict[str, Any]:
    """One `swisslm generate` subprocess: wall seconds and its SWISSLM_TIMINGS phases."""
    env = {**os.environ, "SWISSLM_TIMINGS": "1", "XDG_CACHE_HOME": str(cache), "HF_HUB_OFFLINE": "1"}
    env.pop("SWISSLM_CACHE", None)  # the kernel cache must follow XDG_CACHE_HOME
    cmd = [sys.executable, "-m", "swisslm", "generate", PROMPT, "--threads", str(threads),
           "--max-new-tokens", str(max_new_tokens)]
    launch = time.time()
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    end = time.time()
    if proc.returncode:
        raise SystemExit(f"swisslm generate failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    line = next((ln for ln in proc.stderr.splitlines() if ln.startswith("swisslm-timings ")), None)
    if line is None:
        raise SystemExit("swisslm printed no timings line (is this swisslm's own checkout on PYTHONPATH?)")
    t = json.loads(line.split(" ", 1)[1])
    return {"wall": wall, "before_main": t["main_unix"] - launch, "main": t["total"], "phases": t["phases"],
            "after_main": end - t["main_unix"] - t["total"], "text": proc.stdout.strip()}


def load_split(threads: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", LOAD_SPLIT, str(threads)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)


def breakdown(full: dict[str, Any], one: dict[str, Any], split: dict[str, float]) -> dict[str, float]:
    """Table rows from a full run, a one-token run (first-token time) and the load split."""
    p = full["phases"]
    first = one["phases"].get("generate", 0.0)
    rows = {
        "python + swisslm.cli": full["before_main"],
        "import torch": p.get("import torch", 0.0),
        "import swisslm": p.get("import swisslm", 0.0),
        "model load": p.get("load", 0.0),
        "  of which GGUF header": split["header"],
        "  of which dequant": split["dequant"],
        "kernels": p.get("kernels", 0.0),
        "first token": first,
        "rest of generation": max(p.get("generate", 0.0) - first, 0.0),
        "parse, checks, output": full["main"] - sum(p.values()),
        "interpreter exit": full["after_main"],
        "total": full["wall"],
    }
    return rows


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def format_table(cold: dict[str, float], warm: dict[str, float], warm_min: dict[str, float]) -> str:
    out = [f"{'phase':<24}{'cold s':>9}{'warm s':>9}{'warm min':>10}", "-" * 52]
    for k in ROWS:
        out.append(f"{k:<24}{cold[k]:>9.2f}{warm[k]:>9.2f}{warm_min[k]:>10.2f}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="warm runs (the median is reported)")
    ap.add_argument("--threads", type=int, default=2, help="--threads of the CLI")
    ap.add_argument("--max-new-tokens", type=int, default=128, help="as `swisslm generate`'s default")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be >= 1")

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="swisslm-startup-") as tmp:
        cache = Path(tmp)  # empty: the first run compiles the kernels
        page_cache = drop_page_cache()
        cold_full = run_cli(args.threads, args.max_new_tokens, cache)
        cold_one = run_cli(args.threads, 1, cache)  # only its generate phase is used
        warm_full = [run_cli(args.threads, args.max_new_tokens, cache) for _ in range(args.runs)]
        warm_one = [run_cli(args.threads, 1, cache) for _ in range(args.runs)]
    split = load_split(args.threads)
    cold = breakdown(cold_full, cold_one, split)
    warm_rows = [breakdown(f, o, split) for f, o in zip(warm_full, warm_one)]
    warm = {k: statistics.median(r[k] for r in warm_rows) for k in ROWS}
    warm_min = {k: min(r[k] for r in warm_rows) for k in ROWS}
    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": args.threads, "runs": args.runs,
            "max_new_tokens": args.max_new_tokens, "page_cache": page_cache,
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()], "python": platform.python_version(),
            "output": cold_full["text"][:80]}
    if args.json:
        print(json.dumps({**info, "cold": cold, "warm_median": warm, "warm_min": warm_min}, indent=2))
        return 0
    print(f"swisslm generate {PROMPT!r} --threads {args.threads} --max-new-tokens {args.max_new_tokens}")
    print(f"CPU {info['cpu']} ({info['cores']} logical cores), Python {info['python']}, "
          f"load average {info['loadavg_before']} -> {info['loadavg_after']}, OS page cache {page_cache}")
    print(format_table(cold, warm, warm_min))
    print(f"(warm: median and min of {args.runs} runs; header/dequant timed alone in a side process; "
          f"first token from --max-new-tokens 1 runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
