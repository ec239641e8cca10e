# SPDX-License-Identifier: Apache-2.0
"""Rotary position embedding (rotate-half layout, as HF checkpoints store q/k).

cos/sin are computed per forward from the position ids in fp32 (as HF does): no table to
outgrow, and positions may differ per row (left-padded batches).
"""

from __future__ import annotations

import math

import torch

from ..config import ModelConfig


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """On the current default device; the values are always computed on the CPU. (Built under
    `torch.device("meta")`, tensor math here would run torch's Python meta functions, whose first
    call imports torch._dynamo: seconds of every model load.)"""
    return _inv_freq_cpu(cfg).to(torch.get_default_device())


def _inv_freq_cpu(cfg: ModelConfig) -> torch.Tensor:
    dim = cfg.rotary_dim
    arange = torch.arange(0, dim, 2, dtype=torch.int64, device="cpu")
    inv_freq = 1.0 / (cfg.rope_theta ** (arange.float() / dim))
    scaling = cfg.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "linear":
        inv_freq = inv_freq / float(scaling["factor"])
    elif kind == "llama3":
        # Llama 3.1: keep high frequencies, divide low ones by `factor`, blend in between.
        factor = float(scaling["factor"])
        low = float(scaling.get("low_freq_factor", 1.0))
        high = float(scaling.get("high_freq_factor", 4.0))
        old_ctx = float(scaling["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        inv_freq = torch.where(medium, smoothed, scaled)
    return inv_freq


def rope_cos_sin(inv_freq: torch.Tensor, position_ids: torch.Tensor, dtype: torch.dtype):
    """position_ids (B, T) -> cos, sin of shape (B, 1, T, 2 * len(inv_freq)) (rotary_dim rounded up to even)."""
    freqs = position_ids[:, :, None].float() * inv_freq[None, None, :]  # (B, T, rd/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, rd)
    return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(
    q: torch.Tensor, k: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate the first rotary_dim channels of q, k (B, H, T, D); the rest pass through (NeoX)."""
    cos, sin = rope
    rd = cos.shape[-1]
    if rd == q.shape[-1]:
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
    q_rot, q_pass = q[..., :rd], q[..., rd:]
    k_rot, k_pass = k[..., :rd], k[..., rd:]
    q_rot = q_rot * cos + _rotate_half(q_rot) * sin
    k_rot = k_rot * cos + _rotate_half(k_rot) * sin
    return torch.cat((q_rot, q_pass), dim=-1), torch.cat((k_rot, k_pass), dim=-1)


def no_rotary(q: torch.Tensor, k: torch.Tensor, rope) -> tuple[torch.Tensor, torch.Tensor]:
    return q, k
