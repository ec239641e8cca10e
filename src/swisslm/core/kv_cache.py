# SPDX-License-Identifier: Apache-2.0
"""Static, preallocated KV cache (gpt-fast style): written by index, never grown with cat,
so decode shapes stay fixed and compiled steps never recompile.

The public surface the decode loops use (generation/, serve/engine.py):

    caches = model.setup_cache(batch, max_len)      # one KVCache per layer
    model.bind_cache([c.view(0, rows, slots) for c in caches])   # a window of rows x slots
    model.reorder_cache(index, length)               # beams: row i <- old row index[i]
    model.bind_cache(caches)                         # back to the full buffers
    caches[0].rows(index, slots)                     # any rows, for a multi-token forward

On the CPU the buffers are anonymous memory maps: zero-filled by the kernel and resident only
once written, so a server sized for max_batch x max_model_len costs the memory its sequences
use, not the worst case (torch.zeros writes every page at allocation).
"""

from __future__ import annotations

import math
import mmap

import torch
from torch import nn

_LAZY_MIN_BYTES = 1 << 20


def lazy_zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str | None) -> torch.Tensor:
    """A zero tensor whose CPU pages are committed only when first written (an anonymous
    mmap, which the kernel zero-fills on first touch); elsewhere torch.zeros."""
    dev = torch.device(device if device is not None else "cpu")
    n = math.prod(shape)
    nbytes = n * torch.empty((), dtype=dtype).element_size()
    if dev.type != "cpu" or nbytes < _LAZY_MIN_BYTES:  # a small buffer gains nothing from a map of its own
        return torch.zeros(shape, dtype=dtype, device=dev)
    buf = mmap.mmap(-1, nbytes)  # frombuffer keeps a reference: the map lives as long as the tensor
    return torch.frombuffer(buf, dtype=dtype, count=n).view(shape)


class KVCache(nn.Module):
    def __init__(
        self, batch: int, kv_heads: int, max_len: int, head_dim: int, dtype: torch.dtype, device
    ) -> None:
        super().__init__()
        shape = (batch, kv_heads, max_len, head_dim)  # (B, H_kv, S_max, D)
        self.register_buffer("k", lazy_zeros(shape, dtype, device), persistent=False)
        self.register_buffer("v", lazy_zeros(shape, dtype, device), persistent=False)

    @classmethod
    def wrap(cls, k: torch.Tensor, v: torch.Tensor) -> KVCache:
        """A cache over existing (B, H_kv, S, D) buffers (views included), no copy."""
        if k.shape != v.shape or k.dim() != 4:
            raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must be the same (B, H_kv, S, D)")
        cache = cls.__new__(cls)
        nn.Module.__init__(cache)
        cache.register_buffer("k", k, persistent=False)
        cache.register_buffer("v", v, persistent=False)
        return cache

    @property
    def batch(self) -> int:
        return self.k.shape[0]

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    @property
    def nbytes(self) -> int:
        """Bytes of the K and V buffers together (what the cache can grow to)."""
        return 2 * self.k.numel() * self.k.element_size()

    def view(self, start: int, rows: int, slots: int) -> KVCache:
        """Rows [start, start + rows) and slots [0, slots) of this cache, sharing its storage (the
        writes of a forward bound to the view land in these buffers)."""
        if not (0 <= start and rows > 0 and start + rows <= self.batch and 0 < slots <= self.max_len):
            raise ValueError(f"rows [{start}, {start + rows}) x slots {slots} outside a cache of "
                             f"{self.batch} rows x {self.max_len} slots")
        return KVCache.wrap(self.k[start:start + rows, :, :slots], self.v[start:start + rows, :, :slots])

    def rows(self, index: torch.Tensor, slots: int) -> KVCache:
        """Rows `index` (any rows, in any order) and slots [0, slots) of this cache, for a forward
        of several tokens per row (a batched prefill of rows that are not neighbours). Writes land
        in this cache's rows; attention reads a gathered copy of them, made once per forward."""
        if index.dim() != 1 or index.numel() == 0 or not 0 < slots <= self.max_len:
            raise ValueError(f"rows {tuple(index.shape)} x slots {slots} outside a cache of "
                             f"{self.batch} rows x {self.max_len} slots")
        return GatheredRows(self, index, slots)

    def repeat_rows(self, n: int) -> KVCache:
        """A new cache with every row repeated n times (row b -> rows b*n .. b*n+n-1): a prompt's
        cache copied to its beams."""
        return KVCache.wrap(self.k.repeat_interleave(n, 0), self.v.repeat_interleave(n, 0))

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

    def reorder_(self, index: torch.Tensor, length: int | None = None) -> None:
        """In place, row i becomes old row index[i] (beam search), over the first `length`
        positions only (the rest of the static buffer is unwritten; None: all)."""
        n = self.max_len if length is None else length
        self.k[:, :, :n] = self.k[:, :, :n].index_select(0, index)
        self.v[:, :, :n] = self.v[:, :, :n].index_select(0, index)


class GatheredRows(KVCache):
    """`KVCache.rows`: scattered rows of a parent cache behind the KVCache surface.

    Only `update` is served: the one-token fused CPU steps (kernels/) read and write `.k` / `.v`
    in place, which a gathered copy cannot honour, so those raise instead of losing writes --
    the engine runs gathered forwards with at least two tokens per row, where they do not apply.
    """

    def __init__(self, parent: KVCache, index: torch.Tensor, slots: int) -> None:
        nn.Module.__init__(self)
        self.parent = parent
        self.index = index.to(parent.k.device)
        self.slots = slots

    @property
    def k(self) -> torch.Tensor:  # type: ignore[override]
        raise RuntimeError("a gathered-rows cache is written through update() only")

    v = k

    @property
    def batch(self) -> int:
        return self.index.numel()

    @property
    def max_len(self) -> int:
        return self.slots

    @property
    def nbytes(self) -> int:
        return 0  # it owns nothing

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        B, T = k.shape[0], k.shape[2]
        pos = input_pos.expand(B, T) if input_pos.dim() == 1 else input_pos  # (B, T)
        rows = self.index[:, None].expand(B, T)
        pk, pv = self.parent.k, self.parent.v
        pk[rows, :, pos] = k.transpose(1, 2)  # advanced indices first: (B, T, H_kv, D)
        pv[rows, :, pos] = v.transpose(1, 2)
        return pk[:, :, :self.slots].index_select(0, self.index), pv[:, :, :self.slots].index_select(0, self.index)
