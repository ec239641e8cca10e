# SPDX-License-Identifier: Apache-2.0
"""Supervised fine-tuning (full or LoRA / QLoRA) on the training loop of swisslm.train.

What `swisslm finetune` runs, with autotrain `llm`'s options and defaults (lr 3e-5, batch 2,
gradient accumulation 4, LoRA r 16 / alpha 32 / dropout 0.05 on all linears, linear schedule
with 10% warmup, AdamW betas (0.9, 0.999) as HF's adamw_torch). The output folder holds, like
autotrain's project folder: the adapter in PEFT format (or the full model as an HF folder),
`metrics.csv`, `checkpoints/step-*/` (resumable with `resume=True`) and, with `merge_adapter`,
the merged HF model. A folder that already holds a run is refused unless `resume` (continue it)
or `overwrite` (delete it first).

Under torchrun (`torchrun --nproc_per_node N -m swisslm finetune ...`) the run is data parallel
with DDP: each rank takes its share of every epoch's examples (`SFTBatches`), gradients are
all-reduced, and only rank 0 writes files and metrics. `batch_size` and `gradient_accumulation`
are per rank, as in HF's Trainer: one optimizer step sees batch x accumulation x N examples.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..mixins.lora import LoRAMixin, trainable_parameters
from .data import SFTBatches, load_sft_examples

if TYPE_CHECKING:
    from ..train import CheckpointManager

log = logging.getLogger(__name__)

SCHEDULERS = ("linear", "cosine", "constant")


@dataclass
class SFTConfig:
    data: str
    model: str | None = None  # HF folder / .gguf; None = the embedded SmolLM2-135M-Instruct
    output: str = "swisslm-finetune"
    valid_data: str | None = None
    text_column: str = "text"
    chat_template: str | None = None  # a jinja template overriding the tokenizer's
    lr: float = 3e-5
    epochs: int = 1
    max_steps: int = 0  # > 0 overrides epochs
    batch_size: int = 2
    gradient_accumulation: int = 4
    block_size: int = 1024
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    scheduler: str = "linear"
    seed: int = 42
    peft: bool = False
    lora_r: int = 16
    lora_alpha: float = 32
    lora_dropout: float = 0.05
    target_modules: str = "all-linear"
    use_rslora: bool = False
    merge_adapter: bool = False
    quantization: str | None = None  # "int8" | "int4": frozen quantized base, float adapters
    mixed_precision: str | None = None  # "bf16" autocast
    dtype: str = "float32"
    device: str = "cpu"
    logging_steps: int = 10
    eval_steps: int = 0  # 0 = evaluate at the end only
    save_steps: int = 0  # 0 = checkpoint at the end only
    save_total_limit: int = 2
    resume: bool = False
    overwrite: bool = False  # delete a previous run in `output` first
    progress: bool = True
    peak_flops: float | None = None  # for MFU; None = a known GPU's datasheet peak, else no MFU
    # autotrain llm options shared with the preference trainers (finetune/train_opts.py)
    optimizer: str = "adamw_torch"
    gradient_checkpointing: bool = True
    model_max_length: int = 2048  # caps block_size, as autotrain's tokenizer model_max_length does
    add_eos_token: bool = True  # EOS after text rows (chat rows end with their template's turn end)
    padding: str = "right"  # "left" pads at the start (positions follow the attention mask)
    auto_find_batch_size: bool = False  # halve batch_size until a step on the longest rows fits

    @property
    def max_length(self) -> int:
        """The training length: --block-size, bounded by --model-max-length."""
        return min(self.block_size, self.model_max_length)

    def validate(self) -> None:
        def pos(name: str) -> None:
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")

        for name in ("lr", "epochs", "batch_size", "gradient_accumulation", "block_size", "lora_r",
                     "model_max_length"):
            pos(name)
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"--lora-dropout must be in [0, 1), got {self.lora_dropout}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"--scheduler must be one of {list(SCHEDULERS)}, got {self.scheduler!r}")
        if self.quantization not in (None, "int8", "int4"):
            raise ValueError(f"--quantization must be int8 or int4, got {self.quantization!r}")
        if self.quantization and not self.peft:
            raise ValueError("--quantization trains adapters on a frozen quantized base: it needs --peft")
        if self.merge_adapter and not self.peft:
            raise ValueError("--merge-adapter needs --peft")
        if self.mixed_precision not in (None, "none", "bf16"):
            raise ValueError(f"--mixed-precision must be bf16 or none, got {self.mixed_precision!r}")
        if self.resume and self.overwrite:
            raise ValueError("--resume continues the run in --output, --overwrite deletes it: pick one")
        if self.padding not in ("right", "left"):
            raise ValueError(f"--padding must be right or left, got {self.padding!r}")
        if self.peak_flops is not None and self.peak_flops <= 0:
            raise ValueError(f"--peak-flops must be > 0, got {self.peak_flops}")


# What marks a folder as a previous run (an interrupted one has no summary yet)
RUN_MARKERS = ("finetune_summary.json", "metrics.csv", "checkpoints")


def check_output(out: Path, resume: bool, overwrite: bool, clear: bool = True) -> None:
    """Refuse to mix two runs in one folder: a non-empty `out` needs `resume` or `overwrite`.

    `overwrite` deletes the folder's contents so no stale adapter, metrics row or checkpoint of
    the old run is left beside the new ones -- but only when the folder is recognisably a run
    (one of RUN_MARKERS), so a mistyped --output never wipes unrelated files. `clear=False`
    checks without deleting (under torchrun only rank 0 deletes)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output {out}: exists and is not a folder")
    if resume or not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise ValueError(f"--output {out}: folder is not empty; pass --resume to continue the run in it "
                         "or --overwrite to replace it")
    if not any((out / m).exists() for m in RUN_MARKERS):
        raise ValueError(f"--output {out}: --overwrite refused, the folder holds files but no previous run "
                         f"({', '.join(RUN_MARKERS)}); choose another folder")
    if clear:
        for entry in out.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def open_checkpoints(out: Path, cfg: SFTConfig) -> tuple[CheckpointManager, int | None]:
    """The run's checkpoint manager, and the step `--resume` continues from (None when fresh)."""
    from ..train import CheckpointManager  # noqa: PLC0415  (train/ imports torch: keep it lazy)

    ckpts = CheckpointManager(out / "checkpoints", keep_last=cfg.save_total_limit)
    resumed_at = None
    if cfg.resume:
        latest = ckpts.latest()
        if latest is None:
            raise ValueError(f"--resume: no checkpoint under {out / 'checkpoints'}")
        resumed_at = int(latest.name.split("-")[1])
    return ckpts, resumed_at


