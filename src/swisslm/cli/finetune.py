# SPDX-License-Identifier: Apache-2.0
"""swisslm finetune: supervised fine-tuning with autotrain `llm`'s options.

    swisslm finetune --data train.jsonl --peft --lora-r 16 --lora-alpha 32 --epochs 3 \\
        --batch-size 2 --gradient-accumulation 4 --block-size 1024 --lr 3e-5 --output out/

`--data` is JSONL or CSV with a `text` column (all tokens trained, EOS appended unless
--no-add-eos-token) or `messages` (chat; the chat template applied, loss only on assistant turns).
--model-max-length caps --block-size, --padding left|right picks the padding side and
--auto-find-batch-size halves --batch-size until a step fits, for SFT as for dpo/orpo/reward.
`--quantization int8|int4` with `--peft` is QLoRA.
A non-empty --output needs `--resume` (continue it) or `--overwrite` (replace it). Under
`torchrun --nproc_per_node N -m swisslm finetune ...` the run is DDP; only rank 0 writes and prints.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

from ..progress import add_quiet_arg, progress_enabled
from .common import UsageError, set_threads


def register(sub) -> None:
    p = sub.add_parser("finetune", help="supervised fine-tuning (full, LoRA or QLoRA), autotrain llm options")
    p.add_argument("--model", default="default",
                   help="HF folder or .gguf file; 'default' = the embedded SmolLM2-135M-Instruct")
    p.add_argument("--data", default=None,
                   help="training data: JSONL / CSV or a folder with <split>.jsonl|.csv (required unless --config)")
    p.add_argument("--valid-data", default=None, help="validation JSONL / CSV (same format)")
    p.add_argument("--output", "--project-name", dest="output", default="swisslm-finetune",
                   help="output folder (adapter or model, metrics.csv, checkpoints/)")
    p.add_argument("--text-column", default="text", help="JSONL field holding plain text rows")
    p.add_argument("--chat-template", default=None,
                   help="chatml, zephyr, tokenizer (the model's own) or a jinja FILE (default: none)")
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
    add_autotrain_args(p)
    p.set_defaults(func=run)


# -- preference trainers and the rest of autotrain `llm`'s options (issue 19) ---------------------

def add_autotrain_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("trainers and autotrain llm options")
    g.add_argument("--trainer", default="sft", choices=["sft", "dpo", "orpo", "reward"],
                   help="objective (default: %(default)s)")
    g.add_argument("--dpo-beta", type=float, default=0.1, help="DPO beta (default: %(default)s)")
    g.add_argument("--orpo-alpha", type=float, default=0.1,
                   help="ORPO weight of the odds-ratio term, lambda (TRL's beta; default: %(default)s)")
    g.add_argument("--model-ref", default=None,
                   help="DPO reference model (default: the starting model; with --peft the base without adapters)")
    g.add_argument("--prompt-text-column", default=None, help="prompt column (default: 'prompt' when present)")
    g.add_argument("--rejected-text-column", default="rejected", help="rejected column (default: %(default)s); "
                   "the chosen column is --text-column ('chosen' when the data has no 'text')")
    g.add_argument("--max-prompt-length", type=int, default=128,
                   help="prompt tokens kept when a pair must be cut (default: %(default)s)")
    g.add_argument("--max-completion-length", type=int, default=None,
                   help="completion tokens kept (default: no limit)")
    g.add_argument("--model-max-length", type=int, default=2048,
                   help="longest sequence; --block-size is capped by it (default: %(default)s)")
    g.add_argument("--add-eos-token", action=argparse.BooleanOptionalAction, default=True,
                   help="append EOS to completions / sft text rows (default: %(default)s)")
    g.add_argument("--padding", default="right", choices=["right", "left"], help="padding side (default: %(default)s)")
    g.add_argument("--optimizer", default="adamw_torch", choices=["adamw_torch", "adamw", "adafactor", "sgd"],
                   help="optimizer (default: %(default)s)")
    g.add_argument("--disable-gradient-checkpointing", action="store_true",
                   help="keep all activations (default: gradient checkpointing on, as autotrain)")
    g.add_argument("--auto-find-batch-size", action="store_true",
                   help="halve --batch-size until a step fits in memory (default: off)")
    g.add_argument("--train-split", default="train", help="split name in a --data folder (default: %(default)s)")
    g.add_argument("--valid-split", default=None, help="validation split name in a --data folder (default: none)")
    g.add_argument("--config", default=None,
                   help="autotrain YAML (task, base_model, project_name, data:, params:); flags given override it")


def _validate_autotrain(args: argparse.Namespace) -> None:
    """Range and combination checks of the new options, before anything loads."""
    from ..finetune.pref_data import CHAT_TEMPLATES

    for name in ("dpo_beta", "orpo_alpha"):
        if not getattr(args, name) > 0:
            raise UsageError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    for name in ("model_max_length", "max_prompt_length", "max_completion_length"):
        v = getattr(args, name)
        if v is not None and v <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be > 0, got {v}")
    ct = args.chat_template
    if ct is not None and ct not in (*CHAT_TEMPLATES, "tokenizer", "none") and not Path(ct).is_file():
        raise UsageError(f"--chat-template {ct}: not chatml, zephyr, tokenizer, none or an existing file")
    if args.model_ref is not None and args.trainer != "dpo":
        raise UsageError("--model-ref is the DPO reference model: it needs --trainer dpo")
    if args.model_ref is not None and not Path(args.model_ref).exists():
        raise UsageError(f"--model-ref {args.model_ref}: no such file or folder")
    if args.data is None:
        raise UsageError("--data is required (or --config with data.path)")


def _sft_data_file(args: argparse.Namespace) -> None:
    """SFT reads one JSONL or CSV file per split: resolve a data folder's split files to it."""
    from ..finetune.data import DataError, data_file

    try:
        args.data = str(data_file(args.data, args.train_split))
        if args.valid_data is None and args.valid_split:
            args.valid_data = str(data_file(Path(args.data).parent, args.valid_split))
    except DataError as e:
        raise UsageError(str(e)) from None


