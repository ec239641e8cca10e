# SPDX-License-Identifier: Apache-2.0
"""The static KV cache as the decode loops (generate.py, beam.py) size it."""

from __future__ import annotations


def prepare_cache(model, batch: int, total_len: int) -> None:
    """(Re)allocate the static cache only when the shape changes, so repeated calls reuse it."""
    cache = model.layers[0].attn.cache
    if cache is None or cache.k.shape[0] != batch or model.max_cache_len < total_len:
        model.setup_cache(batch, total_len)
