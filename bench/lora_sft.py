# SPDX-License-Identifier: Apache-2.0
"""LoRA SFT throughput: swisslm (LoRAMixin + train.Trainer) vs transformers + PEFT, same model
(the embedded SmolLM2-135M-Instruct, fp32), same data, same batches, same LoRA (r 16, alpha 32,
dropout 0.05, all linear layers), same AdamW, one process.

Both sides run the same micro-batches (chat rows templated by SmolLM2's template, loss only on
assistant tokens, right padding) with gradient accumulation; the timed rounds alternate between
the two sides so machine noise hits both alike, and the median tokens/s (input tokens, padding
included, as trainers count) of each is reported with the ratio.

    python bench/lora_sft.py [--steps 4] [--rounds 3] [--batch-size 2] [--grad-accum 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F


def make_rows(n: int) -> list[dict]:
    topics = ["the tides", "photosynthesis", "prime numbers", "rainbows", "volcanoes", "the moon", "bread",
              "magnets", "glaciers", "bees"]
    rows = []
    for i in range(n):
        t = topics[i % len(topics)]
        rows.append({"messages": [
            {"role": "user", "content": f"Explain {t} to a child in a few sentences. Request {i}."},
            {"role": "assistant", "content": (f"Sure! {t.capitalize()} are a wonderful thing to learn about. "
                                              "Scientists study them carefully, and every year we learn a bit "
                                              "more. " * (1 + i % 3)).strip()},
        ]})
    return rows


def hf_loss(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
    shift = logits[:, :-1].reshape(-1, logits.size(-1)).float()
    labels = batch["labels"][:, 1:].reshape(-1)
    return F.cross_entropy(shift, labels, ignore_index=-100, reduction="sum"), (labels != -100).sum()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per timed round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--grad-accum", type=int, default=4)
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import peft
    import transformers

    import swisslm
    from swisslm.finetune.data import Example, SFTBatches, encode_row
    from swisslm.mixins import LoRAMixin, trainable_parameters
    from swisslm.train import Trainer, TrainerConfig, make_schedule
    from swisslm.train.optim import build_adamw, param_groups

    ours = swisslm.AutoModel.from_pretrained(None)
    tok = ours.tokenizer
    tmp = tempfile.mkdtemp()
    ours.save_pretrained(tmp)  # the same weights for transformers (our export is parity-tested)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)

    examples = []
    for row in make_rows(64):
        ids, labels = encode_row(tok, row)
        examples.append(Example(ids[: args.block_size], labels[: args.block_size]))
    pad = tok.pad_token_id
    per_round = args.steps * args.grad_accum
    n_micro = per_round * (args.rounds + 1)
    it = iter(SFTBatches(examples, args.batch_size, pad, seed=0))
    micro = [next(it) for _ in range(n_micro)]  # identical batches for both sides

    lora_kw = dict(r=16, alpha=32, dropout=0.05)
    torch.manual_seed(0)
    ours.add_mixin("lora", LoRAMixin(target_modules="all-linear", **lora_kw))
    ours.train()
    ours_trainable, ours_total = trainable_parameters(ours)
    opt = build_adamw(param_groups(ours), lr=3e-5, betas=(0.9, 0.999), fused=False)
    trainer = Trainer(ours, opt, make_schedule("constant", lr=3e-5),
                      TrainerConfig(max_steps=10**9, grad_accum=args.grad_accum, progress=False))

    cfg = peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                          task_type="CAUSAL_LM")
    pm = peft.get_peft_model(hf, cfg)
    pm.train()
    hf_trainable = sum(p.numel() for p in pm.parameters() if p.requires_grad)
    hf_opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=3e-5, betas=(0.9, 0.999),
                               foreach=True)

    def run_ours(batches):
        for s in range(0, len(batches), args.grad_accum):
            trainer.train_step(batches[s : s + args.grad_accum])

    def run_theirs(batches):
        for s in range(0, len(batches), args.grad_accum):
            group = batches[s : s + args.grad_accum]
            n = sum(int((b["labels"][:, 1:] != -100).sum()) for b in group)
            for b in group:
                loss, _ = hf_loss(pm, b)
                (loss / n).backward()
            torch.nn.utils.clip_grad_norm_([p for p in pm.parameters() if p.requires_grad], 1.0)
            hf_opt.step()
            hf_opt.zero_grad(set_to_none=True)

    warm = micro[:per_round]
    run_ours(warm[: args.grad_accum])  # warm-up step each (allocator, first-call overheads)
    run_theirs(warm[: args.grad_accum])
    tps = {"swisslm": [], "transformers+peft": []}
    for r in range(args.rounds):
        batches = micro[per_round * (r + 1) : per_round * (r + 2)]
        tokens = sum(b["input_ids"].numel() for b in batches)
        for name, fn in (("swisslm", run_ours), ("transformers+peft", run_theirs)):
            t0 = time.perf_counter()
            fn(batches)
            tps[name].append(tokens / (time.perf_counter() - t0))
            print(f"round {r + 1}/{args.rounds} {name}: {tps[name][-1]:.1f} tokens/s", file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in tps.items()}
    # Each round times both sides back to back, so the per-round ratio cancels slow drifts in
    # machine load; its median is the headline figure.
    paired = [a / b for a, b in zip(tps["swisslm"], tps["transformers+peft"])]
    result = {
        "model": "SmolLM2-135M-Instruct (fp32)", "lora": lora_kw | {"target_modules": "all-linear"},
        "batch_size": args.batch_size, "grad_accum": args.grad_accum, "steps_per_round": args.steps,
        "rounds": args.rounds, "threads": args.threads,
        "trainable_parameters": {"swisslm": ours_trainable, "transformers+peft": hf_trainable},
        "total_parameters": ours_total,
        "tokens_per_s": med, "tokens_per_s_rounds": tps,
        "ratio_of_medians": med["swisslm"] / med["transformers+peft"],
        "ratio_per_round": paired, "ratio_swisslm_over_peft": statistics.median(paired),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"trainable parameters: swisslm {ours_trainable:,}  transformers+peft {hf_trainable:,}  "
          f"(of {ours_total:,})")
    for k, v in med.items():
        print(f"{k:>18}: {v:8.1f} tokens/s  (rounds: {', '.join(f'{x:.1f}' for x in tps[k])})")
    print(f"ratio swisslm / transformers+peft: {result['ratio_swisslm_over_peft']:.2f}x (median of per-round "
          f"ratios {', '.join(f'{x:.2f}' for x in paired)}; ratio of medians {result['ratio_of_medians']:.2f}x)")


if __name__ == "__main__":
    main()
