# SPDX-License-Identifier: Apache-2.0
"""Llama / SmolLM2 (https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct/blob/main/config.json).

The default ModelConfig *is* Llama, so this file is mostly the name translation. Other
decoder families (Granite, GraniteMoE, OLMoE) extend these adapters instead of copying them.
"""

from __future__ import annotations

from typing import Any

from ..config import ConfigError, ModelConfig
from ..errors import CheckpointError
from . import Family, common_from_hf, hf_get, register_family
from .gguf_names import (
    GGUFMetadata,
    GGUFNames,
    Transform,
    f32_short,
    rope_scaling_from_gguf,
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
    """LlamaConfig keys from llama.cpp's `llama.*` metadata (convert_hf_to_gguf.py, read backwards)."""
    name = meta.name
    if meta.tensor_shape("rope_freqs.weight") is not None:
        # Llama 3.1-style frequency factors: HF keeps them as rope_scaling parameters that the
        # tensor does not carry, and dropping it would change the maths silently.
        raise CheckpointError(f"{name}: llama3-style rope_freqs.weight (Llama 3.1 rope scaling) "
                              "is not supported yet")
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
}

GGUF_NAMES = GGUFNames(config=config_from_gguf, tensors=GGUF_TENSORS)


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
