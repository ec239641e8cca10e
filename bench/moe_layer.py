# SPDX-License-Identifier: Apache-2.0
"""MoE layer micro-benchmark: swisslm's MoE vs transformers' OlmoeSparseMoeBlock, identical
weights (shared storage), at OLMoE-1B-7B's real shapes (d=2048, 64 experts, top-8, expert ffn
1024), prefill (T=512) and decode (T=1), CPU fp32.

transformers runs its default experts implementation for this model ("grouped_mm", what
`OlmoeForCausalLM.from_pretrained` picks in 5.x); `--hf-impl eager` selects its per-expert
loop instead. The two sides alternate within each repetition (the machine is shared, so
interleaving keeps the ratio fair) and the median of each side is reported.

    python bench/moe_layer.py [--threads 2] [--reps 5] [--tokens 512 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from swisslm import ModelConfig
from swisslm.core.moe import MoE

OLMOE_1B_7B = dict(hidden_size=2048, num_experts=64, num_experts_per_tok=8, intermediate_size=1024)


def build(hf_impl: str, norm_topk_prob: bool):
    from transformers import OlmoeConfig
    from transformers.models.olmoe.modeling_olmoe import OlmoeSparseMoeBlock

    cfg = ModelConfig(vocab_size=16, num_layers=1, num_heads=16, norm_topk_prob=norm_topk_prob, **OLMOE_1B_7B)
    ours = MoE(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        ours.router.weight.normal_(0, 0.02, generator=g)
        ours.gate_up.normal_(0, 0.02, generator=g)
        ours.down.normal_(0, 0.02, generator=g)
    hf_cfg = OlmoeConfig(norm_topk_prob=norm_topk_prob, num_hidden_layers=1, **OLMOE_1B_7B)
    hf_cfg._experts_implementation = hf_impl
    theirs = OlmoeSparseMoeBlock(hf_cfg)
    # Same storage on both sides: 1.6 GB of experts once, and exactly the same numbers.
    theirs.gate.weight = ours.router.weight
    theirs.experts.gate_up_proj = ours.gate_up
    theirs.experts.down_proj = ours.down
    return ours.eval(), theirs.eval()


def timed(fn, x) -> float:
    t0 = time.perf_counter()
    fn(x)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5, help="repetitions per side at prefill (x20 at T <= 16)")
    ap.add_argument("--tokens", type=int, nargs="+", default=[512, 1])
    ap.add_argument("--hf-impl", default="grouped_mm", choices=["grouped_mm", "eager", "batched_mm"])
    ap.add_argument("--norm-topk-prob", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ours, theirs = build(args.hf_impl, args.norm_topk_prob)
    results = []
    with torch.inference_mode():
        for T in args.tokens:
            x = torch.randn(1, T, OLMOE_1B_7B["hidden_size"], generator=torch.Generator().manual_seed(T))
            a, b = ours(x), theirs(x)  # warm-up, and the outputs must agree
            diff = (a - b).abs().max().item()
            scale = b.abs().max().item()
            t_ours, t_hf = [], []
            reps = args.reps * (20 if T <= 16 else 1)  # decode calls are cheap: more samples, less noise
            for r in range(reps):
                order = (ours, theirs) if r % 2 == 0 else (theirs, ours)
                for m in order:
                    (t_ours if m is ours else t_hf).append(timed(m, x))
            res = {"tokens": T, "ours_ms": 1e3 * statistics.median(t_ours),
                   "transformers_ms": 1e3 * statistics.median(t_hf), "max_abs_diff": diff, "output_max": scale}
            res["speedup"] = res["transformers_ms"] / res["ours_ms"]
            results.append(res)
            if not args.json:
                print(f"T={T:4d}  swisslm {res['ours_ms']:9.2f} ms   transformers ({args.hf_impl}) "
                      f"{res['transformers_ms']:9.2f} ms   speedup x{res['speedup']:.2f}   "
                      f"max|diff| {diff:.2e} (|out| max {scale:.2e})")
            if diff > 1e-4 * max(1.0, scale):
                raise SystemExit(f"outputs differ at T={T}: max abs diff {diff}")
    if args.json:
        print(json.dumps({"threads": args.threads, "hf_impl": args.hf_impl, "shape": OLMOE_1B_7B,
                          "results": results}))


if __name__ == "__main__":
    main()
