# SPDX-License-Identifier: Apache-2.0
"""Incremental detokenisation into text deltas that are always valid UTF-8.

A byte-level BPE token can hold half of a multi-byte character (an emoji is often 2-4 tokens);
decoding yields U+FFFD for the incomplete tail, so a delta that ends in U+FFFD is held back
until the token that completes the character arrives. Decoding only a short window of recent
tokens (vLLM's prefix/read offsets) keeps each step O(1) instead of re-decoding the whole text;
the window starts one token before the new ones so that tokenizers which strip a leading space
at the start of a decode (SentencePiece's "▁") still produce the right spacing.
"""

from __future__ import annotations

from typing import Any


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
