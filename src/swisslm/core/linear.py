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
    def kernel_linear(self) -> tuple | None:
        """This layer as a fused decode step takes it (kernels.KernelLinear), or None where the
        kernels cannot take it (dtype, device, layout, or autograd needs the weight)."""
        w, b = self.weight, self.bias
        if (w.dtype != torch.float32 or not w.is_cpu or not w.is_contiguous()
                or (torch.is_grad_enabled() and w.requires_grad)):
            return None
        if b is not None and (b.dtype != torch.float32 or not b.is_contiguous() or b.requires_grad):
            return None
        return (0, w.data_ptr(), None, None, None if b is None else b.data_ptr(), 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if w.dtype == torch.float32 and kernels.decode_ok(x, w) and w.is_contiguous():
            return kernels.linear_f32(x, w, self.bias)
        return F.linear(x, w, self.bias)
