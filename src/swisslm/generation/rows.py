# SPDX-License-Identifier: Apache-2.0
"""The row decoder: what happens to one generated row after its token is chosen.

`generate()` / `stream()` (one decoder per row of the batch) and the serving engine (one per
sequence) feed every chosen token to a `RowDecoder`, which owns the decisions both used to make
on their own:

- EOS and stop token ids end the row with finish reason "stop" (their text is never shown);
  `ignore_eos` turns EOS off, `stop_token_ids` add to it;
- stop strings are matched on the decoded text, may span tokens and are never shown
  (`StopStrings` holds back any text that could start one);
- text arrives as UTF-8-complete deltas (`TextDeltas`), the tail is released when the row ends;
- the chosen token's logprob and top-n alternatives are kept when the params ask for them;
- reaching max_new_tokens (or a limit the caller names, such as the context length) ends the
  row with "length";
- a grammar (`params.constraint`, constrained.py) gets its own parser state per row:
  `constrain(logits)` masks what the grammar forbids before the sampling processors run, each
  pushed token advances it, and a row whose grammar admits nothing more ends with "stop".

Token choice itself is batched over rows in sampling.py (`row_scores` + `choose_tokens`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .detokenize import TextDeltas
from .params import SamplingParams
from .stopping import StopStrings


def resolve_eos(tokenizer: Any, config: Any) -> list[int]:
    """A checkpoint's EOS ids: the tokenizer's stop ids (chat models end turns with them), else
    the model config's `eos_ids`."""
    eos = list(getattr(tokenizer, "eos_token_ids", None) or []) or list(getattr(config, "eos_ids", None) or [])
    return [int(e) for e in eos]


def stop_token_set(params: SamplingParams, eos_ids: list[int]) -> set[int]:
    """The token ids that end a row: the params' stop_token_ids, plus EOS unless ignore_eos."""
    return set(params.stop_token_ids) | (set() if params.ignore_eos else {int(e) for e in eos_ids})


@dataclass
class RowEvent:
    """One token's effect on its row: the text now safe to show ('' while a multi-byte character
    or a possible stop string is held back) and, on the row's last token, why it ended."""

    token_id: int
    text: str = ""
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None
    finish_reason: str | None = None  # "stop" | "length" on the row's last token
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it


@dataclass
class RowDecoder:
    """EOS, stop strings, text deltas, logprobs and finish reason of one row.

    `tokenizer=None` tracks tokens only (no text, no stop strings): `generate()` without text
    output decodes its texts once at the end instead of per step.
    """

    params: SamplingParams
    tokenizer: Any = None
    eos_ids: list[int] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list, init=False)
    text: str = field(default="", init=False)
    logprobs: list[float] = field(default_factory=list, init=False)
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list, init=False)
    finish_reason: str | None = field(default=None, init=False)
    stop_reason: int | str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        p = self.params
        if p.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer")
        self.stop_ids = stop_token_set(p, self.eos_ids)
        self._deltas = TextDeltas(self.tokenizer, p.skip_special_tokens) if self.tokenizer is not None else None
        self._stops = StopStrings(p.stop)
        self.constraint = p.constraint.row() if p.constraint is not None else None

    def constrain(self, logits: Any) -> Any:
        """The row's logits (1, V) with what its grammar forbids next at -inf (as is without one)."""
        return logits if self.constraint is None else self.constraint.mask(logits)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def push(self, token_id: int, logprob: float | None = None, top: list[tuple[int, float]] | None = None,
             at_limit: bool = False) -> RowEvent:
        """Feed the row's next token (and its logprob / top alternatives when asked for).
        `at_limit`: the caller cannot go on after this token (e.g. the context is full)."""
        if self.finished:
            raise RuntimeError("push() on a finished row")
        token_id = int(token_id)
        self.token_ids.append(token_id)
        ev = RowEvent(token_id)
        if self.params.logprobs is not None and logprob is not None:
            self.logprobs.append(float(logprob))
            self.top_logprobs.append(list(top or []))
            ev.logprob, ev.top_logprobs = float(logprob), self.top_logprobs[-1]
        grammar_done = False
        if self.constraint is not None and token_id not in self.stop_ids:
            # a token the grammar rejects cannot be sampled (it was masked); if the caller forced
            # one anyway the row cannot continue validly, so it ends here
            grammar_done = not self.constraint.advance(token_id) or self.constraint.done
        if token_id in self.stop_ids:
            ev.finish_reason, ev.stop_reason = "stop", token_id  # the stop token's text is not shown
        elif self._deltas is not None:
            ev.text = self._stops.push(self._deltas.push(token_id))
            if self._stops.hit is not None:
                ev.finish_reason, ev.stop_reason = "stop", self._stops.hit.stop
        if ev.finish_reason is None and grammar_done:
            ev.finish_reason = "stop"  # the grammar is complete: only EOS could follow
        if ev.finish_reason is None and (at_limit or len(self.token_ids) >= self.params.max_new_tokens):
            ev.finish_reason = "length"
        if ev.finish_reason is not None:
            ev.text += self._release()
            self.finish_reason, self.stop_reason = ev.finish_reason, ev.stop_reason
        self.text += ev.text
        return ev

    def _release(self) -> str:
        """The row ended without a stop string: the text held back (incomplete character,
        possible stop-string start) is final now."""
        if self._deltas is None or self._stops.hit is not None:
            return ""
        out = self._stops.push(self._deltas.flush())
        return out + ("" if self._stops.hit is not None else self._stops.flush())
