# SPDX-License-Identifier: Apache-2.0
"""swisslm's CPU backend: hand-written kernels for the decode step (the why is at the top of each
C file) and the pass that puts a built model on them.

    from swisslm import kernels
    kernels.apply_(model)                 # kernel-backed modules + the fused one-token step
    kernels.describe(model)               # which backend and ISA each linear runs
    kernels.remove_(model)                # plain torch again

    # the ops, for decode-sized inputs (kernels.decode_ok(x, weight)):
    y = kernels.linear_f32(x, weight, bias)   # AVX-512 where the CPU has it, else AVX2
    y = kernels.linear_i8(x, q, scales, bias)
    y = kernels.linear_i4(x, packed, scales, mins, group_size, bias)
    y = kernels.rms_norm(x, weight, eps)
    q, k = kernels.rope(q, k, cos, sin)
    y = kernels.decode_attention(q, k_cache, v_cache, mask, scale)

Layout: ops.py (build + one wrapper per kernel), layout.py (ctypes mirrors of the C structs),
modules.py (the kernel-backed module subclasses), fused_step.py (the one-token step),
backend.py (apply_ / remove_ / describe). The package re-exports the ops and the pass.
"""

from __future__ import annotations

from . import layout, ops
from .backend import apply_, describe, remove_
from .ops import *  # noqa: F403  (the ops, one namespace with the pass)

__all__ = ["apply_", "describe", "layout", "ops", "remove_", *ops.__all__]
