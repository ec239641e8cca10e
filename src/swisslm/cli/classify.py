# SPDX-License-Identifier: Apache-2.0
"""swisslm classify: train a classification head (optionally with LoRA) and report accuracy.

    swisslm classify --data train.jsonl --valid-data test.jsonl [--model M] [--pooling mean]

Rows are JSONL with a text column and a label column (any JSON scalars; sorted into class ids).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from .common import UsageError, set_threads


def register(sub) -> None:
    p = sub.add_parser("classify", help="fine-tune a classification head (+ LoRA) and report accuracy")
    p.add_argument("--model", default=None, help="HF folder or .gguf file (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--data", required=True, help="training JSONL with text and label columns")
    p.add_argument("--valid-data", default=None, help="evaluation JSONL (accuracy is reported on it)")
    p.add_argument("--output", "--project-name", dest="output", default="swisslm-classify")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--max-steps", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--gradient-accumulation", type=int, default=1)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--pooling", choices=["last", "mean", "first"], default=None,
                   help="default: last token for causal models, mean for encoders")
    p.add_argument("--head-hidden", type=int, default=256, help="hidden width of the MLP head (0 = linear)")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--peft", action="store_true", help="also train LoRA adapters")
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16)
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument("--target-modules", default="all-linear")
    p.add_argument("--full-finetune", action="store_true", help="train all weights, not only the head")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--save-steps", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..finetune.classify import ClassifyConfig, run_classify
    from ..finetune.data import DataError

    set_threads(args.threads)
    fields = {f.name for f in dataclasses.fields(ClassifyConfig)}
    cfg = ClassifyConfig(**{k: v for k, v in vars(args).items() if k in fields})
    cfg.progress = not args.no_progress and not args.json
    try:
        cfg.validate()
        s = run_classify(cfg)
    except DataError as e:
        raise UsageError(str(e)) from None
    if args.json:
        print(json.dumps(s))
        return 0
    acc = f"accuracy {s['accuracy']:.4f} (valid), " if "accuracy" in s else ""
    print(f"{len(s['labels'])} labels, pooling {s['pooling']}, trainable {s['trainable_parameters']:,} / "
          f"{s['total_parameters']:,}; {s['steps']} steps, loss {s['first_loss']:.4f} -> {s['final_loss']:.4f}; "
          f"{acc}train accuracy {s['train_accuracy']:.4f}; saved to {args.output}")
    return 0
