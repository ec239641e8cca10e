# SPDX-License-Identifier: Apache-2.0
"""The fused one-token decode step the CPU backend installs as `model.fused_layers`.

A pre-norm decoder layer runs as one kernel call (kernels.layer_step, cpu_layer.c: rmsnorm ->
qkv -> rotary + cache write + attention -> out -> residual -> rmsnorm -> gate_up -> silu*up ->
down -> residual, the same kernels the kernel-backed modules call one by one) only where that is
exactly the layer's module forward: a plain Block (not parallel, not post-norm), every slot of
the layer (mlp, residual, qkv_transform, position_embedding, attention_fn) at its default, the
modules the block was built with (RMSNorm, a SiLU GatedMLP, linears the kernels take: no LoRA
wrapper), no forward hooks, no autograd. Where every layer qualifies the whole stack is one call
(kernels.stack_step); otherwise each layer that qualifies is one call and the others run their
modules. So a new slot, norm or block shape the kernel does not know is never fused: it fails
one of these identity checks and keeps its torch meaning.

Checking all that costs ~40 us of attribute lookups per layer, more than the kernels' own
overhead it removes, so the outcome is kept in a `LayerPlan` (the layer's SwlLayer struct minus
its cache) and re-validated per step by identity: the same modules, the same slot
implementations, the same eps / multiplier / use_packed values, no hooks, and the same tensor
object with the same storage pointer for every parameter and buffer of the layer's parts.
Anything that changes one of these -- add_mixin/del_mixin, quantize_, a replaced parameter,
`p.data = ...`, `model.half()`, a hook -- makes the next step build a new plan. The plan holds
the tensors it points into, so a stale plan could never read freed memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.attention import Attention
from ..core.backbone import Block
from ..core.linear import Linear
from ..core.mlp import GatedMLP
from ..core.norms import RMSNorm
from . import layout
from . import ops as K
from .modules import (
    KernelAttention,
    KernelGatedMLP,
    KernelLinear,
    KernelRMSNorm,
    attention_slots_default,
    kernel_apply_rotary,
)

_NORMS = (RMSNorm, KernelRMSNorm)
_MLPS = (GatedMLP, KernelGatedMLP)
_ATTNS = (Attention, KernelAttention)
_F32_LINEARS = (Linear, KernelLinear, nn.Linear)


def linear_layout(lin: nn.Module) -> K.LinearFields | None:
    """A linear as SwlLinear fields, or None where the kernels cannot take it (dtype, device,
    layout, autograd needs the weight, or a module they do not know, such as a LoRA wrapper).
    Quantized layers describe themselves (`kernel_linear()`, looked up on the class: a wrapper
    that forwards unknown attributes to the module it wraps must not pass for its base)."""
    if type(lin) in _F32_LINEARS:
        w, b = lin.weight, lin.bias
        if (w.dtype != torch.float32 or not w.is_cpu or not w.is_contiguous()
                or (torch.is_grad_enabled() and w.requires_grad)):
            return None
        if b is not None and (b.dtype != torch.float32 or not b.is_contiguous() or b.requires_grad):
            return None
        return (0, w.data_ptr(), None, None, None if b is None else b.data_ptr(), 0)
    describe = getattr(type(lin), "kernel_linear", None)
    return describe(lin) if describe is not None else None


def _parts(blk: nn.Module) -> tuple | None:
    """(norm_attn, attn, qkv, out, norm_mlp, mlp, gate_up, down), read from the module dicts
    (nn.Module.__getattr__ costs ~0.5 us a lookup); None when the block is not a plain pre-norm
    block with a GatedMLP."""
    if type(blk) is not Block or blk.parallel or blk.post_norm:
        return None
    mods = blk._modules
    attn, mlp = mods["attn"], mods["mlp"]
    if type(mlp) not in _MLPS or type(attn) not in _ATTNS:
        return None
    am, mm = attn._modules, mlp._modules
    return (mods["norm_attn"], attn, am["qkv"], am["out"], mods["norm_mlp"], mlp, mm["gate_up"], mm["down"])


def _slots(blk: nn.Module, attn: nn.Module) -> tuple:
    return (blk.mlp_impl, blk.residual_impl, attn.qkv_transform_impl, attn.position_embedding_impl,
            attn.attention_fn_impl)


def _flags(blk: nn.Module, parts: tuple) -> tuple:
    return (blk.residual_multiplier, parts[0].eps, parts[4].eps, parts[2].__dict__.get("use_packed"),
            parts[3].__dict__.get("use_packed"), parts[6].__dict__.get("use_packed"),
            parts[7].__dict__.get("use_packed"), type(parts[5]), parts[5].act)


def _none() -> None:
    return None


class _Transient:
    """Kernel state kept on a module's __dict__ (raw pointers in ctypes structs): a copy or a
    pickle of the module gets None instead, and the next step rebuilds it for the copy's own
    tensors."""

    __slots__ = ()

    def __deepcopy__(self, memo) -> None:
        return None

    def __reduce__(self):
        return (_none, ())


class LayerPlan(_Transient):
    """What a layer's fused step was built from, and its SwlLayer (None: the layer cannot take
    it). It holds every tensor it points into, so a replaced tensor can make it stale but never
    dangling; `valid` finds staleness."""

    __slots__ = ("parts", "slots", "flags", "tensors", "layer", "rotary")

    def __init__(self, blk: nn.Module, parts: tuple) -> None:
        self.parts = parts
        self.slots = _slots(blk, parts[1])
        self.flags = _flags(blk, parts)
        # (the dict it sits in, its name, the tensor, its storage pointer) for every parameter and
        # buffer of the parts: a replaced tensor, or new storage behind the same one, shows here.
        self.tensors = tuple((d, name, t, t.data_ptr()) for m in parts for d in (m._parameters, m._buffers)
                             for name, t in d.items() if t is not None)
        self.rotary = parts[1].position_embedding_impl is kernel_apply_rotary
        self.layer = _build(blk, parts, self.rotary)

    def valid(self, blk: nn.Module, parts: tuple) -> bool:
        if parts != self.parts or _slots(blk, parts[1]) != self.slots or _flags(blk, parts) != self.flags:
            return False
        for d, name, t, ptr in self.tensors:
            if d.get(name) is not t or t.data_ptr() != ptr:
                return False
        return True


def _any_hooks(modules) -> bool:
    """Whether a forward (pre-)hook is registered on any of `modules` or globally."""
    g = nn.modules.module
    if g._global_forward_hooks or g._global_forward_pre_hooks:
        return True
    for m in modules:  # a plain loop: any() over a generator costs twice as much here
        if m._forward_hooks or m._forward_pre_hooks:
            return True
    return False


def _build(blk: nn.Module, parts: tuple, rotary: bool) -> layout.Layer | None:
    """The layer's SwlLayer (cache unset), or None where the layer cannot take the fused step."""
    n1, attn, qkv, out, n2, mlp, gate_up, down = parts
    if (blk.mlp_impl is not mlp or blk.residual_impl is not blk._slot_defaults["residual"]
            or type(n1) not in _NORMS or type(n2) not in _NORMS or n1.eps != n2.eps
            or mlp.act is not F.silu or not attention_slots_default(attn)):
        return None
    lins = tuple(linear_layout(lin) for lin in (qkv, out, gate_up, down))
    w1, w2 = n1.weight, n2.weight
    if None in lins or not all(w.dtype == torch.float32 and w.is_cpu and w.is_contiguous() for w in (w1, w2)):
        return None
    attn_layout = K.attention_layout(attn.n_heads, attn.n_kv, attn.head_dim, rotary, attn.scale)
    return K.layer_layout(w1, w2, n1.eps, blk.residual_multiplier, lins, mlp.inter, attn_layout)


