# SPDX-License-Identifier: Apache-2.0
"""Prefix-tuning (Li & Liang 2021) as a mixin: trainable key/value prefixes in every layer.

    model.add_mixin("prefix", PrefixTuningMixin.from_config(model.config, prefix_len=16))

SwissArmyTransformer's PrefixTuningMixin, on our `attention_fn` slot: it wraps whatever attention
backend is installed and prepends `prefix_len` learned keys and values (per KV head, so GQA models
learn `num_kv_heads` prefixes, as PEFT does) in front of the sequence's. The prefixes sit after
rotary embedding (they have no position), which is what PEFT's prefix-tuning does too when it feeds
them as past key values. Every query may attend to every prefix slot; the mask for the real keys
is unchanged. The per-layer weights are `mixins.<name>.prefix_k` / `prefix_v`,
shape (layers, kv_heads, prefix_len, head_dim).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from ..core.slots import Mixin
from .lora import attach_trainable, detach_trainable


class PrefixTuningMixin(Mixin):
    wraps = frozenset({"attention_fn"})

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, prefix_len: int = 16,
                 init_std: float = 0.02, freeze_base: bool = True) -> None:
        super().__init__()
        if prefix_len <= 0:
            raise ValueError(f"prefix_len must be > 0, got {prefix_len}")
        shape = (num_layers, num_kv_heads, prefix_len, head_dim)
        self.prefix_len = prefix_len
        self.prefix_k = nn.Parameter(torch.randn(shape) * init_std)
        self.prefix_v = nn.Parameter(torch.randn(shape) * init_std)
        self.freeze_base = freeze_base
        self._frozen: list[nn.Parameter] = []

    @classmethod
    def from_config(cls, cfg: ModelConfig, prefix_len: int = 16, **kw) -> PrefixTuningMixin:
        return cls(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, prefix_len, **kw)

    def attach(self, model: nn.Module) -> None:
        attach_trainable(self, model)

    def detach(self, model: nn.Module) -> None:
        detach_trainable(self, model)

    def attention_fn(self, q, k, v, mask, scale, is_causal, *, prev, layer):
        B, _, T, _ = q.shape  # (B, H, T, D)
        S = k.shape[2]
        P = self.prefix_len
        pk = self.prefix_k[layer].to(k.dtype).expand(B, -1, -1, -1)  # (B, H_kv, P, D)
        pv = self.prefix_v[layer].to(v.dtype).expand(B, -1, -1, -1)
        k = torch.cat([pk, k], dim=2)  # (B, H_kv, P + S, D)
        v = torch.cat([pv, v], dim=2)
        if mask is None and is_causal:  # plain causal forward: build it, shifted by the prefix
            mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)[None, None]
        if mask is not None:
            mask = torch.cat([mask.new_ones(*mask.shape[:-1], P), mask], dim=-1)  # (B, 1, T, P + S)
        return prev(q, k, v, mask, scale, is_causal)

    def extra_repr(self) -> str:
        L, H, P, D = self.prefix_k.shape
        n = 2 * self.prefix_k.numel()
        return f"layers={L}, kv_heads={H}, prefix_len={P}, head_dim={D}, {n:,} parameters"
