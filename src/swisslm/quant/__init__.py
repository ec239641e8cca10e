# SPDX-License-Identifier: Apache-2.0
"""Weight-only int8 / int4 quantization for fast CPU inference (applied after the model is
built: `quantize_(model, "int8")`; model classes never import this package).

Names resolve on first use (PEP 562) so `swisslm.quant.bench` (the CLI's `bench decode` options)
can be imported without torch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "SCHEMES": ".api", "load_quantized": ".api", "quantize_": ".api", "save_quantized": ".api",
    "compile_": ".decode", "fast_decode": ".decode",
    "Int4Linear": ".layers", "Int8Embedding": ".layers", "Int8Linear": ".layers", "fbgemm_available": ".layers",
    "QuantMoE": ".moe",
}

__all__ = [
    "SCHEMES", "Int4Linear", "Int8Embedding", "Int8Linear", "QuantMoE", "compile_", "fast_decode",
    "fbgemm_available", "load_quantized", "quantize_", "save_quantized",
]

if TYPE_CHECKING:
    from .api import SCHEMES, load_quantized, quantize_, save_quantized
    from .decode import compile_, fast_decode
    from .layers import Int4Linear, Int8Embedding, Int8Linear, fbgemm_available
    from .moe import QuantMoE


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
