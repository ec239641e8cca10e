# SPDX-License-Identifier: Apache-2.0
"""The C structs of swisslm_kernels.h, mirrored once with ctypes (field for field, same order).

The one-token step entry points take pointers to these (`ctypes.addressof`), so an argument is
found by name on both sides instead of by position in a long list. `check_sizes` compares every
struct's size with the C side's `sizeof` when the module loads: a field added on one side only
disables the kernels with a message instead of shifting every field after it.
"""

from __future__ import annotations

import ctypes

import torch

_i64, _f32, _ptr = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p


class Linear(ctypes.Structure):
    """SwlLinear. kind: 0 fp32 [N, K]; 1 int8 [N, K] + scales [N]; 2 int4 [N, K/2] + scales,
    mins [N, K/group]; 3 int8 [N, K] + scales, mins (or NULL) [N, K/group]."""

    _fields_ = [("kind", _i64), ("w", _ptr), ("scales", _ptr), ("mins", _ptr), ("bias", _ptr), ("group", _i64)]


class Step(ctypes.Structure):
    """SwlStep: what every layer of a one-token step shares (positions, rotary rows, mask)."""

    _fields_ = [("pos", _ptr), ("pb", _i64), ("cos", _ptr), ("sin", _ptr), ("cb", _i64), ("rd", _i64),
                ("mask", _ptr), ("mb", _i64), ("ms", _i64)]


class Attention(ctypes.Structure):
    """SwlAttention: one layer's head shapes and its KV cache (k, v share strides kb, kh, ks)."""

    _fields_ = [("H", _i64), ("Hkv", _i64), ("D", _i64), ("S", _i64), ("rotary", _i64), ("k", _ptr), ("v", _ptr),
                ("kb", _i64), ("kh", _i64), ("ks", _i64), ("scale", _f32)]

    def set_cache(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Point at this step's caches (B, H_kv, S, D) (kernels.cache_ok checked by the caller)."""
        self.k, self.v = k.data_ptr(), v.data_ptr()
        self.kb, self.kh, self.ks = k.stride(0), k.stride(1), k.stride(2)
        self.S = k.shape[2]


class Layer(ctypes.Structure):
    """SwlLayer: one pre-norm decoder layer (norms, qkv/out/gate_up/down, MLP width, attention)."""

    _fields_ = [("norm1", _ptr), ("norm2", _ptr), ("eps", _f32), ("res_mult", _f32), ("lin", Linear * 4),
                ("inter", _i64), ("attn", Attention)]


STRUCTS = (Linear, Step, Attention, Layer)  # the order swl_layout_size numbers them


def check_sizes(layout_size) -> None:
    """Raise RuntimeError unless every mirror has the C struct's size (`layout_size(i)`)."""
    for i, cls in enumerate(STRUCTS):
        if layout_size(i) != ctypes.sizeof(cls):
            raise RuntimeError(f"kernels/layout.py {cls.__name__} has {ctypes.sizeof(cls)} bytes, "
                               f"swisslm_kernels.h's {layout_size(i)}: the two layouts differ")


def address(s: ctypes.Structure | ctypes.Array) -> int:
    return ctypes.addressof(s)
