# SPDX-License-Identifier: Apache-2.0
"""Quantized MoE experts: the stacked `gate_up` [E, 2I, C] / `down` [E, C, I] parameters become
int8 with one scale per expert per output channel ([E, out]).

The MoE module is re-classed in place (`QuantMoE` subclasses core's MoE and only replaces the
expert matmuls), so the block's `mlp` slot, the router and LoRA's expert hooks stay bound to the
same object. Routing, sorting and the token-major sum are core's code, unchanged.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from ..core.moe import MoE
from . import layers
from .layers import _packed_forward, _prepack, quantize_int8_per_channel


class QuantMoE(MoE):
    """MoE whose experts are int8 per expert per output channel: buffers `gate_up` int8
    [E, 2I, C] + `gate_up_scales` [E, 2I], `down` int8 [E, C, I] + `down_scales` [E, C]."""

    def _packs(self, which: str) -> list:
        # One fbgemm pack per expert, built on first use; rebuilt if the buffers are replaced.
        q, s = getattr(self, which), getattr(self, which + "_scales")
        key = (which, q.data_ptr(), q._version)
        cache = self.__dict__.setdefault("_expert_packs", {})
        if cache.get(which, (None,))[0] != key:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                cache[which] = (key, [_prepack(q[e], s[e], None) for e in range(q.shape[0])])
        return cache[which][1]

    def dequantize(self, which: str) -> torch.Tensor:
        """Float stacked weight (E, out, in) of `gate_up` or `down`."""
        return getattr(self, which).float() * getattr(self, which + "_scales")[..., None]

    def _grouped(self, x: torch.Tensor, which: str, offs: torch.Tensor) -> torch.Tensor:
        """x (S, in) rows sorted by expert -> (S, out); a loop over the experts that got rows.
        An expert with few rows (decode) runs the weight-only int8 kernel on its slice of the
        stacked weight, in place (no copy); one with many (prefill) dequantizes and runs the
        fp32 GEMM."""
        q = getattr(self, which)
        out = x.new_empty(x.shape[0], q.shape[1])
        small_ok = x.device.type == "cpu" and x.dtype == torch.float32 \
            and not (torch.is_grad_enabled() and x.requires_grad)
        use_kernel = small_ok and kernels.available() and not torch.compiler.is_compiling()
        use_fbgemm = small_ok and not use_kernel and layers.fbgemm_available()
        packs = self._packs(which) if use_fbgemm and x.shape[0] <= kernels.MAX_ROWS else None
        scales = getattr(self, which + "_scales")
        start = 0
        for e, end in enumerate(offs.tolist()):
            rows = end - start
            if rows and use_kernel and rows <= kernels.MAX_ROWS:
                kernels.linear_i8(x[start:end], q[e], scales[e], out=out[start:end])
            elif rows and packs is not None:
                out[start:end] = _packed_forward(x[start:end], packs[e], None)
            elif rows:
                out[start:end] = F.linear(x[start:end], (q[e].to(x.dtype) * scales[e, :, None].to(x.dtype)))
            start = end
        return out

    def experts_forward(self, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        # Same routing bookkeeping as MoE.experts_forward; only the two matmuls differ.
        N, k = experts.shape
        flat = experts.reshape(-1)
        order = flat.argsort(stable=True)
        token = order // k
        counts = torch.zeros(self.num_experts, dtype=torch.int64, device=x.device)
        counts.scatter_add_(0, flat, torch.ones_like(flat))
        offs = counts.cumsum(0)
        xs = x[token]  # (S, C)
        h = self._grouped(xs, "gate_up", offs)  # (S, 2I)
        if self.lora_gate_up is not None:
            h = h + self.lora_gate_up(xs, offs.to(torch.int32))
        gate, up = h.split(self.inter, dim=-1)
        a = self.act(gate) * up * weights.reshape(-1)[order, None]  # (S, I)
        y = self._grouped(a, "down", offs)  # (S, C)
        if self.lora_down is not None:
            y = y + self.lora_down(a, offs.to(torch.int32))
        y = torch.empty_like(y).index_copy_(0, order, y)  # (S, C) token-major
        return y.view(N, k, -1).sum(1)


def quantize_moe_(moe: MoE) -> QuantMoE:
    """Turn a MoE's stacked expert parameters into int8 buffers in place (per expert, per channel)."""
    tensors = {}
    for which in ("gate_up", "down"):
        w = getattr(moe, which)
        if w.device.type == "meta":
            q = torch.empty(w.shape, dtype=torch.int8, device="meta")
            s = torch.empty(w.shape[:-1], dtype=torch.float32, device="meta")
        else:
            q, s = quantize_int8_per_channel(w.detach())
        tensors[which] = (q, s)
    for which, (q, s) in tensors.items():
        delattr(moe, which)  # drop the Parameter before registering a buffer of the same name
        moe.register_buffer(which, q)
        moe.register_buffer(which + "_scales", s)
    moe.__class__ = QuantMoE
    return moe  # type: ignore[return-value]


def is_moe(m: nn.Module) -> bool:
    return isinstance(m, MoE)
