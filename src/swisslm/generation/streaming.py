# SPDX-License-Identifier: Apache-2.0
"""Streaming: the `stream()` iterator of text deltas that `swisslm generate --stream`,
`swisslm chat` and `Model.stream` use. The deltas come from the decode loop's row decoder
(UTF-8-complete text, stop strings held back and never shown; see rows.py, detokenize.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from .config import GenerationConfig
from .generate import decode_steps


class TextStream:
    """Iterator of text deltas for one prompt; after exhaustion it also tells how it ended.

        s = stream(model, ids, cfg, tokenizer)
        for delta in s:
            print(delta, end="", flush=True)
        s.finish_reason      # "stop" (EOS or stop string) or "length"
        s.token_ids          # the new tokens (the EOS / stop-completing token included)
        s.text               # everything yielded, joined
    """

    def __init__(self, steps: Iterator[Any]) -> None:
        self._steps = steps
        self.token_ids: list[int] = []
        self.text = ""
        self.finish_reason: str | None = None
        self.logprobs: list[float] = []

    def __iter__(self) -> Iterator[str]:
        reason = None
        for st in self._steps:
            if not st.active[0]:
                break
            self.token_ids.append(int(st.tokens[0]))
            if st.logprob is not None:
                self.logprobs.append(float(st.logprob[0]))
            reason = st.finish_reasons[0]
            delta = st.deltas[0]
            if delta:
                self.text += delta
                yield delta
            if reason is not None:
                break
        close = getattr(self._steps, "close", None)
        if close is not None:
            close()  # ends the decode loop's generator (and frees its tensors) at once
        self.finish_reason = reason or "length"


def stream(model, input_ids: torch.Tensor, config: Any = None, tokenizer: Any = None,
           attention_mask: torch.Tensor | None = None) -> TextStream:
    """Stream one prompt's completion as text deltas (greedy or sampling; stop strings honoured,
    never emitted). input_ids (1, T) or (T,)."""
    cfg = config or GenerationConfig()
    if tokenizer is None:
        tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("streaming text needs a tokenizer")
    if cfg.num_beams != 1 or cfg.num_return_sequences != 1:
        raise ValueError("streaming supports one sequence (num_beams=1, num_return_sequences=1)")
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    if input_ids.shape[0] != 1:
        raise ValueError(f"stream() takes one prompt, got a batch of {input_ids.shape[0]}")
    if cfg.params.max_new_tokens == 0:
        return TextStream(iter(()))
    return TextStream(decode_steps(model, input_ids, attention_mask, cfg, tokenizer, track_text=True))
