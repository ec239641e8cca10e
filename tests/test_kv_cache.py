# SPDX-License-Identifier: Apache-2.0
"""The public KV-cache API (issue 21, item 3): setup/bind/view/reorder, and masks computed from
positions instead of stored (S, S) tables."""

from __future__ import annotations

import pytest
import torch

import swisslm
from swisslm.config import ModelConfig
from swisslm.core.kv_cache import KVCache


def _tiny(backend="torch"):
    cfg = ModelConfig(vocab_size=61, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                      max_position_embeddings=4096)
    return swisslm.AutoModel.from_config(cfg, seed=0, backend=backend).eval()


def test_setup_cache_stores_nothing_quadratic_in_the_context():
    model = _tiny()
    S = 4096
    caches = model.setup_cache(1, S)
    assert model.caches() == caches and model.max_cache_len == S
    names = {n for n, _ in model.named_buffers()}
    assert not {"causal_mask", "diag_mask"} & names
    cache_ids = {id(c.k) for c in caches} | {id(c.v) for c in caches}
    other = sum(b.numel() for b in model.buffers() if id(b) not in cache_ids)
    assert other < S  # rotary inv_freq and the like; an (S, S) mask would be 16.7M


def test_view_shares_storage_and_bind_cache_sets_the_mask_length():
    model = _tiny()
    full = model.setup_cache(4, 64)
    views = [c.view(1, 2, 16) for c in full]
    assert views[0].k.data_ptr() == full[0].k[1:].data_ptr() and views[0].max_len == 16
    model.bind_cache(views)
    assert model.max_cache_len == 16 and model.layers[0].attn.cache is views[0]
    with torch.no_grad():
        model(torch.randint(0, 61, (2, 3)), input_pos=torch.arange(3))
    assert full[0].k[1:3, :, :3].abs().sum() > 0  # the writes landed in the full buffers
    assert not full[0].k[0].any() and not full[0].k[3].any() and not full[0].k[:, :, 3:].any()
    model.bind_cache(full)
    assert model.max_cache_len == 64
    with pytest.raises(ValueError, match="outside"):
        full[0].view(3, 2, 16)
    with pytest.raises(ValueError, match="layers"):
        model.bind_cache(full[:1])


def test_reorder_and_repeat_rows():
    c = KVCache.wrap(torch.arange(3.0)[:, None, None, None].expand(3, 1, 4, 2).clone(),
                     torch.arange(3.0)[:, None, None, None].expand(3, 1, 4, 2).clone())
    c.reorder_(torch.tensor([2, 2, 0]), length=3)
    assert c.k[:, 0, 0, 0].tolist() == [2, 2, 0] and c.v[:, 0, 2, 0].tolist() == [2, 2, 0]
    assert c.k[:, 0, 3, 0].tolist() == [0, 1, 2]  # past `length`: untouched
    r = c.repeat_rows(2)
    assert r.batch == 6 and r.k[:, 0, 0, 0].tolist() == [2, 2, 2, 2, 0, 0]


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_mask_from_positions_matches_the_full_forward_per_row(backend):
    # rows at different positions with left padding, as the server runs them (input_pos (B, 1))
    model = _tiny(backend)
    ids = torch.randint(0, 61, (2, 7), generator=torch.Generator().manual_seed(0))
    amask = torch.ones(2, 7, dtype=torch.long)
    amask[1, :2] = 0  # row 1: two pad tokens on the left
    with torch.no_grad():
        full = model(ids, attention_mask=amask).logits
        model.setup_cache(2, 16)
        cmask = torch.zeros(2, 16, dtype=torch.long)
        cmask[:, :7] = amask
        pos_ids = (amask.cumsum(-1) - 1).clamp(min=0)
        model(ids[:, :4], attention_mask=cmask, position_ids=pos_ids[:, :4], input_pos=torch.arange(4))
        steps = [model(ids[:, t:t + 1], attention_mask=cmask, position_ids=pos_ids[:, t:t + 1],
                       input_pos=torch.full((2, 1), t)).logits for t in range(4, 7)]
    torch.testing.assert_close(torch.cat(steps, 1)[1], full[1, 4:], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.cat(steps, 1)[0], full[0, 4:], atol=1e-4, rtol=1e-4)
