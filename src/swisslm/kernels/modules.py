# SPDX-License-Identifier: Apache-2.0
"""The kernel-backed modules of the CPU backend: each subclasses the core module it replaces, adds
no state (re-classing back is exact) and takes a kernel only for the inputs it handles, its torch
parent's forward otherwise. backend.apply_ re-classes a model's modules to these.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core import moe as core_moe
from ..core.attention import Attention, identity_qkv, sdpa_attention
from ..core.linear import Linear
from ..core.mlp import GatedMLP
from ..core.norms import RMSNorm
from ..core.rope import apply_rotary, no_rotary
from . import ops as K

# -- kernel-backed modules -----------------------------------------------------------------
# Each subclasses the core module it replaces and adds no state: re-classing back is exact.


class KernelLinear(Linear):
    """Decode-sized fp32 CPU products run swisslm's streaming kernel (AVX-512 where the CPU has
    it, else AVX2): torch's CPU matmul (MKL sgemv) reaches about half the memory bandwidth on
    those shapes. Everything else is F.linear."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if w.dtype == torch.float32 and K.decode_ok(x, w) and w.is_contiguous():
            return K.linear_f32(x, w, self.bias)
        return F.linear(x, w, self.bias)


class KernelRMSNorm(RMSNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if w.dtype == torch.float32 and K.decode_ok(x, w):
            return K.rms_norm(x, w, self.eps)  # one call instead of six torch ops
        return super().forward(x)


class KernelGatedMLP(GatedMLP):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.gate_up(x)
        if self.act is F.silu and K.decode_ok(h):
            return self.down(K.silu_mul(h))  # one call for split + silu + mul
        gate, up = h.split(self.inter, dim=-1)
        return self.down(self.act(gate) * up)


def kernel_sdpa_attention(q, k, v, mask, scale, is_causal):
    """The `attention_fn` default under the backend: a one-token CPU step runs the decode kernel,
    which reads only the cached keys the mask lets through (SDPA reads the whole static cache)."""
    # Decode-sized means up to MAX_ROWS batch rows (q[:, 0] is (B, 1, D)); the caches are long by
    # design, so k and v need only be fp32 CPU tensors with no autograd through them.
    if (q.shape[2] == 1 and K.decode_ok(q[:, 0]) and k.is_cpu and v.is_cpu
            and k.dtype == v.dtype == torch.float32
            and not (torch.is_grad_enabled() and (k.requires_grad or v.requires_grad))
            and (mask is None or mask.dtype == torch.bool)):
        return K.decode_attention(q, k, v, mask, scale)
    return sdpa_attention(q, k, v, mask, scale, is_causal)


def kernel_apply_rotary(q, k, rope):
    """The `position_embedding` default under the backend (rotate-half, as core's apply_rotary)."""
    cos, sin = rope
    if K.decode_ok(q) and K.decode_ok(k) and cos.dtype == torch.float32 and cos.shape[-1] <= q.shape[-1]:
        return K.rope(q, k, cos, sin)  # one call per tensor instead of ~8 torch ops
    return apply_rotary(q, k, rope)


def attention_slots_default(attn: Attention) -> bool:
    """Whether the slots a fused one-token step replaces hold the backend's defaults (identity
    qkv transform, rotate-half rotary or none, SDPA): a mixin in any of them gets the module
    path, so slots keep their meaning."""
    return (attn.qkv_transform_impl is identity_qkv and attn.attention_fn_impl is kernel_sdpa_attention
            and attn.position_embedding_impl in (kernel_apply_rotary, no_rotary))


class KernelAttention(Attention):
    def attend(self, qkv, rope, mask, input_pos):
        if qkv.shape[1] == 1 and input_pos is not None:
            cache = self.cache
            if (attention_slots_default(self) and K.decode_ok(qkv) and cache is not None
                    and K.cache_ok(cache.k, cache.v) and (mask is None or mask.dtype == torch.bool)):
                rotary = self.position_embedding_impl is kernel_apply_rotary
                if rope is not None or not rotary:
                    return K.attention_step(qkv, self.n_heads, self.n_kv, self.head_dim, rope if rotary else None,
                                            cache.k, cache.v, input_pos, mask, self.scale)
        return super().attend(qkv, rope, mask, input_pos)


# -- MoE experts ---------------------------------------------------------------------------

# Experts with at most this many rows go through swisslm's CPU kernel, larger ones through torch's
# mm. The kernel reads each weight row once, in place, from the stacked (E, out, in) tensor; MKL's
# GEMM first repacks the expert's whole weight, which at tens of rows costs as much as the
# multiply. Where the kernel runs on AVX2 (measured on an AVX2-only AMD host; OLMoE-1B-7B expert
# shapes, 2 threads) it did ~135-150 against ~65-130 GFLOP/s from 16 to 64 rows, level at ~96.
# On an AVX-512 CPU torch's GEMM runs 16-wide as well and pulls ahead much earlier: on Emerald
# Rapids ours led up to 16 rows (83-90 vs 61-72 GFLOP/s) and trailed from 32 (95-98 vs 105;
# 97-105 vs 155-190 at 96), and with the AVX2 cut the MoE layer's prefill ran at 0.8x of
# transformers'. kernel_max_rows() picks the cut for the fp32 kernel in use.
KERNEL_MAX_ROWS = {"avx2": 96, "avx512": 24}


def kernel_max_rows() -> int:
    """Most rows an expert may have to go through swisslm's kernel (needs the kernels)."""
    return KERNEL_MAX_ROWS[K.f32_isa()]


def grouped_linear_kernel_eager(x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """core.moe.grouped_linear with swisslm's kernel for the experts with few rows."""
    if x.shape[0] == 0:
        return x.new_empty(0, w.shape[1])
    out = x.new_empty(x.shape[0], w.shape[1])
    max_rows = kernel_max_rows()
    start = 0
    for e, end in enumerate(offs.tolist()):  # a loop over <= E experts, never over tokens
        if end > start:
            if end - start <= max_rows:
                K.linear_f32(x[start:end], w[e], out=out[start:end])
            else:
                torch.mm(x[start:end], w[e].t(), out=out[start:end])
        start = end
    return out


@torch.library.custom_op("swisslm::grouped_linear_cpu_kernel", mutates_args=())
def grouped_linear_kernel(x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """core.moe.grouped_linear's signature and backward; the forward runs swisslm's kernel."""
    return grouped_linear_kernel_eager(x, w, offs)


@grouped_linear_kernel.register_fake
def _(x, w, offs):
    return x.new_empty(x.shape[0], w.shape[1])


grouped_linear_kernel.register_autograd(core_moe.grouped_linear_backward, setup_context=core_moe.grouped_linear_setup)


class KernelMoE(core_moe.MoE):
    """Experts with few rows through swisslm's fp32 kernel, in place on the stacked weight; the
    routing weight and silu(gate) * up in one pass at decode. The op has its own backward, so the
    kernel may run while training too."""

    def grouped(self, x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
        if (core_moe.GROUPED_BACKEND == "auto" and x.dtype == w.dtype == torch.float32 and x.is_cpu
                and w.is_contiguous() and K.available() and not torch.compiler.is_compiling()):
            return grouped_linear_kernel(x, w, offs)
        return super().grouped(x, w, offs)

    def activate(self, h: torch.Tensor, w_sorted: torch.Tensor) -> torch.Tensor:
        if self.act is F.silu and K.decode_ok(h[:1], w_sorted):
            return K.silu_mul(h, w_sorted)  # one pass over (S, 2I) instead of four
        return super().activate(h, w_sorted)


# -- the pass ------------------------------------------------------------------------------

# torch class -> kernel-backed class; only these exact types are re-classed (a subclass may have
# changed the maths: it stays as it is).
