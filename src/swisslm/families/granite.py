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
from .gguf_names import GGUFMetadata, GGUFNames, decoder_meta, f32_short
from .llama import GGUF_TENSORS, Llama, config_from_gguf, export_llama

# (HF config.json key, ModelConfig field)
MULTIPLIERS = (
    ("embedding_multiplier", "embedding_multiplier"),
    ("attention_multiplier", "attn_scale"),
    ("residual_multiplier", "residual_multiplier"),
    ("logits_scaling", "logits_scaling"),
)

# (HF config.json key, llama.cpp's `{arch}.*` key): GraniteModel.set_gguf_parameters renames
# the multipliers to scales.
GGUF_SCALES = (
    ("embedding_multiplier", "embedding_scale"),
    ("attention_multiplier", "attention.scale"),
    ("residual_multiplier", "residual_scale"),
    ("logits_scaling", "logit_scale"),
)


def granite_config_from_gguf(meta: GGUFMetadata, arch: str) -> dict[str, Any]:
    """GraniteConfig keys: Llama's plus the four scales. llama.cpp treats an absent attention
    scale as head_dim**-0.5 (HF's default would be 1.0), the others as 1.0."""
    cfg = config_from_gguf(meta, arch)
    cfg.update(architectures=["GraniteForCausalLM"], model_type="granite")
    for hf_key, key in GGUF_SCALES:
        v = meta.value(f"{arch}.{key}")
        if v is None:
            v = cfg["head_dim"] ** -0.5 if hf_key == "attention_multiplier" else 1.0
        cfg[hf_key] = f32_short(v)
    return cfg


def granite_meta(cfg: ModelConfig, arch: str) -> dict[str, Any]:
    values = {"embedding_multiplier": cfg.embedding_multiplier, "attention_multiplier": cfg.scale,
              "residual_multiplier": cfg.residual_multiplier, "logits_scaling": cfg.logits_scaling}
    return {**decoder_meta(cfg, arch), **{f"{arch}.{key}": float(values[hf]) for hf, key in GGUF_SCALES}}


GGUF_NAMES = GGUFNames(config=granite_config_from_gguf, tensors=GGUF_TENSORS, metadata=granite_meta,
                       export=export_llama)


class Granite(Llama):
    name = "granite"
    architectures = ("GraniteForCausalLM",)
    model_type = "granite"
    gguf_architectures = ("granite",)
    GGUF_NAMES = GGUF_NAMES

    @classmethod
    def config_from_hf(cls, hf: dict[str, Any]) -> ModelConfig:
        # HF's GraniteConfig defaults every multiplier to 1.0 (attention_multiplier included).
        return super().config_from_hf(hf).replace(**{ours: float(hf_get(hf, key, 1.0)) for key, ours in MULTIPLIERS})

    @classmethod
    def config_to_hf(cls, cfg: ModelConfig) -> dict[str, Any]:
        return {**super().config_to_hf(cfg), **{key: float(cfg.scale if ours == "attn_scale" else getattr(cfg, ours))
                                               for key, ours in MULTIPLIERS}}


register_family(Granite)
