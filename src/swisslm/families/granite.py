# SPDX-License-Identifier: Apache-2.0
"""Granite / PowerLM (https://huggingface.co/ibm/PowerLM-3b/blob/main/config.json).

Llama plus four numbers (HF's modular_granite.py differs from Llama in the same places):
embeddings * embedding_multiplier, attention scale = attention_multiplier (replaces
head_dim**-0.5), residual branches * residual_multiplier, logits / logits_scaling.
"""

from __future__ import annotations

from typing import Any

from ..config import ModelConfig
from . import hf_get, register_family
from .llama import Llama

# (HF config.json key, ModelConfig field)
MULTIPLIERS = (
    ("embedding_multiplier", "embedding_multiplier"),
    ("attention_multiplier", "attn_scale"),
    ("residual_multiplier", "residual_multiplier"),
    ("logits_scaling", "logits_scaling"),
)


class Granite(Llama):
    name = "granite"
    architectures = ("GraniteForCausalLM",)
    model_type = "granite"

    @classmethod
    def config_from_hf(cls, hf: dict[str, Any]) -> ModelConfig:
        # HF's GraniteConfig defaults every multiplier to 1.0 (attention_multiplier included).
        return super().config_from_hf(hf).replace(**{ours: float(hf_get(hf, key, 1.0)) for key, ours in MULTIPLIERS})

    @classmethod
    def config_to_hf(cls, cfg: ModelConfig) -> dict[str, Any]:
        return {**super().config_to_hf(cfg), **{key: float(cfg.scale if ours == "attn_scale" else getattr(cfg, ours))
                                               for key, ours in MULTIPLIERS}}


register_family(Granite)
