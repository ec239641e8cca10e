# SPDX-License-Identifier: Apache-2.0
"""OLMoE (https://huggingface.co/allenai/OLMoE-1B-7B-0924/blob/main/config.json).

Llama attention with q/k RMSNorm over the *full* projected width, before the head split and
rotary (`qk_norm="full"`), optional `clip_qkv` on q, k and v, and a top-k MoE MLP (64 experts,
top-8, expert ffn 1024 in the released 1B-7B). Routing is softmax -> top-k, renormalised only
with `norm_topk_prob`. HF stores one gate/up/down Linear per expert; the map stacks them into
our [E, out, in] tensors (gate and up pieces concatenated along dim 1 into `gate_up`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch

from ..config import ModelConfig
from . import hf_get, register_family
from .gguf_names import GGUFMetadata, GGUFNames, Out, decoder_meta, export_tensors, f32_short, out
from .granite_moe import ATTENTION_AND_NORMS, GGUF_EXPERTS, GGUF_EXPERTS_OUT
from .llama import ATTENTION_OUT, GGUF_TENSORS, Llama, config_from_gguf
from .weight_map import Part, WeightMap


def expert_gate_up_sizes(cfg: ModelConfig) -> list[int]:
    return [cfg.moe_intermediate_size, cfg.moe_intermediate_size]


_EXPERT = "model.layers.{layer}.mlp.experts.{expert}."

# llama.cpp runs OLMoE with NEOX (rotate-half) rotary, HF's own layout: q/k are not permuted
# (OlmoeModel is a plain TextModel in convert_hf_to_gguf.py). Norm-top-k and clip_qkv have no
# place in llama.cpp's olmoe graph (it never renormalises, never clamps); they are written as
# `{arch}.expert_weights_norm` / `{arch}.attention.clamp_kqv` so that swisslm reads them back.
_NO_PERMUTE = {k: (hf, None) for k, (hf, _) in GGUF_TENSORS.items()
               if (".ffn_" not in k or "ffn_norm" in k) and k != "blk.{layer}.attn_rot_embd"}


def olmoe_config_from_gguf(meta: GGUFMetadata, arch: str) -> dict[str, Any]:
    cfg = config_from_gguf(meta, arch)
    clip = meta.value(f"{arch}.attention.clamp_kqv")
    cfg.update(architectures=["OlmoeForCausalLM"], model_type="olmoe",
               num_experts=int(meta.require(f"{arch}.expert_count")),
               num_experts_per_tok=int(meta.require(f"{arch}.expert_used_count")),
               intermediate_size=int(meta.value(f"{arch}.expert_feed_forward_length", cfg["intermediate_size"])),
               norm_topk_prob=bool(meta.value(f"{arch}.expert_weights_norm", False)),
               clip_qkv=None if clip is None else f32_short(clip))
    return cfg


def olmoe_meta(cfg: ModelConfig, arch: str) -> dict[str, Any]:
    meta = decoder_meta(cfg, arch)
    meta[f"{arch}.expert_weights_norm"] = bool(cfg.norm_topk_prob)
    if cfg.clip_qkv is not None:
        meta[f"{arch}.attention.clamp_kqv"] = float(cfg.clip_qkv)
    return meta


GGUF_OUT: dict[str, Out] = {
    **{k: (Out(v.names, v.sizes, v.dim) if v.sizes else v) for k, v in ATTENTION_OUT.items()},  # no permute
    "layers.{layer}.attn.qkv_norm.q_norm.weight": out("blk.{layer}.attn_q_norm.weight"),
    "layers.{layer}.attn.qkv_norm.k_norm.weight": out("blk.{layer}.attn_k_norm.weight"),
    **GGUF_EXPERTS_OUT,
}


def export_olmoe(cfg: ModelConfig, state: Mapping[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    yield from export_tensors(GGUF_OUT, cfg, state)


GGUF_NAMES = GGUFNames(
    config=olmoe_config_from_gguf,
    tensors={
        **_NO_PERMUTE,
        "blk.{layer}.attn_q_norm.weight": ("model.layers.{layer}.self_attn.q_norm.weight", None),
        "blk.{layer}.attn_k_norm.weight": ("model.layers.{layer}.self_attn.k_norm.weight", None),
        "blk.{layer}.ffn_gate_inp.weight": ("model.layers.{layer}.mlp.gate.weight", None),
        **{name: (name, None) for name in GGUF_EXPERTS},
    },
    metadata=olmoe_meta,
    export=export_olmoe,
)


class Olmoe(Llama):
    name = "olmoe"
    architectures = ("OlmoeForCausalLM",)
    model_type = "olmoe"
    gguf_architectures = ("olmoe",)
    GGUF_NAMES = GGUF_NAMES

    WEIGHT_MAP: WeightMap = {
        **ATTENTION_AND_NORMS,
        "model.layers.{layer}.self_attn.q_norm.weight": "layers.{layer}.attn.qkv_norm.q_norm.weight",
        "model.layers.{layer}.self_attn.k_norm.weight": "layers.{layer}.attn.qkv_norm.k_norm.weight",
        "model.layers.{layer}.mlp.gate.weight": "layers.{layer}.mlp.router.weight",
        _EXPERT + "gate_proj.weight": Part("layers.{layer}.mlp.gate_up", 0, expert_gate_up_sizes, dim=1),
        _EXPERT + "up_proj.weight": Part("layers.{layer}.mlp.gate_up", 1, expert_gate_up_sizes, dim=1),
        _EXPERT + "down_proj.weight": "layers.{layer}.mlp.down",
        **GGUF_EXPERTS,
    }

    @classmethod
    def config_from_hf(cls, hf: dict[str, Any]) -> ModelConfig:
        clip = hf.get("clip_qkv")
        return super().config_from_hf(hf).replace(
            norm_eps=float(hf_get(hf, "rms_norm_eps", 1e-5)),
            qk_norm="full",
            clip_qkv=None if clip is None else float(clip),
            num_experts=hf_get(hf, "num_experts"),
            num_experts_per_tok=hf_get(hf, "num_experts_per_tok"),
            moe_intermediate_size=hf_get(hf, "intermediate_size"),
            norm_topk_prob=bool(hf.get("norm_topk_prob", False)),
            router_aux_loss_coef=float(hf_get(hf, "router_aux_loss_coef", 0.01)),
            # Not an HF OlmoeConfig key (transformers has no z-loss); read when present.
            router_z_loss_coef=float(hf_get(hf, "router_z_loss_coef", 0.0)),
            extra={"output_router_logits": bool(hf.get("output_router_logits", False))},
        )

    @classmethod
    def config_to_hf(cls, cfg: ModelConfig) -> dict[str, Any]:
        out = super().config_to_hf(cfg)
        for key in ("mlp_bias", "head_dim"):  # OlmoeConfig has neither
            out.pop(key, None)
        out.update(
            intermediate_size=cfg.moe_intermediate_size,
            clip_qkv=cfg.clip_qkv,
            num_experts=cfg.num_experts,
            num_experts_per_tok=cfg.num_experts_per_tok,
            norm_topk_prob=cfg.norm_topk_prob,
            router_aux_loss_coef=cfg.router_aux_loss_coef,
        )
        if cfg.router_z_loss_coef:
            out["router_z_loss_coef"] = cfg.router_z_loss_coef
        return out


register_family(Olmoe)
