# SPDX-License-Identifier: Apache-2.0
"""Mixture of experts: top-k router + experts stacked as [E, out, in] + grouped matmuls.

    x (N, C) -> router -> top-k (weights, experts) per token
             -> sort the N*k (token, expert) pairs by expert      (one argsort, no host sync)
             -> gate_up: one grouped matmul over the sorted rows  (S, 2I)
             -> act(gate) * up * routing weight                   (S, I)
             -> down:    one grouped matmul                       (S, C)
             -> index_add back onto the tokens                    (N, C)   [+ shared expert]

The grouped matmul is the op `swisslm::grouped_linear`: opaque to torch.compile (so a block with
a MoE compiles with fullgraph=True although the rows per expert are data-dependent), with its own
backward so experts train. Inside it uses torch's native `_grouped_mm` where it runs (CPU fp32 in
torch >= 2.9; inductor only supports bf16 so we never expose it to the compiler), else a loop over
the experts that received rows. There is never a Python loop over tokens.

Parameter layout (docs/ARCHITECTURE.md "MoE layout", relied on by LoRA for experts):
`router.weight` [E, C], `gate_up` [E, 2I, C] (gate rows first), `down` [E, C, I], and for the
shared-expert variant `shared` (a GatedMLP).

Router losses are computed in `collect_router_outputs`, after the layers, from the logits each
MoE keeps on `self.router_logits` (so the `mlp(x) -> y` slot signature stays the same).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from ..config import ModelConfig
from .linear import Linear
from .mlp import ACTIVATIONS, GatedMLP

# -- grouped matmul ------------------------------------------------------------------------


# "auto": torch's native _grouped_mm when it runs here and most experts have rows, else the loop
# below (with fewer rows than experts -- decode -- skipping the empty experts up front beats the
# native kernel's walk over all E groups). "native" / "loop" force one (tests, benchmarks). The
# CPU kernel backend (kernels.apply_) runs its own per-expert kernel under "auto".
GROUPED_BACKEND: str = "auto"


@functools.cache
def _native_grouped_mm_ok(device_type: str, dtype: torch.dtype) -> bool:
    """Whether torch._grouped_mm runs (and is right) for this device/dtype in eager mode; probed
    once on a tiny problem because support differs by torch version, device and dtype."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    try:
        x = torch.randn(5, 16, device=device_type).to(dtype)
        w = torch.randn(2, 8, 16, device=device_type).to(dtype)
        offs = torch.tensor([2, 5], dtype=torch.int32, device=device_type)
        got = torch._grouped_mm(x, w.transpose(-2, -1), offs=offs)
        ref = torch.cat([x[:2] @ w[0].T, x[2:] @ w[1].T])
        return bool(torch.allclose(got.float(), ref.float(), atol=1e-2, rtol=1e-2))
    except (RuntimeError, NotImplementedError, TypeError):
        return False


