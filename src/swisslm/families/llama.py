# SPDX-License-Identifier: Apache-2.0
"""Llama / SmolLM2 (https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct/blob/main/config.json).

The default ModelConfig *is* Llama, so this file is mostly the name translation. Other
decoder families (Granite, GraniteMoE, OLMoE) extend these adapters instead of copying them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch

from ..config import ConfigError, ModelConfig
from ..errors import CheckpointError
from . import Family, common_from_hf, hf_get, register_family
from .gguf_names import (
    GGUFMetadata,
    GGUFNames,
    Out,
    Transform,
    decoder_meta,
    export_tensors,
    f32_short,
    llama3_rope_factors,
    llama3_rope_from_factors,
    out,
    permute_k_out,
    permute_q_out,
    rope_scaling_from_gguf,
    split,
    unpermute_k,
    unpermute_q,
)
from .weight_map import Part, WeightMap

_ACT = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_tanh",
        "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
# our activation name -> HF's `hidden_act` (every family's config_to_hf uses it)
ACT_TO_HF = {"silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}


def qkv_sizes(cfg: ModelConfig) -> list[int]:
    return [cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim]


def gate_up_sizes(cfg: ModelConfig) -> list[int]:
    return [cfg.intermediate_size, cfg.intermediate_size]


def activation_from_hf(hf: dict[str, Any], key: str = "hidden_act") -> str:
    act = hf_get(hf, key, "silu")
    if act not in _ACT:
        raise ConfigError(f"config.json {key}={act!r} is not supported; supported: {sorted(_ACT)}")
    return _ACT[act]


def rope_from_hf(hf: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling) from transformers v5 `rope_parameters` or v4 keys."""
    params = dict(hf.get("rope_parameters") or {})
    theta = float(params.pop("rope_theta", hf.get("rope_theta", 10000.0)))
    scaling = params or hf.get("rope_scaling")
    if scaling:
        scaling = dict(scaling)
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind == "default":
            return theta, None
        if kind not in ("linear", "llama3"):
            raise ConfigError(f"config.json rope_scaling type {kind!r} is not supported; supported: linear, llama3")
        scaling["rope_type"] = kind
        scaling.pop("type", None)
    return theta, scaling or None


def rope_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    params = {"rope_theta": cfg.rope_theta, "rope_type": "default", **(cfg.rope_scaling or {})}
    out: dict[str, Any] = {"rope_parameters": params}
    return out


# -- GGUF (llama.cpp's `llama` architecture: Llama, SmolLM2, Mistral-style files) ---------------

