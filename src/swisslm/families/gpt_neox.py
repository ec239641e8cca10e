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

from collections.abc import Iterator, Mapping
from typing import Any

import torch

from ..config import ConfigError, ModelConfig
from ..errors import CheckpointError
from . import Family, common_from_hf, hf_get, register_family
from .gguf_names import GGUFMetadata, GGUFNames, Out, decoder_meta, export_tensors, f32_short, out
from .llama import ACT_TO_HF, activation_from_hf
from .weight_map import LoadOnly, Transform, WeightMap


def neox_deinterleave_qkv(t: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """HF rows (H, 3, D) -> ours (3, H, D); works for the weight (.., C) and the bias."""
    H, D = cfg.num_heads, cfg.head_dim
    return t.reshape(H, 3, D, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


def neox_interleave_qkv(t: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """Inverse of neox_deinterleave_qkv: ours (3, H, D) -> HF (H, 3, D)."""
    H, D = cfg.num_heads, cfg.head_dim
    return t.reshape(3, H, D, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


_L = "gpt_neox.layers.{layer}."

# -- GGUF (llama.cpp's `gptneox`; GPTNeoXModel in convert_hf_to_gguf.py) -----------------------
# llama.cpp de-interleaves the fused qkv to [q; k; v] rows, which is our layout: `attn_qkv` keeps
# its GGUF name on the way in and lands on our qkv as is. Rotary is NEOX (rotate-half), no permute.


def _rotary_pct(rot: int, head_dim: int) -> float:
    """The fraction whose int(head_dim * pct) is `rot`, as HF computes the width. A width of 0
    becomes a fraction that rounds down to 0 again (ModelConfig wants a positive rotary_pct)."""
    if rot == 0:
        return 0.5 / head_dim
    pct = rot / head_dim
    return pct if int(head_dim * pct) == rot else (rot + 1e-6) / head_dim


def config_from_gguf(meta: GGUFMetadata, arch: str) -> dict[str, Any]:
    hidden = int(meta.require(f"{arch}.embedding_length"))
    heads = int(meta.require(f"{arch}.attention.head_count"))
    head_dim = hidden // heads
    rot = int(meta.value(f"{arch}.rope.dimension_count", head_dim))
    if not 0 <= rot <= head_dim:
        raise CheckpointError(f"{meta.name}: rope.dimension_count {rot} is not within 0..head_dim ({head_dim})")
    dims = meta.tensor_shape("token_embd.weight")
    if dims is None:
        raise CheckpointError(f"{meta.name}: GGUF has no token_embd.weight")
    return {
        "architectures": ["GPTNeoXForCausalLM"],
        "model_type": "gpt_neox",
        "vocab_size": int(meta.value(f"{arch}.vocab_size", dims[0])),
        "hidden_size": hidden,
        "intermediate_size": int(meta.require(f"{arch}.feed_forward_length")),
        "num_hidden_layers": int(meta.require(f"{arch}.block_count")),
        "num_attention_heads": heads,
        "max_position_embeddings": int(meta.value(f"{arch}.context_length", 2048)),
        "layer_norm_eps": f32_short(meta.require(f"{arch}.attention.layer_norm_epsilon")),
        "rotary_pct": _rotary_pct(rot, head_dim),
        "rotary_emb_base": f32_short(meta.value(f"{arch}.rope.freq_base", 10000.0)),
        "use_parallel_residual": bool(meta.value(f"{arch}.use_parallel_residual", True)),
        "attention_bias": meta.tensor_shape("blk.0.attn_qkv.bias") is not None,
        "hidden_act": "gelu",
        "tie_word_embeddings": meta.tensor_shape("output.weight") is None,
        **{hf: int(v) for hf, key in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                                      ("pad_token_id", "padding_token_id"))
           if (v := meta.value(f"tokenizer.ggml.{key}")) is not None},
    }


def neox_meta(cfg: ModelConfig, arch: str) -> dict[str, Any]:
    meta = {k: v for k, v in decoder_meta(cfg, arch).items() if ".head_count_kv" not in k}
    meta[f"{arch}.use_parallel_residual"] = bool(cfg.parallel_residual)
    return meta


GGUF_OUT: dict[str, Out] = {
    "embed.word.weight": out("token_embd.weight"),
    "final_norm.weight": out("output_norm.weight"),
    "final_norm.bias": out("output_norm.bias"),
    "head.proj.weight": out("output.weight"),
    **{f"layers.{{layer}}.{ours}.{p}": out(f"blk.{{layer}}.{theirs}.{p}")
       for ours, theirs in (("norm_attn", "attn_norm"), ("norm_mlp", "ffn_norm"), ("attn.qkv", "attn_qkv"),
                            ("attn.out", "attn_output"), ("mlp.up", "ffn_up"), ("mlp.down", "ffn_down"))
       for p in ("weight", "bias")},
}


def export_neox(cfg: ModelConfig, state: Mapping[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    yield from export_tensors(GGUF_OUT, cfg, state)


GGUF_NAMES = GGUFNames(
    config=config_from_gguf,
    tensors={
        "token_embd.weight": ("gpt_neox.embed_in.weight", None),
        "output_norm.weight": ("gpt_neox.final_layer_norm.weight", None),
        "output_norm.bias": ("gpt_neox.final_layer_norm.bias", None),
        "output.weight": ("embed_out.weight", None),
        **{f"blk.{{layer}}.{theirs}.{p}": (_L + f"{hf}.{p}", None)
           for theirs, hf in (("attn_norm", "input_layernorm"), ("ffn_norm", "post_attention_layernorm"),
                              ("attn_output", "attention.dense"), ("ffn_up", "mlp.dense_h_to_4h"),
                              ("ffn_down", "mlp.dense_4h_to_h"))
           for p in ("weight", "bias")},
        "blk.{layer}.attn_qkv.weight": ("blk.{layer}.attn_qkv.weight", None),
        "blk.{layer}.attn_qkv.bias": ("blk.{layer}.attn_qkv.bias", None),
    },
    metadata=neox_meta,
    export=export_neox,
)


class GPTNeoX(Family):
    name = "gpt_neox"
    architectures = ("GPTNeoXForCausalLM",)
    model_type = "gpt_neox"
    gguf_architectures = ("gptneox",)
    GGUF_NAMES = GGUF_NAMES

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
        "blk.{layer}.attn_qkv.weight": LoadOnly("layers.{layer}.attn.qkv.weight"),
        "blk.{layer}.attn_qkv.bias": LoadOnly("layers.{layer}.attn.qkv.bias"),
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
