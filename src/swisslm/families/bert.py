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
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from ..config import ConfigError, ModelConfig
from ..core.backbone import ModelOutput
from ..errors import CheckpointError
from . import Family, common_from_hf, hf_get, register_family
from .gguf_names import DROP, GGUFMetadata, GGUFNames, Out, export_tensors, f32_short, out, split
from .llama import ACT_TO_HF, activation_from_hf, qkv_sizes
from .weight_map import LoadOnly, Part, WeightMap

_L = "encoder.layer.{layer}."

# -- GGUF (llama.cpp's `bert`; BertModel in convert_hf_to_gguf.py) ----------------------------
# Separate q/k/v (a fused `attn_qkv`, which newer llama.cpp accepts too, lands on our qkv as is);
# post-norm LayerNorms are `attn_output_norm` / `layer_output_norm`. llama.cpp has no pooler
# (its converter drops `pooler.dense`), so the pooler is not exported and a GGUF BERT has none;
# sentence embeddings are pooled as `{arch}.pooling_type` says (mean: 1, as sentence-transformers).
POOLING_MEAN = 1

_GGUF_PAIRS = (  # (llama.cpp, HF) for weight and bias alike
    ("token_embd_norm", "embeddings.LayerNorm"),
    ("blk.{layer}.attn_q", _L + "attention.self.query"),
    ("blk.{layer}.attn_k", _L + "attention.self.key"),
    ("blk.{layer}.attn_v", _L + "attention.self.value"),
    ("blk.{layer}.attn_output", _L + "attention.output.dense"),
    ("blk.{layer}.attn_output_norm", _L + "attention.output.LayerNorm"),
    ("blk.{layer}.ffn_up", _L + "intermediate.dense"),
    ("blk.{layer}.ffn_down", _L + "output.dense"),
    ("blk.{layer}.layer_output_norm", _L + "output.LayerNorm"),
)


def config_from_gguf(meta: GGUFMetadata, arch: str) -> dict[str, Any]:
    dims = meta.tensor_shape("token_embd.weight")
    pos = meta.tensor_shape("position_embd.weight")
    if dims is None or pos is None:
        raise CheckpointError(f"{meta.name}: a BERT GGUF needs token_embd.weight and position_embd.weight")
    types = meta.tensor_shape("token_types.weight")
    cfg = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": dims[0],
        "hidden_size": int(meta.require(f"{arch}.embedding_length")),
        "intermediate_size": int(meta.require(f"{arch}.feed_forward_length")),
        "num_hidden_layers": int(meta.require(f"{arch}.block_count")),
        "num_attention_heads": int(meta.require(f"{arch}.attention.head_count")),
        "max_position_embeddings": pos[0],
        "layer_norm_eps": f32_short(meta.require(f"{arch}.attention.layer_norm_epsilon")),
        "type_vocab_size": types[0] if types is not None else 0,
        "hidden_act": "gelu",
        "position_embedding_type": "absolute",
    }
    pad = meta.value("tokenizer.ggml.padding_token_id")
    if pad is not None:
        cfg["pad_token_id"] = int(pad)
    return cfg


def bert_meta(cfg: ModelConfig, arch: str) -> dict[str, Any]:
    return {
        f"{arch}.context_length": cfg.max_position_embeddings,
        f"{arch}.embedding_length": cfg.hidden_size,
        f"{arch}.block_count": cfg.num_layers,
        f"{arch}.feed_forward_length": cfg.intermediate_size,
        f"{arch}.attention.head_count": cfg.num_heads,
        f"{arch}.attention.layer_norm_epsilon": float(cfg.norm_eps),
        f"{arch}.attention.causal": False,
        f"{arch}.pooling_type": POOLING_MEAN,
        "tokenizer.ggml.token_type_count": max(cfg.type_vocab_size, 1),
    }


GGUF_OUT: dict[str, Out] = {
    "embed.word.weight": out("token_embd.weight"),
    "embed.position.weight": out("position_embd.weight"),
    "embed.token_type.weight": out("token_types.weight"),
    "embed.norm.weight": out("token_embd_norm.weight"),
    "embed.norm.bias": out("token_embd_norm.bias"),
    **{f"layers.{{layer}}.attn.qkv.{p}": split(tuple(f"blk.{{layer}}.attn_{x}.{p}" for x in "qkv"), qkv_sizes)
       for p in ("weight", "bias")},
    **{f"layers.{{layer}}.{ours}.{p}": out(f"blk.{{layer}}.{theirs}.{p}")
       for ours, theirs in (("attn.out", "attn_output"), ("norm_attn", "attn_output_norm"), ("mlp.up", "ffn_up"),
                            ("mlp.down", "ffn_down"), ("norm_mlp", "layer_output_norm"))
       for p in ("weight", "bias")},
    "pooler.dense.weight": DROP,
    "pooler.dense.bias": DROP,
}


def export_bert(cfg: ModelConfig, state: Mapping[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    yield from export_tensors(GGUF_OUT, cfg, state)


GGUF_NAMES = GGUFNames(
    config=config_from_gguf,
    tensors={
        "token_embd.weight": ("embeddings.word_embeddings.weight", None),
        "position_embd.weight": ("embeddings.position_embeddings.weight", None),
        "token_types.weight": ("embeddings.token_type_embeddings.weight", None),
        **{f"{theirs}.{p}": (f"{hf}.{p}", None) for theirs, hf in _GGUF_PAIRS for p in ("weight", "bias")},
        "blk.{layer}.attn_qkv.weight": ("blk.{layer}.attn_qkv.weight", None),
        "blk.{layer}.attn_qkv.bias": ("blk.{layer}.attn_qkv.bias", None),
    },
    metadata=bert_meta,
    export=export_bert,
)

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
    gguf_architectures = ("bert",)
    GGUF_NAMES = GGUF_NAMES

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
        "blk.{layer}.attn_qkv.weight": LoadOnly("layers.{layer}.attn.qkv.weight"),
        "blk.{layer}.attn_qkv.bias": LoadOnly("layers.{layer}.attn.qkv.bias"),
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
