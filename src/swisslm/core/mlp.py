# SPDX-License-Identifier: Apache-2.0
"""Dense feed-forward blocks: gated (SwiGLU, Llama) and plain (GELU, BERT/NeoX)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .linear import Linear

ACTIVATIONS = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)); gate and up fused into one matmul (gpt-fast's trick)."""

    def __init__(self, hidden: int, inter: int, activation: str, bias: bool = False) -> None:
        super().__init__()
        self.inter = inter
        self.act = ACTIVATIONS[activation]
        self.gate_up = Linear(hidden, 2 * inter, bias=bias)
        self.down = Linear(inter, hidden, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.gate_up(x)
        gate, up = h.split(self.inter, dim=-1)
        return self.down(self.act(gate) * up)


class PlainMLP(nn.Module):
    def __init__(self, hidden: int, inter: int, activation: str, bias: bool = True) -> None:
        super().__init__()
        self.act = ACTIVATIONS[activation]
        self.up = Linear(hidden, inter, bias=bias)
        self.down = Linear(inter, hidden, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.up(x)))
