# SPDX-License-Identifier: Apache-2.0
"""Streaming: incremental detokenisation into text deltas that are always valid UTF-8, and the
`stream()` iterator that `swisslm generate --stream`, `swisslm chat` and `Model.stream` use.

A byte-level BPE token can hold half of a multi-byte character (an emoji is often 2-4 tokens);
decoding yields U+FFFD for the incomplete tail, so a delta that ends in U+FFFD is held back
until the token that completes the character arrives. Decoding only a short window of recent
tokens (vLLM's prefix/read offsets) keeps each step O(1) instead of re-decoding the whole text;
the window starts one token before the new ones so that tokenizers which strip a leading space
at the start of a decode (SentencePiece's "▁") still produce the right spacing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch


class TextDeltas:
    """Token ids in, UTF-8-complete text deltas out."""

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.prefix_offset = 0  # window start: tokens before it are fully emitted
        self.read_offset = 0  # tokens before it have been turned into emitted text

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip)

    def push(self, token_id: int) -> str:
        """Add one token; return the new text that is now safe to show (may be '')."""
        self.ids.append(int(token_id))
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        text = self._decode(self.ids[self.prefix_offset :])
        if len(text) <= len(prefix) or text.endswith("\ufffd"):
            return ""  # incomplete character (or nothing visible yet): wait for more tokens
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return text[len(prefix):]

    def flush(self) -> str:
        """End of generation: whatever is still held (an incomplete character stays U+FFFD)."""
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        text = self._decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return text[len(prefix):] if len(text) > len(prefix) else ""


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
        finished = False
        for st in self._steps:
            if not st.active[0]:
                break
            self.token_ids.append(int(st.tokens[0]))
            if st.logprob is not None:
                self.logprobs.append(float(st.logprob[0]))
            finished = st.finished[0]
            delta = st.deltas[0]
            if delta:
                self.text += delta
                yield delta
            if finished:
                break
        close = getattr(self._steps, "close", None)
        if close is not None:
            close()  # ends the decode loop's generator (and frees its tensors) at once
        self.finish_reason = "stop" if finished else "length"


def stream(model, input_ids: torch.Tensor, config: Any = None, tokenizer: Any = None,
           attention_mask: torch.Tensor | None = None) -> TextStream:
    """Stream one prompt's completion as text deltas (greedy or sampling; stop strings honoured,
    never emitted). input_ids (1, T) or (T,)."""
    from .generate import GenerationConfig, decode_steps

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
    if cfg.max_new_tokens == 0:
        return TextStream(iter(()))
    return TextStream(decode_steps(model, input_ids, attention_mask, cfg, tokenizer, track_text=True))
