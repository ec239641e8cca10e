# SPDX-License-Identifier: Apache-2.0
"""`swisslm train`: build everything a TrainConfig describes and run the Trainer.

Order (torchtitan's): distributed init -> model (random init from family + size, or an HF
folder) -> muP init -> activation checkpointing -> compile -> DDP / FSDP2 -> optimizer + schedule
-> resume -> fit -> optional HF export.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError
from .checkpoint import CheckpointManager
from .config import TrainConfig
from .data import TokenDataset, WindowLoader
from .distributed import (
    apply_activation_checkpointing,
    apply_compile,
    apply_ddp,
    apply_fsdp,
    destroy_distributed,
    init_distributed,
)
from .metrics import default_loggers
from .optim import build_adamw, param_groups
from .schedulers import make_schedule
from .trainer import Trainer, TrainerConfig, TrainState, unwrap

logger = logging.getLogger(__name__)


def build_schedule(cfg: TrainConfig, global_batch: int):
    s, o = cfg.schedule, cfg.optimizer
    total = cfg.training.max_steps
    if s.name == "power":
        return make_schedule("power", tokens_per_step=global_batch * cfg.data.seq_len, batch_size=global_batch,
                             warmup_steps=s.warmup_steps, total_steps=total, decay_steps=s.decay_steps,
                             a=s.power_a, b=s.power_b, eta_max=s.eta_max, final_ratio=0.0,
                             decay_style=s.decay_style or "exponential")
    if s.name == "wsd":
        return make_schedule("wsd", lr=o.lr, warmup_steps=s.warmup_steps, total_steps=total,
                             decay_steps=s.decay_steps, min_lr=o.lr * s.min_lr_ratio,
                             decay_style=s.decay_style or "linear")
    if s.name == "cosine":
        return make_schedule("cosine", lr=o.lr, warmup_steps=s.warmup_steps, total_steps=total,
                             min_lr=o.lr * s.min_lr_ratio)
    if s.name == "linear_warmup":
        return make_schedule("linear_warmup", lr=o.lr, warmup_steps=s.warmup_steps)
    return make_schedule("constant", lr=o.lr)


def build_model(cfg: TrainConfig, meta: dict[str, Any], device: str) -> torch.nn.Module:
    # The backbone through io/ (not the swisslm.AutoModel facade, which sits above train/).
    from ..io.build import new_model
    from ..io.loader import load_model

    if cfg.model.from_pretrained:
        model, _ = load_model(cfg.model.from_pretrained, dtype="float32", device=device)
        if cfg.model.config:
            raise ConfigError("model.config overrides cannot be combined with model.from_pretrained")
        if model.config.vocab_size < int(meta["vocab_size"]):
            raise ConfigError(f"model.from_pretrained: vocab_size {model.config.vocab_size} is smaller than the "
                              f"data's tokenizer vocabulary ({meta['vocab_size']})")
        return model
    special = {"eos_token_id": meta.get("eos_token_id"), "bos_token_id": meta.get("bos_token_id")}
    mcfg = cfg.model_config_for(int(meta["vocab_size"]), special)
    seed = cfg.model.init_seed if cfg.model.init_seed is not None else cfg.seed
    model = new_model(mcfg, device=device, seed=seed)
    if cfg.mup is not None:
        from .mup import mup_init_

        mup_init_(model, cfg.mup.base_width)
    return model


def run_training(cfg: TrainConfig, resume: bool | str = False) -> TrainState:
    t = cfg.training
    if t.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"training.device={t.device!r}: CUDA is not available on this machine")
    threads = torch.get_num_threads()
    if t.threads:
        torch.set_num_threads(t.threads)
    rank, world, local = init_distributed(t.device)
    device = f"cuda:{local}" if t.device == "cuda" else t.device
    try:
        return _run(cfg, resume, rank, world, device)
    finally:
        destroy_distributed()
        torch.set_num_threads(threads)  # callers in the same process (tests, notebooks) keep theirs


def _run(cfg: TrainConfig, resume: bool | str, rank: int, world: int, device: str) -> TrainState:
    t = cfg.training
    run_dir = Path(cfg.run_dir)
    parallel = t.parallel if t.parallel != "auto" else ("ddp" if world > 1 else "none")
    if world > 1 and parallel == "none":
        raise ConfigError("training.parallel=none but the run was launched with several processes")
    accum = t.grad_accum
    if t.global_batch_size is not None:
        per = t.micro_batch_size * world
        if t.global_batch_size % per:
            raise ConfigError(f"training.global_batch_size={t.global_batch_size} is not a multiple of "
                              f"micro_batch_size x world size = {per}")
        accum = t.global_batch_size // per
    global_batch = t.micro_batch_size * accum * world
    if cfg.eval.every and not cfg.data.eval_path:
        raise ConfigError("eval.every is set but data.eval_path is not (a prepared held-out folder)")

    ds = TokenDataset.open(cfg.data.path)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, ds.meta, device)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=2))
        (run_dir / "model_config.json").write_text(json.dumps(unwrap(model).config.to_dict(), indent=2))
        logger.info("model: %s, %.2fM parameters", unwrap(model).config.family,
                    unwrap(model).num_parameters() / 1e6)
    mup_mult = (unwrap(model).config.hidden_size / cfg.mup.base_width) if cfg.mup is not None else None
    groups = param_groups(model, cfg.optimizer.weight_decay, mup_mult)
    if t.activation_checkpointing:
        apply_activation_checkpointing(model)
    if t.compile:
        apply_compile(model)
    if parallel == "ddp":
        wrapped = apply_ddp(model, device)
    elif parallel == "fsdp":
        if world < 1:
            raise ConfigError("training.parallel=fsdp needs torchrun")
        wrapped = apply_fsdp(model, device)
        groups = param_groups(model, cfg.optimizer.weight_decay, mup_mult)  # params are DTensors now
    else:
        wrapped = model
    o = cfg.optimizer
    optimizer = build_adamw(groups, lr=o.lr, betas=o.betas, eps=o.eps, fused=o.fused)
    schedule = build_schedule(cfg, global_batch)
    loader = WindowLoader(ds, cfg.data.seq_len, t.micro_batch_size, seed=cfg.seed, rank=rank, world_size=world,
                          shift_windows=cfg.data.shift_windows)
    eval_fn = None
    if cfg.data.eval_path:
        eval_ds = TokenDataset.open(cfg.data.eval_path)

        def eval_fn():
            return WindowLoader(eval_ds, cfg.data.seq_len, t.micro_batch_size, seed=0, rank=rank,
                                world_size=world, shift_windows=False)

    ckpts = CheckpointManager(run_dir / "checkpoints", keep_last=cfg.checkpoint.keep_last)
    start_step: int | None = None
    resume_path = None
    if resume:
        resume_path = ckpts.latest() if resume is True else Path(str(resume))
        if resume_path is None:
            logger.warning("--resume: no checkpoint in %s; starting from scratch", ckpts.folder)
    elif ckpts.latest() is not None:
        raise ConfigError(f"{ckpts.folder} already holds checkpoints: pass --resume to continue, or set a new "
                          "run_dir")
    trainer_cfg = TrainerConfig(
        max_steps=t.max_steps, grad_accum=accum, precision=t.precision, grad_clip=o.grad_clip,
        log_every=cfg.logging.every, eval_every=cfg.eval.every, eval_batches=cfg.eval.batches,
        checkpoint_every=cfg.checkpoint.every, progress=cfg.logging.progress, peak_flops=cfg.logging.peak_flops,
        extra={"train_config": cfg.model_dump(mode="json")},
    )
    trainer = Trainer(wrapped, optimizer, schedule, trainer_cfg, checkpoints=ckpts, eval_iter_fn=eval_fn)
    if resume_path is not None:
        trainer.resume(resume_path, loader)
        start_step = trainer.state.step
    if rank == 0:
        trainer.loggers = default_loggers(run_dir, resume_step=start_step if start_step is not None else -1,
                                          tensorboard=cfg.logging.tensorboard)
    state = trainer.fit(loader)
    if cfg.checkpoint.export_hf:
        export_hf(cfg, model, ds.meta, run_dir / "hf", rank)
    return state


def export_checkpoint(cfg: TrainConfig, out: str | Path, checkpoint: str | Path | None = None) -> Path:
    """Write the run's latest checkpoint (or `checkpoint`) as an HF folder, without training."""
    ds = TokenDataset.open(cfg.data.path)
    ckpts = CheckpointManager(Path(cfg.run_dir) / "checkpoints")
    path = Path(checkpoint) if checkpoint else ckpts.latest()
    if path is None:
        raise ConfigError(f"{ckpts.folder}: no checkpoint to export")
    model = build_model(cfg, ds.meta, "cpu")
    ckpts.load(path, model, None, restore_rng=False)
    export_hf(cfg, model, ds.meta, Path(out), 0)
    return Path(out)


def export_hf(cfg: TrainConfig, model: torch.nn.Module, meta: dict[str, Any], out: Path, rank: int) -> None:
    """Write an HF folder (gathers FSDP shards first); the data's tokenizer is saved with it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from ..io.build import new_model
    from ..io.loader import save_hf
    from .prepare import load_tokenizer

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank != 0:
        return
    inner = unwrap(model)
    plain = new_model(inner.config)
    plain.load_state_dict(sd, strict=False)
    tokenizer = None
    try:
        tokenizer = load_tokenizer(meta.get("tokenizer"))
    except Exception as e:  # noqa: BLE001 - export the weights even if the tokenizer moved
        logger.warning("HF export without tokenizer (%s)", e)
    save_hf(plain, out, tokenizer)
    logger.info("exported HF folder %s", out)
