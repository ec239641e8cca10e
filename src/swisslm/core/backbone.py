# SPDX-License-Identifier: Apache-2.0
"""The one transformer stack: Embeddings -> N x Block -> final norm -> head.

Every family is this module with different ModelConfig fields; optional behaviour comes in
through the slots of slots.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from ..config import ModelConfig
from .attention import Attention
from .kv_cache import KVCache
from .linear import Linear
from .mlp import GatedMLP, PlainMLP
from .moe import MoE
from .norms import build_norm
from .rope import rope_cos_sin, rope_inv_freq
from .slots import SlotHost, set_slot


def build_mlp(cfg: ModelConfig) -> nn.Module:
    """The block's feed-forward: MoE when the config has experts, else the gated / plain MLP
    (here rather than in mlp.py, which moe.py builds on: no mlp <-> moe import cycle)."""
    if cfg.num_experts:
        return MoE(cfg)
    cls = GatedMLP if cfg.mlp == "gated" else PlainMLP
    return cls(cfg.hidden_size, cfg.intermediate_size, cfg.activation, cfg.mlp_bias)

class ModelOutput(NamedTuple):
    logits: torch.Tensor | None
    last_hidden_state: torch.Tensor
    aux_loss: torch.Tensor | None = None  # MoE: coef-weighted load-balancing (+ z) loss
    router_logits: tuple[torch.Tensor, ...] | None = None


class Embeddings(nn.Module):
    """Token embedding, plus BERT's absolute-position / token-type tables and LayerNorm."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.multiplier = cfg.embedding_multiplier  # Granite
        self.has_pos, self.has_types, self.has_norm = (
            cfg.position == "absolute", cfg.type_vocab_size > 0, cfg.embed_norm)
        if self.has_pos:
            self.position = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        if self.has_types:
            self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        if self.has_norm:
            self.norm = build_norm(cfg)

    def forward(self, input_ids, position_ids, token_type_ids=None):
        h = self.word(input_ids)
        if self.multiplier != 1.0:
            h = h * self.multiplier
        if self.has_pos:
            h = h + self.position(position_ids)
        if self.has_types:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            h = h + self.token_type(token_type_ids)
        if self.has_norm:
            h = self.norm(h)
        return h