def parse_target_modules(spec: str) -> str | list[str]:
    """autotrain's --target-modules: "all-linear" or a comma-separated list of HF names."""
    spec = spec.strip()
    if spec in ("all-linear", "all_linear"):
        return "all-linear"
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise ValueError("--target-modules is empty")
    return names


def make_sft_schedule(name: str, lr: float, warmup: int, total: int):
    from ..train import make_schedule

    if name == "linear":  # HF's get_linear_schedule_with_warmup
        return make_schedule("wsd", lr=lr, warmup_steps=warmup, total_steps=total,
                             decay_steps=max(total - warmup, 0), decay_style="linear")
    if name == "cosine":
        return make_schedule("cosine", lr=lr, warmup_steps=warmup, total_steps=total)
    return make_schedule("linear_warmup", lr=lr, warmup_steps=warmup)


def prepare_model(cfg: SFTConfig, model: Any) -> LoRAMixin | None:
    """Quantize (QLoRA) and install LoRA, or unfreeze everything for a full fine-tune."""
    if cfg.quantization:
        try:
            from ..quant import quantize_
        except ImportError as e:
            raise ValueError(f"--quantization {cfg.quantization}: swisslm.quant is not available ({e})") from None
        quantize_(model, cfg.quantization)
    if not cfg.peft:
        for p in model.parameters():
            p.requires_grad_(True)
        return None
    lora = LoRAMixin(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                     target_modules=parse_target_modules(cfg.target_modules), use_rslora=cfg.use_rslora)
    model.add_mixin("lora", lora)
    return lora


