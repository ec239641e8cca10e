# SPDX-License-Identifier: Apache-2.0
"""Fold LoRA adapters into the base weights (PEFT's merge_and_unload) and write an HF folder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..mixins.lora import lora_mixins

log = logging.getLogger(__name__)


def merge_lora(model: Any, name: str | None = None) -> Any:
    """Merge every LoRA mixin (or the one called `name`) into the weights and remove it.

    Linear bases become W + s B A in place; a quantized base is dequantized into a float
    nn.Linear first (merging into int8/int4 would lose the adapter); stacked experts get the
    per-expert delta added. The result is a plain model that `save_pretrained` exports.
    """
    found = [(n, m) for n, m in lora_mixins(model) if name is None or n == name]
    if not found:
        raise ValueError("the model has no LoRA mixin" + (f" named {name!r}" if name else ""))
    for _, lora in found:
        lora.merge(model)
    return model


def merge_adapter_folder(base: str | Path | None, adapter: str | Path, out: str | Path,
                         dtype: str = "float32") -> Path:
    """`swisslm merge BASE ADAPTER OUT`: load BASE, install the PEFT adapter, merge, save HF."""
    from ..api import AutoModel
    from .peft_format import load_adapter

    model = AutoModel.from_pretrained(base, dtype="float32")
    load_adapter(model, adapter)
    merge_lora(model)
    log.info("merged %s into %s", adapter, model.source)
    return model.save_pretrained(out, dtype=dtype)
