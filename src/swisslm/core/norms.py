# SPDX-License-Identifier: Apache-2.0
"""Normalisation layers. RMSNorm computes in fp32 because bf16 sums of squares lose the
small-variance rows (same reason as HF's LlamaRMSNorm)."""

from __future__ import annotations

import torch
from torch import nn

from .. import kernels
from ..config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if w.dtype == torch.float32 and kernels.decode_ok(x, w):
            return kernels.rms_norm(x, w, self.eps)  # one call instead of six torch ops (decode)
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def build_norm(cfg: ModelConfig, dim: int | None = None) -> nn.Module:
    dim = dim or cfg.hidden_size
    if cfg.norm == "layernorm":
        return nn.LayerNorm(dim, eps=cfg.norm_eps)
    return RMSNorm(dim, eps=cfg.norm_eps)