def find_sft_batch_size(cfg: SFTConfig, model: Any, train: list, pad: int, device: str, world: int) -> int:
    """--auto-find-batch-size: the largest batch, halving from --batch-size, whose forward and
    backward on the longest training rows does not run out of memory (train_opts.find_batch_size).
    Every rank must train at the same batch size, so under DDP each probes and the smallest wins."""
    from ..train.trainer import causal_lm_loss_sum
    from .data import collate
    from .train_opts import find_batch_size

    longest = sorted(train, key=lambda e: -len(e.input_ids))

    def probe(b: int) -> None:
        batch = collate(longest[:b], pad, cfg.padding)
        kw = {"attention_mask": batch["attention_mask"].to(device)} if "attention_mask" in batch else {}
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16,
                            enabled=cfg.mixed_precision == "bf16"):
            logits = model(batch["input_ids"].to(device), **kw).logits
        causal_lm_loss_sum(logits, batch["labels"].to(device))[0].backward()
        model.zero_grad(set_to_none=True)

    found = find_batch_size(cfg.batch_size, probe)
    if world > 1:
        import torch.distributed as dist

        t = torch.tensor([found], device=device if device.startswith("cuda") else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        found = int(t.item())
    if found != cfg.batch_size:
        log.warning("--auto-find-batch-size: training with batch size %d (asked for %d)", found, cfg.batch_size)
    return found


def run_sft(cfg: SFTConfig, model: Any = None) -> dict[str, Any]:
    """Fine-tune; returns a summary (parameter counts, steps, losses, tokens/s, output paths).

    Launched by torchrun, runs DDP over the launched processes (see the module docstring)."""
    import torch.distributed as dist

    from ..train.distributed import destroy_distributed, init_distributed, launched_by_torchrun

    cfg.validate()
    # every rank checks before the process group forms (init is a barrier: nothing is written
    # until all ranks got past this), only rank 0 deletes
    check_output(Path(cfg.output), cfg.resume, cfg.overwrite, clear=int(os.environ.get("RANK", "0")) == 0)
    owns_group = launched_by_torchrun() and not (dist.is_available() and dist.is_initialized())
    rank, world, local = init_distributed(cfg.device)
    try:
        device = f"cuda:{local}" if cfg.device == "cuda" and world > 1 else cfg.device
        return _run_sft(cfg, model, rank, world, device)
    finally:
        if owns_group:
            destroy_distributed()


def _run_sft(cfg: SFTConfig, model: Any, rank: int, world: int, device: str) -> dict[str, Any]:
    from ..api import AutoModel
    from ..train import Trainer, TrainerConfig
    from ..train.distributed import apply_ddp
    from ..train.metrics import default_loggers
    from ..train.optim import param_groups

    out = Path(cfg.output)
    torch.manual_seed(cfg.seed)
    if model is None:
        model = AutoModel.from_pretrained(cfg.model, dtype=cfg.dtype, device=device)
    tok = model.tokenizer
    if tok is None:
        raise ValueError(f"{model.source}: the checkpoint has no tokenizer; SFT needs one")
    from .pref_data import resolve_chat_template

    template = resolve_chat_template(cfg.chat_template, tok)[1]
    load = functools.partial(load_sft_examples, tok=tok, block_size=cfg.max_length, text_column=cfg.text_column,
                             template=template, add_eos=cfg.add_eos_token)
    train = load(cfg.data)
    valid = load(cfg.valid_data) if cfg.valid_data else None
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    base_params = trainable_parameters(model)[1]  # before quantize_ turns weights into buffers
    lora = prepare_model(cfg, model)
    trainable = trainable_parameters(model)[0]
    total = base_params + (trainable if lora is not None else 0)
    log.info("trainable parameters: %s / %s (%.3f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)
    from .train_opts import build_optimizer, enable_gradient_checkpointing

    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    batch_size = cfg.batch_size
    if cfg.auto_find_batch_size:
        batch_size = find_sft_batch_size(cfg, model, train, pad, device, world)
    batches = SFTBatches(train, batch_size, pad, seed=cfg.seed, rank=rank, world_size=world, padding=cfg.padding)
    steps = cfg.max_steps or math.ceil(cfg.epochs * batches.batches_per_epoch / cfg.gradient_accumulation)
    warmup = math.ceil(cfg.warmup_ratio * steps)
    opt = build_optimizer(cfg.optimizer, param_groups(model, weight_decay=cfg.weight_decay), cfg.lr)
    sched = make_sft_schedule(cfg.scheduler, cfg.lr, warmup, steps)
    wrapped = apply_ddp(model, device) if world > 1 else model
    eval_fn = (lambda: SFTBatches(valid, batch_size, pad, shuffle=False, rank=rank, world_size=world,
                                  padding=cfg.padding).one_epoch()) if valid else None
    tcfg = TrainerConfig(
        max_steps=steps, grad_accum=cfg.gradient_accumulation,
        precision="bf16" if cfg.mixed_precision == "bf16" else "fp32",
        grad_clip=cfg.max_grad_norm if cfg.max_grad_norm > 0 else None, log_every=cfg.logging_steps,
        eval_every=cfg.eval_steps, eval_batches=(math.ceil(len(valid) / batch_size) if valid else 0),
        checkpoint_every=cfg.save_steps, progress=cfg.progress, peak_flops=cfg.peak_flops,
        extra={"sft_config": asdict(cfg)},
    )
    ckpts, resumed_at = open_checkpoints(out, cfg)
    loggers = default_loggers(out, resume_step=resumed_at, tensorboard=False) if rank == 0 else []
    trainer = Trainer(wrapped, opt, sched, tcfg, checkpoints=ckpts, loggers=loggers, eval_iter_fn=eval_fn)
    if cfg.resume:
        trainer.resume_latest(batches)
    history: list[dict[str, float]] = []
    trainer.callbacks.append(lambda _t, m: history.append(dict(m)))
    t0, tokens0 = time.perf_counter(), trainer.state.tokens_seen
    trainer.fit(batches)
    elapsed = time.perf_counter() - t0
    summary: dict[str, Any] = {
        "trainable_parameters": trainable, "total_parameters": total, "steps": trainer.state.step,
        "tokens_seen": trainer.state.tokens_seen, "first_loss": history[0]["loss"] if history else None,
        "final_loss": history[-1]["loss"] if history else None, "seconds": elapsed,
        "tokens_per_s": (trainer.state.tokens_seen - tokens0) / max(elapsed, 1e-9), "resumed_at": resumed_at,
        "world_size": world, "batch_size": batch_size,
    }
    if valid:
        summary.update(trainer.evaluate())  # collective: every rank evaluates its share
    if rank != 0:
        return summary
    return save_run(model, lora, cfg, out, summary)


def save_run(model: Any, lora: Any, cfg: Any, out: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """Write a fine-tuning run's result into `out`: the PEFT adapter (and, with merge_adapter, the
    merged model in out/merged) or the full model, then finetune_summary.json."""
    from .peft_format import save_adapter

    out.mkdir(parents=True, exist_ok=True)
    if lora is not None:
        save_adapter(model, out, base_model_name_or_path=getattr(model, "source", None))
        summary["adapter"] = str(out)
        if cfg.merge_adapter:
            from .merge import merge_adapter_folder

            summary["merged"] = str(merge_adapter_folder(cfg.model, out, out / "merged", dtype=cfg.dtype))
    else:
        model.save_pretrained(out)
        summary["model"] = str(out)
    (out / "finetune_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
