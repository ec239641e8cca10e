# SPDX-License-Identifier: Apache-2.0
"""Load time, greedy decode tokens/s and peak RSS: swisslm vs transformers fp32 eager on the
embedded SmolLM2-135M-Instruct GGUF, same prompt, same number of tokens, one command.

Each side runs in its own child process so its peak RSS is its own; the parent prints both and
the ratios.  Usage:  python bench/load_generate.py [--new-tokens 128] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

PROMPT = "The capital of France is"


def child(side: str, new_tokens: int, threads: int) -> dict:
    import resource

    import torch

    torch.set_num_threads(threads)
    from swisslm.io.embedded import default_model_path

    path = default_model_path()
    t0 = time.perf_counter()
    if side == "swisslm":
        import swisslm

        model = swisslm.AutoModel.from_pretrained(path)
        ids = torch.tensor([model.tokenizer.encode(PROMPT)])
        load_s = time.perf_counter() - t0

        def gen(n):
            return model.generate(ids, max_new_tokens=n, min_new_tokens=n)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        model.eval()
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        ids = tok(PROMPT, return_tensors="pt").input_ids
        load_s = time.perf_counter() - t0

        def gen(n):
            return model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                  pad_token_id=0)
    with torch.no_grad():
        gen(4)  # warm-up
        t0 = time.perf_counter()
        out = gen(new_tokens)
        dt = time.perf_counter() - t0
    n = out.shape[1] - ids.shape[1]
    return {"side": side, "load_s": load_s, "tokens_per_s": n / dt, "new_tokens": n,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "tokens": out[0, ids.shape[1]:].tolist()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", choices=["swisslm", "transformers"])
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.new_tokens, a.threads)))
        return
    res = {}
    for side in ("swisslm", "transformers"):
        cmd = [sys.executable, __file__, "--child", side, "--new-tokens", str(a.new_tokens),
               "--threads", str(a.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        res[side] = json.loads(out.strip().splitlines()[-1])
    s, t = res["swisslm"], res["transformers"]
    print(f"SmolLM2-135M-Instruct (GGUF Q4_1 -> fp32), greedy, {a.new_tokens} new tokens, {a.threads} threads")
    print(f"{'':14}{'load s':>10}{'tokens/s':>12}{'peak RSS MB':>14}")
    for r in (s, t):
        print(f"{r['side']:14}{r['load_s']:>10.2f}{r['tokens_per_s']:>12.1f}{r['peak_rss_mb']:>14.0f}")
    print(f"{'ratio':14}{t['load_s'] / s['load_s']:>9.2f}x{s['tokens_per_s'] / t['tokens_per_s']:>11.2f}x"
          f"{s['peak_rss_mb'] / t['peak_rss_mb']:>13.2f}x   (load: theirs/ours, speed: ours/theirs, RSS: ours/theirs)")
    same = s["tokens"] == t["tokens"]
    print(f"greedy tokens identical: {same}")


if __name__ == "__main__":
    main()
