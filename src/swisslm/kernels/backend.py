# SPDX-License-Identifier: Apache-2.0
"""The CPU kernel backend as a pass over a built model (torchtitan's way of applying things):

    model = Transformer(cfg)           # core/: plain torch
    kernels.apply_(model)              # in place: kernel-backed modules + the fused decode step
    kernels.remove_(model)             # back to plain torch

`apply_` re-classes the backbone's modules in place as the subclasses below (same object, same
parameters, state dict, hooks and slot bindings; only `forward` differs), points the attention
slots' defaults at kernel-backed functions, and installs `fused_layers` (fused_step.py: the whole
stack, or one layer at a time, as one kernel call per one-token step). Every kernel-backed
forward takes the kernel only for the inputs it handles (decode-sized fp32 CPU rows, no autograd,
not under torch.compile, kernels available) and its torch parent's forward otherwise, so a
kernel-backed model computes what the torch model computes, on any input.

Mixins compose by construction: a mixin rebinds a slot, the fused step finds the slot off its
default and leaves that layer to its modules; `del_mixin` restores the default and the next step
is fused again. Quantization composes in either order: quant's layers keep their own decode
dispatch (kernels.linear_i8 / linear_i4 where available, else fbgemm) and describe themselves to
the fused step with `kernel_linear()`; `quantize_` after `apply_` leaves the remaining fp32
linears kernel-backed, and `apply_` after `quantize_` re-classes only core's modules.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels as K
from ..core import moe as core_moe
from ..core.attention import Attention, identity_qkv, sdpa_attention
from ..core.linear import Linear
from ..core.mlp import GatedMLP
from ..core.norms import RMSNorm
from ..core.rope import apply_rotary, no_rotary

log = logging.getLogger(__name__)


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
SWAPS: dict[type, type] = {
    Linear: KernelLinear, nn.Linear: KernelLinear, RMSNorm: KernelRMSNorm, GatedMLP: KernelGatedMLP,
    Attention: KernelAttention, core_moe.MoE: KernelMoE,
}
# The attention slots' defaults under the backend, and back.
SLOT_DEFAULTS = {"attention_fn": (sdpa_attention, kernel_sdpa_attention),
                 "position_embedding": (apply_rotary, kernel_apply_rotary)}


def is_applied(model: nn.Module) -> bool:
    return getattr(model, "backend", "torch") == "cpu"


def apply_(model: nn.Module, fuse: bool = True) -> nn.Module:
    """Put `model` (a core Transformer, or any module holding core modules, in place) on
    swisslm's CPU kernels; returns it. `fuse=False` keeps the kernel-backed modules but no fused
    one-token step (A/B runs, tests). Raises RuntimeError where the kernels cannot run here
    (kernels.unavailable_reason())."""
    from .fused_step import run_fused_layers

    why = K.unavailable_reason()
    if why is not None:
        raise RuntimeError(f"swisslm's CPU kernels cannot run: {why}")
    _reclass(model, SWAPS, 1)
    if hasattr(model, "fused_layers"):
        model.fused_layers = run_fused_layers if fuse else None
    object.__setattr__(model, "backend", "cpu")
    return model


def remove_(model: nn.Module) -> nn.Module:
    """Undo apply_: plain torch modules and slot defaults, no fused step; returns `model`."""
    back = {b: a for a, b in SWAPS.items() if a is not nn.Linear}
    _reclass(model, back, 0)
    if hasattr(model, "fused_layers"):
        model.fused_layers = None
    object.__setattr__(model, "backend", "torch")
    for m in model.modules():
        m.__dict__.pop("_layer_plan", None)
        m.__dict__.pop("_stack_tables", None)
    return model


def _reclass(model: nn.Module, swaps: dict[type, type], which: int) -> None:
    for m in model.modules():
        new = swaps.get(type(m))
        if new is not None:
            m.__class__ = new
    # Slot defaults live on their owners (core/slots.py); rebinding keeps every mixin in place.
    changed = False
    for m in model.modules():
        defaults = m.__dict__.get("_slot_defaults")
        if not defaults:
            continue
        for slot, pair in SLOT_DEFAULTS.items():
            if defaults.get(slot) is pair[1 - which]:
                defaults[slot] = pair[which]
                changed = True
    if changed and hasattr(model, "_rebind_slots"):
        model._rebind_slots()


def apply_backend_(model: nn.Module, backend: str = "auto") -> nn.Module:
    """The `backend=` argument of from_pretrained / from_config: "cpu" applies the kernels
    (an error where they cannot run), "torch" leaves the model on torch, "auto" applies them to
    a CPU model where they run (and logs why not where they do not)."""
    if backend not in ("auto", "cpu", "torch"):
        raise ValueError(f"backend must be 'auto', 'cpu' or 'torch', got {backend!r}")
    if backend == "torch":
        return model
    if backend == "auto":
        p = next(model.parameters(), None)
        if p is not None and not p.is_cpu:
            return model
        if K.unavailable_reason() is not None:
            return model  # _lib() logged the reason once
    return apply_(model)


# -- what runs where -----------------------------------------------------------------------


def describe(model: nn.Module) -> list[dict[str, Any]]:
    """One entry per linear (and MoE expert stack) of `model`: its name, weight kind (fp32, int8,
    int4, ...), the backend its decode-sized products run on ("swisslm" kernel, "fbgemm" or
    "torch") and the kernel's instruction set (None off the kernels). For `swisslm info`. A LoRA
    wrapper's frozen base is listed as `<name>.base` (its adapter runs on torch)."""
    on = K.available()
    f32_isa = K.f32_isa() if on else None
    out = []
    for name, m in model.named_modules():
        if name.startswith("mixins."):
            continue
        entry = None
        if isinstance(m, nn.Linear):
            kernel = isinstance(m, KernelLinear) and on and m.weight.dtype == torch.float32 and m.weight.is_cpu
            entry = {"kind": str(m.weight.dtype).removeprefix("torch."),
                     "backend": "swisslm" if kernel else "torch", "isa": f32_isa if kernel else None}
        elif hasattr(type(m), "kernel_linear") and hasattr(m, "dequantize"):  # quant/layers.py
            kind = type(m).__name__.removesuffix("Linear").lower()
            if on and m.kernel_linear() is not None:
                entry = {"kind": kind, "backend": "swisslm", "isa": "avx2"}  # the int kernels are AVX2
            else:
                entry = {"kind": kind, "backend": "fbgemm" if getattr(m, "_fbgemm", False) else "torch", "isa": None}
        elif isinstance(m, core_moe.MoE):
            quant = type(m).__name__ == "QuantMoE"
            kernel = on and (quant or isinstance(m, KernelMoE))
            isa = ("avx2" if quant else f32_isa) if kernel else None
            entry = {"kind": "int8 experts" if quant else "fp32 experts",
                     "backend": "swisslm" if kernel else "torch", "isa": isa}
        if entry is not None:
            out.append({"name": name, **entry})
    return out
