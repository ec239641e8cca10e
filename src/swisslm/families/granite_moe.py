# SPDX-License-Identifier: Apache-2.0
"""GraniteMoE / PowerMoE (https://huggingface.co/ibm/PowerMoE-3b/blob/main/config.json) and
GraniteMoeShared (GraniteMoE + an always-on shared expert).

Granite's multipliers on a top-k MoE MLP. HF's router takes the top-k *logits* and softmaxes
over those k, which is softmax-over-all-then-renormalise: `norm_topk_prob=True` in our terms.
The checkpoint already stores experts stacked as [E, out, in] (`input_linear` = [gate; up]),
which is our own layout, so the map is a rename.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch

from ..config import ModelConfig
from . import hf_get, register_family
from .gguf_names import GGUFMetadata, GGUFNames, Out, export_tensors, out, split
from .granite import Granite, granite_config_from_gguf, granite_meta
from .llama import ATTENTION_OUT, GGUF_TENSORS, Llama, rope_freqs_out
from .weight_map import LoadOnly, Part, WeightMap

_MOE = "model.layers.{layer}.block_sparse_moe."

ATTENTION_AND_NORMS: WeightMap = {k: v for k, v in Llama.WEIGHT_MAP.items() if ".mlp." not in k}


def expert_gate_up_sizes(cfg: ModelConfig) -> list[int]:
    return [cfg.moe_intermediate_size, cfg.moe_intermediate_size]


def shared_gate_up_sizes(cfg: ModelConfig) -> list[int]:
    return [cfg.shared_expert_intermediate_size, cfg.shared_expert_intermediate_size]


# llama.cpp stores experts stacked per layer with gate and up apart ([E, ff, hidden] each); they
# keep their GGUF names on the way in (see GGUF_TENSORS below) and land in our fused gate_up.
GGUF_EXPERTS: WeightMap = {
    "blk.{layer}.ffn_gate_exps.weight": LoadOnly(Part("layers.{layer}.mlp.gate_up", 0, expert_gate_up_sizes, dim=1)),
    "blk.{layer}.ffn_up_exps.weight": LoadOnly(Part("layers.{layer}.mlp.gate_up", 1, expert_gate_up_sizes, dim=1)),
    "blk.{layer}.ffn_down_exps.weight": LoadOnly("layers.{layer}.mlp.down"),
}
GGUF_EXPERTS_OUT: dict[str, Out] = {
    "layers.{layer}.mlp.router.weight": out("blk.{layer}.ffn_gate_inp.weight"),
    "layers.{layer}.mlp.gate_up": split(("blk.{layer}.ffn_gate_exps.weight", "blk.{layer}.ffn_up_exps.weight"),
                                        expert_gate_up_sizes, dim=1),
    "layers.{layer}.mlp.down": out("blk.{layer}.ffn_down_exps.weight"),
}
_PASS = {name: (name, None) for name in GGUF_EXPERTS}


def granite_moe_config_from_gguf(meta: GGUFMetadata, arch: str) -> dict[str, Any]:
    cfg = granite_config_from_gguf(meta, arch)
    shared = meta.value(f"{arch}.expert_shared_feed_forward_length")
    cfg.update(architectures=["GraniteMoeSharedForCausalLM" if shared else "GraniteMoeForCausalLM"],
               model_type="granitemoeshared" if shared else "granitemoe",
               num_local_experts=int(meta.require(f"{arch}.expert_count")),
               num_experts_per_tok=int(meta.require(f"{arch}.expert_used_count")),
               intermediate_size=int(meta.value(f"{arch}.expert_feed_forward_length", cfg["intermediate_size"])))
    if shared:
        cfg["shared_intermediate_size"] = int(shared)
    return cfg


def granite_moe_meta(cfg: ModelConfig, arch: str) -> dict[str, Any]:
    meta = granite_meta(cfg, arch)
    if cfg.shared_expert_intermediate_size:
        meta[f"{arch}.expert_shared_feed_forward_length"] = cfg.shared_expert_intermediate_size
    return meta


GGUF_OUT: dict[str, Out] = {
    **ATTENTION_OUT,
    **GGUF_EXPERTS_OUT,
    "layers.{layer}.mlp.shared.gate_up.weight": split(
        ("blk.{layer}.ffn_gate_shexp.weight", "blk.{layer}.ffn_up_shexp.weight"), shared_gate_up_sizes),
    "layers.{layer}.mlp.shared.down.weight": out("blk.{layer}.ffn_down_shexp.weight"),
}


def export_granite_moe(cfg: ModelConfig, state: Mapping[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    yield from rope_freqs_out(cfg)
    yield from export_tensors(GGUF_OUT, cfg, state)


GGUF_NAMES = GGUFNames(
    config=granite_moe_config_from_gguf,
    tensors={
        **{k: v for k, v in GGUF_TENSORS.items() if ".ffn_" not in k or "ffn_norm" in k},
        "blk.{layer}.ffn_gate_inp.weight": (_MOE + "router.layer.weight", None),
        **_PASS,
        "blk.{layer}.ffn_gate_shexp.weight": ("blk.{layer}.ffn_gate_shexp.weight", None),
        "blk.{layer}.ffn_up_shexp.weight": ("blk.{layer}.ffn_up_shexp.weight", None),
        "blk.{layer}.ffn_down_shexp.weight": ("model.layers.{layer}.shared_mlp.output_linear.weight", None),
    },
    metadata=granite_moe_meta,
    export=export_granite_moe,
)


class GraniteMoe(Granite):
    name = "granite_moe"
    architectures = ("GraniteMoeForCausalLM",)
    model_type = "granitemoe"
    gguf_architectures = ("granitemoe",)
    GGUF_NAMES = GGUF_NAMES

    WEIGHT_MAP: WeightMap = {
        **ATTENTION_AND_NORMS,
        _MOE + "router.layer.weight": "layers.{layer}.mlp.router.weight",
        _MOE + "input_linear.weight": "layers.{layer}.mlp.gate_up",
        _MOE + "output_linear.weight": "layers.{layer}.mlp.down",
        **GGUF_EXPERTS,
    }

    @classmethod
    def config_from_hf(cls, hf: dict[str, Any]) -> ModelConfig:
        return super().config_from_hf(hf).replace(
            num_experts=hf_get(hf, "num_local_experts"),
            num_experts_per_tok=hf_get(hf, "num_experts_per_tok"),
            moe_intermediate_size=hf_get(hf, "intermediate_size"),
            norm_topk_prob=True,
            router_aux_loss_coef=float(hf_get(hf, "router_aux_loss_coef", 0.001)),
            extra={"output_router_logits": bool(hf.get("output_router_logits", False))},
        )

    @classmethod
    def config_to_hf(cls, cfg: ModelConfig) -> dict[str, Any]:
        out = super().config_to_hf(cfg)
        out.pop("mlp_bias", None)  # GraniteMoe has no dense MLP
        return {
            **out,
            "intermediate_size": cfg.moe_intermediate_size,
            "num_local_experts": cfg.num_experts,
            "num_experts_per_tok": cfg.num_experts_per_tok,
            "router_aux_loss_coef": cfg.router_aux_loss_coef,
        }


class GraniteMoeShared(GraniteMoe):
    name = "granite_moe_shared"
    architectures = ("GraniteMoeSharedForCausalLM",)
    model_type = "granitemoeshared"

    WEIGHT_MAP: WeightMap = {
        **GraniteMoe.WEIGHT_MAP,
        "model.layers.{layer}.shared_mlp.input_linear.weight": "layers.{layer}.mlp.shared.gate_up.weight",
        "model.layers.{layer}.shared_mlp.output_linear.weight": "layers.{layer}.mlp.shared.down.weight",
        "blk.{layer}.ffn_gate_shexp.weight": LoadOnly(
            Part("layers.{layer}.mlp.shared.gate_up.weight", 0, shared_gate_up_sizes)),
        "blk.{layer}.ffn_up_shexp.weight": LoadOnly(
            Part("layers.{layer}.mlp.shared.gate_up.weight", 1, shared_gate_up_sizes)),
    }

    @classmethod
    def config_from_hf(cls, hf: dict[str, Any]) -> ModelConfig:
        return super().config_from_hf(hf).replace(
            shared_expert_intermediate_size=hf_get(hf, "shared_intermediate_size", 0))

    @classmethod
    def config_to_hf(cls, cfg: ModelConfig) -> dict[str, Any]:
        return {**super().config_to_hf(cfg), "shared_intermediate_size": cfg.shared_expert_intermediate_size}


register_family(GraniteMoe)
register_family(GraniteMoeShared)
