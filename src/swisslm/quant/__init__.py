# SPDX-License-Identifier: Apache-2.0
"""Weight-only int8 / int4 quantization for fast CPU inference (applied after the model is
built: `quantize_(model, "int8")`; model classes never import this package). The quantized
checkpoint format (save_quantized / load_quantized) is I/O: swisslm.io.quantized.

Names resolve on first use (PEP 562), so importing the package costs nothing until a name is used."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "SCHEMES": ".api", "quantize_": ".api",
    "compile_": ".decode", "uncompile_": ".decode",
    "Int4Linear": ".layers", "Int8Embedding": ".layers", "Int8Linear": ".layers", "fbgemm_available": ".layers",
    "QuantMoE": ".moe",
}

__all__ = [
    "SCHEMES", "Int4Linear", "Int8Embedding", "Int8Linear", "QuantMoE", "compile_", "uncompile_",
    "fbgemm_available", "quantize_",
]

if TYPE_CHECKING:
    from .api import SCHEMES, quantize_
    from .decode import compile_, uncompile_
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