def _layer(blk: nn.Module, rope) -> tuple | None:
    """(plan, k cache, v cache) of a layer that may take the fused step now, else None."""
    parts = _parts(blk)
    if parts is None or _any_hooks(parts):
        return None
    plan = blk.__dict__.get("_layer_plan")
    if plan is None or not plan.valid(blk, parts):
        plan = LayerPlan(blk, parts)
        object.__setattr__(blk, "_layer_plan", plan)  # not a submodule/buffer: never in state_dict
    if plan.layer is None or (plan.rotary and rope is None):
        return None
    cache = parts[1]._modules.get("cache")
    if cache is None:
        return None
    k, v = cache._buffers["k"], cache._buffers["v"]
    if not K.cache_ok(k, v):
        return None
    return plan, k, v


def _plain_call(blk: nn.Module) -> bool:
    """No hooks on the block and no forward replaced on the instance (activation checkpointing,
    instrumentation): calling the kernel instead of blk(...) skips nothing."""
    return not (blk._forward_hooks or blk._forward_pre_hooks or "forward" in blk.__dict__)


def fused_layer_step(blk: nn.Module, x: torch.Tensor, rope, st: layout.Step, S: int) -> torch.Tensor | None:
    """The layer's output for a one-token step `x` (B, 1, C) through one kernel call, or None
    where the caller must run the module path."""
    layer = _layer(blk, rope) if _plain_call(blk) else None
    if layer is None or layer[1].shape[2] != S:
        return None
    plan, k, v = layer
    plan.layer.attn.set_cache(k, v)
    return K.layer_step(x, plan.layer, st)