def run_trainers(args: argparse.Namespace) -> int:
    """--trainer dpo|orpo|reward (and the autotrain options) -> finetune.preference."""
    from ..finetune.data import DataError
    from ..finetune.preference import PreferenceConfig, run_preference
    from ..train.distributed import launched_by_torchrun

    if launched_by_torchrun() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError(f"--trainer {args.trainer} runs in one process; launch it without torchrun "
                         "(only --trainer sft runs DDP)")
    cfg = _config_from_args(PreferenceConfig, args)
    try:
        cfg.validate()
        _check_output(cfg, clear=False)  # refuse before the model loads...
        _check_output(cfg, clear=True)  # ...then clear a previous run for --overwrite
        summary = run_preference(cfg)
    except DataError as e:
        raise UsageError(str(e)) from None
    _write_training_params(cfg)
    if args.json:
        print(json.dumps(summary))
    else:
        extra = "".join(f", {k.removeprefix('final_')} {summary[k]:.3f}" for k in
                        ("final_rewards/margins", "final_rewards/accuracies") if k in summary)
        print(f"{cfg.trainer}: trainable parameters {summary['trainable_parameters']:,} / "
              f"{summary['total_parameters']:,}; {summary['steps']} steps, loss {summary['first_loss']:.4f} -> "
              f"{summary['final_loss']:.4f}{extra}; saved to {args.output}")
    return 0


def _config_from_args(cls: type, args: argparse.Namespace) -> object:
    """SFTConfig / PreferenceConfig from the parsed flags (`default` model, progress, checkpointing)."""
    kw = {k: v for k, v in vars(args).items() if k in {f.name for f in dataclasses.fields(cls)}}
    if kw.get("model") == "default":
        kw["model"] = None
    kw["progress"] = progress_enabled(args.quiet or args.json)
    kw["gradient_checkpointing"] = not args.disable_gradient_checkpointing
    if kw.get("mixed_precision") == "none":
        kw["mixed_precision"] = None
    return cls(**kw)


def _check_output(cfg: object, clear: bool) -> None:
    """A non-empty --output is refused unless --resume (which needs a checkpoint) or --overwrite."""
    from ..finetune.sft import check_output

    out = Path(cfg.output)  # type: ignore[attr-defined]
    check_output(out, cfg.resume, cfg.overwrite, clear=clear)  # type: ignore[attr-defined]
    if cfg.resume and not clear:  # type: ignore[attr-defined]
        from ..train import CheckpointManager

        if CheckpointManager(out / "checkpoints").latest() is None:
            raise UsageError(f"--resume: no checkpoint under {out / 'checkpoints'}")


def _write_training_params(cfg: object) -> None:
    """autotrain's project folder keeps the run's parameters as training_params.json."""
    out = Path(cfg.output)  # type: ignore[attr-defined]
    if out.is_dir():
        (out / "training_params.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))  # type: ignore[arg-type]


def apply_config_file(args: argparse.Namespace, parser_defaults: dict) -> None:
    """--config: autotrain's YAML; its values apply where the command line kept the default."""
    from ..finetune.autotrain_config import read_autotrain_yaml

    try:
        values = read_autotrain_yaml(args.config)
    except ValueError as e:
        raise UsageError(str(e)) from None
    for k, v in values.items():
        if getattr(args, k, None) == parser_defaults.get(k):
            setattr(args, k, v)


def run(args: argparse.Namespace) -> int:
    from ..finetune.data import DataError
    from ..finetune.sft import SFTConfig, run_sft
    from ..train.distributed import is_main_process

    if args.config:
        apply_config_file(args, _parser_defaults())
    _validate_autotrain(args)
    set_threads(args.threads)
    if args.trainer != "sft":
        return run_trainers(args)
    cfg = _config_from_args(SFTConfig, args)
    try:
        cfg.validate()
        _sft_data_file(args)
    except DataError as e:
        raise UsageError(str(e)) from None
    cfg.data, cfg.valid_data = args.data, args.valid_data
    # files and the output folder are checked before the model loads
    for flag, f in (("--data", args.data), ("--valid-data", args.valid_data)):
        if f is not None and not Path(f).is_file():
            raise UsageError(f"{flag} {f}: no such file")
    _check_output(cfg, clear=False)
    try:
        summary = run_sft(cfg)
    except DataError as e:
        raise UsageError(str(e)) from None
    if not is_main_process():  # torchrun: rank 0 reports for all
        return 0
    _write_training_params(cfg)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"trainable parameters {summary['trainable_parameters']:,} / {summary['total_parameters']:,}; "
              f"{summary['steps']} steps, loss {summary['first_loss']:.4f} -> {summary['final_loss']:.4f}"
              + (f", eval loss {summary['eval_loss']:.4f}" if "eval_loss" in summary else "")
              + f"; {summary['tokens_per_s']:,.0f} tokens/s; saved to {args.output}")
    return 0


def _parser_defaults() -> dict:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    register(sub)
    return vars(sub.choices["finetune"].parse_args(["--data", "x"])) | {"data": None}

