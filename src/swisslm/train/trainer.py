# SPDX-License-Identifier: Apache-2.0
"""The training loop, shared by `swisslm train` (pretraining) and `swisslm finetune` (SFT/LoRA).

Reuse it with any model that returns `ModelOutput` (or an object with `.logits` and optional
`.aux_loss`), any iterator of micro-batches, an optimizer and a schedule:

    from swisslm.train import Trainer, TrainerConfig, CheckpointManager, make_schedule
    from swisslm.train.optim import param_groups, build_adamw

    opt = build_adamw(param_groups(model, weight_decay=0.0), lr=2e-4)   # requires_grad params only
    sched = make_schedule("cosine", lr=2e-4, warmup_steps=10, total_steps=500)
    trainer = Trainer(model, opt, sched, TrainerConfig(max_steps=500, grad_accum=4),
                      checkpoints=CheckpointManager("run/checkpoints"), loggers=[CSVLogger("run")])
    trainer.resume_latest(batches)       # optional: continue from the newest checkpoint
    trainer.fit(batches)                 # batches yields {"input_ids": (B,T), "labels": (B,T)}

Batches follow HF's convention: `labels` are aligned with `input_ids` (the loss shifts them)
and -100 marks positions without a loss (prompt tokens, padding); an optional
`attention_mask` is passed to the model. If the batch iterator has `state_dict()` /
`load_state_dict()` (like `WindowLoader`) its position is checkpointed, which is what makes a
resume continue bit-exactly.

Loss normalisation: one optimizer step = `grad_accum` micro-batches on each of the data-parallel
ranks; the loss is the sum of token losses divided by the number of loss tokens in the whole
global batch (counted with an all-reduce before the backward passes), so 1 process with
accumulation and N processes without give the same gradients. MoE models add their
(coefficient-weighted) aux loss, averaged over micro-batches.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .checkpoint import CheckpointManager
from .flops import flops_per_token, known_peak_flops

logger = logging.getLogger(__name__)


class MetricsLogger(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...
    def close(self) -> None: ...


@dataclass
class TrainerConfig:
    max_steps: int
    grad_accum: int = 1
    precision: str = "fp32"  # "fp32" | "bf16" (autocast; master weights and optimizer stay fp32)
    grad_clip: float | None = 1.0
    log_every: int = 10  # console / progress interval; every step is written to the loggers
    eval_every: int = 0  # 0 = never
    eval_batches: int = 8
    checkpoint_every: int = 0  # 0 = only at the end (when a CheckpointManager is given)
    save_final: bool = True
    progress: bool = True
    peak_flops: float | None = None  # per device, for MFU; None = a known GPU's datasheet peak, else no MFU
    extra: dict[str, Any] = field(default_factory=dict)  # copied into trainer_state.json


@dataclass
class TrainState:
    step: int = 0
    tokens_seen: int = 0  # input tokens processed (all ranks)
    loss_tokens: int = 0  # tokens that carried a loss


def _dist() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a small CPU tensor over ranks (through the GPU when the backend is NCCL)."""
    if _dist()[1] > 1:
        if dist.get_backend() == "nccl":
            dev = t.to(f"cuda:{torch.cuda.current_device()}")
            dist.all_reduce(dev, op=dist.ReduceOp.SUM)
            return dev.cpu()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def causal_lm_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of next-token cross-entropies (labels shifted here, -100 ignored) and the token count.

    The labels are shifted (padded with -100 at the end) rather than the logits sliced: the
    logits are the largest tensor of the step and a sliced view would be copied by reshape."""
    shift_labels = F.pad(labels[:, 1:], (0, 1), value=-100).reshape(-1)  # (B*T,)
    flat = logits.reshape(-1, logits.size(-1))  # (B*T, V), a view
    loss = F.cross_entropy(flat.float(), shift_labels, ignore_index=-100, reduction="sum")
    return loss, (shift_labels != -100).sum()


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


class Trainer:
    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Callable[[int], float],
                 config: TrainerConfig, *, checkpoints: CheckpointManager | None = None,
                 loggers: list[MetricsLogger] | None = None,
                 eval_iter_fn: Callable[[], Iterator[dict[str, torch.Tensor]]] | None = None,
                 callbacks: list[Callable[[Trainer, dict[str, float]], None]] | None = None) -> None:
        self.model, self.optimizer, self.schedule, self.cfg = model, optimizer, schedule, config
        self.checkpoints = checkpoints
        self.loggers = loggers or []
        self.eval_iter_fn = eval_iter_fn
        self.callbacks = callbacks or []
        self.state = TrainState()
        self.rank, self.world_size = _dist()
        self.device = next(model.parameters()).device
        if config.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {config.precision!r}")
        if config.grad_accum < 1:
            raise ValueError(f"grad_accum must be >= 1, got {config.grad_accum}")
        for g in optimizer.param_groups:
            g.setdefault("lr_mult", 1.0)
        inner = unwrap(model)
        self._model_cfg = getattr(inner, "config", None)
        self._flops_per_token: float | None = None
        self._peak = config.peak_flops

    # -- pieces ----------------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.cfg.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _no_sync(self, last: bool) -> contextlib.AbstractContextManager:
        """Skip the gradient all-reduce on all but the last micro-batch (DDP and FSDP2)."""
        m = self.model
        if last or self.world_size == 1:
            if hasattr(m, "set_requires_gradient_sync"):
                m.set_requires_gradient_sync(True)
            return contextlib.nullcontext()
        if hasattr(m, "no_sync"):
            return m.no_sync()
        if hasattr(m, "set_requires_gradient_sync"):
            m.set_requires_gradient_sync(False)
        return contextlib.nullcontext()

    def set_lr(self, step: int) -> float:
        lr = float(self.schedule(step))
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g["lr_mult"]
        return lr

    def _forward(self, batch: dict[str, torch.Tensor], model: nn.Module | None = None) -> Any:
        kw = {}
        if batch.get("attention_mask") is not None:
            kw["attention_mask"] = batch["attention_mask"].to(self.device)
        with self._autocast():
            return (model or self.model)(batch["input_ids"].to(self.device), **kw)

    # -- one optimizer step ------------------------------------------------------------------------
    def optimizer_step(self) -> torch.Tensor | None:
        """Clip (when configured), step and clear the gradients; the pre-clip norm or None."""
        grad_norm = None
        if self.cfg.grad_clip is not None and self.cfg.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(
                [p for g in self.optimizer.param_groups for p in g["params"]], self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def train_step(self, micro_batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        step = self.state.step + 1
        lr = self.set_lr(step)
        self.model.train()
        n_local = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro_batches)
        counts = all_reduce_sum(torch.tensor([float(n_local), float(sum(b["input_ids"].numel()
                                                                          for b in micro_batches))]))
        n_global, tokens_global = max(1.0, float(counts[0])), int(counts[1])
        loss_sum = torch.zeros((), dtype=torch.float64)
        aux_sum = torch.zeros((), dtype=torch.float64)
        moe_stats: list[dict[str, torch.Tensor]] = []
        for i, batch in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            with self._no_sync(last):
                out = self._forward(batch)
                ce, _ = causal_lm_loss_sum(out.logits, batch["labels"].to(self.device))
                # x world_size: DDP/FSDP average gradients over ranks, we want the global token mean
                loss = ce * (self.world_size / n_global)
                aux = getattr(out, "aux_loss", None)
                if aux is not None:
                    loss = loss + aux / len(micro_batches)
                    aux_sum += aux.detach().double().cpu() / len(micro_batches)
                    moe_stats.append(router_stats(out, self._model_cfg, batch.get("attention_mask")))
                loss.backward()
            loss_sum += ce.detach().double().cpu()
        grad_norm = self.optimizer_step()
        red = all_reduce_sum(torch.stack([loss_sum, aux_sum]))
        self.state.step = step
        self.state.tokens_seen += tokens_global
        self.state.loss_tokens += int(n_global)
        metrics = {"loss": float(red[0]) / n_global, "lr": lr, "tokens": float(self.state.tokens_seen)}
        if grad_norm is not None:
            gn = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
            metrics["grad_norm"] = float(gn)
        if moe_stats:
            metrics["aux_loss"] = float(red[1]) / self.world_size
            metrics.update(merge_router_stats(moe_stats, self.world_size))
        return metrics

    # -- evaluation --------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        if self.eval_iter_fn is None:
            return {}
        self.model.eval()
        # DDP replicas are identical: evaluate the inner module, so ranks may hold different
        # numbers of eval batches (FSDP2 shards parameters, its forward must run on all ranks)
        from torch.nn.parallel import DistributedDataParallel

        model = self.model.module if isinstance(self.model, DistributedDataParallel) else self.model
        tot = torch.zeros(2, dtype=torch.float64)
        for i, batch in enumerate(self.eval_iter_fn()):
            if i >= self.cfg.eval_batches:
                break
            out = self._forward(batch, model)
            s, n = causal_lm_loss_sum(out.logits, batch["labels"].to(self.device))
            tot += torch.tensor([float(s), float(n)], dtype=torch.float64)
        tot = all_reduce_sum(tot)
        self.model.train()
        loss = float(tot[0] / max(tot[1], 1.0))
        return {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 50.0))}

    # -- checkpoints ---------------------------------------------------------------------------------
    def save_checkpoint(self, batches: Any = None) -> Path | None:
        if self.checkpoints is None:
            return None
        st = {"tokens_seen": self.state.tokens_seen, "loss_tokens": self.state.loss_tokens,
              "trainer_config": asdict(self.cfg), "time": time.time()}
        if batches is not None and hasattr(batches, "state_dict"):
            st["data"] = batches.state_dict()
        st.update(self.cfg.extra)
        return self.checkpoints.save(self.state.step, self.model, self.optimizer, st)

    def resume(self, path: str | Path, batches: Any = None) -> None:
        if self.checkpoints is None:
            self.checkpoints = CheckpointManager(Path(path).parent)
        st = self.checkpoints.load(path, self.model, self.optimizer)
        self.state = TrainState(step=int(st["step"]), tokens_seen=int(st.get("tokens_seen", 0)),
                                loss_tokens=int(st.get("loss_tokens", 0)))
        if batches is not None and hasattr(batches, "load_state_dict") and "data" in st:
            batches.load_state_dict(st["data"])
        logger.info("resumed from %s at step %d", path, self.state.step)

    def resume_latest(self, batches: Any = None) -> bool:
        latest = self.checkpoints.latest() if self.checkpoints else None
        if latest is None:
            return False
        self.resume(latest, batches)
        return True

    # -- the loop ----------------------------------------------------------------------------------------
    def _mfu(self, tokens_per_s: float) -> float | None:
        """Model FLOPs utilisation, only against a known peak (the config's, or a GPU datasheet's).

        A value above 1 means the peak is wrong (too low): that is said once, and MFU is no
        longer reported for this run rather than printed as an impossible percentage."""
        if self._model_cfg is None:
            return None
        if self._flops_per_token is None:
            seq = getattr(self, "_seq_len", 0)
            self._flops_per_token = flops_per_token(unwrap(self.model), seq)
            if self._peak is None:
                self._peak = known_peak_flops(self.device, self.cfg.precision)
        if not self._peak:
            return None
        mfu = self._flops_per_token * tokens_per_s / (self._peak * self.world_size)
        if mfu > 1.0:
            if self.rank == 0:
                logger.warning("MFU would be %.0f%%: the peak of %.3g FLOP/s per device is too low for this "
                               "hardware; MFU is not reported (pass the datasheet peak with --peak-flops)",
                               100 * mfu, self._peak)
            self._peak = 0.0
            return None
        return mfu

    def fit(self, batches: Iterator[dict[str, torch.Tensor]]) -> TrainState:
        cfg = self.cfg
        it = iter(batches)
        bar = None
        if cfg.progress and self.rank == 0 and self.state.step < cfg.max_steps:
            from ..progress import progress_bar  # no bar when stderr is not a terminal

            bar = progress_bar(cfg.max_steps, initial=self.state.step, desc="train", unit="step")
        t0, tok0 = time.perf_counter(), self.state.tokens_seen
        try:
            while self.state.step < cfg.max_steps:
                try:
                    micro = [next(it) for _ in range(cfg.grad_accum)]
                except StopIteration:  # a finite iterator ran out: stop (and save) where we are
                    logger.warning("batch iterator exhausted after step %d of %d", self.state.step,
                                   cfg.max_steps)
                    break
                self._seq_len = micro[0]["input_ids"].shape[1]
                metrics = self.train_step(micro)
                step = self.state.step
                now = time.perf_counter()
                if step % max(1, cfg.log_every) == 0 or step == cfg.max_steps:
                    tps = (self.state.tokens_seen - tok0) / max(now - t0, 1e-9)
                    metrics["tokens_per_s"] = tps
                    mfu = self._mfu(tps)
                    if mfu is not None:
                        metrics["mfu"] = mfu
                    t0, tok0 = time.perf_counter(), self.state.tokens_seen  # after the one-time peak probe
                    if self.rank == 0:
                        msg = (f"step {step}/{cfg.max_steps} loss {metrics['loss']:.4f} lr {metrics['lr']:.3e} "
                               f"tok/s {tps:,.0f}" + (f" MFU {100 * mfu:.1f}%" if mfu is not None else ""))
                        if "aux_loss" in metrics:
                            msg += f" aux {metrics['aux_loss']:.4f}"
                        if bar is not None and not bar.disable:
                            bar.write(msg)
                        else:
                            logger.info(msg)
                if cfg.eval_every and step % cfg.eval_every == 0:
                    metrics.update(self.evaluate())
                if self.rank == 0:
                    for lg in self.loggers:
                        lg.log(step, metrics)
                for cb in self.callbacks:
                    cb(self, metrics)
                if bar is not None:
                    bar.update(1)
                    post = {"loss": f"{metrics['loss']:.4f}"}
                    if "tokens_per_s" in metrics:
                        self._last_tps = f"{metrics['tokens_per_s']:,.0f}"
                    if getattr(self, "_last_tps", None):
                        post["tok/s"] = self._last_tps
                    bar.set_postfix(post, refresh=False)
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.max_steps:
                    self.save_checkpoint(batches)
            if cfg.save_final and self.checkpoints is not None:
                latest = self.checkpoints.latest()
                if latest is None or latest.name != f"step-{self.state.step:08d}":
                    self.save_checkpoint(batches)
        finally:
            if bar is not None:
                bar.close()
            if self.rank == 0:
                for lg in self.loggers:
                    lg.close()
        return self.state


# -- MoE router statistics ---------------------------------------------------------------------------

def router_stats(out: Any, cfg: Any, attention_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-expert load (fraction of routed token slots, per layer) and the two unweighted router
    losses, computed by core/moe.py's own functions so the logged parts add up to `aux_loss`."""
    rl = getattr(out, "router_logits", None)
    if not rl or cfg is None:
        return {}
    from ..core.moe import load_balancing_loss, router_z_loss

    k = max(1, int(cfg.num_experts_per_tok))
    with torch.no_grad():
        lb = load_balancing_loss(rl, cfg.num_experts, k, attention_mask)
        z = router_z_loss(rl, attention_mask)
        logits = torch.stack([r.reshape(-1, r.shape[-1]).float() for r in rl])  # (L, N, E)
        top = logits.topk(k, dim=-1).indices  # softmax is monotonic: same top-k as the router's
        load = F.one_hot(top, logits.shape[-1]).float().sum(-2).mean(1) / k  # (L, E)
    return {"load": load.cpu(), "lb": lb.detach().cpu(), "z": z.detach().cpu()}


def merge_router_stats(stats: list[dict[str, torch.Tensor]], world_size: int) -> dict[str, float]:
    stats = [s for s in stats if s]
    if not stats:
        return {}
    load = torch.stack([s["load"] for s in stats]).mean(0)  # (L, E)
    vec = all_reduce_sum(torch.cat([load.flatten(), torch.stack([sum(s["lb"] for s in stats) / len(stats),
                                                                   sum(s["z"] for s in stats) / len(stats)])]))
    vec = vec / world_size
    load = vec[:-2].view_as(load).mean(0)  # averaged over layers
    out = {"lb_loss": float(vec[-2]), "z_loss": float(vec[-1]),
           "expert_load_max": float(load.max()), "expert_load_min": float(load.min())}
    out.update({f"expert_load_{e}": float(v) for e, v in enumerate(load)})
    return out
