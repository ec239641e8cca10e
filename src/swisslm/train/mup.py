# SPDX-License-Identifier: Apache-2.0
"""muP width transfer as Granite (PowerLM / Granite 3) does it.

A proxy of hidden size `base_width` is tuned; a model of width d reuses its hyperparameters
with m = d / base_width and:

    attention scale        1 / head_dim                  (instead of 1/sqrt(head_dim))
    logits                 divided by m                  (ModelConfig.logits_scaling = m)
    embedding multiplier   the proxy's value             (Granite 3: 12)
    residual multiplier    the proxy's value             (Granite 3: 0.22)
    hidden matrices        init std / sqrt(m), Adam lr / m   (attention + MLP/MoE weights)
    embeddings, head       init std and lr unchanged

Granite 3 8B shows the recipe in its config.json: hidden 4096, logits_scaling 16 (= 4096/256),
attention_multiplier 1/128 (= 1/head_dim), embedding_multiplier 12, residual_multiplier 0.22.
The multipliers are plain ModelConfig fields, so a muP model exports to HF as a Granite model.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..config import ModelConfig


def width_mult(cfg: ModelConfig, base_width: int) -> float:
    return cfg.hidden_size / base_width


def apply_mup_config(cfg: ModelConfig, mup: Any) -> ModelConfig:
    m = width_mult(cfg, mup.base_width)
    return cfg.replace(attn_scale=1.0 / cfg.head_dim, logits_scaling=m,
                       embedding_multiplier=mup.embedding_multiplier,
                       residual_multiplier=mup.residual_multiplier)


@torch.no_grad()
def mup_init_(model: nn.Module, base_width: int) -> None:
    """Rescale the hidden matrices' init (already drawn by `init_weights`) by 1/sqrt(m)."""
    m = width_mult(model.config, base_width)
    if m == 1.0:
        return
    for name, p in model.named_parameters():
        if p.dim() >= 2 and name.startswith("layers.") and not name.endswith(".bias"):
            p.mul_(1.0 / math.sqrt(m))
