# SPDX-License-Identifier: Apache-2.0
"""Weight-only int8 / int4 quantization for fast CPU inference (applied after the model is
built: `quantize_(model, "int8")`; model classes never import this package)."""

from .api import SCHEMES, load_quantized, quantize_, save_quantized
from .decode import compile_, fast_decode
from .layers import Int4Linear, Int8Embedding, Int8Linear, fbgemm_available
from .moe import QuantMoE

__all__ = [
    "SCHEMES", "Int4Linear", "Int8Embedding", "Int8Linear", "QuantMoE", "compile_", "fast_decode",
    "fbgemm_available", "load_quantized", "quantize_", "save_quantized",
]