def _grouped_linear_eager(x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """x (S, in) rows sorted by expert, w (E, out, in), offs (E,) int32 cumulative row ends."""
    if x.shape[0] == 0:
        return x.new_empty(0, w.shape[1])
    native = GROUPED_BACKEND == "native" or (GROUPED_BACKEND == "auto" and x.shape[0] >= w.shape[0])
    if native and x.dtype == w.dtype and _native_grouped_mm_ok(x.device.type, x.dtype):
        return torch._grouped_mm(x, w.transpose(-2, -1), offs=offs)
    # One product per expert that received rows (a loop over <= E experts, never over tokens).
    out = x.new_empty(x.shape[0], w.shape[1])
    start = 0
    for e, end in enumerate(offs.tolist()):
        if end > start:
            torch.mm(x[start:end], w[e].t(), out=out[start:end])
        start = end
    return out


def _grouped_weight_grad_eager(grad: torch.Tensor, x: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """d(loss)/d(w) for y = grouped_linear(x, w): per expert grad[rows].T @ x[rows] -> (E, out, in)."""
    gw = grad.new_zeros(offs.shape[0], grad.shape[1], x.shape[1])
    start = 0
    for e, end in enumerate(offs.tolist()):
        if end > start:
            torch.mm(grad[start:end].t(), x[start:end], out=gw[e])
        start = end
    return gw


@torch.library.custom_op("swisslm::grouped_linear", mutates_args=())
def grouped_linear(x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """Row block e of x (rows offs[e-1]:offs[e]) times w[e].T: x (S, in), w (E, out, in) -> (S, out)."""
    return _grouped_linear_eager(x, w, offs)


@grouped_linear.register_fake
def _(x, w, offs):
    return x.new_empty(x.shape[0], w.shape[1])


@torch.library.custom_op("swisslm::grouped_weight_grad", mutates_args=())
def grouped_weight_grad(grad: torch.Tensor, x: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    return _grouped_weight_grad_eager(grad, x, offs)


@grouped_weight_grad.register_fake
def _(grad, x, offs):
    return grad.new_empty(offs.shape[0], grad.shape[1], x.shape[1])


def grouped_linear_setup(ctx, inputs, output):
    x, w, offs = inputs
    ctx.save_for_backward(x, w, offs)


def grouped_linear_backward(ctx, grad):
    x, w, offs = ctx.saved_tensors
    grad = grad.contiguous()
    gx = grouped_linear(grad, w.transpose(-2, -1).contiguous(), offs) if ctx.needs_input_grad[0] else None
    gw = grouped_weight_grad(grad, x, offs) if ctx.needs_input_grad[1] else None
    return gx, gw, None


# Shared with the kernel backend's op of the same signature (kernels/backend.py).
grouped_linear.register_autograd(grouped_linear_backward, setup_context=grouped_linear_setup)


# -- the MoE block -------------------------------------------------------------------------


class MoE(nn.Module):
    """Top-k routed experts (OLMoE, GraniteMoE), optionally plus an always-on shared expert
    (GraniteMoeShared). Routing: softmax over all experts in fp32, top-k, and with
    `norm_topk_prob` the k weights renormalised to sum to 1 (GraniteMoE's softmax over the top-k
    logits is the same function)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        E, C, I = cfg.num_experts, cfg.hidden_size, cfg.moe_intermediate_size
        self.num_experts, self.top_k, self.inter = E, cfg.num_experts_per_tok, I
        self.num_layers = cfg.num_layers  # for the depth-scaled init of `down`
        self.norm_topk_prob = cfg.norm_topk_prob
        self.act = ACTIVATIONS[cfg.activation]
        self.router = Linear(C, E, bias=False)
        self.gate_up = nn.Parameter(torch.empty(E, 2 * I, C))  # (E, 2I, C): [gate; up] rows
        self.down = nn.Parameter(torch.empty(E, C, I))  # (E, C, I)
        self.has_shared = cfg.shared_expert_intermediate_size > 0
        if self.has_shared:
            self.shared = GatedMLP(C, cfg.shared_expert_intermediate_size, cfg.activation, cfg.mlp_bias)
        self.router_logits: torch.Tensor | None = None  # (N, E) of the last forward
        # Hooks for per-expert LoRA (mixins/lora.py ExpertLoRA): module(x_sorted, offs) -> delta.
        self.lora_gate_up: nn.Module | None = None
        self.lora_down: nn.Module | None = None

    @torch.no_grad()
    def reset_parameters_moe(self, std: float) -> None:
        """Random init for training from scratch (called by Transformer.init_weights): normal(0, std)
        like HF's MoE `_init_weights`, the down projection scaled like the dense `down` layers."""
        nn.init.normal_(self.router.weight, 0.0, std)
        nn.init.normal_(self.gate_up, 0.0, std)
        nn.init.normal_(self.down, 0.0, std / math.sqrt(2 * self.num_layers))

    def route(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """logits (N, E) -> weights (N, k) in fp32, expert ids (N, k)."""
        probs = logits.float().softmax(-1)
        weights, experts = probs.topk(self.top_k, dim=-1)  # (N, k)
        if self.norm_topk_prob:
            weights = weights / weights.sum(-1, keepdim=True)
        return weights, experts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        x = x.reshape(B * T, C)  # (N, C)
        logits = self.router(x)  # (N, E)
        self.router_logits = logits
        weights, experts = self.route(logits)
        y = self.experts_forward(x, weights.to(x.dtype), experts)
        if self.has_shared:
            y = y + self.shared(x)
        return y.view(B, T, C)

    # The two steps a backend may replace (kernels.backend.KernelMoE); the bookkeeping around
    # them stays here.
    def grouped(self, x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
        """x (S, in) rows sorted by expert, w (E, out, in) -> (S, out)."""
        return grouped_linear(x, w, offs)

    def activate(self, h: torch.Tensor, w_sorted: torch.Tensor) -> torch.Tensor:
        """h (S, 2I) = [gate | up], w_sorted (S,) routing weights -> act(gate) * up * w (S, I)."""
        gate, up = h.split(self.inter, dim=-1)
        return self.act(gate) * up * w_sorted[:, None]

    def experts_forward(self, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """x (N, C), weights/experts (N, k) -> sum_k weight * expert_k(x) (N, C)."""
        N, k = experts.shape
        flat = experts.reshape(-1)  # (S,) S = N*k pairs, token-major
        order = flat.argsort(stable=True)  # pairs grouped by expert, tokens in order within a group
        token = order // k  # (S,) token of each sorted pair
        counts = torch.zeros(self.num_experts, dtype=torch.int64, device=x.device)
        counts.scatter_add_(0, flat, torch.ones_like(flat))  # rows per expert, no host sync
        offs = counts.cumsum(0).to(torch.int32)  # (E,) row ends
        xs = x.index_select(0, token)  # (S, C); index_select: ~30% faster than x[token] on CPU
        h = self.grouped(xs, self.gate_up, offs)  # (S, 2I)
        if self.lora_gate_up is not None:
            h = h + self.lora_gate_up(xs, offs)
        # The routing weight scales the (S, I) activation instead of the (S, C) output: the down
        # projection is linear, so it is the same sum, on half the width.
        a = self.activate(h, weights.reshape(-1)[order])  # (S, I)
        y = self.grouped(a, self.down, offs)  # (S, C)
        if self.lora_down is not None:
            y = y + self.lora_down(a, offs)
        # Back to token-major pair order (gather by the inverse permutation), then sum each
        # token's k rows. CPU index_add onto the tokens with repeated indices, and index_copy_,
        # are both many times slower than this gather (measured: ~100 ms vs 0.06 ms at decode).
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.shape[0], device=order.device)
        return y.index_select(0, inverse).view(N, k, -1).sum(1)  # (N, C)


# -- router outputs and auxiliary losses ---------------------------------------------------


def load_balancing_loss(
    router_logits: tuple[torch.Tensor, ...], num_experts: int, top_k: int, attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """Switch-Transformer load-balancing loss exactly as transformers computes it for OLMoE and
    GraniteMoE (`load_balancing_loss_func`): the fraction of top-k assignments per expert times the
    mean router probability per expert, summed, times num_experts, with the counts and means taken
    over every layer's tokens together; padding tokens (attention_mask == 0) are left out."""
    probs = torch.cat([lg.float() for lg in router_logits]).softmax(-1)  # (L*N, E)
    chosen = probs.topk(top_k, dim=-1).indices  # (L*N, k)
    if attention_mask is None:
        mask = probs.new_ones(probs.shape[0])
    else:
        mask = attention_mask.reshape(-1).to(probs).repeat(len(router_logits))  # (L*N,)
    counts = probs.new_zeros(num_experts).scatter_add_(
        0, chosen.reshape(-1), mask.repeat_interleave(top_k)
    )  # (E,) masked top-k assignments
    rows = mask.sum()
    tokens_per_expert = counts / rows
    prob_per_expert = (probs * mask[:, None]).sum(0) / rows
    return (tokens_per_expert * prob_per_expert).sum() * num_experts


def router_z_loss(router_logits: tuple[torch.Tensor, ...], attention_mask: torch.Tensor | None) -> torch.Tensor:
    """ST-MoE / OLMoE router z-loss: mean over (real) tokens of logsumexp(logits)^2, every layer's
    tokens together. Keeps router logits small so the fp32 softmax stays well conditioned."""
    z = torch.cat([lg.float() for lg in router_logits]).logsumexp(-1).square()  # (L*N,)
    if attention_mask is None:
        return z.mean()
    mask = attention_mask.reshape(-1).to(z).repeat(len(router_logits))
    return (z * mask).sum() / mask.sum()


def collect_router_outputs(
    model: nn.Module, attention_mask: torch.Tensor | None
) -> tuple[torch.Tensor | None, tuple[torch.Tensor, ...] | None]:
    """(aux_loss, router_logits) after a forward of a MoE model (called by Transformer.forward).

    Returned only when the model is training or `model.output_router_logits` is True (HF's
    `output_router_logits`; unset, config.json's `output_router_logits` decides, default False, so
    inference pays nothing). aux_loss is already weighted, ready
    to add to the LM loss: router_aux_loss_coef * load-balancing loss (+ router_z_loss_coef *
    z-loss when that coef is > 0). Note transformers' `aux_loss` output is the *unweighted*
    load-balancing loss (it applies the coef only inside `loss`); ours = coef * theirs.
    """
    cfg = model.config
    asked = getattr(model, "output_router_logits", None)
    if asked is None:  # not set on the model: the checkpoint's config.json says (HF's default)
        asked = bool(cfg.extra.get("output_router_logits", False))
    if not (model.training or asked):
        return None, None
    logits = tuple(m.router_logits for m in model.modules() if isinstance(m, MoE) and m.router_logits is not None)
    if not logits:
        return None, None
    if attention_mask is not None and attention_mask.numel() != logits[0].shape[0]:
        attention_mask = None  # mask does not describe these rows (e.g. a cached decode step)
    aux = cfg.router_aux_loss_coef * load_balancing_loss(
        logits, cfg.num_experts, cfg.num_experts_per_tok, attention_mask
    )
    if cfg.router_z_loss_coef > 0:
        aux = aux + cfg.router_z_loss_coef * router_z_loss(logits, attention_mask)
    return aux, logits


__all__ = ["MoE", "collect_router_outputs", "grouped_linear", "load_balancing_loss", "router_z_loss"]
