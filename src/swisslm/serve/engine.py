# SPDX-License-Identifier: Apache-2.0
"""Continuous-batching engine: one background thread owns the model and its static KV cache.

    waiting (bounded deque) --admit--> rows of the running batch --finish/cancel--> free rows

Each step the engine (1) drops cancelled sequences, (2) admits waiting sequences into free rows,
prefilling each prompt alone (batch 1) into its row of the shared cache, at most
`prefill_chunk` prompt tokens per step (chunked prefill), and (3) runs ONE model
forward for every running row: tokens (B, 1), per-row cache positions input_pos (B, 1) and an
attention mask (B, S) that lets row b see only slots 0..pos_b. Rows therefore join and leave at
token granularity; a row that is free carries a dummy token that attends only to itself and is
never read.

Two views keep the step cheap without touching core/: the forward runs on rows [0, n) only
(rows are handed out lowest-first, so n tracks the live batch), and on cache slots [0, L) only,
L = the longest live sequence rounded up to a bucket, so attention costs what the sequences
need rather than max_model_len. Views share storage with the full buffers, so the cache's
in-place writes land in the one real cache.

Tokens are chosen and decoded by the same row pipeline as `generate()`: `row_scores` +
`choose_tokens` (generation/sampling.py) with the sequence's `SamplingParams` and its own
torch.Generator (a seeded request draws the same tokens whatever its neighbours are, and the same
as `generate()` with that seed), then the sequence's `RowDecoder` (generation/rows.py) turns the
token into text and decides EOS / stop strings / length. Results leave the thread through
`Sequence.sink`, a callable the app wires to an asyncio queue with `loop.call_soon_threadsafe`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..core.kv_cache import KVCache
from ..generation.logprobs import token_logprobs
from ..generation.params import SamplingParams
from ..generation.rows import RowDecoder, resolve_eos
from ..generation.sampling import choose_tokens, make_generator, row_scores
from .metrics import Metrics

__all__ = ["Engine", "EngineStoppedError", "QueueFullError", "SamplingParams", "Sequence", "TokenEvent"]

logger = logging.getLogger(__name__)

_WINDOW = 128  # cache-slot bucket: attention runs over ceil(len / 128) * 128 slots


class QueueFullError(RuntimeError):
    """The waiting queue is at its bound; the caller answers 429."""


class EngineStoppedError(RuntimeError):
    """The engine thread is not running (server shutting down, or it failed)."""


@dataclass
class TokenEvent:
    """One generated token as the client sees it. `text` is the newly safe text (may be '' while
    a multi-byte character or a possible stop string is held back); the last event of a
    sequence carries `finish_reason` ('stop' | 'length' | 'abort') and any released tail."""

    token_id: int | None
    text: str
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it
    error: str | None = None


class Sequence:
    """One generation stream (a request with n choices is n sequences)."""

    def __init__(self, prompt_ids: list[int], params: SamplingParams, sink: Callable[[TokenEvent], None],
                 tokenizer: Any, eos_ids: list[int], device: torch.device | str = "cpu") -> None:
        if params.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {params.max_new_tokens}")
        self.prompt_ids = list(prompt_ids)
        self.params = params
        self.sink = sink
        self.decoder = RowDecoder(params, tokenizer, eos_ids)
        self.row = -1
        self.pos = 0  # cache slot the next fed token is written at
        self.prefilled = 0  # prompt tokens already in the cache (chunked prefill)
        self.cancelled = False
        self.finished = False
        self.arrival = time.perf_counter()
        # (logprob, top alternatives) of prompt tokens 1.. when params.prompt_logprobs is set
        self.prompt_logprobs: list[tuple[float, list[tuple[int, float]]]] = []
        self.first_token_time: float | None = None
        self.last_token_time: float | None = None
        # on the logits' device (the draw runs there)
        self.generator = None if params.greedy else make_generator(params.seed, device)

    @property
    def output_ids(self) -> list[int]:
        return self.decoder.token_ids

    def cancel(self) -> None:
        """Thread-safe: the engine frees the row (or skips the queued sequence) at its next step."""
        self.cancelled = True


class Engine:
    """Owns `model` (a causal LM with `.tokenizer`) and serves sequences from one thread."""

    def __init__(self, model: Any, max_batch: int = 16, max_model_len: int | None = None,
                 max_queue: int = 256, metrics: Metrics | None = None, prefill_chunk: int = 512) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        if not model.config.lm_head:
            raise ValueError("the continuous-batching engine needs a causal LM (this model has no LM head)")
        self.model = model
        self.tokenizer = model.tokenizer
        limit = model.config.max_position_embeddings
        self.max_model_len = min(max_model_len or limit, limit)
        if self.max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2, got {self.max_model_len}")
        if prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be >= 1, got {prefill_chunk}")
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.prefill_chunk = prefill_chunk
        self.metrics = metrics or Metrics()
        self.eos_ids = resolve_eos(self.tokenizer, model.config)
        self.vocab_size = model.config.vocab_size
        self.device = next(model.parameters()).device
        self._waiting: deque[Sequence] = deque()
        self._rows: list[Sequence | None] = [None] * max_batch
        self._cv = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._full_caches: list[KVCache] = []
        self._views: dict[tuple[int, int], list[KVCache]] = {}
        self.steps = 0  # decode forwards run (tests and the benchmark read it)

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._full_caches = self.model.setup_cache(self.max_batch, self.max_model_len)
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="swisslm-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._full_caches:
            self.model.bind_cache(self._full_caches)
        self._views.clear()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- requests ------------------------------------------------------------------------------
    def submit(self, seqs: list[Sequence]) -> None:
        """Queue sequences (all or none). Raises QueueFullError when the bound would be passed."""
        with self._cv:
            if not self.alive or self._stop:
                raise EngineStoppedError("the engine is not running")
            if len(self._waiting) + len(seqs) > self.max_queue:
                # Clients that gave up while queued must not hold queue places until a row frees.
                gone = [s for s in self._waiting if s.cancelled]
                if gone:
                    self._waiting = deque(s for s in self._waiting if not s.cancelled)
                    for s in gone:
                        self._emit(s, TokenEvent(None, "", finish_reason="abort"))
            if len(self._waiting) + len(seqs) > self.max_queue:
                self.metrics.rejected.inc()
                raise QueueFullError(f"the server queue is full ({self.max_queue} waiting); retry later")
            self._waiting.extend(seqs)
            self.metrics.queue_depth.set(len(self._waiting))
            self._cv.notify_all()

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_running(self) -> int:
        return sum(s is not None for s in self._rows)

    # -- the loop ------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while True:
                    with self._cv:
                        while not self._stop and not self._waiting and not any(self._rows):
                            self._cv.wait()
                        if self._stop:
                            break
                    self._step()
        except Exception as e:  # a bug here must not leave clients hanging: fail every sequence
            logger.exception("engine loop failed")
            self._fail_all(f"engine failure: {type(e).__name__}")
        finally:
            self._fail_all("server shutting down")
            self._restore()

    def _fail_all(self, message: str) -> None:
        with self._cv:
            pending = [s for s in self._rows if s is not None] + list(self._waiting)
            self._rows = [None] * self.max_batch
            self._waiting.clear()
            self._stop = True
        for s in pending:
            self._emit(s, TokenEvent(None, "", finish_reason="abort", error=message))
        self.metrics.queue_depth.set(0)
        self.metrics.running.set(0)

    def _step(self) -> None:
        for b, s in enumerate(self._rows):
            if s is not None and s.cancelled:
                self._free(b, "abort")
        self._admit()
        # Prefill at most `prefill_chunk` prompt tokens per step (at least one chunk), so a long
        # prompt joining the batch delays the running rows' next token by one chunk, not by
        # its whole length (vLLM's chunked prefill).
        budget = self.prefill_chunk
        for s in self._rows:
            if s is not None and s.prefilled < len(s.prompt_ids) and budget > 0:
                budget -= self._prefill(s, budget)
        active = [(b, s) for b, s in enumerate(self._rows) if s is not None and s.prefilled == len(s.prompt_ids)]
        self.metrics.running.set(self.num_running)
        if active:
            self._decode(active)

    def _admit(self) -> None:
        while True:
            with self._cv:
                free = next((b for b, s in enumerate(self._rows) if s is None), None)
                if free is None or not self._waiting:
                    self.metrics.queue_depth.set(len(self._waiting))
                    return
                seq = self._waiting.popleft()
                self.metrics.queue_depth.set(len(self._waiting))
            if seq.cancelled:
                self._emit(seq, TokenEvent(None, "", finish_reason="abort"))
                continue
            self._rows[free] = seq
            seq.row = free

    def _bind(self, start: int, rows: int, slots: int) -> None:
        """Bind every layer to a window (rows x slots) of its full cache (masks follow the slots)."""
        key = (start, rows, slots)
        views = self._views.get(key)
        if views is None:
            views = [c.view(start, rows, slots) for c in self._full_caches]
            if len(self._views) > 512:
                self._views.clear()
            self._views[key] = views
        self.model.bind_cache(views)

    def _restore(self) -> None:
        if self._full_caches:
            self.model.bind_cache(self._full_caches)

    def _slots(self, needed: int) -> int:
        return min(self.max_model_len, -(-needed // _WINDOW) * _WINDOW)

    def _prefill(self, seq: Sequence, budget: int) -> int:
        """Run the next chunk (<= budget tokens) of the prompt alone (batch 1) into its row: the
        view is rows [b, b+1); earlier chunks are already in the row's cache slots. After the
        last chunk the first token is sampled. Returns the number of tokens prefilled."""
        start = seq.prefilled
        end = min(len(seq.prompt_ids), start + budget)
        b = seq.row
        self._bind(b, 1, self._slots(end))
        ids = torch.tensor([seq.prompt_ids[start:end]], device=self.device)
        want = seq.params.prompt_logprobs
        out = self.model(ids, input_pos=torch.arange(start, end, device=self.device),
                         num_logits_to_keep=1 if want is None else 0)
        if want is not None:  # logits[j] scores prompt token start + j + 1
            n = min(end, len(seq.prompt_ids) - 1) - start
            if n > 0:
                targets = torch.tensor(seq.prompt_ids[start + 1:start + 1 + n], device=self.device)
                lps, top_ids, top_lps = token_logprobs(out.logits[0, :n], targets, want)
                seq.prompt_logprobs += [(lp, list(zip(i, v))) for lp, i, v in
                                        zip(lps.tolist(), top_ids.tolist(), top_lps.tolist())]
        self.metrics.prompt_tokens.inc(end - start)
        seq.prefilled = seq.pos = end
        if end == len(seq.prompt_ids):
            self._sample_and_emit([(0, b, seq)], out.logits[:, -1])
        return end - start

    def _decode(self, active: list[tuple[int, Sequence]]) -> None:
        rows = active[-1][0] + 1
        pos = torch.zeros(rows, 1, dtype=torch.long)
        tokens = torch.zeros(rows, 1, dtype=torch.long)
        live = torch.zeros(rows, 1, dtype=torch.bool)
        for b in range(rows):  # a row still mid-prefill gets its dummy write at the slot its next
            s = self._rows[b]  # chunk overwrites first, so its prompt's K/V stay intact
            if s is not None:
                pos[b, 0] = s.prefilled
        for b, s in active:
            pos[b, 0] = s.pos
            tokens[b, 0] = s.output_ids[-1]
            live[b, 0] = True
        slots = self._slots(int(pos.max()) + 1)
        self._bind(0, rows, slots)
        # Row b sees slots 0..pos_b; a free row sees nothing (the backbone lets every query see
        # its own slot, so its softmax stays finite) and its output is never read.
        mask = (torch.arange(slots)[None, :] <= pos) & live  # (rows, slots)
        pos, tokens, mask = pos.to(self.device), tokens.to(self.device), mask.to(self.device)
        logits = self.model(tokens, attention_mask=mask, input_pos=pos, num_logits_to_keep=1).logits[:, -1]
        self.steps += 1
        self.metrics.batch_size.observe(len(active))
        for _, s in active:
            s.pos += 1
        self._sample_and_emit([(b, b, s) for b, s in active], logits)

    # -- sampling, stopping, output ------------------------------------------------------------
    def _choose(self, s: Sequence, logits: torch.Tensor) -> torch.Tensor:
        """logits (1, V) of one row -> chosen token (1,), as generate() chooses it."""
        p = s.params
        logits = s.decoder.constrain(logits)  # a grammar masks what it forbids before sampling
        seen = generated = None
        if p.repetition_penalty != 1.0 or p.no_repeat_ngram_size:
            seen = torch.tensor([s.prompt_ids + s.output_ids], device=logits.device)
        if (p.presence_penalty or p.frequency_penalty) and s.output_ids:
            generated = torch.tensor([s.output_ids], device=logits.device)
        scores = row_scores(logits, p, step=len(s.output_ids), eos_ids=sorted(s.decoder.stop_ids),
                            seen=seen if p.repetition_penalty != 1.0 else None,
                            ngram_seq=seen if p.no_repeat_ngram_size else None, generated=generated)
        return choose_tokens(scores, p.greedy, [s.generator] if s.generator is not None else None)

    def _sample_and_emit(self, items: list[tuple[int, int, Sequence]], logits: torch.Tensor) -> None:
        """items: (index into logits, cache row, sequence)."""
        now = time.perf_counter()
        # Plain greedy rows (the common serving case) share one argmax over the batch.
        plain = [s.params.plain_greedy for _, _, s in items]
        batch_argmax = logits.argmax(-1).tolist() if any(plain) else None
        for (i, b, s), is_plain in zip(items, plain):
            row_logits = logits[i:i + 1]
            if is_plain:
                token_id = batch_argmax[i]
                tok = torch.tensor([token_id], device=logits.device)
            else:
                tok = self._choose(s, row_logits)
                token_id = int(tok)
            lp = top = None
            if s.params.logprobs is not None:
                lps, top_ids, top_lps = token_logprobs(row_logits, tok, s.params.logprobs)
                lp, top = float(lps[0]), list(zip(top_ids[0].tolist(), top_lps[0].tolist()))
            row = s.decoder.push(token_id, lp, top, at_limit=s.pos + 1 >= self.max_model_len)
            ev = TokenEvent(token_id, row.text, row.logprob, row.top_logprobs, row.finish_reason, row.stop_reason)
            self.metrics.generation_tokens.inc()
            if s.first_token_time is None:
                s.first_token_time = now
                self.metrics.ttft.observe(now - s.arrival)
            else:
                self.metrics.itl.observe(now - s.last_token_time)
            s.last_token_time = now
            if row.finish_reason is not None:
                self._rows[b] = None
                self._finish(s)
            self._emit(s, ev)

    def _free(self, b: int, reason: str) -> None:
        s = self._rows[b]
        self._rows[b] = None
        if s is not None:
            self._finish(s)
            self._emit(s, TokenEvent(None, "", finish_reason=reason))

    def _finish(self, s: Sequence) -> None:
        s.finished = True
        self.metrics.request_latency.observe(time.perf_counter() - s.arrival)

    @staticmethod
    def _emit(s: Sequence, ev: TokenEvent) -> None:
        try:
            s.sink(ev)
        except Exception:  # the client's loop may be gone (shutdown): nothing left to tell it
            logger.debug("dropping an event for a closed client", exc_info=True)
