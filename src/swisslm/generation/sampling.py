# SPDX-License-Identifier: Apache-2.0
"""Logits processors and token choice, in HF's order: repetition penalty, then temperature,
top-k, top-p, min-p, typical-p. All are pure tensor functions of (B, V) logits. `row_scores` applies a
`SamplingParams` record to rows that share it and `choose_tokens` picks their tokens: the one
token-choice path of generate(), stream() and the serving engine."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .params import SamplingParams


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


def apply_typical_p(logits: torch.Tensor, mass: float) -> torch.Tensor:
    """Locally typical sampling (Meister et al. 2022; HF's TypicalLogitsWarper): rank tokens by how
    far their information -log p is from the distribution's entropy, keep the closest ones until
    their probability reaches `mass` (at least one). Tokens already at -inf stay out."""
    if mass >= 1.0:
        return logits
    logp = logits.log_softmax(-1)
    p = logp.exp()
    entropy = -(logp * p).nansum(-1, keepdim=True)  # -inf * 0 = nan: an excluded token adds nothing
    distance = (-logp - entropy).abs()
    sorted_dist, order = torch.sort(distance, descending=False)
    cum = logits.gather(-1, order).softmax(-1).cumsum(-1)
    last = (cum < mass).sum(-1, keepdim=True).clamp(max=logits.shape[-1] - 1)
    remove = sorted_dist > sorted_dist.gather(-1, last)
    remove[:, 0] = False
    return logits.masked_fill(remove.scatter(1, order, remove), float("-inf"))


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
    typical_p: float = 1.0,
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
    logits = apply_min_p(logits, min_p)
    return apply_typical_p(logits, typical_p)


def row_scores(
    logits: torch.Tensor,
    params: SamplingParams,
    *,
    step: int = 0,
    eos_ids: Iterable[int] = (),
    seen: torch.Tensor | None = None,
    ngram_seq: torch.Tensor | None = None,
    generated: torch.Tensor | None = None,
) -> torch.Tensor:
    """The processed scores (B, V) fp32 of rows that share `params`, ready for `choose_tokens`.

    `step`: tokens generated so far (EOS ids are masked while step < min_new_tokens);
    `seen` / `ngram_seq`: as `process_logits`; `generated` (B, n): the row's generated tokens, for
    the presence / frequency penalties (entries < 0 are ignored). Order: min-new-tokens EOS mask,
    logit bias, presence / frequency penalties (OpenAI), then `process_logits` (HF's order).
    """
    p = params
    logits = logits.float()
    eos = list(eos_ids)
    if step < p.min_new_tokens and eos:
        logits = logits.index_fill(1, torch.tensor(eos, device=logits.device), float("-inf"))
    if p.logit_bias:
        ids = torch.tensor(list(p.logit_bias), device=logits.device)
        bias = torch.tensor(list(p.logit_bias.values()), device=logits.device)
        logits = logits.index_add(1, ids, bias.expand(logits.shape[0], -1))
    if (p.presence_penalty or p.frequency_penalty) and generated is not None and generated.numel():
        counts = torch.zeros_like(logits)
        valid = generated >= 0
        counts.scatter_add_(1, generated.clamp(min=0).long(), valid.to(logits.dtype))
        logits = logits - p.frequency_penalty * counts - p.presence_penalty * (counts > 0).to(logits.dtype)
    return process_logits(logits, seen, temperature=p.temperature if not p.greedy else 1.0, top_k=p.top_k,
                          top_p=p.top_p, min_p=p.min_p, typical_p=p.typical_p, repetition_penalty=p.repetition_penalty,
                          do_sample=not p.greedy, no_repeat_ngram_size=p.no_repeat_ngram_size, ngram_seq=ngram_seq)


def make_generator(seed: int | None, device: torch.device | str) -> torch.Generator:
    """A row's random generator on the logits' device: seeded as given, else from torch's global
    RNG (so `torch.manual_seed` makes unseeded sampling reproducible)."""
    g = torch.Generator(device=device)
    g.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
    return g


def choose_tokens(scores: torch.Tensor, greedy: bool,
                  generators: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
    """One token per row (B, V) -> (B,): argmax when greedy, else a draw from softmax(scores).

    Sampling is the exponential-race form of the Gumbel-max trick (gpt-fast's
    `multinomial_sample_one_no_sync`): argmax(probs / E), E ~ Exp(1), draws token i with
    probability probs[i] and, unlike torch.multinomial, needs no host sync. `generators`: one
    shared by the batch, or one per row, so a seeded row's draws depend only on its own seed and
    logits, never on its batch neighbours.
    """
    if greedy:
        return scores.argmax(-1)
    probs = scores.softmax(-1)
    race = torch.empty_like(probs)
    if isinstance(generators, list):
        for r, g in enumerate(generators):
            race[r].exponential_(1, generator=g)
    else:
        race.exponential_(1, generator=generators)
    return torch.argmax(probs / race, dim=-1)
