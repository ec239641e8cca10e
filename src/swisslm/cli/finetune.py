# SPDX-License-Identifier: Apache-2.0
"""swisslm finetune: supervised fine-tuning with autotrain `llm`'s options.

    swisslm finetune --data train.jsonl --peft --lora-r 16 --lora-alpha 32 --epochs 3 \\
        --batch-size 2 --gradient-accumulation 4 --block-size 1024 --lr 3e-5 --output out/

`--data` is JSONL with a `text` column (all tokens trained) or `messages` (chat; the model's chat
template applied, loss only on assistant turns). `--quantization int8|int4` with `--peft` is QLoRA.
A non-empty --output needs `--resume` (continue it) or `--overwrite` (replace it). Under
`torchrun --nproc_per_node N -m swisslm finetune ...` the run is DDP; only rank 0 writes and prints.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from ..progress import add_quiet_arg, progress_enabled
from .common import UsageError, set_threads


def register(sub) -> None:
    p = sub.add_parser("finetune", help="supervised fine-tuning (full, LoRA or QLoRA), autotrain llm options")
    p.add_argument("--model", default="default",
                   help="HF folder or .gguf file; 'default' = the embedded SmolLM2-135M-Instruct")
    p.add_argument("--data", required=True, help="training JSONL: a 'text' column or 'messages' (chat)")
    p.add_argument("--valid-data", default=None, help="validation JSONL (same format)")
    p.add_argument("--output", "--project-name", dest="output", default="swisslm-finetune",
                   help="output folder (adapter or model, metrics.csv, checkpoints/)")
    p.add_argument("--text-column", default="text", help="JSONL field holding plain text rows")
    p.add_argument("--chat-template", default=None, help="jinja file replacing the tokenizer's chat template")
    p.add_argument("--lr", type=float, default=3e-5, help="peak learning rate")
    p.add_argument("--epochs", type=int, default=1, help="passes over --data")
    p.add_argument("--max-steps", type=int, default=0, help="optimizer steps (overrides --epochs when > 0)")
    p.add_argument("--batch-size", type=int, default=2, help="rows per micro-batch (per process)")
    p.add_argument("--gradient-accumulation", type=int, default=4, help="micro-batches per optimizer step")
    p.add_argument("--block-size", type=int, default=1024, help="examples are truncated to this many tokens")
    p.add_argument("--warmup-ratio", type=float, default=0.1, help="fraction of steps with linear warmup")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0: off)")
    p.add_argument("--scheduler", default="linear", choices=["linear", "cosine", "constant"],
                   help="learning-rate schedule after warmup")
    p.add_argument("--seed", type=int, default=42, help="random seed")
    p.add_argument("--peft", action="store_true", help="train LoRA adapters instead of all weights")
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank")
    p.add_argument("--lora-alpha", type=float, default=32, help="LoRA alpha")
    p.add_argument("--lora-dropout", type=float, default=0.05, help="LoRA dropout")
    p.add_argument("--target-modules", default="all-linear",
                   help="'all-linear' or comma-separated HF names (q_proj,v_proj,...; experts: gate_up_proj)")
    p.add_argument("--use-rslora", action="store_true", help="scale by alpha/sqrt(r) (rsLoRA)")
    p.add_argument("--merge-adapter", action="store_true", help="also write the merged model to OUTPUT/merged")
    p.add_argument("--quantization", choices=["int8", "int4"], default=None,
                   help="QLoRA-style: frozen quantized base, float adapters (needs --peft)")
    p.add_argument("--mixed-precision", choices=["bf16", "none"], default=None, help="bf16 autocast")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="model dtype")
    p.add_argument("--device", default="cpu", help="cpu or cuda (under torchrun: each rank's GPU)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: physical cores)")
    p.add_argument("--logging-steps", type=int, default=10, help="print a metrics line every N steps")
    p.add_argument("--eval-steps", type=int, default=0, help="evaluate every N steps (0: at the end)")
    p.add_argument("--save-steps", type=int, default=0, help="checkpoint every N steps (0: at the end)")
    p.add_argument("--save-total-limit", type=int, default=2, help="checkpoints kept")
    p.add_argument("--resume", action="store_true", default=False,
                   help="continue from the newest checkpoint in OUTPUT")
    p.add_argument("--overwrite", action="store_true", default=False,
                   help="delete the previous run in OUTPUT first")
    p.add_argument("--peak-flops", type=float, default=None,
                   help="peak FLOP/s per device for MFU (default: known GPUs only)")
    add_quiet_arg(p, "--no-progress")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..finetune.data import DataError
    from ..finetune.sft import SFTConfig, check_output, run_sft
    from ..train.distributed import is_main_process

    set_threads(args.threads)
    fields = {f.name for f in dataclasses.fields(SFTConfig)}
    kw = {k: v for k, v in vars(args).items() if k in fields}
    if kw.get("model") == "default":
        kw["model"] = None
    kw["progress"] = progress_enabled(args.quiet or args.json)
    if kw.get("mixed_precision") == "none":
        kw["mixed_precision"] = None
    cfg = SFTConfig(**kw)
    cfg.validate()
    # files and the output folder are checked before the model loads
    for flag, f in (("--data", args.data), ("--valid-data", args.valid_data), ("--chat-template", args.chat_template)):
        if f is not None and not Path(f).is_file():
            raise UsageError(f"{flag} {f}: no such file")
    check_output(Path(cfg.output), cfg.resume, cfg.overwrite, clear=False)
    if cfg.resume:
        from ..train import CheckpointManager

        if CheckpointManager(Path(cfg.output) / "checkpoints").latest() is None:
            raise UsageError(f"--resume: no checkpoint under {Path(cfg.output) / 'checkpoints'}")
    try:
        summary = run_sft(cfg)
    except DataError as e:
        raise UsageError(str(e)) from None
    if not is_main_process():  # torchrun: rank 0 reports for all
        return 0
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"trainable parameters {summary['trainable_parameters']:,} / {summary['total_parameters']:,}; "
              f"{summary['steps']} steps, loss {summary['first_loss']:.4f} -> {summary['final_loss']:.4f}"
              + (f", eval loss {summary['eval_loss']:.4f}" if "eval_loss" in summary else "")
              + f"; {summary['tokens_per_s']:,.0f} tokens/s; saved to {args.output}")
    return 0
