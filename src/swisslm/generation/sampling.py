# SPDX-License-Identifier: Apache-2.0
"""Logits processors and token choice, in HF's order: repetition penalty, then temperature,
top-k, top-p, min-p. All are pure tensor functions of (B, V) logits."""

from __future__ import annotations

import torch


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style penalty (as HF): for tokens already in `seen` (B, L), divide positive logits
    by `penalty` and multiply negative ones by it."""
    if penalty == 1.0:
        return logits
    score = logits.gather(1, seen)
    score = torch.where(score < 0, score * penalty, score / penalty)
    return logits.scatter(1, seen, score)


def apply_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus: keep the smallest set of tokens whose probability reaches p (HF's convention:
    sort ascending and drop the tail whose cumulative mass is <= 1 - p; keep at least one)."""
    if p >= 1.0:
        return logits
    sorted_logits, sorted_idx = torch.sort(logits, descending=False)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    remove = cum <= (1 - p)
    remove[:, -1] = False
    return logits.masked_fill(remove.scatter(1, sorted_idx, remove), float("-inf"))


def apply_min_p(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Drop tokens whose probability is below min_p x the top token's probability."""
    if min_p <= 0.0:
        return logits
    probs = logits.softmax(-1)
    threshold = probs.amax(-1, keepdim=True) * min_p
    return logits.masked_fill(probs < threshold, float("-inf"))


def apply_no_repeat_ngram(logits: torch.Tensor, seq: torch.Tensor, n: int) -> torch.Tensor:
    """Ban every token that would complete an n-gram already present in `seq` (B, L) (HF's
    NoRepeatNGramLogitsProcessor, vectorised the same way). Positions holding -1 (left padding
    masked out by the caller) never match, so padding neither bans nor is banned."""
    L = seq.shape[-1]
    if n <= 0 or L < n:
        return logits
    prefix = seq[:, L + 1 - n :]  # (B, n-1): the n-gram the next token would complete
    windows = seq.unfold(1, n, 1)  # (B, L-n+1, n)
    matches = (windows[..., :-1] == prefix.unsqueeze(1)).all(dim=-1)  # (B, L-n+1)
    V = logits.shape[-1]
    banned = torch.zeros(logits.shape[0], V + 1, dtype=torch.bool, device=logits.device)
    # non-matching windows scatter into a spare column so they cannot unban a matching one
    banned.scatter_(1, torch.where(matches, windows[..., -1].clamp(0, V), V), True)
    return logits.masked_fill(banned[:, :V], float("-inf"))


def process_logits(
    logits: torch.Tensor,
    seen: torch.Tensor | None,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    repetition_penalty: float = 1.0,
    do_sample: bool = True,
    no_repeat_ngram_size: int = 0,
    ngram_seq: torch.Tensor | None = None,
) -> torch.Tensor:
    """`seen` (B, L): ids the repetition penalty looks at (padding replaced by a real id of the
    row); `ngram_seq` (B, L): the sequence for no-repeat-ngram (padding as -1)."""
    logits = logits.float()
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, repetition_penalty)
    if ngram_seq is not None:
        logits = apply_no_repeat_ngram(logits, ngram_seq, no_repeat_ngram_size)
    if not do_sample:
        return logits
    if temperature != 1.0:
        logits = logits / temperature
    logits = apply_top_k(logits, top_k)
    logits = apply_top_p(logits, top_p)
    return apply_min_p(logits, min_p)


def sample(logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Draw one token per row (B, V) -> (B,) from one generator shared by the batch."""
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def sample_rows(logits: torch.Tensor, generators: list[torch.Generator | None],
                active: list[bool]) -> torch.Tensor:
    """Draw one token per row, row r from its own generator: a row's draws then depend only on
    its own seed and logits, never on its batch neighbours. Inactive rows get token 0."""
    probs = logits.softmax(-1)
    out = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    for r, (g, on) in enumerate(zip(generators, active)):
        if on:
            out[r] = torch.multinomial(probs[r : r + 1], 1, generator=g)[0, 0]
    return out
