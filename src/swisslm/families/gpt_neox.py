# SPDX-License-Identifier: Apache-2.0
"""GPT-NeoX / Pythia (https://huggingface.co/EleutherAI/pythia-160m/blob/main/config.json).

LayerNorm with bias, partial rotary (`rotary_pct`, 0.25 in Pythia; rotary width
int(head_dim * rotary_pct) as transformers computes it, an odd width rotating one channel more with
frequency exponents over the odd width, as HF's inv_freq / cat(freqs, freqs) do), parallel residual
(x + attn(ln1(x)) + mlp(ln2(x))) or sequential, biased attention and GELU MLP, untied
`embed_out`. The fused `query_key_value` stores its rows per head as (H, 3, D): the map
de-interleaves it into our [q; k; v] rows (CT2: `reshape(H, 3, -1, C).swapaxes(0, 1)`), and the
inverse re-interleaves on export.
"""

from __future__ import annotations

from typing import Any

import torch

from ..config import ConfigError, ModelConfig
from . import Family, common_from_hf, hf_get, register_family
from .llama import ACT_TO_HF, activation_from_hf
from .weight_map import Transform, WeightMap


def neox_deinterleave_qkv(t: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """HF rows (H, 3, D) -> ours (3, H, D); works for the weight (.., C) and the bias."""
    H, D = cfg.num_heads, cfg.head_dim
    return t.reshape(H, 3, D, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


def neox_interleave_qkv(t: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """Inverse of neox_deinterleave_qkv: ours (3, H, D) -> HF (H, 3, D)."""
    H, D = cfg.num_heads, cfg.head_dim
    return t.reshape(3, H, D, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


_L = "gpt_neox.layers.{layer}."


class GPTNeoX(Family):
    name = "gpt_neox"
    architectures = ("GPTNeoXForCausalLM",)
    model_type = "gpt_neox"

    WEIGHT_MAP: WeightMap = {
        "gpt_neox.embed_in.weight": "embed.word.weight",
        _L + "input_layernorm.weight": "layers.{layer}.norm_attn.weight",
        _L + "input_layernorm.bias": "layers.{layer}.norm_attn.bias",
        _L + "post_attention_layernorm.weight": "layers.{layer}.norm_mlp.weight",
        _L + "post_attention_layernorm.bias": "layers.{layer}.norm_mlp.bias",
        _L + "attention.query_key_value.weight": Transform(
            "layers.{layer}.attn.qkv.weight", neox_deinterleave_qkv, neox_interleave_qkv),
        _L + "attention.query_key_value.bias": Transform(
            "layers.{layer}.attn.qkv.bias", neox_deinterleave_qkv, neox_interleave_qkv),
        _L + "attention.dense.weight": "layers.{layer}.attn.out.weight",
        _L + "attention.dense.bias": "layers.{layer}.attn.out.bias",
        _L + "mlp.dense_h_to_4h.weight": "layers.{layer}.mlp.up.weight",
        _L + "mlp.dense_h_to_4h.bias": "layers.{layer}.mlp.up.bias",
        _L + "mlp.dense_4h_to_h.weight": "layers.{layer}.mlp.down.weight",
        _L + "mlp.dense_4h_to_h.bias": "layers.{layer}.mlp.down.bias",
        # Buffers older checkpoints carry (causal mask, rotary table): recomputed, not loaded.
        _L + "attention.bias": None,
        _L + "attention.masked_bias": None,
        _L + "attention.rotary_emb.inv_freq": None,
        "gpt_neox.final_layer_norm.weight": "final_norm.weight",
        "gpt_neox.final_layer_norm.bias": "final_norm.bias",
        "embed_out.weight": "head.proj.weight",
    }

    @classmethod
    def config_from_hf(cls, hf: dict[str, Any]) -> ModelConfig:
        # transformers v5 nests rotary settings in rope_parameters; v4 / original Pythia configs
        # have top-level rotary_pct and rotary_emb_base.
        rope = hf.get("rope_parameters") or {}
        kind = rope.get("rope_type", "default")
        if kind != "default" or hf.get("rope_scaling"):
            raise ConfigError(f"GPT-NeoX rope scaling {kind if kind != 'default' else hf.get('rope_scaling')!r}"
                              " is not supported (only default rotary)")
        bias = bool(hf.get("attention_bias", True))
        return ModelConfig(
            family=cls.name,
            **common_from_hf(hf),
            max_position_embeddings=hf_get(hf, "max_position_embeddings", 2048),
            norm="layernorm",
            norm_eps=float(hf_get(hf, "layer_norm_eps", 1e-5)),
            attn_bias=bias,
            attn_out_bias=bias,
            rope_theta=float(rope.get("rope_theta", hf.get("rotary_emb_base", 10000.0))),
            rotary_pct=float(rope.get("partial_rotary_factor", hf.get("rotary_pct", 0.25))),
            mlp="plain",
            mlp_bias=True,
            activation=activation_from_hf(hf, "hidden_act"),
            parallel_residual=bool(hf.get("use_parallel_residual", True)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        )

    @classmethod
    def config_to_hf(cls, cfg: ModelConfig) -> dict[str, Any]:
        if cfg.num_kv_heads != cfg.num_heads or cfg.head_dim * cfg.num_heads != cfg.hidden_size:
            raise ConfigError("GPT-NeoX needs num_kv_heads == num_heads and head_dim == hidden_size / num_heads")
        return {
            **cls.common_to_hf(cfg),
            "hidden_act": ACT_TO_HF[cfg.activation],
            "max_position_embeddings": cfg.max_position_embeddings,
            "layer_norm_eps": cfg.norm_eps,
            "attention_bias": cfg.attn_bias,
            "use_parallel_residual": cfg.parallel_residual,
            "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta,
                                "partial_rotary_factor": cfg.rotary_pct},
            "tie_word_embeddings": cfg.tie_embeddings,
        }


register_family(GPTNeoX)
