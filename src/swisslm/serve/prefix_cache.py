# SPDX-License-Identifier: Apache-2.0
"""Automatic prefix caching for the serving engine (vLLM's design on a static per-row cache).

A sequence's tokens are cut into blocks of `block_size` tokens. Block i is named by a hash
chain, h_i = sha256(h_{i-1} || tokens of block i), rooted in the adapter's name, so a name
stands for the whole prefix up to and including that block, under that adapter (the same
tokens give different K/V under different LoRA adapters). Only full blocks are cached.

The K/V of cached blocks live in one pool, preallocated to the memory budget (lazily: pages
are committed when a block is first written, core/kv_cache.py):

    pool k, v: (layers, blocks, kv_heads, block_size, head_dim)

The engine's cache is a static buffer per row (no paged attention), so a hit is a copy: the
longest cached block prefix of a new prompt is copied into the sequence's row and only the
rest is prefilled. Blocks are filled from a row after its prefill (and after it finishes, so a
chat's next turn finds its history). Eviction is LRU over blocks; a chain is touched from its
last block to its first, so a prefix outlives the longer prompts that extend it.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch

from ..core.kv_cache import KVCache, lazy_zeros

__all__ = ["PrefixCache", "block_hashes"]


def block_hashes(tokens: list[int], block_size: int, adapter: str | None = None) -> list[bytes]:
    """The hash-chain names of the full blocks of `tokens` (a trailing partial block has none)."""
    h = hashlib.sha256(b"adapter:" + (adapter or "").encode()).digest()
    out = []
    for i in range(len(tokens) // block_size):
        block = tokens[i * block_size:(i + 1) * block_size]
        h = hashlib.sha256(h + b"".join(int(t).to_bytes(4, "little", signed=True) for t in block)).digest()
        out.append(h)
    return out


class PrefixCache:
    """K/V of token blocks keyed by hash chain, in a pool of `capacity` blocks with LRU eviction."""

    def __init__(self, caches: list[KVCache], block_size: int, budget_bytes: int) -> None:
        if block_size < 1:
            raise ValueError(f"prefix cache block size must be >= 1, got {block_size}")
        k0 = caches[0].k
        _, kv_heads, _, head_dim = k0.shape
        self.block_size = block_size
        self.num_layers = len(caches)
        self.block_bytes = 2 * self.num_layers * kv_heads * block_size * head_dim * k0.element_size()
        self.capacity = budget_bytes // self.block_bytes
        if self.capacity < 1:
            raise ValueError(f"a prefix cache of {budget_bytes} bytes holds no block of {self.block_bytes} bytes")
        shape = (self.num_layers, self.capacity, kv_heads, block_size, head_dim)
        self.k = lazy_zeros(shape, k0.dtype, k0.device)
        self.v = lazy_zeros(shape, k0.dtype, k0.device)
        self.caches = caches
        self._slot: OrderedDict[bytes, int] = OrderedDict()  # hash -> pool slot, least recent first
        self._free = list(range(self.capacity - 1, -1, -1))
        # Counters (tests, metrics): blocks found / copied in, blocks written, blocks evicted.
        self.hits = 0
        self.inserted = 0
        self.evicted = 0

    @property
    def nbytes(self) -> int:
        return self.capacity * self.block_bytes

    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, h: bytes) -> bool:
        return h in self._slot

    def match(self, hashes: list[bytes]) -> int:
        """How many leading blocks of `hashes` are cached."""
        n = 0
        for h in hashes:
            if h not in self._slot:
                break
            n += 1
        return n

    def _touch(self, hashes: list[bytes]) -> None:
        for h in reversed(hashes):  # the chain's first block ends up most recent: evicted last
            if h in self._slot:
                self._slot.move_to_end(h)

    @torch.no_grad()
    def load(self, hashes: list[bytes], row: int, tokens: int) -> None:
        """Copy the first `tokens` cached token slots (the blocks `hashes`) into `row` of every
        layer's cache, slots [0, tokens)."""
        if tokens <= 0:
            return
        nb = -(-tokens // self.block_size)
        slots = torch.tensor([self._slot[h] for h in hashes[:nb]], device=self.k.device)
        for pool, name in ((self.k, "k"), (self.v, "v")):
            g = pool.index_select(1, slots)  # (L, nb, H, bs, D)
            g = g.permute(0, 2, 1, 3, 4).reshape(self.num_layers, g.shape[2], nb * self.block_size, -1)
            for layer, cache in enumerate(self.caches):
                getattr(cache, name)[row, :, :tokens].copy_(g[layer, :, :tokens])
        self.hits += nb
        self._touch(hashes[:nb])

    @torch.no_grad()
    def store(self, hashes: list[bytes], row: int, first: int = 0) -> int:
        """Cache blocks [first, len(hashes)) from `row` (its slots must hold those tokens' K/V);
        blocks already cached are only touched. Returns the number of blocks written."""
        new = [i for i in range(first, len(hashes)) if hashes[i] not in self._slot]
        self._touch(hashes)
        if not new:
            return 0
        new = new[: self.capacity]
        protect = set(hashes)
        slots = []
        for _ in new:
            slot = self._take(protect)
            if slot is None:
                break
            slots.append(slot)
        new = new[: len(slots)]
        if not new:
            return 0
        bs = self.block_size
        idx = torch.tensor(slots, device=self.k.device)
        for pool, name in ((self.k, "k"), (self.v, "v")):
            # (L, H, n*bs, D) from the row, block i's tokens at [i*bs, (i+1)*bs)
            src = torch.stack([torch.cat([getattr(c, name)[row, :, i * bs:(i + 1) * bs] for i in new], dim=1)
                               for c in self.caches])
            L, H, _, D = src.shape
            pool.index_copy_(1, idx, src.reshape(L, H, len(new), bs, D).permute(0, 2, 1, 3, 4))
        for i, slot in zip(new, slots):
            self._slot[hashes[i]] = slot
        self._touch(hashes)
        self.inserted += len(new)
        return len(new)

    def _take(self, protect: set[bytes]) -> int | None:
        """A free pool slot, evicting the least recently used block that is not in `protect`."""
        if self._free:
            return self._free.pop()
        for h in self._slot:
            if h not in protect:
                self.evicted += 1
                return self._slot.pop(h)
        return None

    def clear(self) -> None:
        self._free.extend(self._slot.values())
        self._slot.clear()
