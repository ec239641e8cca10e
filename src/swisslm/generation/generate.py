# SPDX-License-Identifier: Apache-2.0
"""The KV-cached decode loop: prefill once, then one token per step for the whole batch.

Prompts may differ in length: they arrive left-padded with an attention mask (HF's
convention); positions are counted per row from each row's first real token, and padding is
invisible to attention and to the repetition / n-gram processors, so each row generates what it
would alone.

`generate()` returns token ids (HF-like); `run()` returns a `GenerationResult` with per-row
lengths, finish reasons, texts (stop strings cut), logprobs and beam scores; `decode_steps()`
is the same loop as an iterator over steps, which `streaming.stream()` turns into text deltas.

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
from dataclasses import dataclass, field
from typing import Any

import torch

from .logprobs import MAX_TOP_LOGPROBS, token_logprobs
from .sampling import process_logits, sample, sample_rows
from .stopping import StopStrings
from .streaming import TextDeltas


@dataclass
class GenerationConfig:
    """Generation settings with HF's names and defaults."""

    max_new_tokens: int = 32
    min_new_tokens: int = 0  # EOS is masked until this many tokens were generated (HF's MinNewTokens)
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    seed: int | list[int] | None = None
    eos_token_id: list[int] = field(default_factory=list)
    pad_token_id: int | None = None
    # beam search
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    num_return_sequences: int = 1
    # stopping on text (needs a tokenizer): generation of a row ends once its text contains one
    stop: list[str] = field(default_factory=list)
    # outputs: logprob of each generated token (+ top_logprobs alternatives); same for the prompt
    logprobs: bool = False
    top_logprobs: int = 0
    prompt_logprobs: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.eos_token_id, int):
            self.eos_token_id = [self.eos_token_id]
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.min_new_tokens < 0:
            raise ValueError(f"min_new_tokens must be >= 0, got {self.min_new_tokens}")
        if self.do_sample and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}")
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {self.num_beams}")
        if self.num_return_sequences < 1:
            raise ValueError(f"num_return_sequences must be >= 1, got {self.num_return_sequences}")
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise ValueError(f"num_return_sequences ({self.num_return_sequences}) must be <= num_beams "
                             f"({self.num_beams})")
        if self.num_beams == 1 and not self.do_sample and self.num_return_sequences > 1:
            raise ValueError("num_return_sequences > 1 needs sampling (do_sample=True) or beam search "
                             "(greedy decoding would return identical copies)")
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        if not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {self.top_logprobs}")
        if self.top_logprobs and not (self.logprobs or self.prompt_logprobs):
            self.logprobs = True  # asking for alternatives implies asking for logprobs

    @property
    def fill_id(self) -> int:
        """What finished rows are padded with: pad id, else the first EOS, else 0."""
        if self.pad_token_id is not None:
            return self.pad_token_id
        return self.eos_token_id[0] if self.eos_token_id else 0


@dataclass
class GenerationResult:
    """Everything one generate call produced. Rows: prompt b's j-th return sequence is row
    b * num_return_sequences + j (HF's layout)."""

    sequences: torch.Tensor  # (N, T + n) prompt (left-padded as given) + new tokens, fill_id after the end
    prompt_length: int  # T
    num_new_tokens: list[int]  # per row: real new tokens (EOS / the token completing a stop string included)
    finish_reasons: list[str]  # per row: "stop" (EOS or stop string) or "length"
    stop_strings: list[str | None] = field(default_factory=list)  # which stop string ended the row
    texts: list[str] | None = None  # new text per row (needs a tokenizer), cut before a stop string
    sequences_scores: torch.Tensor | None = None  # beam search: HF's length-penalised scores (N,)
    logprobs: torch.Tensor | None = None  # (N, n) raw logprob of each new token; NaN past the row's end
    top_logprob_ids: torch.Tensor | None = None  # (N, n, k); -1 past the end
    top_logprobs: torch.Tensor | None = None  # (N, n, k)
    prompt_logprobs: torch.Tensor | None = None  # (N, T): logprob of prompt token t given < t; NaN at first/pad
    prompt_top_logprob_ids: torch.Tensor | None = None  # (N, T, k)
    prompt_top_logprobs: torch.Tensor | None = None  # (N, T, k)

    def new_tokens(self, row: int) -> list[int]:
        return self.sequences[row, self.prompt_length : self.prompt_length + self.num_new_tokens[row]].tolist()


