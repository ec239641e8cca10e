# SPDX-License-Identifier: Apache-2.0
"""The KV-cached decode loop: prefill once, then one token per step for the whole batch.

Prompts may differ in length: they arrive left-padded with an attention mask (HF's
convention); positions are counted per row from each row's first real token, and padding is
invisible to attention and to the repetition / n-gram processors, so each row generates what it
would alone.

`generate()` returns token ids (HF-like); `run()` returns a `GenerationResult` with per-row
lengths, finish reasons, texts (stop strings cut), logprobs and beam scores; `decode_steps()`
is the same loop as an iterator over steps, which `streaming.stream()` turns into text deltas.

Every row's tokens go through the shared row pipeline: `row_scores` + `choose_tokens`
(sampling.py) pick them, batched over rows, and one `RowDecoder` per row (rows.py) owns EOS, stop
strings, text deltas, logprobs and the finish reason, exactly as in the serving engine.

Sampling reproducibility: with `seed`, every row draws from its own torch.Generator seeded from
that seed (an int seeds every prompt the same way; a list gives one seed per prompt), so a
seeded row's tokens do not depend on its batch neighbours or its place in the batch, as long as
its logits are the same. On CPU in fp32 they are bitwise the same for a row alone or in a
ragged batch in our tests; kernels that change reduction order with the batch shape (some GPU
GEMMs) can move the last bits of the logits and, rarely, flip a draw on a near-tie. Without
`seed`, one generator (seeded from torch's global RNG) serves the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from .beam import beam_search
from .cache import prepare_cache
from .config import GenerationConfig, GenerationResult, Step
from .logprobs import token_logprobs
from .rows import RowDecoder
from .sampling import choose_tokens, make_generator, row_scores


def _row_seeds(seed: int | list[int] | None, batch: int, copies: int) -> list[int] | None:
    """Seed of every row: prompt b's first copy uses its seed as given, so a prompt sampled
    alone and in a batch with the same seed draws the same tokens; further copies
    (num_return_sequences) use seeds derived from it."""
    if seed is None:
        return None
    seeds = [seed] * batch if isinstance(seed, int) else list(seed)
    if len(seeds) != batch:
        raise ValueError(f"seed: got {len(seeds)} seeds for {batch} prompts")
    return [(s if j == 0 else (s * 1_000_003 + j) % (2**63)) for s in seeds for j in range(copies)]


def _make_generators(cfg: GenerationConfig, batch: int, device) -> list[torch.Generator] | torch.Generator | None:
    """Greedy: none. Seeded: one generator per row. Unseeded: one for the batch, seeded from
    torch's global RNG (so it follows torch.manual_seed)."""
    if cfg.params.greedy:
        return None
    seeds = _row_seeds(cfg.seeds if cfg.seeds is not None else cfg.params.seed, batch, cfg.num_return_sequences)
    if seeds is None:
        return make_generator(None, device)
    return [make_generator(s, device) for s in seeds]


def _prompt_logprobs(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, k: int):
    """logits (N, T, V) of the prompt -> logprob (N, T) of each prompt token given the previous
    ones (NaN where undefined: the first real token and padding) and top-k alternatives."""
    N, T, V = logits.shape
    lp_all = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (N, T-1, V)
    lp = torch.full((N, T), float("nan"), device=logits.device)
    lp[:, 1:] = lp_all.gather(-1, ids[:, 1:, None]).squeeze(-1)
    valid = torch.zeros(N, T, dtype=torch.bool, device=logits.device)
    valid[:, 1:] = mask[:, 1:].bool() & mask[:, :-1].bool()  # token and its predecessor are real
    lp = lp.masked_fill(~valid, float("nan"))
    top_ids = torch.full((N, T, k), -1, dtype=torch.long, device=logits.device)
    top_lp = torch.full((N, T, k), float("nan"), device=logits.device)
    if k:
        v, i = lp_all.topk(k, dim=-1)
        top_ids[:, 1:], top_lp[:, 1:] = i, v
        top_ids = top_ids.masked_fill(~valid[..., None], -1)
        top_lp = top_lp.masked_fill(~valid[..., None], float("nan"))
    return lp, top_ids, top_lp


