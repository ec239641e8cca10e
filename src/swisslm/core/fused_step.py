# SPDX-License-Identifier: Apache-2.0
"""A whole pre-norm decoder layer as one kernel call for a cached one-token CPU step.

`Block.forward` runs a layer through `kernels.layer_step` (kernels/cpu_layer.c: rmsnorm -> qkv
-> rotary + cache write + attention -> out -> residual -> rmsnorm -> gate_up -> silu*up -> down
-> residual, the same kernels the module path calls one by one) only where that is exactly the
layer's module forward: every slot of the layer (mlp, residual, qkv_transform,
position_embedding, attention_fn) at its default, the plain modules the block was built with
(no LoRA wrapper, no custom norm), no forward hooks, weights the kernels take, no autograd.

Checking all that costs ~40 us of attribute lookups per layer, more than the kernels' own
overhead it removes, so the outcome is kept in a `LayerPlan` (the kernel arguments that do not
change between steps) and re-validated per step by identity: the same modules, the same slot
implementations, the same eps / multiplier / use_packed values, no hooks, and the same tensor
object with the same storage pointer for every parameter and buffer of the layer's parts.
Anything that changes one of these -- add_mixin/del_mixin, quantize_, a replaced parameter,
`p.data = ...`, `model.half()`, a hook -- makes the next step build a new plan. The plan holds
the tensors it points into, so a stale plan could never read freed memory.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import kernels
from .mlp import GatedMLP
from .norms import RMSNorm
from .rope import apply_rotary


def _parts(blk: nn.Module) -> tuple | None:
    """(norm_attn, attn, qkv, out, norm_mlp, mlp, gate_up, down), read from the module dicts
    (nn.Module.__getattr__ costs ~0.5 us a lookup); None when the mlp is not a GatedMLP."""
    mods = blk._modules
    attn, mlp = mods["attn"], mods["mlp"]
    if type(mlp) is not GatedMLP:
        return None
    am, mm = attn._modules, mlp._modules
    return (mods["norm_attn"], attn, am["qkv"], am["out"], mods["norm_mlp"], mlp, mm["gate_up"], mm["down"])


def _slots(blk: nn.Module, attn: nn.Module) -> tuple:
    return (blk.mlp_impl, blk.residual_impl, attn.qkv_transform_impl, attn.position_embedding_impl,
            attn.attention_fn_impl)


def _flags(blk: nn.Module, parts: tuple) -> tuple:
    return (blk.residual_multiplier, parts[0].eps, parts[4].eps, parts[2].__dict__.get("use_packed"),
            parts[3].__dict__.get("use_packed"), parts[6].__dict__.get("use_packed"),
            parts[7].__dict__.get("use_packed"))


class LayerPlan:
    """What a layer's fused step was built from, and layer_step's static arguments (None: the
    layer cannot take it). It holds every tensor it points into, so a replaced tensor can make
    it stale but never dangling; `valid` finds staleness."""

    __slots__ = ("parts", "slots", "flags", "tensors", "args")

    def __init__(self, blk: nn.Module, parts: tuple) -> None:
        self.parts = parts
        self.slots = _slots(blk, parts[1])
        self.flags = _flags(blk, parts)
        # (the dict it sits in, its name, the tensor, its storage pointer) for every parameter and
        # buffer of the parts: a replaced tensor, or new storage behind the same one, shows here.
        self.tensors = tuple((d, name, t, t.data_ptr()) for m in parts for d in (m._parameters, m._buffers)
                             for name, t in d.items() if t is not None)
        self.args = _build(blk, parts)

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


def _build(blk: nn.Module, parts: tuple) -> tuple | None:
    """layer_step's static arguments for this layer, or None where the layer cannot take it."""
    n1, attn, qkv, out, n2, mlp, gate_up, down = parts
    if (blk.mlp_impl is not mlp or blk.residual_impl is not blk._slot_defaults["residual"]
            or type(n1) is not RMSNorm or type(n2) is not RMSNorm or n1.eps != n2.eps
            or not attn.fused_slots_default()):
        return None
    # Looked up on the class: a wrapper that forwards unknown attributes to the module it wraps
    # (LoRALinear does) must not pass for its base.
    lins = tuple(type(lin).kernel_linear(lin) if hasattr(type(lin), "kernel_linear") else None
                 for lin in (qkv, out, gate_up, down))
    w1, w2 = n1.weight, n2.weight
    if None in lins or not all(w.dtype == torch.float32 and w.is_cpu and w.is_contiguous() for w in (w1, w2)):
        return None
    return (w1, w2, n1.eps, blk.residual_multiplier, lins, mlp.inter, attn.n_heads, attn.n_kv, attn.head_dim,
            attn.position_embedding_impl is apply_rotary, attn.scale)


