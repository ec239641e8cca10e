# SPDX-License-Identifier: Apache-2.0
"""Self-attention: fused qkv projection, GQA, rotary, static KV cache, SDPA.

Attention functions share one signature (q, k, v, mask, scale, is_causal); the `attention_fn`
slot defaults to SDPA, `eager_attention` is the reference maths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .kv_cache import KVCache
from .linear import Linear
from .norms import RMSNorm
from .rope import apply_rotary, no_rotary
from .slots import set_slot


def sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    is_causal: bool,
) -> torch.Tensor:
    """q (B, H, T, D), k/v (B, H_kv, S, D), mask bool (B, 1, T, S) True = attend."""
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, scale=scale, is_causal=is_causal and mask is None,
        enable_gqa=q.shape[1] != k.shape[1],
    )


def eager_attention(q, k, v, mask, scale, is_causal):
    """Reference maths (softmax in fp32); slow, for debugging and numerics checks."""
    rep = q.shape[1] // k.shape[1]
    if rep > 1:
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scores = (q @ k.transpose(-1, -2)).float() * scale  # (B, H, T, S)
    if mask is None and is_causal:
        T, S = q.shape[2], k.shape[2]
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1).to(q.dtype) @ v


class QKVTransform(nn.Module):
    """Config-driven q/k/v post-processing: q/k RMSNorm (OLMoE: over the full projected width,
    before the head split) then clip_qkv. Identity for Llama."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.qk_norm = cfg.qk_norm
        self.clip = cfg.clip_qkv
        self.head_dim = cfg.head_dim
        if cfg.qk_norm == "full":
            self.q_norm = RMSNorm(cfg.num_heads * cfg.head_dim, cfg.norm_eps)
            self.k_norm = RMSNorm(cfg.num_kv_heads * cfg.head_dim, cfg.norm_eps)
        elif cfg.qk_norm == "per_head":
            self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)

    def forward(self, q, k, v):
        if self.qk_norm == "full":
            q, k = self.q_norm(q), self.k_norm(k)
        elif self.qk_norm == "per_head":
            B, T, _ = q.shape
            q = self.q_norm(q.view(B, T, -1, self.head_dim)).view(B, T, -1)
            k = self.k_norm(k.view(B, T, -1, self.head_dim)).view(B, T, -1)
        if self.clip is not None:
            q, k, v = (t.clamp(-self.clip, self.clip) for t in (q, k, v))
        return q, k, v


def identity_qkv(q, k, v):
    return q, k, v


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_size, self.kv_size = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.scale = cfg.scale
        self.causal = cfg.causal
        self.qkv = Linear(cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=cfg.attn_bias)
        self.out = Linear(self.q_size, cfg.hidden_size, bias=cfg.attn_out_bias)
        self.cache: KVCache | None = None
        has_transform = cfg.qk_norm != "none" or cfg.clip_qkv is not None
        if has_transform:
            self.qkv_norm = QKVTransform(cfg)
        # Slot defaults (see slots.py); the forward calls only these attributes.
        set_slot(self, "qkv_transform", self.qkv_norm if has_transform else identity_qkv)
        set_slot(self, "position_embedding", apply_rotary if cfg.position == "rope" else no_rotary)
        set_slot(self, "attention_fn", sdpa_attention)

    def forward(self, x, rope, mask, input_pos):
        return self.out(self.attend(self.qkv(x), rope, mask, input_pos))

    def attend(self, qkv, rope, mask, input_pos):
        """qkv (B, T, (H + 2 H_kv) D) -> (B, T, H D), the input of the output projection."""
        B, T, _ = qkv.shape
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q, k, v = self.qkv_transform_impl(q, k, v)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # (B, H_kv, T, D)
        v = v.view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # (B, H_kv, T, D)
        q, k = self.position_embedding_impl(q, k, rope)
        if input_pos is not None:
            k, v = self.cache.update(input_pos, k, v)  # (B, H_kv, S_max, D)
        y = self.attention_fn_impl(q, k, v, mask, self.scale, self.causal)  # (B, H, T, D)
        return y.transpose(1, 2).reshape(B, T, self.q_size)
