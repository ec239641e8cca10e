# SPDX-License-Identifier: Apache-2.0
"""GraniteMoE / PowerMoE (https://huggingface.co/ibm/PowerMoE-3b/blob/main/config.json) and
GraniteMoeShared (GraniteMoE + an always-on shared expert).

Granite's multipliers on a top-k MoE MLP. HF's router takes the top-k *logits* and softmaxes
over those k, which is softmax-over-all-then-renormalise: `norm_topk_prob=True` in our terms.
The checkpoint already stores experts stacked as [E, out, in] (`input_linear` = [gate; up]),
which is our own layout, so the map is a rename.
"""

from __future__ import annotations

from typing import Any

from ..config import ModelConfig
from . import hf_get, register_family
from .granite import Granite
from .llama import Llama
from .weight_map import WeightMap

_MOE = "model.layers.{layer}.block_sparse_moe."

ATTENTION_AND_NORMS: WeightMap = {k: v for k, v in Llama.WEIGHT_MAP.items() if ".mlp." not in k}


class GraniteMoe(Granite):
    name = "granite_moe"
    architectures = ("GraniteMoeForCausalLM",)
    model_type = "granitemoe"

    WEIGHT_MAP: WeightMap = {
        **ATTENTION_AND_NORMS,
        _MOE + "router.layer.weight": "layers.{layer}.mlp.router.weight",
        _MOE + "input_linear.weight": "layers.{layer}.mlp.gate_up",
        _MOE + "output_linear.weight": "layers.{layer}.mlp.down",
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
