# SPDX-License-Identifier: Apache-2.0
"""Scoring text with a causal LM: sliding-window perplexity (HF's perplexity guide) and the
log-likelihood of continuations given contexts (lm-evaluation-harness's `loglikelihood`, which
ARC / HellaSwag-style multiple choice is built on)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .logprobs import sequence_logprobs


@dataclass
class PerplexityResult:
    perplexity: float
    nll: float  # mean negative log-likelihood per scored token (nats)
    num_tokens: int  # tokens scored (every token but the first)
    num_windows: int


@torch.no_grad()
def perplexity_details(model, ids: torch.Tensor | Sequence[int], max_length: int, stride: int) -> PerplexityResult:
    """Sliding-window perplexity as in HF's "Perplexity of fixed-length models" guide.

    Windows of `max_length` tokens start every `stride` tokens; each window scores only the
    tokens no earlier window scored, so each token is predicted once, with up to
    `max_length - stride` tokens of context carried over. stride == max_length gives disjoint
    chunks (fast, pessimistic); stride 1 is the exact autoregressive factorisation.

    One deliberate difference from the guide's loop: the guide weights each window's mean loss
    by `valid_targets - 1` (it subtracts the label shift also in windows where the shift removed
    nothing), which slightly misweights every window after the first. We sum the per-token NLL
    exactly and divide by the number of tokens actually scored; the two agree to well under 0.1%.
    """
    ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
    n = ids.numel()
    if n < 2:
        raise ValueError(f"perplexity needs at least 2 tokens, got {n}")
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    if not 1 <= stride <= max_length:
        raise ValueError(f"stride must be in [1, max_length={max_length}], got {stride}")
    device = next(model.parameters()).device
    nll_sum = 0.0
    count = 0
    windows = 0
    prev_end = 0
    for begin in range(0, n, stride):
        end = min(begin + max_length, n)
        window = ids[begin:end].to(device)[None]  # (1, W)
        trg = end - prev_end  # new tokens in this window, always at its end
        first = max(window.shape[1] - trg, 1)  # first position whose token is scored (never 0)
        logits = model(window).logits  # (1, W, V)
        lp = sequence_logprobs(logits[:, first - 1 : -1], window[:, first:])  # (1, scored)
        nll_sum -= float(lp.double().sum())
        count += lp.shape[1]
        windows += 1
        prev_end = end
        if end == n:
            break
    nll = nll_sum / count
    return PerplexityResult(math.exp(nll), nll, count, windows)


def perplexity(model, ids: torch.Tensor | Sequence[int], max_length: int, stride: int) -> float:
    """Sliding-window perplexity of token ids (1-D, or (1, N)); see `perplexity_details`."""
    return perplexity_details(model, ids, max_length, stride).perplexity


@dataclass
class LoglikelihoodResult:
    logprob: float  # sum of the continuation tokens' logprobs
    is_greedy: bool  # every continuation token was the argmax (lm-eval's second output)
    token_logprobs: list[float]


@torch.no_grad()
def loglikelihood(
    model,
    requests: Sequence[tuple[Sequence[int], Sequence[int]]],
    batch_size: int = 8,
    max_length: int | None = None,
) -> list[LoglikelihoodResult]:
    """log P(continuation | context) for each (context_ids, continuation_ids) pair.

    As lm-evaluation-harness does: the model sees (context + continuation)[:-1], truncated on
    the left to `max_length` tokens, and the continuation's tokens are scored. Requests are
    batched longest first and left-padded, so every continuation sits at the end of its row
    and only the last `max(len(continuation)) + 1` positions need the LM head.
    """
    if max_length is None:
        max_length = model.config.max_position_embeddings
    device = next(model.parameters()).device
    order = sorted(range(len(requests)), key=lambda i: -(len(requests[i][0]) + len(requests[i][1])))
    results: list[LoglikelihoodResult | None] = [None] * len(requests)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        rows, conts = [], []
        for i in idx:
            ctx, cont = list(requests[i][0]), list(requests[i][1])
            if not cont:
                raise ValueError(f"request {i}: empty continuation")
            full = (ctx + cont)[-(max_length + 1):]
            if len(full) < 2 and not ctx:
                raise ValueError(f"request {i}: a one-token continuation needs a context (a BOS token)")
            rows.append(full[:-1])
            conts.append(cont[-(len(full) - 1):] if len(cont) >= len(full) else cont)
        L = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), L, dtype=torch.long)
        mask = torch.zeros(len(rows), L, dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, L - len(row):] = torch.tensor(row)
            mask[r, L - len(row):] = 1
        k = max(len(c) for c in conts)
        logits = model(ids.to(device), attention_mask=mask.to(device), num_logits_to_keep=k).logits  # (b, k, V)
        for r, (i, cont) in enumerate(zip(idx, conts)):
            lg = logits[r, k - len(cont):]  # (c, V): the last c positions predict the c tokens
            tgt = torch.tensor(cont, device=lg.device)
            lp = sequence_logprobs(lg[None], tgt[None])[0]
            greedy = bool((lg.argmax(-1) == tgt).all())
            results[i] = LoglikelihoodResult(float(lp.double().sum()), greedy, lp.tolist())
    return results  # type: ignore[return-value]


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation) as lm-evaluation-harness splits them: trailing
    whitespace of the context moves to the continuation, the pair is encoded whole, and the
    continuation is whatever follows the context's own tokens (so a merge across the boundary
    is scored as the model would see it)."""
    n_space = len(context) - len(context.rstrip())
    if n_space:
        continuation = context[-n_space:] + continuation
        context = context[:-n_space]
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    return whole[: len(ctx)], whole[len(ctx):]
