# SPDX-License-Identifier: Apache-2.0
"""Generation throughput on the embedded SmolLM2-135M-Instruct, two side-by-side figures:

1. ragged batching: 8 prompts of different lengths generated as one left-padded batch vs the
   same 8 generated one by one (greedy, EOS off so every row makes the same number of tokens;
   the batch's rows are checked equal to the single runs);
2. beam search (4 beams): swisslm vs transformers' generate on the same weights (our export,
   loaded by transformers in fp32), same prompt and settings; the sequences are checked equal.

Each measurement alternates the two sides `--repeats` times in one process and reports the
median, since the machine is shared and timings are noisy; ratios are what to compare.
Usage:  python bench/generation.py [--new-tokens 32] [--threads N] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

PROMPTS = [
    "The capital of France is",
    "Write a haiku about the sea.",
    "In 1889, the Eiffel Tower was completed for the World's Fair, and since then it has become",
    "def fibonacci(n):",
    "List three uses of copper:",
    "Once upon a time, in a small village at the edge of a dark forest, there lived an old clockmaker who",
    "Q: What is 12 times 7?\nA:",
    "The mitochondria is",
]


def _timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def bench_ragged(model, new_tokens: int, repeats: int) -> dict:
    tok = model.tokenizer
    prompts = [tok.encode(p) for p in PROMPTS]
    T = max(len(p) for p in prompts)
    pad = model.config.pad_token_id or 0
    ids = torch.full((len(prompts), T), pad)
    mask = torch.zeros(len(prompts), T, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, T - len(p):] = torch.tensor(p)
        mask[i, T - len(p):] = 1
    singles = [torch.tensor([p]) for p in prompts]

    def batched():
        return model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, eos_token_id=[])

    def one_by_one():
        return [model.generate(x, max_new_tokens=new_tokens, eos_token_id=[]) for x in singles]

    batched(), one_by_one()  # warm-up (cache allocation, kernels)
    tb, ts = [], []
    for _ in range(repeats):
        t, out_b = _timed(batched)
        tb.append(t)
        t, out_s = _timed(one_by_one)
        ts.append(t)
    same = all(torch.equal(out_b[i, T:], out_s[i][0, len(p):]) for i, p in enumerate(prompts))
    n = len(prompts) * new_tokens
    b, s = statistics.median(tb), statistics.median(ts)
    return {"prompt_lengths": [len(p) for p in prompts], "new_tokens_per_prompt": new_tokens,
            "batched_s": b, "one_by_one_s": s, "batched_tok_s": n / b, "one_by_one_tok_s": n / s,
            "ratio": s / b, "rows_equal_single_runs": same}


def bench_beam(model, new_tokens: int, repeats: int, num_beams: int = 4) -> dict:
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        hf = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    ids = torch.tensor([model.tokenizer.encode(PROMPTS[2])])
    eos = model.tokenizer.eos_token_ids
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else eos[0]
    kw = dict(max_new_tokens=new_tokens, num_beams=num_beams, eos_token_id=eos, pad_token_id=pad)

    def ours():
        return model.generate(ids, **kw)

    def theirs():
        with torch.no_grad():
            return hf.generate(ids, do_sample=False, **kw)

    ours(), theirs()
    to, tt = [], []
    for _ in range(repeats):
        t, out_o = _timed(ours)
        to.append(t)
        t, out_t = _timed(theirs)
        tt.append(t)
    n = out_o.shape[1] - ids.shape[1]
    o, t = statistics.median(to), statistics.median(tt)
    return {"num_beams": num_beams, "new_tokens": n, "swisslm_s": o, "transformers_s": t,
            "swisslm_tok_s": n / o, "transformers_tok_s": n / t, "ratio": t / o,
            "sequences_equal": bool(torch.equal(out_o, out_t))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import swisslm

    model = swisslm.AutoModel.from_pretrained(None)
    ragged = bench_ragged(model, args.new_tokens, args.repeats)
    beam = bench_beam(model, args.new_tokens, args.repeats)
    res = {"threads": torch.get_num_threads(), "ragged_batch_8": ragged, "beam_search_4": beam}
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"threads {res['threads']}")
    print(f"ragged batch of 8 (prompt lengths {ragged['prompt_lengths']}, {args.new_tokens} new tokens each):")
    print(f"  batched    {ragged['batched_tok_s']:8.1f} tok/s ({ragged['batched_s']:.2f} s)")
    print(f"  one by one {ragged['one_by_one_tok_s']:8.1f} tok/s ({ragged['one_by_one_s']:.2f} s)")
    print(f"  ratio      {ragged['ratio']:.2f}x   rows equal single runs: {ragged['rows_equal_single_runs']}")
    print(f"beam search, 4 beams ({beam['new_tokens']} new tokens):")
    print(f"  swisslm      {beam['swisslm_tok_s']:8.1f} tok/s ({beam['swisslm_s']:.2f} s)")
    print(f"  transformers {beam['transformers_tok_s']:8.1f} tok/s ({beam['transformers_s']:.2f} s)")
    print(f"  ratio        {beam['ratio']:.2f}x   sequences equal: {beam['sequences_equal']}")


if __name__ == "__main__":
    main()