def config_from_gguf(meta: GGUFMetadata, arch: str) -> dict[str, Any]:
    """LlamaConfig keys from llama.cpp's `llama.*` metadata (convert_hf_to_gguf.py, read backwards).

    Llama 3.x files carry their rope scaling as `rope_freqs.weight` (one factor per frequency);
    it becomes HF's llama3 `rope_scaling` (`llama3_rope_from_factors`), and the tensor is dropped.
    """
    name = meta.name
    hidden = int(meta.require(f"{arch}.embedding_length"))
    heads = int(meta.require(f"{arch}.attention.head_count"))
    kv_heads = int(meta.value(f"{arch}.attention.head_count_kv", heads))
    head_dim = int(meta.value(f"{arch}.attention.key_length", hidden // heads))
    rot_dim = meta.value(f"{arch}.rope.dimension_count")
    if rot_dim is not None and int(rot_dim) != head_dim:
        raise CheckpointError(f"{name}: partial rotary (rope.dimension_count {rot_dim} != "
                              f"head_dim {head_dim}) is not supported for llama")
    vocab = meta.value(f"{arch}.vocab_size")
    if vocab is None:
        dims = meta.tensor_shape("token_embd.weight")
        if dims is None:
            raise CheckpointError(f"{name}: cannot tell the vocabulary size "
                                  "(no vocab_size, no token_embd.weight)")
        vocab = dims[0]
    cfg: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(meta.require(f"{arch}.feed_forward_length")),
        "num_hidden_layers": int(meta.require(f"{arch}.block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": int(meta.value(f"{arch}.context_length", 2048)),
        "rms_norm_eps": f32_short(meta.require(f"{arch}.attention.layer_norm_rms_epsilon")),
        "rope_theta": f32_short(meta.value(f"{arch}.rope.freq_base", 10000.0)),
        "vocab_size": int(vocab),
        "hidden_act": "silu",
        "attention_bias": meta.tensor_shape("blk.0.attn_q.bias") is not None,
        "mlp_bias": False,
        "tie_word_embeddings": meta.tensor_shape("output.weight") is None,
    }
    for hf_key, gguf_key in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                             ("pad_token_id", "padding_token_id")):
        v = meta.value(f"tokenizer.ggml.{gguf_key}")
        if v is not None:
            cfg[hf_key] = int(v)
    rope_scaling = rope_scaling_from_gguf(meta, arch)
    factors = meta.tensor_values("rope_freqs.weight")
    if factors is not None:
        if rope_scaling is not None:
            raise CheckpointError(f"{name}: both rope_freqs.weight and {arch}.rope.scaling.type are set")
        rope_scaling = llama3_rope_from_factors(name, factors, cfg["rope_theta"], head_dim,
                                                meta.value(f"{arch}.context_length"))
    if rope_scaling is not None:
        cfg["rope_scaling"] = rope_scaling
    return cfg


GGUF_TENSORS: dict[str, tuple[str | None, Transform | None]] = {
    "token_embd.weight": ("model.embed_tokens.weight", None),
    "output_norm.weight": ("model.norm.weight", None),
    "output.weight": ("lm_head.weight", None),
    "blk.{layer}.attn_norm.weight": ("model.layers.{layer}.input_layernorm.weight", None),
    "blk.{layer}.attn_q.weight": ("model.layers.{layer}.self_attn.q_proj.weight", unpermute_q),
    "blk.{layer}.attn_k.weight": ("model.layers.{layer}.self_attn.k_proj.weight", unpermute_k),
    "blk.{layer}.attn_v.weight": ("model.layers.{layer}.self_attn.v_proj.weight", None),
    "blk.{layer}.attn_output.weight": ("model.layers.{layer}.self_attn.o_proj.weight", None),
    "blk.{layer}.attn_q.bias": ("model.layers.{layer}.self_attn.q_proj.bias", unpermute_q),
    "blk.{layer}.attn_k.bias": ("model.layers.{layer}.self_attn.k_proj.bias", unpermute_k),
    "blk.{layer}.attn_v.bias": ("model.layers.{layer}.self_attn.v_proj.bias", None),
    "blk.{layer}.attn_output.bias": ("model.layers.{layer}.self_attn.o_proj.bias", None),
    "blk.{layer}.ffn_norm.weight": ("model.layers.{layer}.post_attention_layernorm.weight", None),
    "blk.{layer}.ffn_gate.weight": ("model.layers.{layer}.mlp.gate_proj.weight", None),
    "blk.{layer}.ffn_up.weight": ("model.layers.{layer}.mlp.up_proj.weight", None),
    "blk.{layer}.ffn_down.weight": ("model.layers.{layer}.mlp.down_proj.weight", None),
    # Precomputed rotary tables some old converters wrote; HF recomputes them.
    "blk.{layer}.attn_rot_embd": (None, None),
    # Llama 3.x rope factors: read into the config's llama3 rope_scaling by config_from_gguf.
    "rope_freqs.weight": (None, None),
}

# Our tensors -> llama.cpp's (LlamaModel.modify_tensors): q/k rows permuted for llama.cpp's
# adjacent-pair rotary, fused qkv / gate_up split back into separate tensors.
ATTENTION_OUT: dict[str, Out] = {
    "embed.word.weight": out("token_embd.weight"),
    "final_norm.weight": out("output_norm.weight"),
    "head.proj.weight": out("output.weight"),
    "layers.{layer}.norm_attn.weight": out("blk.{layer}.attn_norm.weight"),
    "layers.{layer}.attn.qkv.weight": split(
        ("blk.{layer}.attn_q.weight", "blk.{layer}.attn_k.weight", "blk.{layer}.attn_v.weight"),
        qkv_sizes, fns=(permute_q_out, permute_k_out, None)),
    "layers.{layer}.attn.qkv.bias": split(
        ("blk.{layer}.attn_q.bias", "blk.{layer}.attn_k.bias", "blk.{layer}.attn_v.bias"),
        qkv_sizes, fns=(permute_q_out, permute_k_out, None)),
    "layers.{layer}.attn.out.weight": out("blk.{layer}.attn_output.weight"),
    "layers.{layer}.attn.out.bias": out("blk.{layer}.attn_output.bias"),
    "layers.{layer}.norm_mlp.weight": out("blk.{layer}.ffn_norm.weight"),
}
GGUF_OUT: dict[str, Out] = {
    **ATTENTION_OUT,
    "layers.{layer}.mlp.gate_up.weight": split(("blk.{layer}.ffn_gate.weight", "blk.{layer}.ffn_up.weight"),
                                               gate_up_sizes),
    "layers.{layer}.mlp.gate_up.bias": split(("blk.{layer}.ffn_gate.bias", "blk.{layer}.ffn_up.bias"),
                                             gate_up_sizes),
    "layers.{layer}.mlp.down.weight": out("blk.{layer}.ffn_down.weight"),
    "layers.{layer}.mlp.down.bias": out("blk.{layer}.ffn_down.bias"),
}


def rope_freqs_out(cfg: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """llama3 rope scaling as llama.cpp stores it: a `rope_freqs.weight` tensor (no metadata)."""
    scaling = cfg.rope_scaling or {}
    if scaling.get("rope_type", scaling.get("type")) == "llama3":
        yield "rope_freqs.weight", torch.from_numpy(llama3_rope_factors(scaling, cfg.rope_theta, cfg.head_dim))


def export_llama(cfg: ModelConfig, state: Mapping[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    yield from rope_freqs_out(cfg)
    yield from export_tensors(GGUF_OUT, cfg, state)


GGUF_NAMES = GGUFNames(config=config_from_gguf, tensors=GGUF_TENSORS, metadata=decoder_meta, export=export_llama)


class Llama(Family):
    name = "llama"
    architectures = ("LlamaForCausalLM",)
    model_type = "llama"
    gguf_architectures = ("llama",)
    GGUF_NAMES = GGUF_NAMES

    WEIGHT_MAP: WeightMap = {
        "model.embed_tokens.weight": "embed.word.weight",
        "model.layers.{layer}.self_attn.q_proj.weight": Part("layers.{layer}.attn.qkv.weight", 0, qkv_sizes),
        "model.layers.{layer}.self_attn.k_proj.weight": Part("layers.{layer}.attn.qkv.weight", 1, qkv_sizes),
        "model.layers.{layer}.self_attn.v_proj.weight": Part("layers.{layer}.attn.qkv.weight", 2, qkv_sizes),
        "model.layers.{layer}.self_attn.q_proj.bias": Part("layers.{layer}.attn.qkv.bias", 0, qkv_sizes),
        "model.layers.{layer}.self_attn.k_proj.bias": Part("layers.{layer}.attn.qkv.bias", 1, qkv_sizes),
        "model.layers.{layer}.self_attn.v_proj.bias": Part("layers.{layer}.attn.qkv.bias", 2, qkv_sizes),
        "model.layers.{layer}.self_attn.o_proj.weight": "layers.{layer}.attn.out.weight",
        "model.layers.{layer}.self_attn.o_proj.bias": "layers.{layer}.attn.out.bias",
        "model.layers.{layer}.mlp.gate_proj.weight": Part("layers.{layer}.mlp.gate_up.weight", 0, gate_up_sizes),
        "model.layers.{layer}.mlp.up_proj.weight": Part("layers.{layer}.mlp.gate_up.weight", 1, gate_up_sizes),
        "model.layers.{layer}.mlp.down_proj.weight": "layers.{layer}.mlp.down.weight",
        "model.layers.{layer}.mlp.gate_proj.bias": Part("layers.{layer}.mlp.gate_up.bias", 0, gate_up_sizes),
        "model.layers.{layer}.mlp.up_proj.bias": Part("layers.{layer}.mlp.gate_up.bias", 1, gate_up_sizes),
        "model.layers.{layer}.mlp.down_proj.bias": "layers.{layer}.mlp.down.bias",
        "model.layers.{layer}.input_layernorm.weight": "layers.{layer}.norm_attn.weight",
        "model.layers.{layer}.post_attention_layernorm.weight": "layers.{layer}.norm_mlp.weight",
        "model.layers.{layer}.self_attn.rotary_emb.inv_freq": None,
        "model.norm.weight": "final_norm.weight",
        "lm_head.weight": "head.proj.weight",
    }

    @classmethod
    def config_from_hf(cls, hf: dict[str, Any]) -> ModelConfig:
        theta, scaling = rope_from_hf(hf)
        heads = hf_get(hf, "num_attention_heads")
        attn_bias = bool(hf.get("attention_bias", False))
        return ModelConfig(
            family=cls.name,
            **common_from_hf(hf),
            num_kv_heads=hf_get(hf, "num_key_value_heads", heads),
            head_dim=hf.get("head_dim"),
            max_position_embeddings=hf_get(hf, "max_position_embeddings", 2048),
            norm_eps=float(hf_get(hf, "rms_norm_eps", 1e-6)),
            attn_bias=attn_bias,
            attn_out_bias=attn_bias,
            mlp_bias=bool(hf.get("mlp_bias", False)),
            activation=activation_from_hf(hf),
            rope_theta=theta,
            rope_scaling=scaling,
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        )

    @classmethod
    def config_to_hf(cls, cfg: ModelConfig) -> dict[str, Any]:
        return {
            **cls.common_to_hf(cfg),
            "num_key_value_heads": cfg.num_kv_heads,
            "head_dim": cfg.head_dim,
            "hidden_act": ACT_TO_HF[cfg.activation],
            "max_position_embeddings": cfg.max_position_embeddings,
            "rms_norm_eps": cfg.norm_eps,
            "attention_bias": cfg.attn_bias,
            "mlp_bias": cfg.mlp_bias,
            "tie_word_embeddings": cfg.tie_embeddings,
            **rope_to_hf(cfg),
        }


register_family(Llama)
