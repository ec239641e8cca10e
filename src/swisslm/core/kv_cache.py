# SPDX-License-Identifier: Apache-2.0
"""Static, preallocated KV cache (gpt-fast style): written by index, never grown with cat,
so decode shapes stay fixed and compiled steps never recompile."""

from __future__ import annotations

import torch
from torch import nn


class KVCache(nn.Module):
    def __init__(
        self, batch: int, kv_heads: int, max_len: int, head_dim: int, dtype: torch.dtype, device
    ) -> None:
        super().__init__()
        shape = (batch, kv_heads, max_len, head_dim)  # (B, H_kv, S_max, D)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Write k, v (B, H_kv, T, D) at cache positions input_pos: (T,) shared by every row, or
        (B, T) per row (continuous batching, where rows sit at different positions).
        Returns the full buffers."""
        if input_pos.dim() == 1:
            self.k.index_copy_(2, input_pos, k)
            self.v.index_copy_(2, input_pos, v)
        else:
            idx = input_pos[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])  # (B, H_kv, T, D)
            self.k.scatter_(2, idx, k)
            self.v.scatter_(2, idx, v)
        return self.k, self.v

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows (beam search): row i becomes old row index[i]."""
        self.k.copy_(self.k.index_select(0, index))
        self.v.copy_(self.v.index_select(0, index))
