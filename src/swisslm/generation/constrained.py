# SPDX-License-Identifier: Apache-2.0
"""Constrained decoding: a grammar (JSON schema, any JSON object, a regex) that every generated row
must follow, token by token. The grammar engine is llguidance (Microsoft's, the one vLLM, SGLang
and llama.cpp use): it turns the grammar and the tokenizer's vocabulary into a per-step bitmask of
the allowed tokens in tens of microseconds, with no per-vocabulary precompilation.

    g = Grammar.json_schema(schema, tokenizer, vocab_size, eos_ids)   # compiled once, shared
    c = g.row()                                  # one per generated row (its own parser state)
    logits = c.mask(logits)                      # (1, V) or (V,): disallowed -> -inf
    c.advance(token_id)                          # after the token is chosen

`SamplingParams.constraint` carries a Grammar; every `RowDecoder` (rows.py) starts its own row
state from it, masks its row's logits before the sampling processors and advances on each
token, in `generate()` and in the serving engine alike. EOS is allowed only where the grammar is
complete, so a row that ends by EOS (or because the grammar admits nothing more) parses; a row
cut by max_new_tokens ends with finish reason "length" and may not.

JSON is generated compactly (", " and ": " separators, no free whitespace): a sampled model
cannot then spend its token budget on whitespace between items.
"""

from __future__ import annotations

import json
import sys
import threading
import weakref
from typing import Any

import numpy as np
import torch

__all__ = ["Grammar", "RowConstraint", "grammar_from_request"]

_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
if sys.byteorder != "little":  # the bitmask unpacking below reads int32 words as bytes
    raise ImportError("swisslm.generation.constrained needs a little-endian host")
_tokenizers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_tokenizers_lock = threading.Lock()


def _llguidance():
    try:
        import llguidance
    except ImportError as e:  # a runtime dependency; say what is missing rather than a traceback
        raise ValueError("structured output needs the 'llguidance' package (pip install llguidance)") from e
    return llguidance


def _ll_tokenizer(tokenizer: Any, vocab_size: int, eos_ids: list[int]) -> Any:
    """llguidance's view of `tokenizer` (its tokenizer.json), built once per tokenizer (~1 s for a
    50k vocabulary) and cached while the tokenizer lives."""
    llg = _llguidance()
    key = (vocab_size, tuple(eos_ids))
    with _tokenizers_lock:
        try:
            per = _tokenizers.setdefault(tokenizer, {})
        except TypeError:  # not weak-referenceable: no cache
            per = {}
        if key not in per:
            backend = getattr(tokenizer, "backend", None) or getattr(tokenizer, "backend_tokenizer", None)
            if backend is None or not hasattr(backend, "to_str"):
                raise ValueError("structured output needs a tokenizer with a tokenizer.json (HF tokenizers) backend")
            per[key] = llg.LLTokenizer(backend.to_str(), n_vocab=vocab_size, eos_token=list(eos_ids) or None)
        return per[key]