def _layer(blk: nn.Module, rope) -> tuple | None:
    """(plan args, k cache, v cache) of a layer that may take the fused step now, else None."""
    parts = _parts(blk)
    if parts is None or _any_hooks(parts):
        return None
    plan = blk.__dict__.get("_layer_plan")
    if plan is None or not plan.valid(blk, parts):
        plan = LayerPlan(blk, parts)
        object.__setattr__(blk, "_layer_plan", plan)  # not a submodule/buffer: never in state_dict
    if plan.args is None or (plan.args[9] and rope is None):  # args[9]: the layer applies rotary
        return None
    cache = parts[1]._modules.get("cache")
    if cache is None:
        return None
    k, v = cache._buffers["k"], cache._buffers["v"]
    if not kernels.cache_ok(k, v):
        return None
    return plan.args, k, v


def fused_layer_step(blk: nn.Module, x: torch.Tensor, rope, mask, input_pos: torch.Tensor,
                     step: tuple) -> torch.Tensor | None:
    """The layer's output for a one-token step `x` (B, 1, C) through one kernel call, or None
    where the caller must run the module path. `step`: kernels.step_args of this forward (the
    caller has checked x is decode-sized, the mask is bool or None, and the kernels run)."""
    if torch.is_grad_enabled():  # requires_grad would have to be checked on every weight
        return None
    layer = _layer(blk, rope)
    if layer is None:
        return None
    (w1, w2, eps, mult, lins, inter, H, Hkv, D, uses_rope, scale), k, v = layer
    return kernels.layer_step(x, w1, w2, eps, mult, lins, inter, H, Hkv, D, rope if uses_rope else None, k, v,
                              input_pos, mask, scale, step)


def fused_stack_step(model: nn.Module, x: torch.Tensor, rope, step: tuple) -> torch.Tensor | None:
    """Every layer of `model` for a one-token step in ONE kernel call (kernels.stack_step), or
    None unless every layer may take the fused step. Between per-layer calls the Python that
    ran in between was ~3x slower than alone (each layer's weight stream had just evicted its
    working set): ~2 ms per SmolLM2 token. The packed per-layer tables are rebuilt only when a
    layer's plan or KV cache changes."""
    if torch.is_grad_enabled():
        return None
    layers = []
    for blk in model.layers:
        # Block.__call__ and Block.forward are skipped too: no hooks on the block, and no
        # forward replaced on the instance (activation checkpointing, instrumentation).
        if not blk.fusable or blk._forward_hooks or blk._forward_pre_hooks or "forward" in blk.__dict__:
            return None
        layer = _layer(blk, rope)
        if layer is None or layer[1].shape[2] != step[2]:  # every cache as long as the step's mask
            return None
        layers.append(layer)
    plans = tuple(blk.__dict__["_layer_plan"] for blk in model.layers)
    # The shape too: the server's cache windows share pointer and strides with the full cache.
    caches = tuple((k.data_ptr(), v.data_ptr(), k.stride(), k.shape) for _, k, v in layers)
    packed = model.__dict__.get("_stack_tables")
    if packed is None or packed[1] != caches or len(packed[0]) != len(plans) or any(
            a is not b for a, b in zip(packed[0], plans)):
        # plan args: (w1, w2, eps, multiplier, linears, inter, H, H_kv, D, rotary, scale)
        rows = [kernels.stack_layer_args(*a[:10], k, v, a[10]) for a, k, v in layers]
        ints = torch.tensor([r[0] for r in rows], dtype=torch.int64)
        floats = torch.tensor([r[1] for r in rows], dtype=torch.float64)
        # The plans keep every tensor the packed pointers point into alive; the caches are
        # compared by pointer above and held by the layers.
        packed = (plans, caches, ints, floats)
        object.__setattr__(model, "_stack_tables", packed)
    return kernels.stack_step(x, packed[2], packed[3], step)
