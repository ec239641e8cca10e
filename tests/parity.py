# SPDX-License-Identifier: Apache-2.0
"""Shared checks for reference-parity tests: a tiny random transformers model, saved and
loaded by swisslm, must give the same logits, the same greedy tokens and the same cached
decode; and our export must load back into transformers with the same logits."""

from __future__ import annotations

from pathlib import Path

import torch

import swisslm


def load_pair(hf_model, folder: Path):
    """Save `hf_model` to `folder` and load it with swisslm (fp32)."""
    hf_model.eval()
    hf_model.save_pretrained(folder)
    return swisslm.AutoModel.from_pretrained(folder)


def random_ids(vocab: int, batch: int = 2, length: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=g)


@torch.no_grad()
def assert_logits_match(hf_model, ours, ids: torch.Tensor, atol: float = 1e-4) -> None:
    theirs = hf_model(ids).logits
    mine = ours(ids).logits
    diff = (theirs - mine).abs().max().item()
    assert diff <= atol, f"logits max abs diff {diff} > {atol}"


@torch.no_grad()
def assert_greedy_match(hf_model, ours, ids: torch.Tensor, new: int = 20) -> None:
    theirs = hf_model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                               eos_token_id=None, pad_token_id=0)
    mine = ours.generate(ids, max_new_tokens=new, eos_token_id=[])
    assert torch.equal(theirs, mine), f"greedy mismatch:\n{theirs}\n{mine}"


@torch.no_grad()
def assert_cached_decode_matches_full(ours, ids: torch.Tensor, atol: float = 1e-4) -> None:
    """Feed ids one token at a time through the KV cache; each step's logits must equal the
    full forward's logits at that position."""
    B, T = ids.shape
    full = ours(ids).logits
    ours.setup_cache(B, T)
    prefill = 3
    out = ours(ids[:, :prefill], input_pos=torch.arange(prefill)).logits
    torch.testing.assert_close(out, full[:, :prefill], atol=atol, rtol=0)
    for t in range(prefill, T):
        step = ours(ids[:, t : t + 1], input_pos=torch.tensor([t])).logits
        torch.testing.assert_close(step[:, 0], full[:, t], atol=atol, rtol=0)
    ours.clear_cache()


@torch.no_grad()
def assert_export_roundtrip(ours, hf_cls, folder: Path, ids: torch.Tensor, atol: float = 1e-4) -> None:
    ours.save_pretrained(folder)
    back = hf_cls.from_pretrained(folder).eval()
    diff = (back(ids).logits - ours(ids).logits).abs().max().item()
    assert diff <= atol, f"export round trip: logits max abs diff {diff} > {atol}"
