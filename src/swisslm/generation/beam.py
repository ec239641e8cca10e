# SPDX-License-Identifier: Apache-2.0
"""Beam search, step for step the algorithm of transformers' `_beam_search` (5.x), so sequences
are token-identical and `sequences_scores` equal on the same model:

- each step keeps the top K = max(2, 1 + #eos) * num_beams continuations over all beams;
- continuations that hit EOS or the length limit are candidates for the finished set only if
  they rank in the top num_beams of the K; their score is sum(logprobs) / new_len**length_penalty
  where new_len counts generated tokens (EOS included, prompt excluded);
- the running beams are the best num_beams continuations that did not finish;
- early_stopping: True stops a prompt once num_beams hypotheses are finished; False stops when
  the best running beam at its current length cannot beat the worst finished one; "never" uses
  the best length it could still reach (max length when length_penalty > 0).

Processors see log-probabilities (HF applies them after log_softmax in beam search).
Differences from HF, on purpose: prefill runs once per prompt and the KV cache is then copied
to the beams (HF prefills num_beams identical rows), and reordering copies only the filled part
of our static cache.
"""

from __future__ import annotations

from typing import Any

import torch

from .cache import prepare_cache
from .config import GenerationConfig, GenerationResult
from .rows import stop_token_set
from .sampling import make_generator, row_scores

_NEG = -1.0e9  # HF's "impossible" score


