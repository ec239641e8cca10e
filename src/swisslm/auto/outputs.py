# SPDX-License-Identifier: Apache-2.0
"""What the transformers-style forward returns, and the KV cache it hands back.

`ModelOutput` is transformers' record: attribute access, key access (`out["logits"]`) and
integer access over the fields that are set (`out[0]` is the loss when labels were given, else
the logits), `to_tuple()`. It also carries the backbone's own fields (last_hidden_state,
aux_loss, router_logits, pooler_output), so swisslm code reading them keeps working.

`StaticPast` is `past_key_values`: our static per-layer KV buffers plus how many positions are
written. It reads like transformers' legacy cache (`past[layer] -> (k, v)`, `len(past)`,
`get_seq_length()`); passing it back continues the sequence. transformers' own Cache objects
and tuples of tensors are not accepted as input (our cache is preallocated, not a list of
tensors to concatenate).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch

from ..core.kv_cache import KVCache


class ModelOutput(OrderedDict):
    """transformers' ModelOutput: a mapping of the fields that are not None, readable as
    attributes (None for an unset known field) and by position."""

    FIELDS = ("loss", "logits", "past_key_values", "hidden_states", "attentions", "last_hidden_state",
              "pooler_output", "aux_loss", "router_logits")

    def __init__(self, data: Any = None, /, **fields: Any) -> None:
        # a positional mapping too: accelerate's hooks rebuild outputs as type(out)(dict)
        items = {**(dict(data) if data is not None else {}), **fields}
        super().__init__((k, v) for k, v in items.items() if v is not None)

    def __getattr__(self, name: str) -> Any:
        if name in self:
            return self[name]
        if name in self.FIELDS:
            return None
        raise AttributeError(f"{type(self).__name__} has no field {name!r}")

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            return super().__getitem__(key)
        return self.to_tuple()[key]

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(self.values())


class StaticPast:
    """past_key_values: the model's static KV buffers (one KVCache per layer) and how many
    positions hold keys. Continuing past the buffers' capacity reallocates them (copying)."""

    def __init__(self, caches: list[KVCache], length: int, positions: torch.Tensor) -> None:
        self.caches = caches
        self.length = length
        self.next_positions = positions  # (B,) position id of each row's next token

    @property
    def capacity(self) -> int:
        return self.caches[0].max_len

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def __len__(self) -> int:
        return len(self.caches)

    def __getitem__(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.caches[layer]
        return c.k[:, :, : self.length], c.v[:, :, : self.length]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def grow(self, needed: int) -> None:
        """Make room for `needed` positions (doubling, so a token-by-token loop reallocates
        log(n) times)."""
        if needed <= self.capacity:
            return
        size = max(needed, 2 * self.capacity)
        grown = []
        for c in self.caches:
            k = c.k.new_zeros(*c.k.shape[:2], size, c.k.shape[3])
            v = torch.zeros_like(k)
            k[:, :, : self.length] = c.k[:, :, : self.length]
            v[:, :, : self.length] = c.v[:, :, : self.length]
            grown.append(KVCache.wrap(k, v))
        self.caches = grown
