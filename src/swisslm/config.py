# SPDX-License-Identifier: Apache-2.0
"""ModelConfig: one flat, typed description of every model swisslm builds.

Defaults are plain Llama. Every behavioural difference between families is a field here
(never a check on a model's name), so a family file only translates HF's config.json into
these fields. The dataclass round-trips through JSON (`to_dict` / `from_dict`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_type_hints


class ConfigError(ValueError):
    """A config value is missing, unknown or contradicts another one (message names the key)."""


@dataclass
class ModelConfig:
    # -- identity ------------------------------------------------------------------------
    family: str = "llama"  # key into the family registry (families/__init__.py)
    # -- sizes ---------------------------------------------------------------------------
    vocab_size: int = 32000
    hidden_size: int = 4096
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int | None = None  # None -> num_heads (MHA)
    head_dim: int | None = None  # None -> hidden_size // num_heads
    intermediate_size: int = 11008
    max_position_embeddings: int = 2048
    # -- norms ---------------------------------------------------------------------------
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    norm_eps: float = 1e-6
    post_norm: bool = False  # BERT: norm after the residual add instead of before the branch
    embed_norm: bool = False  # BERT: LayerNorm on the summed embeddings
    # -- attention -----------------------------------------------------------------------
    causal: bool = True
    attn_bias: bool = False  # bias on q/k/v projections
    attn_out_bias: bool = False  # bias on the output projection
    qk_norm: Literal["none", "per_head", "full"] = "none"  # OLMoE: "full" (before head split)
    clip_qkv: float | None = None
    attn_scale: float | None = None  # None -> head_dim ** -0.5; Granite: attention_multiplier
    # -- positions -----------------------------------------------------------------------
    position: Literal["rope", "absolute"] = "rope"
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # HF's dict: {"rope_type": "llama3"|"linear", ...}
    rotary_pct: float = 1.0  # GPT-NeoX partial rotary
    type_vocab_size: int = 0  # BERT token-type embeddings (0 = none)
    # -- mlp -----------------------------------------------------------------------------
    mlp: Literal["gated", "plain"] = "gated"
    activation: Literal["silu", "gelu", "gelu_tanh", "relu"] = "silu"
    mlp_bias: bool = False
    # -- mixture of experts (num_experts == 0 -> dense) ----------------------------------
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int | None = None  # None -> intermediate_size
    norm_topk_prob: bool = False
    shared_expert_intermediate_size: int = 0  # GraniteMoeShared: 0 = no shared expert
    router_aux_loss_coef: float = 0.0
    router_z_loss_coef: float = 0.0
    # -- residual / head -----------------------------------------------------------------
    parallel_residual: bool = False  # GPT-NeoX: x + attn(ln1(x)) + mlp(ln2(x))
    tie_embeddings: bool = False
    head_bias: bool = False
    lm_head: bool = True  # False for encoders (BERT): forward returns hidden states only
    pooler: bool = False  # BERT: pooler.dense + tanh on the first token -> pooler_output
    embedding_multiplier: float = 1.0  # Granite
    residual_multiplier: float = 1.0  # Granite
    logits_scaling: float = 1.0  # Granite: logits are divided by it
    # -- tokens --------------------------------------------------------------------------
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    # -- init ----------------------------------------------------------------------------
    initializer_range: float = 0.02
    # Values of the source config.json that we carry but do not interpret (written back on
    # export so transformers sees what it saw before).
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Derive, never overwrite what the user set.
        if self.num_kv_heads is None:
            self.num_kv_heads = self.num_heads
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ConfigError(
                    f"hidden_size ({self.hidden_size}) is not divisible by num_heads ({self.num_heads});"
                    " set head_dim explicitly"
                )
            self.head_dim = self.hidden_size // self.num_heads
        if self.moe_intermediate_size is None:
            self.moe_intermediate_size = self.intermediate_size
        self._validate()

    def _validate(self) -> None:
        hints = get_type_hints(type(self))
        for f in dataclasses.fields(self):
            lit = hints[f.name]
            args = get_args(lit)
            if getattr(lit, "__origin__", None) is Literal and getattr(self, f.name) not in args:
                raise ConfigError(f"{f.name}={getattr(self, f.name)!r} is not one of {list(args)}")
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        if not 0.0 < self.rotary_pct <= 1.0:
            raise ConfigError(f"rotary_pct must be in (0, 1], got {self.rotary_pct}")
        if self.position == "rope" and self.rotary_dim + self.rotary_dim % 2 > self.head_dim:
            raise ConfigError(f"rotary width int(head_dim * rotary_pct) = {self.rotary_dim} is odd and rotates "
                              f"{self.rotary_dim + 1} channels, more than head_dim ({self.head_dim})")
        if self.num_experts and not 0 < self.num_experts_per_tok <= self.num_experts:
            raise ConfigError(
                f"num_experts_per_tok ({self.num_experts_per_tok}) must be in 1..num_experts"
                f" ({self.num_experts})"
            )
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("rope_type", self.rope_scaling.get("type", "default"))
            if kind not in ("default", "linear", "llama3"):
                raise ConfigError(f"rope_scaling.rope_type={kind!r} is not one of ['linear', 'llama3']")

    # -- derived values used by the backbone ---------------------------------------------
    @property
    def rotary_dim(self) -> int:
        # int(head_dim * rotary_pct) as transformers computes it; an odd width d gets ceil(d / 2)
        # frequencies (exponents over d), so it rotates d + 1 channels (rope.py), as HF's NeoX does.
        return int(self.head_dim * self.rotary_pct)

    @property
    def scale(self) -> float:
        return self.attn_scale if self.attn_scale is not None else self.head_dim**-0.5

    @property
    def eos_ids(self) -> list[int]:
        e = self.eos_token_id
        return [] if e is None else ([e] if isinstance(e, int) else list(e))

    # -- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s): {', '.join(unknown)}")
        return cls(**d)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))
