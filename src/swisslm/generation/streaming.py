# SPDX-License-Identifier: Apache-2.0
"""Incremental detokenisation: turn a growing list of token ids into text deltas that are
always valid UTF-8. A byte-level BPE token can hold half of a multi-byte character; decoding
the whole tail and holding back a trailing U+FFFD keeps the partial character until the token
that completes it arrives."""

from __future__ import annotations

from typing import Any


class TextDeltas:
    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.emitted = 0  # characters of decode(ids) already handed out

    def push(self, token_id: int) -> str:
        """Add one token; return the new text that is now safe to show (may be '')."""
        self.ids.append(int(token_id))
        text = self.tokenizer.decode(self.ids, skip_special_tokens=self.skip)
        if text.endswith("\ufffd"):
            return ""
        delta = text[self.emitted :]
        self.emitted = len(text)
        return delta

    def flush(self) -> str:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=self.skip)
        delta = text[self.emitted :]
        self.emitted = len(text)
        return delta
