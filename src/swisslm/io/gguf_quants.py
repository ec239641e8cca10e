# SPDX-License-Identifier: Apache-2.0
"""Quantize float tensors into ggml block formats for GGUF export.

`quantize(x, qtype)` returns the raw block bytes (uint8, rows x bytes-per-row) that
`gguf.GGUFWriter.add_tensor(..., raw_dtype=qtype)` stores. Q8_0 / Q4_0 / Q4_1 / Q5_0 / F16 / BF16
come from `gguf.quants.quantize` (llama.cpp's reference rounding, ported by the gguf package).
gguf has no quantizer for the K-quants, so Q4_K and Q6_K are written here, vectorized over
all super-blocks at once, in llama.cpp's block layouts (ggml-common.h):

    Q4_K, 144 bytes per 256 values: f16 d, f16 dmin, 12 bytes of 6-bit scales and mins for the
          eight 32-value sub-blocks, 128 bytes of 4-bit codes;  x = d*sc*q - dmin*m
    Q6_K, 210 bytes per 256 values: 128 bytes of low nibbles (ql), 64 bytes of high 2-bit pairs
          (qh), 16 int8 scales (one per 16 values), f16 d;        x = d*sc*(q - 32)

The scale search is simpler than llama.cpp's (`make_qkx2_quants` iterates over candidate scales):
one min/max pass per sub-block, then the 6-/8-bit scales are re-derived from the rounded
super-block scale so the codes use the scale they will be decoded with. The bytes are valid for
every reader (tests round-trip them through `gguf.quants.dequantize`); the error is a little above
llama.cpp's own quantizer.
"""

from __future__ import annotations

import gguf
import numpy as np

Q = gguf.GGMLQuantizationType
QK_K = 256


def block_size(qtype: Q) -> int:
    """Values per block (1 for the float types)."""
    return gguf.GGML_QUANT_SIZES[qtype][0]


def quantize(x: np.ndarray, qtype: Q) -> np.ndarray:
    """`x` (float, last dim a multiple of the block size) -> ggml bytes of `qtype`.

    Float types come back as float arrays (F32, F16), the rest as uint8 blocks; either way what
    `GGUFWriter.add_tensor(name, data, raw_dtype=qtype)` expects.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    if qtype == Q.F32:
        return x
    if qtype == Q.F16:
        return x.astype(np.float16)
    if qtype == Q.Q4_K:
        return _rows(x, _q4_k)
    if qtype == Q.Q6_K:
        return _rows(x, _q6_k)
    return gguf.quants.quantize(x, qtype)


def _rows(x: np.ndarray, fn) -> np.ndarray:
    if x.shape[-1] % QK_K:
        raise ValueError(f"row length {x.shape[-1]} is not a multiple of {QK_K}")
    blocks = fn(x.reshape(-1, QK_K))
    return blocks.reshape(*x.shape[:-1], -1)


def _f16_bytes(v: np.ndarray) -> np.ndarray:
    """(n,) float -> (n, 2) uint8, little-endian float16."""
    return v.astype("<f2").view(np.uint8).reshape(-1, 2)


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b == 0, 0.0, a / np.where(b == 0, 1.0, b))


def _q4_k(x: np.ndarray) -> np.ndarray:
    nb = x.shape[0]
    sub = x.reshape(nb, 8, 32)
    lo = np.minimum(sub.min(axis=-1), 0.0)  # llama.cpp clamps the min at 0: m >= 0 always
    hi = sub.max(axis=-1)
    scale = (hi - lo) / 15.0  # (nb, 8)
    mins = -lo
    d = (scale.max(axis=-1) / 63.0).astype(np.float16).astype(np.float32)  # what the reader sees
    dmin = (mins.max(axis=-1) / 63.0).astype(np.float16).astype(np.float32)
    ls = np.clip(np.rint(_safe_div(scale, d[:, None])), 0, 63).astype(np.uint8)
    lm = np.clip(np.rint(_safe_div(mins, dmin[:, None])), 0, 63).astype(np.uint8)
    eff_scale = d[:, None] * ls  # the decoded scale and min of each sub-block
    eff_min = dmin[:, None] * lm
    q = np.clip(np.rint(_safe_div(sub + eff_min[..., None], eff_scale[..., None])), 0, 15).astype(np.uint8)

    scales = np.zeros((nb, 12), dtype=np.uint8)  # llama.cpp's packing of eight 6-bit (sc, m) pairs
    scales[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    scales[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    scales[:, 8:12] = (ls[:, 4:8] & 0x0F) | ((lm[:, 4:8] & 0x0F) << 4)
    q = q.reshape(nb, 4, 2, 32)  # 64-value chunks: sub-block 2j in the low nibbles, 2j+1 in the high
    qs = (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(nb, 128)
    return np.concatenate([_f16_bytes(d), _f16_bytes(dmin), scales, qs], axis=1)


def _q6_k(x: np.ndarray) -> np.ndarray:
    nb = x.shape[0]
    sub = x.reshape(nb, 16, 16)
    scale = np.abs(sub).max(axis=-1) / 31.0  # (nb, 16), codes in [-31, 31]
    d = (scale.max(axis=-1) / 127.0).astype(np.float16).astype(np.float32)
    sc = np.clip(np.rint(_safe_div(scale, d[:, None])), 0, 127).astype(np.int8)
    eff = d[:, None] * sc
    q = np.clip(np.rint(_safe_div(sub, eff[..., None])), -32, 31).astype(np.int16) + 32
    q = q.astype(np.uint8).reshape(nb, 2, 4, 32)  # two halves of 128, four 32-value quarters each
    ql = np.concatenate([q[:, :, 0] & 0x0F | ((q[:, :, 2] & 0x0F) << 4),
                         q[:, :, 1] & 0x0F | ((q[:, :, 3] & 0x0F) << 4)], axis=2)  # (nb, 2, 64)
    qh = (q[:, :, 0] >> 4) | ((q[:, :, 1] >> 4) << 2) | ((q[:, :, 2] >> 4) << 4) | ((q[:, :, 3] >> 4) << 6)
    return np.concatenate([ql.reshape(nb, 128), qh.reshape(nb, 64), sc.view(np.uint8), _f16_bytes(d)], axis=1)
