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
from torch import nn

from ..core import moe as core_moe
from ..core.attention import Attention, sdpa_attention
from ..core.linear import Linear
from ..core.mlp import GatedMLP
from ..core.norms import RMSNorm
from ..core.rope import apply_rotary
from . import ops as K
from .fused_step import run_fused_layers
from .modules import (  # noqa: F401  (re-exported: the pass's modules, reachable as backend.X)
    KERNEL_MAX_ROWS,
    KernelAttention,
    KernelGatedMLP,
    KernelLinear,
    KernelMoE,
    KernelRMSNorm,
    attention_slots_default,
    grouped_linear_kernel,
    grouped_linear_kernel_eager,
    kernel_apply_rotary,
    kernel_max_rows,
    kernel_sdpa_attention,
)

log = logging.getLogger(__name__)


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
            if getattr(m, "gguf_source", None):  # a GGUF's blocks, repacked (quant/gguf_blocks.py)
                bits = "int4" if kind == "int4" else "int8"
                kind = f"{m.gguf_source} as {bits} g{m.group_size}"
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
