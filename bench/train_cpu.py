# SPDX-License-Identifier: Apache-2.0
"""Training throughput on CPU: swisslm's Trainer vs a plain transformers loop, one process.

Same model shape (the `20m` Llama preset: hidden 256, 8 layers, 8 heads / 4 KV heads, SwiGLU 768;
~22.7M parameters with a 32000 vocabulary), same initial weights (ours exported to HF and loaded
by `LlamaForCausalLM`), same token windows (one `WindowLoader`), same batch, fp32, AdamW with
the same hyperparameters and grad clipping. The two sides alternate in rounds so that load from
other processes on the machine hits both alike; the first step of each side is a warm-up and is
not timed. The first-step losses are printed to show both sides compute the same thing.

    python bench/train_cpu.py [--steps 1] [--rounds 8] [--batch 4] [--seq-len 128] [--threads 2]
    python bench/train_cpu.py --json     # one JSON object
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1, help="timed steps per side per round")
    ap.add_argument("--rounds", type=int, default=8, help="alternations (one side, then the other)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default=None, help="a prepared data folder (default: random tokens)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import LlamaForCausalLM

    from swisslm import AutoModel
    from swisslm.config import ModelConfig
    from swisslm.train import Trainer, TrainerConfig, make_schedule
    from swisslm.train.config import SIZES
    from swisslm.train.data import TokenDataset, WindowLoader, write_tokens
    from swisslm.train.optim import build_adamw, param_groups

    tmp = Path(tempfile.mkdtemp(prefix="swisslm-bench-train-"))
    if args.data:
        ds = TokenDataset.open(args.data)
    else:
        rng = np.random.default_rng(0)
        need = (args.steps * args.rounds * 2 + 8) * args.batch * args.seq_len * 2
        ds = TokenDataset.open(write_tokens(tmp / "data", rng.integers(0, args.vocab, need), vocab_size=args.vocab))
    cfg = ModelConfig(vocab_size=ds.vocab_size, **SIZES["20m"])
    ours = AutoModel.from_config(cfg, seed=0)
    ours.save_pretrained(tmp / "hf")
    theirs = LlamaForCausalLM.from_pretrained(tmp / "hf", dtype=torch.float32, attn_implementation="sdpa")
    theirs.train()
    n_params = ours.num_parameters()

    lr, wd, betas, clip = 1e-3, 0.1, (0.9, 0.95), 1.0
    sched = make_schedule("constant", lr=lr)
    trainer = Trainer(ours, build_adamw(param_groups(ours, wd), lr=lr, betas=betas), sched,
                      TrainerConfig(max_steps=10**9, grad_clip=clip, progress=False))
    decay = [p for n, p in theirs.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in theirs.named_parameters() if p.dim() < 2]
    hf_opt = torch.optim.AdamW([{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
                               lr=lr, betas=betas)

    def hf_step(batch: dict[str, torch.Tensor]) -> float:
        out = theirs(input_ids=batch["input_ids"], labels=batch["labels"])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), clip)
        hf_opt.step()
        hf_opt.zero_grad(set_to_none=True)
        return float(out.loss.detach())

    def our_step(batch: dict[str, torch.Tensor]) -> float:
        return trainer.train_step([batch])["loss"]

    loaders = {"swisslm": WindowLoader(ds, args.seq_len, args.batch, seed=0),
               "transformers": WindowLoader(ds, args.seq_len, args.batch, seed=0)}
    steps = {"swisslm": our_step, "transformers": hf_step}
    first = {side: steps[side](next(loaders[side])) for side in steps}  # warm-up, same batch both sides
    timed = {side: 0.0 for side in steps}
    for _ in range(args.rounds):
        for side in steps:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                steps[side](next(loaders[side]))
            timed[side] += time.perf_counter() - t0
    tokens = args.steps * args.rounds * args.batch * args.seq_len
    tps = {side: tokens / timed[side] for side in steps}
    result = {
        "params_M": round(n_params / 1e6, 2), "batch": args.batch, "seq_len": args.seq_len,
        "threads": args.threads, "timed_tokens_per_side": tokens,
        "first_step_loss": first, "tokens_per_s": tps,
        "ratio_swisslm_over_transformers": tps["swisslm"] / tps["transformers"],
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"model: Llama {result['params_M']}M params, batch {args.batch} x {args.seq_len} tokens, fp32, "
              f"{args.threads} threads")
        print(f"first-step loss  swisslm {first['swisslm']:.6f}  transformers {first['transformers']:.6f}")
        for side in steps:
            print(f"{side:>13}: {tps[side]:8.1f} tokens/s")
        print(f"ratio swisslm / transformers: {result['ratio_swisslm_over_transformers']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