@dataclass
class Step:
    """One decode step, as `decode_steps` yields it."""

    index: int
    tokens: torch.Tensor  # (N,) fill_id on rows that had already finished
    active: list[bool]  # rows that produced a real token this step
    finished: list[bool]  # rows that are done after this step
    deltas: list[str] | None  # per row: text now safe to show (UTF-8 complete, no stop-string prefix)
    logprob: torch.Tensor | None = None  # (N,)
    top_ids: torch.Tensor | None = None  # (N, k)
    top_logprobs: torch.Tensor | None = None  # (N, k)


def mask_eos(logits: torch.Tensor, cfg: GenerationConfig, step: int) -> torch.Tensor:
    """Before min_new_tokens tokens exist, EOS cannot be chosen (applied first, as HF's
    MinNewTokensLengthLogitsProcessor precedes the sampling warpers)."""
    if step >= cfg.min_new_tokens or not cfg.eos_token_id:
        return logits
    logits = logits.clone()
    logits[:, cfg.eos_token_id] = float("-inf")
    return logits


def prepare_cache(model, batch: int, total_len: int) -> None:
    """(Re)allocate the static cache only when the shape changes, so repeated calls reuse it."""
    cache = model.layers[0].attn.cache
    if cache is None or cache.k.shape[0] != batch or model.max_cache_len < total_len:
        model.setup_cache(batch, total_len)


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


def _make_generators(cfg: GenerationConfig, batch: int, device) -> tuple[list | None, torch.Generator | None]:
    if not cfg.do_sample:
        return None, None
    seeds = _row_seeds(cfg.seed, batch, cfg.num_return_sequences)
    if seeds is None:
        g = torch.Generator(device=device)
        g.manual_seed(int(torch.randint(0, 2**62, (1,)).item()))  # follows torch.manual_seed
        return None, g
    gens = []
    for s in seeds:
        g = torch.Generator(device=device)
        g.manual_seed(s)
        gens.append(g)
    return gens, None


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


