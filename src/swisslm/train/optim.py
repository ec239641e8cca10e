# SPDX-License-Identifier: Apache-2.0
"""Optimizer construction: parameter groups (weight decay, muP learning rates) and AdamW.

Each param group carries `lr_mult` and a `name`; the trainer sets `group["lr"] =
schedule(step) * group["lr_mult"]` every step, so the schedule stays one function of the step
and muP's per-group scaling is a constant factor next to it.

Groups (the split Granite's dolomite-engine makes):
- "hidden": matrices inside attention and MLP/MoE blocks. Under muP (width multiplier
  m = hidden_size / base_width) their Adam lr is divided by m.
- "embed": embeddings and the output head (lr not scaled: muP handles the head through the
  logits_scaling multiplier instead).
- "no_decay": norms and biases (weight_decay = 0).
Only parameters with `requires_grad` are included, so the same function serves LoRA/SFT.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)


def param_groups(model: nn.Module, weight_decay: float = 0.0, mup_width_mult: float | None = None,
                 ) -> list[dict[str, Any]]:
    hidden, embed, no_decay = [], [], []
    names: dict[str, list[str]] = {"hidden": [], "embed": [], "no_decay": []}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if p.dim() < 2 or name.endswith(".bias"):  # norms, biases, scalars
            bucket = "no_decay"
        elif name.startswith(("embed.", "head.")) or ".embed." in name:
            bucket = "embed"
        else:
            bucket = "hidden"
        {"hidden": hidden, "embed": embed, "no_decay": no_decay}[bucket].append(p)
        names[bucket].append(name)
    hidden_mult = 1.0 / mup_width_mult if mup_width_mult else 1.0
    groups = [
        {"name": "hidden", "params": hidden, "weight_decay": weight_decay, "lr_mult": hidden_mult},
        {"name": "embed", "params": embed, "weight_decay": weight_decay, "lr_mult": 1.0},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0},
    ]
    for g in groups:
        logger.debug("param group %s: %d tensors", g["name"], len(names[g["name"]]))
    return [g for g in groups if g["params"]]


def build_adamw(groups: list[dict[str, Any]], lr: float, betas: tuple[float, float] = (0.9, 0.95),
                eps: float = 1e-8, fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW, fused where the parameters' device supports it (CUDA; CPU in recent torch).

    fused=None picks fused when available; the fused and foreach kernels are numerically the
    same algorithm but may differ in the last bit, so a run and its resume must use the same
    choice (it is recorded in the checkpoint's param_groups).
    """
    kwargs: dict[str, Any] = {"lr": lr, "betas": tuple(betas), "eps": eps}
    if fused is None:
        dev = next(p for g in groups for p in g["params"]).device
        fused = "fused" in inspect.signature(torch.optim.AdamW).parameters and dev.type in ("cuda", "cpu")
    if fused:
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, ValueError) as e:  # device / dtype without a fused kernel
            logger.info("fused AdamW unavailable (%s); using foreach", e)
    return torch.optim.AdamW(groups, foreach=True, **kwargs)
