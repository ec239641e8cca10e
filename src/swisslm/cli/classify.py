# SPDX-License-Identifier: Apache-2.0
"""swisslm classify: train a classification head (optionally with LoRA) and report accuracy, or
predict with a trained one.

    swisslm classify --data train.jsonl --valid-data test.jsonl [--model M] [--pooling mean] --output run/
    swisslm classify --predict new.jsonl --model run/ [--predict-out predictions.jsonl]

Training rows are JSONL with a text column and a label column (any JSON scalars; sorted into
class ids). `--predict` reads the text column of each row and writes one JSONL line per row:
{"label", "score", "probabilities": {label: p}}; rows that carry a label also give an accuracy
(on stderr).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from ..progress import add_quiet_arg, progress_enabled
from .common import UsageError, check_positive, set_threads


def register(sub) -> None:
    p = sub.add_parser("classify", help="fine-tune a classification head (+ LoRA) and report accuracy; --predict")
    p.add_argument("--model", default="default",
                   help="HF folder or .gguf ('default' = embedded SmolLM2-135M-Instruct); "
                        "with --predict: the classify output folder")
    p.add_argument("--data", default=None, help="training JSONL with text and label columns")
    p.add_argument("--valid-data", default=None, help="evaluation JSONL (accuracy is reported on it)")
    p.add_argument("--predict", default=None, metavar="FILE.jsonl",
                   help="do not train: label the rows of FILE with the classifier in --model")
    p.add_argument("--predict-out", default="-", metavar="FILE.jsonl", help="--predict: where to write ('-' = stdout)")
    p.add_argument("--base-model", default=None,
                   help="--predict: the base model, if it moved since training (default: as saved in the run)")
    p.add_argument("--output", "--project-name", dest="output", default="swisslm-classify",
                   help="output folder (head, config, adapter, metrics.csv, checkpoints/)")
    p.add_argument("--text-column", default="text", help="JSONL field holding the text")
    p.add_argument("--label-column", default="label", help="JSONL field holding the label")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--epochs", type=int, default=3, help="passes over --data")
    p.add_argument("--max-steps", type=int, default=0, help="optimizer steps (overrides --epochs when > 0)")
    p.add_argument("--batch-size", type=int, default=16, help="rows per micro-batch")
    p.add_argument("--gradient-accumulation", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--block-size", type=int, default=128, help="texts are truncated to this many tokens")
    p.add_argument("--warmup-ratio", type=float, default=0.1, help="fraction of steps with linear warmup")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    p.add_argument("--pooling", choices=["last", "mean", "first"], default=None,
                   help="default: last token for causal models, mean for encoders")
    p.add_argument("--head-hidden", type=int, default=256, help="hidden width of the MLP head (0 = linear)")
    p.add_argument("--dropout", type=float, default=0.1, help="dropout in the head")
    p.add_argument("--peft", action="store_true", default=False, help="also train LoRA adapters")
    p.add_argument("--lora-r", type=int, default=8, help="LoRA rank")
    p.add_argument("--lora-alpha", type=float, default=16, help="LoRA alpha")
    p.add_argument("--lora-dropout", type=float, default=0.05, help="LoRA dropout")
    p.add_argument("--target-modules", default="all-linear", help="'all-linear' or comma-separated HF names")
    p.add_argument("--full-finetune", action="store_true", default=False,
                   help="train all weights, not only the head")
    p.add_argument("--seed", type=int, default=42, help="random seed")
    p.add_argument("--save-steps", type=int, default=0, help="checkpoint every N steps (0: at the end)")
    p.add_argument("--resume", action="store_true", default=False,
                   help="continue from the newest checkpoint in OUTPUT")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="model dtype")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: physical cores)")
    add_quiet_arg(p, "--no-progress")
    p.add_argument("--json", action="store_true", default=False, help="print the summary as one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.predict is not None:
        return run_predict(args)
    from ..finetune.classify import ClassifyConfig, run_classify
    from ..finetune.data import DataError

    if args.data is None:
        raise UsageError("--data is required to train (or --predict FILE to label rows with a trained run)")
    set_threads(args.threads)
    fields = {f.name for f in dataclasses.fields(ClassifyConfig)}
    cfg = ClassifyConfig(**{k: v for k, v in vars(args).items() if k in fields})
    if cfg.model == "default":
        cfg.model = None
    cfg.progress = progress_enabled(args.quiet or args.json)
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


def run_predict(args: argparse.Namespace) -> int:
    from ..finetune.classify import load_classifier, predict, read_classifier_config
    from ..finetune.data import DataError, read_jsonl

    if args.data is not None:
        raise UsageError("--predict labels rows with a trained run; it does not take --data")
    if args.model in (None, "default"):
        raise UsageError("--predict needs --model RUN_DIR, the --output folder of a classify run")
    check_positive("--batch-size", args.batch_size)
    meta = read_classifier_config(args.model)  # checked before any model loads
    text_col = meta.get("text_column", "text")
    label_col = meta.get("label_column", "label")
    try:
        rows = read_jsonl(args.predict)
    except DataError as e:
        raise UsageError(str(e)) from None
    for n, r in enumerate(rows, 1):
        if not isinstance(r.get(text_col), str):
            raise UsageError(f"{args.predict}: row {n}: needs a string {text_col!r}")
    set_threads(args.threads)
    model, head, meta = load_classifier(args.model, args.base_model, dtype=args.dtype, device=args.device)
    preds = predict(model, head, [r[text_col] for r in rows], meta["labels"], int(meta.get("block_size", 512)),
                    args.batch_size)
    lines = "".join(json.dumps(p) + "\n" for p in preds)
    if args.predict_out == "-":
        sys.stdout.write(lines)
    else:
        Path(args.predict_out).write_text(lines)
    graded = [(p["label"], r[label_col]) for p, r in zip(preds, rows) if label_col in r]
    if graded and not args.quiet:
        right = sum(a == b for a, b in graded)
        sys.stderr.write(f"accuracy {right / len(graded):.4f} on {len(graded)} labelled rows\n")
    return 0
