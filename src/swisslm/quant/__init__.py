# SPDX-License-Identifier: Apache-2.0
"""Weight-only int8 / int4 quantization for fast CPU inference (applied after the model is
built: `quantize_(model, "int8")`; model classes never import this package). The quantized
checkpoint format (save_quantized / load_quantized) is I/O: swisslm.io.quantized."""

from .api import SCHEMES, quantize_
from .decode import compile_, uncompile_
from .layers import Int4Linear, Int8Embedding, Int8Linear, fbgemm_available
from .moe import QuantMoE

__all__ = [
    "SCHEMES", "Int4Linear", "Int8Embedding", "Int8Linear", "QuantMoE", "compile_", "uncompile_",
    "fbgemm_available", "quantize_",
]