class StackTable(_Transient):
    """The SwlLayer array of a whole-stack step, and the plans and caches it was built from."""

    __slots__ = ("plans", "caches", "table")

    def __init__(self, plans: tuple, caches: tuple, layers: list) -> None:
        self.plans, self.caches = plans, caches
        self.table = (layout.Layer * len(plans))()
        for i, (plan, k, v) in enumerate(layers):
            self.table[i] = plan.layer  # a copy: the plan's own struct stays free for layer_step
            self.table[i].attn.set_cache(k, v)
        # The plans keep every tensor the table points into alive; the caches are compared by
        # pointer by the caller and held by the layers.


def fused_stack_step(model: nn.Module, x: torch.Tensor, rope, st: layout.Step, S: int) -> torch.Tensor | None:
    """Every layer of `model` for a one-token step in ONE kernel call (kernels.stack_step), or
    None unless every layer may take the fused step. Between per-layer calls the Python that
    ran in between was ~3x slower than alone (each layer's weight stream had just evicted its
    working set): ~2 ms per SmolLM2 token. The SwlLayer array is rebuilt only when a layer's
    plan or KV cache changes."""
    layers = []
    for blk in model.layers:
        layer = _layer(blk, rope) if _plain_call(blk) else None
        if layer is None or layer[1].shape[2] != S:  # every cache as long as the step's mask
            return None
        layers.append(layer)
    plans = tuple(p for p, _, _ in layers)
    # The shape too: the server's cache windows share pointer and strides with the full cache.
    caches = tuple((k.data_ptr(), v.data_ptr(), k.stride(), k.shape) for _, k, v in layers)
    packed = model.__dict__.get("_stack_tables")
    if packed is None or packed.caches != caches or len(packed.plans) != len(plans) or any(
            a is not b for a, b in zip(packed.plans, plans)):
        packed = StackTable(plans, caches, layers)
        object.__setattr__(model, "_stack_tables", packed)
    return K.stack_step(x, packed.table, st)


def run_fused_layers(model: nn.Module, h: torch.Tensor, rope, mask, input_pos) -> torch.Tensor | None:
    """`model.fused_layers` under the CPU backend: the blocks for a cached one-token CPU step
    (h (B, 1, C)), fused where they may be; None for any other input (the caller runs them)."""
    if (h.shape[1] != 1 or input_pos is None or torch.is_grad_enabled() or not K.decode_ok(h)
            or (mask is not None and mask.dtype != torch.bool) or not len(model.layers)):
        return None
    cache = model.layers[0].attn.cache
    if cache is None:
        return None
    S = cache.k.shape[2]
    st = K.step_args(h.shape[0], rope, input_pos, mask, S)
    y = fused_stack_step(model, h, rope, st, S)
    if y is not None:
        return y
    for blk in model.layers:
        y = fused_layer_step(blk, h, rope, st, S)
        h = blk(h, rope, mask, input_pos) if y is None else y
    return h
