# SPDX-License-Identifier: Apache-2.0
"""BERT encoders (`BertModel`; e.g. all-MiniLM-L6-v2,
https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2/blob/main/config.json).

Word + absolute-position + token-type embeddings with a LayerNorm, post-norm blocks
(x = LN(x + attn(x)); x = LN(x + mlp(x))), biased projections, GELU MLP, bidirectional
attention with a padding mask, no LM head: the model returns hidden states. Sentence
embeddings are mean-pooled (mixins/pooling.py).

BertModel's pooler (`pooler.dense`, tanh on the first ([CLS]) token's state) is a family-owned
module `model.pooler`, outside the shared stack: the forward of a BERT model returns an
`EncoderOutput`, the backbone's ModelOutput plus `pooler_output` (B, C), None when the checkpoint
has no pooler. transformers' config.json does not say whether there is one
(BertModel(add_pooling_layer=False) writes the same config), so the tensors decide on load and
the export writes `pooler.dense.*` exactly when the source had them.
"""

from __future__ import annotations

from collections import namedtuple
from typing import Any

import torch
from torch import nn

from ..config import ConfigError, ModelConfig
from ..core.backbone import ModelOutput
from . import Family, common_from_hf, hf_get, register_family
from .llama import ACT_TO_HF, activation_from_hf, qkv_sizes
from .weight_map import Part, WeightMap

_L = "encoder.layer.{layer}."

# ModelOutput's fields plus HF's `pooler_output` (derived, so a field added to ModelOutput carries over).
EncoderOutput = namedtuple("EncoderOutput", [*ModelOutput._fields, "pooler_output"])


class BertPooler(nn.Module):
    """HF's BertPooler: tanh(dense(h[:, 0])), the first token whatever the padding."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(h[:, 0]))  # (B, C)


def _add_pooler_output(model: nn.Module, args: Any, out: ModelOutput) -> EncoderOutput:
    """Forward hook: the backbone's output plus `pooler_output` (None without a pooler)."""
    pooler = getattr(model, "pooler", None)
    return EncoderOutput(*out, pooler(out.last_hidden_state) if pooler is not None else None)


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
        "pooler.dense.weight": "pooler.dense.weight",
        "pooler.dense.bias": "pooler.dense.bias",
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
            pooler=True,  # BertModel's default (add_pooling_layer=True); config_from_weights corrects it
        )

    @classmethod
    def config_from_weights(cls, cfg: ModelConfig, names: set[str]) -> ModelConfig:
        has = {"pooler.dense.weight", "pooler.dense.bias"} & names
        if len(has) == 1:  # let the loader's shape/missing check name the absent half
            return cfg.replace(pooler=True)
        return cfg.replace(pooler=bool(has))

    @classmethod
    def attach_modules(cls, model: Any) -> None:
        if model.config.pooler:
            model.pooler = BertPooler(model.config)
        model.register_forward_hook(_add_pooler_output)

    @classmethod
    def config_to_hf(cls, cfg: ModelConfig) -> dict[str, Any]:
        return {
            **cls.common_to_hf(cfg),
            "hidden_act": ACT_TO_HF[cfg.activation],
            "max_position_embeddings": cfg.max_position_embeddings,
            "type_vocab_size": cfg.type_vocab_size,
            "layer_norm_eps": cfg.norm_eps,
            "position_embedding_type": "absolute",
        }


register_family(Bert)
