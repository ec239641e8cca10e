# SPDX-License-Identifier: Apache-2.0
"""BERT encoders (`BertModel`; e.g. all-MiniLM-L6-v2,
https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2/blob/main/config.json).

Word + absolute-position + token-type embeddings with a LayerNorm, post-norm blocks
(x = LN(x + attn(x)); x = LN(x + mlp(x))), biased projections, GELU MLP, bidirectional
attention with a padding mask, no LM head: the model returns hidden states. Sentence
embeddings are mean-pooled (mixins/pooling.py).

The pooler (`pooler.dense`, tanh on the [CLS] state, BertModel's `pooler_output`) is not part of
the backbone: it is dropped on load, so an exported folder lacks it and transformers initialises
it randomly (last_hidden_state, which embeddings use, is unaffected).
"""

from __future__ import annotations

from typing import Any

from ..config import ConfigError, ModelConfig
from ..io.weight_map import Part, WeightMap
from . import Family, common_from_hf, hf_get, register_family
from .llama import _ACT_BACK, activation_from_hf, qkv_sizes

_L = "encoder.layer.{layer}."


class Bert(Family):
    name = "bert"
    architectures = ("BertModel",)
    model_type = "bert"

    WEIGHT_MAP: WeightMap = {
        "embeddings.word_embeddings.weight": "embed.word.weight",
        "embeddings.position_embeddings.weight": "embed.position.weight",
        "embeddings.token_type_embeddings.weight": "embed.token_type.weight",
        "embeddings.LayerNorm.weight": "embed.norm.weight",
        "embeddings.LayerNorm.bias": "embed.norm.bias",
        "embeddings.position_ids": None,  # arange buffer saved by old transformers
        _L + "attention.self.query.weight": Part("layers.{layer}.attn.qkv.weight", 0, qkv_sizes),
        _L + "attention.self.key.weight": Part("layers.{layer}.attn.qkv.weight", 1, qkv_sizes),
        _L + "attention.self.value.weight": Part("layers.{layer}.attn.qkv.weight", 2, qkv_sizes),
        _L + "attention.self.query.bias": Part("layers.{layer}.attn.qkv.bias", 0, qkv_sizes),
        _L + "attention.self.key.bias": Part("layers.{layer}.attn.qkv.bias", 1, qkv_sizes),
        _L + "attention.self.value.bias": Part("layers.{layer}.attn.qkv.bias", 2, qkv_sizes),
        _L + "attention.output.dense.weight": "layers.{layer}.attn.out.weight",
        _L + "attention.output.dense.bias": "layers.{layer}.attn.out.bias",
        _L + "attention.output.LayerNorm.weight": "layers.{layer}.norm_attn.weight",
        _L + "attention.output.LayerNorm.bias": "layers.{layer}.norm_attn.bias",
        _L + "intermediate.dense.weight": "layers.{layer}.mlp.up.weight",
        _L + "intermediate.dense.bias": "layers.{layer}.mlp.up.bias",
        _L + "output.dense.weight": "layers.{layer}.mlp.down.weight",
        _L + "output.dense.bias": "layers.{layer}.mlp.down.bias",
        _L + "output.LayerNorm.weight": "layers.{layer}.norm_mlp.weight",
        _L + "output.LayerNorm.bias": "layers.{layer}.norm_mlp.bias",
        "pooler.dense.weight": None,
        "pooler.dense.bias": None,
    }

    @classmethod
    def config_from_hf(cls, hf: dict[str, Any]) -> ModelConfig:
        pos = hf.get("position_embedding_type", "absolute")
        if pos != "absolute":
            raise ConfigError(f"BERT position_embedding_type={pos!r} is not supported (only 'absolute')")
        if hf.get("is_decoder") or hf.get("add_cross_attention"):
            raise ConfigError("BERT as a decoder (is_decoder / add_cross_attention) is not supported")
        return ModelConfig(
            family=cls.name,
            **common_from_hf(hf),
            max_position_embeddings=hf_get(hf, "max_position_embeddings", 512),
            norm="layernorm",
            norm_eps=float(hf_get(hf, "layer_norm_eps", 1e-12)),
            post_norm=True,
            embed_norm=True,
            causal=False,
            attn_bias=True,
            attn_out_bias=True,
            position="absolute",
            type_vocab_size=hf_get(hf, "type_vocab_size", 2),
            mlp="plain",
            mlp_bias=True,
            activation=activation_from_hf(hf, "hidden_act"),
            lm_head=False,
        )

    @classmethod
    def config_to_hf(cls, cfg: ModelConfig) -> dict[str, Any]:
        return {
            **cls.common_to_hf(cfg),
            "hidden_act": _ACT_BACK[cfg.activation],
            "max_position_embeddings": cfg.max_position_embeddings,
            "type_vocab_size": cfg.type_vocab_size,
            "layer_norm_eps": cfg.norm_eps,
            "position_embedding_type": "absolute",
        }


register_family(Bert)