@torch.no_grad()
def decode_steps(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    cfg: GenerationConfig,
    tokenizer: Any = None,
    track_text: bool = False,
    state: dict | None = None,
) -> Iterator[Step]:
    """The greedy / sampling loop as an iterator over steps (N = B * num_return_sequences rows).

    With `track_text` (or stop strings) a tokenizer turns each row's tokens into UTF-8-safe
    text deltas and stop strings end rows. `state`, if given, receives the prompt-level outputs
    (expanded ids, mask, prompt logprobs, the row decoders) for the caller to assemble a result.
    """
    p = cfg.params
    if cfg.num_beams != 1:
        raise ValueError("decode_steps is the greedy/sampling loop; beam search lives in beam.py")
    if (p.stop or track_text) and tokenizer is None:
        raise ValueError("stop strings and text output need a tokenizer")
    B0, T = input_ids.shape
    device = input_ids.device
    copies = cfg.num_return_sequences
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    ids = input_ids.repeat_interleave(copies, 0) if copies > 1 else input_ids
    amask = attention_mask.to(device).long()
    amask = amask.repeat_interleave(copies, 0) if copies > 1 else amask
    N = ids.shape[0]
    S = T + p.max_new_tokens
    prepare_cache(model, N, S)
    mask = torch.ones(N, model.max_cache_len, dtype=torch.long, device=device)
    mask[:, :T] = amask
    positions = (amask.cumsum(-1) - 1).clamp(min=0)  # (N, T)
    gens = _make_generators(cfg, B0, device)
    # Rows decode text only when someone reads it per step (streaming, stop strings); run()
    # otherwise decodes each row's tokens once at the end.
    text_tok = tokenizer if (p.stop or track_text) else None
    rows = [RowDecoder(p, text_tok, cfg.eos_token_id) for _ in range(N)]
    stop_ids = sorted(rows[0].stop_ids)
    fill = cfg.fill_id
    finished = torch.zeros(N, dtype=torch.bool, device=device)
    out = torch.empty(N, S, dtype=torch.long, device=device)
    out[:, :T] = ids
    pad_prompt = amask == 0
    # Processors see the row's real tokens only: for the repetition penalty, padding is replaced
    # by the row's last prompt token (already penalised, so the set of seen ids is unchanged);
    # for n-grams by -1, which matches nothing.
    seen_fill = ids[:, T - 1 : T]
    logits = model(ids, attention_mask=mask, position_ids=positions, input_pos=torch.arange(T, device=device),
                   num_logits_to_keep=0 if cfg.prompt_logprobs is not None else 1).logits
    if state is not None:
        state.update(ids=ids, mask=amask, rows=rows, out=out)
        if cfg.prompt_logprobs is not None:
            state["prompt_logprobs"] = _prompt_logprobs(logits, ids, amask, cfg.prompt_logprobs)
    logits = logits[:, -1]
    next_pos = positions[:, -1] + 1
    for step in range(p.max_new_tokens):
        new = out[:, T : T + step]
        seen = ngram = None
        if p.repetition_penalty != 1.0:
            seen = torch.cat([torch.where(pad_prompt, seen_fill, ids), new], 1)
        if p.no_repeat_ngram_size:
            ngram = torch.cat([ids.masked_fill(pad_prompt, -1), new], 1)
        masked = logits
        if p.constraint is not None:  # each live row's grammar masks its own logits first
            masked = torch.cat([logits[r : r + 1] if row.finished else row.constrain(logits[r : r + 1])
                                for r, row in enumerate(rows)])
        scores = row_scores(masked, p, step=step, eos_ids=stop_ids, seen=seen, ngram_seq=ngram, generated=new)
        tok = torch.where(finished, fill, choose_tokens(scores, p.greedy, gens))
        out[:, T + step] = tok
        lp = top_ids = top_lp = None
        lps = tops = None
        if p.logprobs is not None:
            lp, top_ids, top_lp = token_logprobs(logits, tok, p.logprobs)
            lps = lp.tolist()
            tops = [list(zip(i, v)) for i, v in zip(top_ids.tolist(), top_lp.tolist())]
        active = [not r.finished for r in rows]
        deltas = [""] * N
        for r, (row, t) in enumerate(zip(rows, tok.tolist())):
            if active[r]:
                deltas[r] = row.push(t, lps[r] if lps else None, tops[r] if tops else None).text
        done = [r.finished for r in rows]
        yield Step(step, tok, active, done, deltas if text_tok is not None else None, lp, top_ids, top_lp,
                   [r.finish_reason for r in rows])
        if all(done):
            break
        finished = torch.tensor(done, device=device)
        logits = model(tok[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                       input_pos=torch.tensor([T + step], device=device)).logits[:, -1]
        next_pos = next_pos + 1


@torch.no_grad()
def run(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    config: GenerationConfig | None = None,
    tokenizer: Any = None,
    streamer: Callable[[torch.Tensor], None] | None = None,
) -> GenerationResult:
    """Generate and return a GenerationResult (beam search when config.num_beams > 1)."""
    cfg = config or GenerationConfig()
    if cfg.num_beams > 1:
        if cfg.params.constraint is not None:
            raise ValueError("a JSON schema / regex constraint is not supported with num_beams > 1")
        return beam_search(model, input_ids, attention_mask, cfg, tokenizer)
    B0, T = input_ids.shape
    N = B0 * cfg.num_return_sequences
    if cfg.params.max_new_tokens == 0:
        ids = input_ids.repeat_interleave(cfg.num_return_sequences, 0)
        return GenerationResult(ids, T, [0] * N, ["length"] * N, [None] * N, [""] * N if tokenizer else None)
    state: dict = {}
    n = 0
    for st in decode_steps(model, input_ids, attention_mask, cfg, tokenizer, state=state):
        n = st.index + 1
        if streamer is not None:
            streamer(st.tokens)
    rows: list[RowDecoder] = state["rows"]
    seqs = state["out"][:, : T + n]
    num_new = [len(r.token_ids) for r in rows]
    texts = None
    if cfg.params.stop:
        texts = [r.text for r in rows]
    elif tokenizer is not None:
        texts = [tokenizer.decode([t for t in r.token_ids if t not in r.stop_ids],
                                  skip_special_tokens=cfg.params.skip_special_tokens) for r in rows]
    res = GenerationResult(seqs, T, num_new, [r.finish_reason or "length" for r in rows],
                           [r.stop_reason if isinstance(r.stop_reason, str) else None for r in rows], texts)
    if cfg.params.logprobs is not None:
        k = cfg.params.logprobs
        res.logprobs = torch.full((N, n), float("nan"))
        res.top_logprob_ids = torch.full((N, n, k), -1, dtype=torch.long)
        res.top_logprobs = torch.full((N, n, k), float("nan"))
        for i, r in enumerate(rows):
            m = len(r.logprobs)
            res.logprobs[i, :m] = torch.tensor(r.logprobs)
            if k and m:
                res.top_logprob_ids[i, :m] = torch.tensor([[t for t, _ in top] for top in r.top_logprobs])
                res.top_logprobs[i, :m] = torch.tensor([[v for _, v in top] for top in r.top_logprobs])
    if "prompt_logprobs" in state:
        res.prompt_logprobs, res.prompt_top_logprob_ids, res.prompt_top_logprobs = state["prompt_logprobs"]
    return res


@torch.no_grad()
def generate(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
             config: GenerationConfig | None = None, streamer=None, tokenizer: Any = None) -> torch.Tensor:
    """Returns (N, T + n) token ids, n <= max_new_tokens (stops early when every row ended).
    Finished rows are filled with pad_token_id (or their EOS when no pad id is set).
    `streamer(tokens (N,))` is called with each new column of tokens."""
    return run(model, input_ids, attention_mask, config, tokenizer, streamer).sequences