class _TextTracker:
    """Per-row incremental detokenisation + stop-string matching."""

    def __init__(self, tokenizer: Any, rows: int, stops: list[str], eos: set[int]) -> None:
        self.deltas = [TextDeltas(tokenizer) for _ in range(rows)]
        self.stops = [StopStrings(stops) for _ in range(rows)]
        self.texts = [""] * rows
        self.eos = eos

    def push(self, row: int, token: int) -> tuple[str, bool]:
        """Feed a row's new token: (text safe to show, stop string hit)."""
        if token in self.eos:
            return "", False
        out = self.stops[row].push(self.deltas[row].push(token))
        self.texts[row] += out
        return out, self.stops[row].hit is not None

    def finish(self, row: int) -> str:
        """The row ended (EOS or length): release held-back text."""
        ss = self.stops[row]
        if ss.hit is not None:
            return ""
        out = ss.push(self.deltas[row].flush())
        out += "" if ss.hit is not None else ss.flush()
        self.texts[row] += out
        return out

    def hit(self, row: int) -> str | None:
        h = self.stops[row].hit
        return h.stop if h else None


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
    (expanded ids, mask, prompt logprobs, tracker) for the caller to assemble a result.
    """
    if cfg.num_beams != 1:
        raise ValueError("decode_steps is the greedy/sampling loop; beam search lives in beam.py")
    if (cfg.stop or track_text) and tokenizer is None:
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
    S = T + cfg.max_new_tokens
    prepare_cache(model, N, S)
    mask = torch.ones(N, model.max_cache_len, dtype=torch.long, device=device)
    mask[:, :T] = amask
    positions = (amask.cumsum(-1) - 1).clamp(min=0)  # (N, T)
    gens, shared_gen = _make_generators(cfg, B0, device)
    eos = torch.tensor(cfg.eos_token_id or [-1], device=device)
    eos_set = set(cfg.eos_token_id)
    fill = cfg.fill_id
    finished = torch.zeros(N, dtype=torch.bool, device=device)
    out = torch.empty(N, S, dtype=torch.long, device=device)
    out[:, :T] = ids
    pad_prompt = amask == 0
    # Processors see the row's real tokens only: for the repetition penalty, padding is replaced
    # by the row's last prompt token (already penalised, so the set of seen ids is unchanged);
    # for n-grams by -1, which matches nothing.
    seen_fill = ids[:, T - 1 : T]
    k_top = cfg.top_logprobs if cfg.logprobs else 0
    tracker = _TextTracker(tokenizer, N, cfg.stop, eos_set) if (cfg.stop or track_text) else None
    logits = model(ids, attention_mask=mask, position_ids=positions, input_pos=torch.arange(T, device=device),
                   num_logits_to_keep=0 if cfg.prompt_logprobs else 1).logits
    if state is not None:
        state.update(ids=ids, mask=amask, tracker=tracker, out=out)
        if cfg.prompt_logprobs:
            state["prompt_logprobs"] = _prompt_logprobs(logits, ids, amask, cfg.top_logprobs)
    logits = logits[:, -1]
    next_pos = positions[:, -1] + 1
    for step in range(cfg.max_new_tokens):
        cur = out[:, : T + step]
        seen = ngram = None
        if cfg.repetition_penalty != 1.0:
            seen = torch.cat([torch.where(pad_prompt, seen_fill, ids), cur[:, T:]], 1)
        if cfg.no_repeat_ngram_size:
            ngram = torch.cat([ids.masked_fill(pad_prompt, -1), cur[:, T:]], 1)
        scores = process_logits(mask_eos(logits, cfg, step), seen, temperature=cfg.temperature, top_k=cfg.top_k,
                                top_p=cfg.top_p, min_p=cfg.min_p, repetition_penalty=cfg.repetition_penalty,
                                do_sample=cfg.do_sample, no_repeat_ngram_size=cfg.no_repeat_ngram_size,
                                ngram_seq=ngram)
        active = (~finished).tolist()
        if not cfg.do_sample:
            tok = scores.argmax(-1)
        elif gens is not None:
            tok = sample_rows(scores, gens, active)
        else:
            tok = sample(scores, shared_gen)
        tok = torch.where(finished, torch.full_like(tok, fill), tok)
        out[:, T + step] = tok
        lp = top_ids = top_lp = None
        if cfg.logprobs:
            lp, top_ids, top_lp = token_logprobs(logits, tok, k_top)
        finished |= torch.isin(tok, eos)
        deltas = None
        if tracker is not None:
            deltas = [""] * N
            toks = tok.tolist()
            done = finished.tolist()
            for r in range(N):
                if not active[r]:
                    continue
                text, hit = tracker.push(r, toks[r])
                if hit:
                    done[r] = True
                elif done[r] or step == cfg.max_new_tokens - 1:
                    text += tracker.finish(r)
                deltas[r] = text
            finished = torch.tensor(done, device=device)
        last = step == cfg.max_new_tokens - 1
        yield Step(step, tok, active, finished.tolist(), deltas, lp, top_ids, top_lp)
        if last or bool(finished.all()):
            break
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
        from .beam import beam_search

        return beam_search(model, input_ids, attention_mask, cfg, tokenizer)
    B0, T = input_ids.shape
    N = B0 * cfg.num_return_sequences
    n_max = cfg.max_new_tokens
    k = cfg.top_logprobs if cfg.logprobs else 0
    lps = torch.full((N, n_max), float("nan")) if cfg.logprobs else None
    tids = torch.full((N, n_max, k), -1, dtype=torch.long) if cfg.logprobs else None
    tlps = torch.full((N, n_max, k), float("nan")) if cfg.logprobs else None
    num_new = [0] * N
    stopped = [False] * N
    state: dict = {}
    n = 0
    if n_max == 0:
        ids = input_ids.repeat_interleave(cfg.num_return_sequences, 0)
        return GenerationResult(ids, T, num_new, ["length"] * N, [None] * N, [""] * N if tokenizer else None)
    for st in decode_steps(model, input_ids, attention_mask, cfg, tokenizer, state=state):
        n = st.index + 1
        if streamer is not None:
            streamer(st.tokens)
        for r in range(N):
            if st.active[r]:
                num_new[r] += 1
                stopped[r] = st.finished[r]
        if cfg.logprobs:
            act = torch.tensor(st.active)
            lps[act, st.index] = st.logprob.cpu()[act]
            tids[act, st.index] = st.top_ids.cpu()[act]
            tlps[act, st.index] = st.top_logprobs.cpu()[act]
    tracker = state.get("tracker")
    seqs = state["out"][:, : T + n]
    eos_set = set(cfg.eos_token_id)
    reasons = ["stop" if stopped[r] else "length" for r in range(N)]  # finished = EOS or stop string
    texts = None
    if tracker is not None:
        texts = tracker.texts
    elif tokenizer is not None:
        texts = [tokenizer.decode([t for t in seqs[r, T : T + num_new[r]].tolist() if t not in eos_set])
                 for r in range(N)]
    res = GenerationResult(
        seqs, T, num_new, reasons, [tracker.hit(r) if tracker else None for r in range(N)], texts,
        logprobs=lps[:, :n] if lps is not None else None,
        top_logprob_ids=tids[:, :n] if tids is not None else None,
        top_logprobs=tlps[:, :n] if tlps is not None else None,
    )
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