def _gather(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t (B, K, ...) gathered along dim 1 with idx (B, k) (HF's _gather_beams)."""
    while idx.dim() < t.dim():
        idx = idx.unsqueeze(-1)
    return torch.take_along_dim(t, idx, dim=1)


@torch.no_grad()
def beam_search(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    cfg: GenerationConfig,
    tokenizer: Any = None,
) -> GenerationResult:
    p = cfg.params
    if p.stop:
        raise ValueError("stop strings are not supported with beam search (use eos_token_id)")
    if p.logprobs is not None or cfg.prompt_logprobs is not None:
        raise ValueError("logprobs are not supported with beam search (sequences_scores has the beam scores)")
    B, T = input_ids.shape
    nb = cfg.num_beams
    device = input_ids.device
    max_length = T + p.max_new_tokens
    fill = cfg.fill_id
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    amask = attention_mask.to(device).long()
    if p.max_new_tokens == 0:
        ids = input_ids.repeat_interleave(cfg.num_return_sequences, 0)
        N = ids.shape[0]
        return GenerationResult(ids, T, [0] * N, ["length"] * N, [None] * N, [""] * N if tokenizer else None,
                                sequences_scores=torch.zeros(N))
    eos_ids = sorted(stop_token_set(p, cfg.eos_token_id))
    eos = torch.tensor(eos_ids, dtype=torch.long, device=device)
    keep = max(2, 1 + len(eos_ids)) * nb
    top_num_beam_mask = torch.arange(keep, device=device) < nb  # the first num_beams of the K
    early, lp_pow = cfg.early_stopping, cfg.length_penalty

    running_sequences = torch.full((B, nb, max_length), fill, dtype=torch.long, device=device)
    running_sequences[:, :, :T] = input_ids[:, None]
    sequences = running_sequences.clone()
    running_beam_scores = torch.zeros(B, nb, dtype=torch.float, device=device)
    running_beam_scores[:, 1:] = _NEG  # only beam 0 expands at the first step (all beams are equal)
    beam_scores = torch.full((B, nb), _NEG, dtype=torch.float, device=device)
    is_sent_finished = torch.zeros(B, nb, dtype=torch.bool, device=device)
    unsatisfied = torch.ones(B, 1, dtype=torch.bool, device=device)  # can still improve
    running_beam_indices = torch.full((B, nb, p.max_new_tokens), -1, dtype=torch.int32, device=device)
    beam_indices = running_beam_indices.clone()
    batch_offset = torch.arange(B, device=device)[:, None] * nb

    # Prefill each prompt once, then copy its cache to its beams.
    prepare_cache(model, B, max_length)
    cache_len = model.max_cache_len
    positions = (amask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
    pmask = torch.ones(B, cache_len, dtype=torch.long, device=device)
    pmask[:, :T] = amask
    logits = model(input_ids, attention_mask=pmask, position_ids=positions,
                   input_pos=torch.arange(T, device=device), num_logits_to_keep=1).logits[:, -1]
    logits = logits.float().repeat_interleave(nb, 0)  # (B*nb, V)
    model.bind_cache([c.repeat_rows(nb) for c in model.caches()])  # prompt b -> beams b*nb ..
    mask = pmask.repeat_interleave(nb, 0)  # beams of one prompt share its padding
    next_pos = (positions[:, -1] + 1).repeat_interleave(nb, 0)
    pad_prompt = (amask == 0).repeat_interleave(nb, 0)  # (B*nb, T)
    generator = None
    if not p.greedy:
        generator = make_generator(p.seed, device)

    cur_len = T
    while True:
        V = logits.shape[-1]
        flat = running_sequences[:, :, :cur_len].reshape(B * nb, cur_len)
        seen = ngram = None
        if p.repetition_penalty != 1.0:
            seen = flat.clone()
            seen[:, :T] = torch.where(pad_prompt, flat[:, T - 1 : T], flat[:, :T])
        if p.no_repeat_ngram_size:
            ngram = flat.clone()
            ngram[:, :T] = flat[:, :T].masked_fill(pad_prompt, -1)
        log_probs = row_scores(torch.log_softmax(logits, dim=-1), p, step=cur_len - T, eos_ids=eos_ids,
                               seen=seen, ngram_seq=ngram, generated=flat[:, T:])
        acc = (log_probs.view(B, nb, V) + running_beam_scores[:, :, None]).view(B, nb * V)

        # top-K continuations over all beams of each prompt
        if not p.greedy:
            topk_indices = torch.multinomial(torch.softmax(acc, dim=-1), keep, generator=generator)
            topk_log_probs = acc.gather(1, topk_indices)
        else:
            topk_log_probs, topk_indices = torch.topk(acc, k=keep)
        topk_beam = topk_indices // V
        topk_ids = topk_indices % V
        topk_running_beam_indices = _gather(running_beam_indices, topk_beam)
        topk_running_sequences = _gather(running_sequences, topk_beam)
        topk_running_sequences[:, :, cur_len] = topk_ids
        topk_running_beam_indices[:, :, cur_len - T] = (topk_beam + batch_offset).to(torch.int32)

        # which continuations end here (EOS or the length limit)
        hits = torch.isin(topk_ids, eos) if eos.numel() else torch.zeros_like(topk_ids, dtype=torch.bool)
        if cur_len + 1 >= max_length:
            hits = torch.ones_like(hits)

        # the best num_beams unfinished continuations keep running
        topk_running_log_probs = topk_log_probs + hits.to(torch.float32) * _NEG
        nxt = torch.topk(topk_running_log_probs, k=nb)[1]
        running_sequences = _gather(topk_running_sequences, nxt)
        running_beam_scores = _gather(topk_running_log_probs, nxt)
        running_beam_indices = _gather(topk_running_beam_indices, nxt)

        # finished continuations among the top num_beams enter the finished set if good enough
        just_finished = hits & top_num_beam_mask[None, :]
        fin_scores = topk_log_probs / ((cur_len + 1 - T) ** lp_pow)
        full = torch.all(is_sent_finished, dim=-1, keepdim=True) & (early is True)
        fin_scores = fin_scores + full.to(torch.float32) * _NEG
        fin_scores = fin_scores + (~unsatisfied).to(torch.float32) * _NEG
        fin_scores = fin_scores + (~just_finished) * _NEG
        merged_scores = torch.cat((beam_scores, fin_scores), dim=1)
        best = torch.topk(merged_scores, k=nb)[1]
        sequences = _gather(torch.cat((sequences, topk_running_sequences), dim=1), best)
        beam_scores = _gather(merged_scores, best)
        beam_indices = _gather(torch.cat((beam_indices, topk_running_beam_indices), dim=1), best)
        is_sent_finished = _gather(torch.cat((is_sent_finished, just_finished), dim=1), best)

        src = running_beam_indices[..., cur_len - T].reshape(-1).long()
        cur_len += 1

        # can any prompt still improve? (HF's _check_early_stop_heuristic)
        if early == "never" and lp_pow > 0.0:
            best_len = max_length - T
        else:
            best_len = cur_len - T
        best_running = running_beam_scores[:, :1] / (best_len**lp_pow)
        worst_finished = torch.where(is_sent_finished, torch.min(beam_scores, dim=1, keepdim=True)[0], _NEG)
        unsatisfied = unsatisfied & torch.any(best_running > worst_finished, dim=-1, keepdim=True)
        go_on = (bool(torch.any(unsatisfied)) and not (bool(torch.all(is_sent_finished)) and early is True)
                 and not bool(torch.all(hits)))
        if not go_on:
            break
        if not torch.equal(src, torch.arange(B * nb, device=device)):
            model.reorder_cache(src, cur_len - 1)  # only the written positions
        tok = running_sequences[:, :, cur_len - 1].reshape(B * nb, 1)
        logits = model(tok, attention_mask=mask, position_ids=next_pos[:, None],
                       input_pos=torch.tensor([cur_len - 1], device=device)).logits[:, -1].float()
        next_pos = next_pos + 1

    nrs = cfg.num_return_sequences
    sequences = sequences[:, :nrs].reshape(B * nrs, max_length)
    scores = beam_scores[:, :nrs].reshape(B * nrs)
    bidx = beam_indices[:, :nrs].reshape(B * nrs, -1)
    lengths = (bidx + 1).bool().sum(1)
    out_len = T + int(lengths.max())
    sequences = sequences[:, :out_len]
    num_new = lengths.tolist()
    eos_set = set(eos_ids)
    reasons = ["stop" if n and int(sequences[r, T + n - 1]) in eos_set else "length" for r, n in enumerate(num_new)]
    texts = None
    if tokenizer is not None:
        texts = [tokenizer.decode([t for t in sequences[r, T : T + n].tolist() if t not in eos_set])
                 for r, n in enumerate(num_new)]
    return GenerationResult(sequences, T, num_new, reasons, [None] * (B * nrs), texts, sequences_scores=scores)