class Head(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.proj = Linear(cfg.hidden_size, cfg.vocab_size, bias=cfg.head_bias)
        self.logits_scaling = cfg.logits_scaling  # Granite divides logits by it

    def forward(self, h):
        logits = self.proj(h)
        if self.logits_scaling != 1.0:
            logits = logits / self.logits_scaling
        return logits


def _identity(h):
    return h


class Block(nn.Module):
    """One layer. The three residual shapes, chosen by config when built:

        pre-norm (Llama)        parallel (GPT-NeoX)             post-norm (BERT)
        x = x + attn(n1(x))     x = x + attn(n1(x)) + mlp(n2(x))  x = n1(x + attn(x))
        x = x + mlp(n2(x))                                        x = n2(x + mlp(x))

    `residual(x, branch)` is a slot (Granite scales the branch by residual_multiplier).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.parallel = cfg.parallel_residual
        self.post_norm = cfg.post_norm
        self.residual_multiplier = cfg.residual_multiplier
        self.norm_attn = build_norm(cfg)
        self.attn = Attention(cfg)
        self.norm_mlp = build_norm(cfg)
        self.mlp = build_mlp(cfg)
        set_slot(self, "mlp", self.mlp)
        set_slot(self, "residual", self.scaled_residual if cfg.residual_multiplier != 1.0 else self.add)

    @staticmethod
    def add(x, branch):
        return x + branch

    def scaled_residual(self, x, branch):
        return x + branch * self.residual_multiplier

    def forward(self, x, rope, mask, input_pos):
        if self.post_norm:
            x = self.norm_attn(self.residual_impl(x, self.attn(x, rope, mask, input_pos)))
            return self.norm_mlp(self.residual_impl(x, self.mlp_impl(x)))
        if self.parallel:
            branch = self.attn(self.norm_attn(x), rope, mask, input_pos) + self.mlp_impl(self.norm_mlp(x))
            return self.residual_impl(x, branch)
        x = self.residual_impl(x, self.attn(self.norm_attn(x), rope, mask, input_pos))
        return self.residual_impl(x, self.mlp_impl(self.norm_mlp(x)))


class Transformer(SlotHost, nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed = Embeddings(cfg)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.final_norm = build_norm(cfg) if not cfg.post_norm else nn.Identity()
        if cfg.lm_head:
            self.head = Head(cfg)
            if cfg.tie_embeddings:
                self.head.proj.weight = self.embed.word.weight
        self.mixins = nn.ModuleDict()
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)
        self.max_cache_len = 0
        # A backend pass may install a faster way to run the blocks (kernels.apply_: the fused
        # one-token CPU step): fused_layers(model, h, rope, mask, input_pos) -> h, or None where
        # it does not take these inputs. Not a slot: it replaces no maths, only how it runs.
        self.fused_layers: Callable | None = None
        set_slot(self, "embed", self.embed)
        set_slot(self, "final_norm", self.final_norm)
        set_slot(self, "output_head", self.head if cfg.lm_head else _identity)
        self._capture_slot_defaults()

    # -- weights -------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self) -> None:
        """Random init (normal(0, initializer_range); output projections scaled by depth as in
        GPT-2/nanoGPT so deep stacks start stable)."""
        std = self.config.initializer_range
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                s = std / math.sqrt(2 * self.config.num_layers) if name.endswith((".out", ".down")) else std
                nn.init.normal_(m.weight, 0.0, s)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, 0.0, std)
            elif hasattr(m, "weight") and m.weight is not None and m.weight.dim() == 1:
                nn.init.ones_(m.weight)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        for mod in self.modules():
            if hasattr(mod, "reset_parameters_moe"):
                mod.reset_parameters_moe(std)
        if self.config.lm_head and self.config.tie_embeddings:
            self.head.proj.weight = self.embed.word.weight

    # -- KV cache (see kv_cache.py) -------------------------------------------------------
    def setup_cache(self, batch_size: int, max_len: int, dtype: torch.dtype | None = None) -> list[KVCache]:
        """Preallocate every layer's KV cache (bound, and returned)."""
        p = next(self.parameters())
        dtype = dtype or (p.dtype if p.is_floating_point() else torch.float32)
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            dtype = torch.float32
        cfg = self.config
        caches = [KVCache(batch_size, cfg.num_kv_heads, max_len, cfg.head_dim, dtype, p.device) for _ in self.layers]
        self.bind_cache(caches)
        return caches

    def caches(self) -> list[KVCache]:
        """The bound caches, one per layer (empty before setup_cache)."""
        return [blk.attn.cache for blk in self.layers if blk.attn.cache is not None]

    def bind_cache(self, caches: list[KVCache]) -> None:
        """Make `caches` (one per layer, e.g. KVCache.view windows of setup_cache's) the ones the
        next forwards read and write; attention masks then cover their slots."""
        if len(caches) != len(self.layers):
            raise ValueError(f"{len(caches)} caches for {len(self.layers)} layers")
        for blk, cache in zip(self.layers, caches):
            blk.attn.cache = cache
        self.max_cache_len = caches[0].max_len if caches else 0

    def clear_cache(self) -> None:
        for blk in self.layers:
            blk.attn.cache = None
        self.max_cache_len = 0

    def reorder_cache(self, index: torch.Tensor, length: int | None = None) -> None:
        """Row i of every cache becomes old row index[i] (beam search; KVCache.reorder_)."""
        for cache in self.caches():
            cache.reorder_(index, length)

    # -- forward -------------------------------------------------------------------------
    def _mask(self, attention_mask, input_pos, B, T, device):
        """Boolean (B, 1, T, S) mask, True = attend; None means plain causal / full attention.

        Cached: computed from the positions (key slot <= query position), never stored as an
        (S, S) table (2 GiB of bools at a 32k context). Query rows whose own token is padding
        are allowed to see themselves (diag) so SDPA never softmaxes an all -inf row into NaN;
        those rows are ignored by every caller.
        """
        if input_pos is not None:  # cached: keys are the whole static buffer
            S = self.max_cache_len
            keys = torch.arange(S, device=device)
            pos = input_pos[..., None]  # (T, 1) shared, or (B, T, 1) per row
            m = (keys <= pos).unsqueeze(-3)  # (1, T, S) or (B, 1, T, S)
            m = m[None] if input_pos.dim() == 1 else m
            if attention_mask is not None:
                diag = (keys == pos).unsqueeze(-3)
                diag = diag[None] if input_pos.dim() == 1 else diag
                m = (m & attention_mask[:, None, None, :S].bool()) | diag
            return m.expand(B, 1, T, S)
        if attention_mask is None:
            return None
        pad = attention_mask[:, None, None, :].bool()  # (B, 1, 1, T)
        if not self.config.causal:
            return pad
        eye = torch.eye(T, dtype=torch.bool, device=device)
        return (torch.ones(T, T, dtype=torch.bool, device=device).tril() & pad) | eye

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        input_pos: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        num_logits_to_keep: int = 0,
    ) -> ModelOutput:
        """input_ids (B, T). With `input_pos` ((T,) shared, or (B, T) per row) the static KV cache
        is read and written at those positions and `attention_mask` covers the whole cache
        (B, S_max)."""
        B, T = input_ids.shape
        device = input_ids.device
        if position_ids is None:
            if input_pos is not None:
                position_ids = input_pos.expand(B, T)
            elif attention_mask is not None and self.config.causal:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            else:
                position_ids = torch.arange(T, device=device)[None].expand(B, T)
        h = self.embed_impl(input_ids, position_ids, token_type_ids)  # (B, T, C)
        rope = rope_cos_sin(self.inv_freq, position_ids, h.dtype) if self.config.position == "rope" else None
        mask = self._mask(attention_mask, input_pos, B, T, device)
        fused = self.fused_layers(self, h, rope, mask, input_pos) if self.fused_layers is not None else None
        if fused is not None:
            h = fused
        else:
            for blk in self.layers:
                h = blk(h, rope, mask, input_pos)
        h = self.final_norm_impl(h)
        logits = None
        if self.config.lm_head:
            logits = self.output_head_impl(h[:, -num_logits_to_keep:] if num_logits_to_keep else h)
        aux_loss = router_logits = None
        if self.config.num_experts:
            from .moe import collect_router_outputs

            aux_loss, router_logits = collect_router_outputs(self, attention_mask if input_pos is None else None)
        return ModelOutput(logits, h, aux_loss, router_logits)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())
