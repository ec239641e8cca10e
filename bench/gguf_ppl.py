# SPDX-License-Identifier: Apache-2.0
"""Perplexity of each GGUF file: swisslm's default load (quantized execution, whatever the library
does by default) vs `--dtype float32` (the exact dequantized forward), and llama.cpp's
llama-perplexity on the same file and text when --llama-cpp is given.

    python bench/gguf_ppl.py [--gguf-dir DIR | FILE.gguf ...] [--llama-cpp BUILD/bin]
                             [--text /usr/share/common-licenses/GPL-3] [--window 512] [--max-tokens 4096]

Issue 17's target is the first ratio: default / float32 within 0.5% on the same file, same text,
same windows (`swisslm perplexity --window W --stride W`: disjoint windows, every token scored).
llama-perplexity scores only the second half of each W-token chunk (and may add a BOS), so its
figure is a reference beside ours, not the same number.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

FINAL = re.compile(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)")


def parse_llama_perplexity(text: str) -> float | None:
    """The `Final estimate: PPL = X +/- Y` of llama-perplexity's output (stderr), or None."""
    m = FINAL.search(text)
    return float(m.group(1)) if m else None


def ours(gguf: Path, args: argparse.Namespace, dtype: str | None) -> dict:
    cmd = [sys.executable, "-m", "swisslm", "perplexity", str(args.text), "--model", str(gguf), "--window",
           str(args.window), "--stride", str(args.window), "--max-tokens", str(args.max_tokens), "--json", "--quiet",
           "--threads", str(args.threads)]
    if dtype:
        cmd += ["--dtype", dtype]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def llama(gguf: Path, args: argparse.Namespace) -> dict:
    exe = Path(args.llama_cpp) / "llama-perplexity"
    if not exe.is_file():
        return {"error": f"{exe} not found"}
    cmd = [str(exe), "-m", str(gguf), "-f", str(args.text), "-c", str(args.window), "-b", str(args.window),
           "-t", str(args.threads), "--chunks", str(max(1, args.max_tokens // args.window))]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    ppl = parse_llama_perplexity(proc.stderr + proc.stdout)
    return {"perplexity": ppl} if ppl is not None else {"error": f"no final estimate (rc {proc.returncode})"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*", help="GGUF files (default: --gguf-dir's, else the embedded one)")
    p.add_argument("--gguf-dir", default=None)
    p.add_argument("--llama-cpp", default=None, metavar="DIR", help="llama.cpp build dir with llama-perplexity")
    p.add_argument("--text", default="/usr/share/common-licenses/GPL-3")
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if not Path(args.text).is_file():
        p.error(f"--text {args.text}: no such file")
    files = [Path(f) for f in args.files]
    if not files and args.gguf_dir:
        files = sorted(Path(args.gguf_dir).glob("*.gguf"))
    if not files:
        from swisslm.io.embedded import default_model_path

        files = [default_model_path()]
    rows = []
    for f in files:
        row = {"file": str(f), "default": ours(f, args, None), "float32": ours(f, args, "float32")}
        if args.llama_cpp:
            row["llama.cpp"] = llama(f, args)
        a, b = row["default"].get("perplexity"), row["float32"].get("perplexity")
        row["default_over_float32"] = a / b if a and b else None
        rows.append(row)
    load = round(os.getloadavg()[0], 2)
    if args.json:
        print(json.dumps({"text": args.text, "window": args.window, "max_tokens": args.max_tokens, "rows": rows,
                          "load_avg_1min": load}))
        return 0
    print(f"perplexity of {args.text}, first {args.max_tokens} tokens, disjoint {args.window}-token windows "
          f"(load avg {load})")
    print(f"{'file':<40} {'default':>10} {'float32':>10} {'ratio':>8} {'llama.cpp':>10}")
    for r in rows:
        def show(d: dict | None) -> str:
            return "-" if d is None else f"{d['perplexity']:.4f}" if d.get("perplexity") else "err"
        ratio = "-" if r["default_over_float32"] is None else f"{r['default_over_float32']:.4f}"
        print(f"{Path(r['file']).name:<40} {show(r['default']):>10} {show(r['float32']):>10} {ratio:>8} "
              f"{show(r.get('llama.cpp')):>10}")
        for k in ("default", "float32", "llama.cpp"):
            if r.get(k, {}).get("error"):
                print(f"  {k}: {r[k]['error']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
