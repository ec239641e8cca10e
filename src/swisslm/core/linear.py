# SPDX-License-Identifier: Apache-2.0
"""The backbone's linear layer: plain `nn.Linear` (same parameters, state dict and init).

Its own class so that a backend pass can find the backbone's linears by type: kernels.apply_
re-classes each one in place as kernels.backend.KernelLinear, whose decode-sized products run
swisslm's streaming kernel.
"""

from __future__ import annotations

from torch import nn


class Linear(nn.Linear):
    pass
