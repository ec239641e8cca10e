# SPDX-License-Identifier: Apache-2.0
"""Continuous-batching engine: one background thread owns the model and its static KV cache.

    waiting (bounded deque) --admit--> rows of the running batch --finish/cancel--> free rows

Each step the engine (1) drops cancelled sequences, (2) admits waiting sequences into free rows,
(3) prefills the prompts of new rows -- several in ONE forward, at most `prefill_chunk` prompt
tokens per step (chunked prefill) -- and (4) runs ONE model forward for every running row:
tokens (B, 1), per-row cache positions input_pos (B, 1) and an attention mask (B, S) that lets
row b see only slots 0..pos_b. Rows therefore join and leave at token granularity; a row that is
free carries a dummy token that attends only to itself and is never read.

Batched prefill is ragged: each row's chunk is left-padded to the longest one, so every row's
last prompt token sits in the last column (one logit row each). Positions are per token, and a
row's query at position p sees only its cache slots <= p, so the pads -- all written at the
slot just past the row's chunk, which its own next token overwrites before anything reads it --
are never seen. Rows that are not neighbours in the cache go through `KVCache.rows` (writes scattered to
their rows, reads gathered once per forward).

Prefix cache (prefix_cache.py): before a row's first prefill, the longest run of full prompt
blocks already cached (same tokens from the start, same adapter) is copied into its row and only
the rest is prefilled; its own blocks are cached when its prefill (and later its whole sequence)
is done. A row whose next block another row is computing right now waits for it instead of
computing it too, so a system prompt shared by many simultaneous requests is prefilled once.

Multi-LoRA: with a MultiLoRAMixin on the model (mixins/lora.py), each sequence names an adapter
(or the base) and every forward tells the mixin which adapter each of its rows uses, so rows with
different adapters share one batch.

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
from ..mixins.lora import MultiLoRAMixin, lora_deltas
from .metrics import Metrics
from .prefix_cache import PrefixCache, block_hashes

__all__ = ["Engine", "EngineStoppedError", "QueueFullError", "SamplingParams", "Sequence", "TokenEvent",
           "install_adapters"]

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
                 tokenizer: Any, eos_ids: list[int], device: torch.device | str = "cpu",
                 adapter: str | None = None) -> None:
        if params.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {params.max_new_tokens}")
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        self.prompt_ids = list(prompt_ids)
        self.adapter = adapter  # a LoRA adapter's name (Engine.resolve_model), None: the base model
        self.adapter_index = 0  # its row in the multi-LoRA stacks (0: none), set by submit()
        self.params = params
        self.sink = sink
        self.decoder = RowDecoder(params, tokenizer, eos_ids)
        self.row = -1
        self.pos = 0  # cache slot the next fed token is written at
        self.prefilled = 0  # prompt tokens already in the cache (chunked prefill)
        self.cached = 0  # prompt tokens copied from the prefix cache instead of computed
        self.started = False  # prefix cache looked up, prefill begun
        self.hashes: list[bytes] = []  # the prompt's full-block names (prefix cache)
        self.stored = 0  # leading prompt blocks known to be in the prefix cache
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


def install_adapters(model: Any, adapters: dict[str, str]) -> MultiLoRAMixin:
    """Read PEFT LoRA folders ({name: folder}) and install them on `model` as one
    MultiLoRAMixin ("multi_lora"), each selectable per sequence by its name. Each folder goes
    through finetune.peft_format.load_adapter (the one PEFT reader), is turned into per-row
    form and taken off again; CheckpointError / ValueError name the folder at fault."""
    from ..finetune.peft_format import load_adapter

    deltas = {}
    for name, folder in adapters.items():
        tmp = "_serve_adapter"
        lora = load_adapter(model, folder, name=tmp)
        try:
            deltas[name] = lora_deltas(lora)
        except ValueError as e:
            raise ValueError(f"{folder}: {e}") from None
        finally:
            model.del_mixin(tmp)
    multi = MultiLoRAMixin(deltas)
    model.add_mixin("multi_lora", multi)
    return multi


class Engine:
    """Owns `model` (a causal LM with `.tokenizer`) and serves sequences from one thread.

    prefix_cache_bytes: memory budget of the prefix cache (0 turns it off); prefix_block: its
    block size in tokens. A MultiLoRAMixin on the model makes its adapters selectable per
    sequence (`Sequence(adapter=...)`, `resolve_model`).
    """

    def __init__(self, model: Any, max_batch: int = 16, max_model_len: int | None = None,
                 max_queue: int = 256, metrics: Metrics | None = None, prefill_chunk: int = 512,
                 prefix_cache_bytes: int = 64 << 20, prefix_block: int = 16) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        if not model.config.lm_head:
            raise ValueError("the continuous-batching engine needs a causal LM (this model has no LM head)")
        if prefix_cache_bytes < 0 or prefix_block < 1:
            raise ValueError(f"prefix cache: budget {prefix_cache_bytes} must be >= 0 and block {prefix_block} >= 1")
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
        self.prefix_cache_bytes = prefix_cache_bytes
        self.prefix_block = prefix_block
        self.prefix_cache: PrefixCache | None = None
        self.lora = next((m for m in getattr(model, "mixins", {}).values() if isinstance(m, MultiLoRAMixin)), None)
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
        self._views: dict[tuple[int, int, int], list[KVCache]] = {}
        self._pending: dict[bytes, Sequence] = {}  # prompt blocks a prefilling row is computing
        self.steps = 0  # decode forwards run (tests and the benchmark read it)
        self.prefill_forwards = 0  # prefill forwards run (several prompts may share one)
        self.prefill_tokens = 0  # prompt tokens computed (not copied from the prefix cache)

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._full_caches = self.model.setup_cache(self.max_batch, self.max_model_len)
        if self.prefix_cache_bytes and self.prefix_cache is None:
            self.prefix_cache = PrefixCache(self._full_caches, self.prefix_block, self.prefix_cache_bytes)
        elif self.prefix_cache is not None:
            self.prefix_cache.caches = self._full_caches
            self.prefix_cache.clear()  # its blocks came from other buffers (or another model state)
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

    def memory_summary(self) -> str:
        """The KV cache's size and shape (and the prefix cache's), for the start-up line."""
        cfg = self.model.config
        caches = self._full_caches
        dtype = caches[0].k.dtype if caches else next(self.model.parameters()).dtype
        per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * dtype.itemsize
        total = per_token * self.max_batch * self.max_model_len
        line = (f"KV cache: {self.max_batch} rows x {self.max_model_len} tokens x {cfg.num_layers} layers x "
                f"{cfg.num_kv_heads} kv heads x {cfg.head_dim} dims x 2 (K, V), {str(dtype).removeprefix('torch.')}"
                f" = {_mib(total)} at most ({per_token:,} bytes per token; committed as rows fill)")
        pc = self.prefix_cache
        if pc is not None:
            line += (f"; prefix cache: {pc.capacity} blocks of {pc.block_size} tokens = {_mib(pc.nbytes)} "
                     "at most")
        elif not self.prefix_cache_bytes:
            line += "; prefix cache off"
        return line

    # -- adapters ------------------------------------------------------------------------------
    @property
    def adapters(self) -> list[str]:
        """Names of the LoRA adapters this engine serves besides the base model."""
        return list(self.lora.names) if self.lora is not None else []

    def resolve_model(self, name: str | None) -> str | None:
        """The adapter a request's `model` field names, or None when it names none (the HTTP
        layer then serves the base model or answers 404)."""
        return name if name is not None and self.lora is not None and name in self.lora.names else None

    # -- requests ------------------------------------------------------------------------------
    def submit(self, seqs: list[Sequence]) -> None:
        """Queue sequences (all or none). Raises QueueFullError when the bound would be passed."""
        for s in seqs:
            if len(s.prompt_ids) >= self.max_model_len:
                raise ValueError(f"a prompt of {len(s.prompt_ids)} tokens leaves no room in a context of "
                                 f"{self.max_model_len}")
            if s.adapter is not None:
                if self.resolve_model(s.adapter) is None:
                    raise ValueError(f"unknown adapter {s.adapter!r} (serving: {self.adapters})")
                s.adapter_index = self.lora.index_of(s.adapter)
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
            self._pending.clear()
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
        # its whole length (vLLM's chunked prefill); the prompts of several new rows share it.
        budget = self.prefill_chunk
        plan: list[tuple[Sequence, int]] = []
        for s in self._rows:
            if budget <= 0:
                break
            if s is None or s.prefilled >= len(s.prompt_ids):
                continue
            if not s.started and not self._begin(s):
                continue  # waits for a prefix block another row is computing
            n = min(len(s.prompt_ids) - s.prefilled, budget)
            plan.append((s, n))
            budget -= n
        for group in self._prefill_groups(plan):
            self._prefill(group)
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

    # -- prefix cache --------------------------------------------------------------------------
    def _begin(self, s: Sequence) -> bool:
        """Before a row's first prefill: copy its longest cached prefix into the row. False when
        the block after that prefix is being computed by another row right now (the row waits a
        step and then copies it, rather than computing it a second time)."""
        pc = self.prefix_cache
        if pc is None:
            s.started = True
            return True
        if not s.hashes:
            s.hashes = block_hashes(s.prompt_ids, pc.block_size, s.adapter)
        if s.params.prompt_logprobs is not None:  # every prompt token's logits are wanted: compute all
            s.started = True
            return True
        n = pc.match(s.hashes)
        if n < len(s.hashes) and self._pending.get(s.hashes[n], s) is not s:
            return False
        # At least the last prompt token is computed: its logits choose the first new token.
        hit = min(n * pc.block_size, len(s.prompt_ids) - 1)
        pc.load(s.hashes, s.row, hit)
        s.prefilled = s.pos = s.cached = hit
        s.stored = n
        s.started = True
        for h in s.hashes[n:]:
            self._pending.setdefault(h, s)
        return True

    def _store(self, s: Sequence, tokens: list[int] | None = None) -> None:
        """Cache the full blocks of the row's prompt that its cache slots now hold (`tokens`:
        the whole sequence fed so far, when it finishes)."""
        pc = self.prefix_cache
        if pc is None or not s.started:
            return
        if tokens is None:
            done = min(s.prefilled, len(s.prompt_ids)) // pc.block_size
            if done > s.stored:
                pc.store(s.hashes[:done], s.row, first=s.stored)
                s.stored = done
            for h in s.hashes[:done]:
                if self._pending.get(h) is s:
                    del self._pending[h]
            return
        hashes = block_hashes(tokens, pc.block_size, s.adapter)
        if len(hashes) > s.stored:
            pc.store(hashes, s.row, first=s.stored)

    def _release(self, s: Sequence) -> None:
        """A row is done (finished or cancelled): cache what it computed, let waiters go on."""
        if s.started and s.pos > 0:
            self._store(s, (s.prompt_ids + s.output_ids)[: s.pos])
        for h in [h for h, owner in self._pending.items() if owner is s]:
            del self._pending[h]

    # -- forwards ------------------------------------------------------------------------------
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

    def _set_adapters(self, index: list[int] | None) -> None:
        if self.lora is not None:
            self.lora.set_rows(index)

    @staticmethod
    def _prefill_groups(plan: list[tuple[Sequence, int]]) -> list[list[tuple[Sequence, int]]]:
        """Split the step's prefill chunks into forwards whose left padding stays under half of
        the work: longest first, a chunk joins the current forward while rows x its longest
        chunk <= 2 x the real tokens."""
        groups: list[list[tuple[Sequence, int]]] = []
        total = 0
        for s, n in sorted(plan, key=lambda x: -x[1]):
            if groups and (len(groups[-1]) + 1) * max(groups[-1][0][1], 2) <= 2 * (total + n):
                groups[-1].append((s, n))
                total += n
            else:
                groups.append([(s, n)])
                total = n
        return groups

    def _prefill(self, group: list[tuple[Sequence, int]]) -> None:
        """The next chunk of several prompts in one forward, left-padded to the longest (at least
        2 columns: one-token steps take the fused kernels, which a gathered cache cannot serve).
        Row r's pads all write the slot after its chunk, which no real query of it can see and
        which its own next token overwrites (several writes to one slot: any one may land, all
        are discarded). A prompt whose last chunk this is gets its first token."""
        group = sorted(group, key=lambda x: x[0].row)
        T = max(2, max(n for _, n in group))
        R = len(group)
        tokens = torch.zeros(R, T, dtype=torch.long)
        pos = torch.empty(R, T, dtype=torch.long)
        slots = self._slots(max(s.prefilled + n for s, n in group) + 1)  # chunks and their pad slot
        for i, (s, n) in enumerate(group):
            start, end = s.prefilled, s.prefilled + n
            tokens[i, T - n:] = torch.tensor(s.prompt_ids[start:end])
            pos[i, T - n:] = torch.arange(start, end)
            pos[i, :T - n] = end  # all of a row's pads write one slot: no page is touched for them
        rows = [s.row for s, _ in group]
        if rows == list(range(rows[0], rows[0] + R)):
            self._bind(rows[0], R, slots)
        else:
            index = torch.tensor(rows, device=self.device)
            self.model.bind_cache([c.rows(index, slots) for c in self._full_caches])
        self._set_adapters([s.adapter_index for s, _ in group])
        want_any = any(s.params.prompt_logprobs is not None for s, _ in group)
        try:
            out = self.model(tokens.to(self.device), input_pos=pos.to(self.device),
                             num_logits_to_keep=0 if want_any else 1)
        finally:
            self._set_adapters(None)
        if want_any:
            for i, (s, n) in enumerate(group):
                self._prompt_logprobs(s, out.logits[i, T - n:], s.prefilled, n)
        real = sum(n for _, n in group)
        self.prefill_forwards += 1
        self.prefill_tokens += real
        self.metrics.prompt_tokens.inc(real)
        done = []
        for i, (s, n) in enumerate(group):
            s.prefilled = s.pos = s.prefilled + n
            self._store(s)
            if s.prefilled == len(s.prompt_ids):
                done.append((i, s.row, s))
        if done:
            self._sample_and_emit(done, out.logits[:, -1])

    def _prompt_logprobs(self, seq: Sequence, logits: torch.Tensor, start: int, n: int) -> None:
        """Record the logprobs (and top alternatives) of prompt tokens start+1 .. start+n from the
        chunk's logits (logits[j] scores prompt token start + j + 1), when the request asked."""
        want = seq.params.prompt_logprobs
        k = min(start + n, len(seq.prompt_ids) - 1) - start
        if want is None or k <= 0:
            return
        targets = torch.tensor(seq.prompt_ids[start + 1:start + 1 + k], device=logits.device)
        lps, top_ids, top_lps = token_logprobs(logits[:k], targets, want)
        seq.prompt_logprobs += [(lp, list(zip(i, v))) for lp, i, v in
                                zip(lps.tolist(), top_ids.tolist(), top_lps.tolist())]

    def _decode(self, active: list[tuple[int, Sequence]]) -> None:
        rows = active[-1][0] + 1
        pos = torch.zeros(rows, 1, dtype=torch.long)
        tokens = torch.zeros(rows, 1, dtype=torch.long)
        live = torch.zeros(rows, 1, dtype=torch.bool)
        adapters = [0] * rows
        for b in range(rows):  # a row still mid-prefill gets its dummy write at the slot its next
            s = self._rows[b]  # chunk overwrites first, so its prompt's K/V stay intact
            if s is not None:
                pos[b, 0] = s.prefilled
        for b, s in active:
            pos[b, 0] = s.pos
            tokens[b, 0] = s.output_ids[-1]
            live[b, 0] = True
            adapters[b] = s.adapter_index
        slots = self._slots(int(pos.max()) + 1)
        self._bind(0, rows, slots)
        # Row b sees slots 0..pos_b; a free row sees nothing (the backbone lets every query see
        # its own slot, so its softmax stays finite) and its output is never read.
        mask = (torch.arange(slots)[None, :] <= pos) & live  # (rows, slots)
        pos, tokens, mask = pos.to(self.device), tokens.to(self.device), mask.to(self.device)
        self._set_adapters(adapters)
        try:
            logits = self.model(tokens, attention_mask=mask, input_pos=pos, num_logits_to_keep=1).logits[:, -1]
        finally:
            self._set_adapters(None)
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
                self._release(s)
                self._finish(s)
            self._emit(s, ev)

    def _free(self, b: int, reason: str) -> None:
        s = self._rows[b]
        self._rows[b] = None
        if s is not None:
            self._release(s)
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


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"