class Grammar:
    """A compiled grammar for one tokenizer: immutable, shared by every row that follows it."""

    def __init__(self, grammar: str, tokenizer: Any, vocab_size: int, eos_ids: list[int], kind: str) -> None:
        llg = _llguidance()
        self.kind = kind
        self.vocab_size = vocab_size
        self._lltok = _ll_tokenizer(tokenizer, vocab_size, eos_ids)
        try:
            failed, messages = llg.LLMatcher.validate_grammar_with_warnings(grammar, self._lltok)
        except Exception as e:  # the compiler's own exceptions: the grammar is what is wrong
            raise ValueError(f"invalid {kind}: {str(e)[:300]}") from None
        if failed:
            raise ValueError(f"invalid {kind}: {messages[0][:300] if messages else 'rejected by the grammar compiler'}")
        # Rows start from copies of this matcher: deep_copy is cheap, compiling is not.
        self._template = llg.LLMatcher(self._lltok, grammar, log_level=0)
        if self._template.is_error():
            raise ValueError(f"invalid {kind}: {self._template.get_error()[:300]}")

    @classmethod
    def json_schema(cls, schema: dict[str, Any] | str | None, tokenizer: Any, vocab_size: int,
                    eos_ids: list[int]) -> Grammar:
        """Output is one JSON value valid against `schema` (None or {}: any JSON object)."""
        llg = _llguidance()
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as e:
                raise ValueError(f"the JSON schema is not valid JSON: {e}") from None
        if schema is None or schema == {}:
            schema = {"type": "object"}
        if not isinstance(schema, dict):
            raise ValueError("a JSON schema must be a JSON object")
        try:
            grammar = llg.LLMatcher.grammar_from_json_schema(schema, overrides=_JSON_OPTIONS)
        except Exception as e:  # ValueError for a bad schema; anything the compiler raises is the schema's fault
            raise ValueError(f"invalid JSON schema: {str(e)[:300]}") from None
        return cls(grammar, tokenizer, vocab_size, eos_ids, "JSON schema")

    @classmethod
    def json_object(cls, tokenizer: Any, vocab_size: int, eos_ids: list[int]) -> Grammar:
        """Output is any JSON object (OpenAI's response_format json_object)."""
        return cls.json_schema({"type": "object"}, tokenizer, vocab_size, eos_ids)

    @classmethod
    def regex(cls, pattern: str, tokenizer: Any, vocab_size: int, eos_ids: list[int]) -> Grammar:
        """Output matches `pattern` as a whole."""
        if not isinstance(pattern, str) or not pattern:
            raise ValueError("a regex grammar needs a non-empty pattern")
        return cls(_llguidance().LLMatcher.grammar_from_regex(pattern), tokenizer, vocab_size, eos_ids, "regex")

    def row(self) -> RowConstraint:
        return RowConstraint(self._template.deep_copy(), self.vocab_size)


class RowConstraint:
    """One row's parser state: which tokens may come next, advanced by each chosen token."""

    def __init__(self, matcher: Any, vocab_size: int) -> None:
        self._m = matcher
        self.vocab_size = vocab_size
        self._words = np.empty((vocab_size + 31) // 32, dtype=np.int32)

    def _bits(self) -> np.ndarray:
        """uint8 (V,): 1 where the token is allowed next (EOS only where the grammar is complete)."""
        w = self._words
        self._m.unsafe_compute_mask_ptr(w.ctypes.data, w.nbytes)
        # bit j of word i is token 32 i + j: on a little-endian host that is numpy's "little"
        # bit order over the words' bytes. Unpacking stays in numpy: torch's int32 shifts and
        # dtype casts over 49k entries fan out to its intra-op threads, which on a busy CPU cost
        # milliseconds where this costs microseconds.
        return np.unpackbits(w.view(np.uint8), bitorder="little")[: self.vocab_size]

    def allowed(self) -> torch.Tensor:
        """Bool (V,) of the tokens allowed next (EOS only where the grammar is complete)."""
        return torch.from_numpy(self._bits().view(np.bool_))

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` (..., V) with every disallowed token at -inf (a new tensor)."""
        banned = self._bits() == 0
        if logits.device.type == "cpu" and logits.dtype == torch.float32:  # numpy: no intra-op threads
            return torch.from_numpy(np.where(banned, np.float32(-np.inf), logits.detach().numpy()))
        return logits.masked_fill(torch.from_numpy(banned).to(logits.device), float("-inf"))

    def advance(self, token_id: int) -> bool:
        """Consume the chosen token; False if the grammar rejected it (the row cannot go on)."""
        return bool(self._m.consume_token(int(token_id)))

    @property
    def done(self) -> bool:
        """Nothing but EOS can follow: the output is complete."""
        return bool(self._m.is_stopped())

    @property
    def complete(self) -> bool:
        return bool(self._m.is_accepting())

    @property
    def error(self) -> str | None:
        return self._m.get_error() if self._m.is_error() else None


def grammar_from_request(kind: str, value: Any, tokenizer: Any, vocab_size: int, eos_ids: list[int]) -> Grammar:
    """A Grammar from an API's (kind, value): 'json' / 'json_schema' (schema), 'json_object', 'regex'."""
    if kind in ("json", "json_schema"):
        return Grammar.json_schema(value, tokenizer, vocab_size, eos_ids)
    if kind == "json_object":
        return Grammar.json_object(tokenizer, vocab_size, eos_ids)
    if kind == "regex":
        return Grammar.regex(value, tokenizer, vocab_size, eos_ids)
    raise ValueError(f"unknown grammar type {kind!r} (json, json_object, regex)")
