# SPDX-License-Identifier: Apache-2.0
"""The backbone's linear layer: `nn.Linear` (same parameters, state dict and init), whose
decode-sized fp32 CPU products run swisslm's streaming kernel instead of torch's matmul.

At decode a linear multiplies a handful of rows by a weight read once from memory; torch's CPU
matmul (MKL sgemv on the AMD CI machine) reaches about half the memory bandwidth on those
shapes, and the LM head (vocab x hidden, the largest matrix) was a third of a SmolLM2 token.
Everything else -- prefill, training, autograd, other devices and dtypes, torch.compile -- is
plain `F.linear`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if w.dtype == torch.float32 and kernels.decode_ok(x, w) and w.is_contiguous():
            return kernels.linear_f32(x, w, self.bias)
        return F.linear(x, w, self.bias)
