# SPDX-License-Identifier: Apache-2.0
"""transformers' Auto classes over swisslm, so model-card code runs with only its import changed:

    from swisslm import AutoTokenizer, AutoModelForCausalLM
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    out = model.generate(**tokenizer(prompt, return_tensors="pt"), max_new_tokens=100)
    print(tokenizer.batch_decode(out))

A thin layer: the tokenizer is swisslm's `Tokenizer` with transformers' defaults where the two
differ (decode keeps special tokens, apply_chat_template tokenizes and returns a dict); the model
is swisslm's `Model` with transformers' forward/generate arguments (model.py), placed across
devices by accelerate when a `device_map` asks for it (dispatch.py). `path` is an HF folder, a
.gguf file, a hub id in the local HF cache, or None for the embedded default model.

The models' from_pretrained arguments are sorted in loading.py (accepted, no-op, ignored with a
warning, refused).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

from ..io.tokenizer import Tokenizer


class PreTrainedTokenizer(Tokenizer):
    """swisslm's Tokenizer with transformers' defaults (`AutoTokenizer.from_pretrained` returns one)."""

    def decode(self, ids: Any, skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: bool | None = None) -> str:
        return super().decode(ids, skip_special_tokens, clean_up_tokenization_spaces)

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = False,
                     clean_up_tokenization_spaces: bool | None = None) -> list[str]:
        return super().batch_decode(sequences, skip_special_tokens, clean_up_tokenization_spaces)

    def apply_chat_template(self, conversation: Any, add_generation_prompt: bool = False, tokenize: bool = True,
                            *, return_dict: bool = True, padding: bool = False, **kwargs: Any) -> Any:
        # transformers 5: tokenize=True and return_dict=True by default (input_ids + attention_mask).
        return super().apply_chat_template(conversation, add_generation_prompt, tokenize,
                                           return_dict=return_dict and tokenize, **kwargs)


def _as_transformers_tokenizer(tok: Tokenizer) -> PreTrainedTokenizer:
    tok.__class__ = PreTrainedTokenizer  # same state, transformers' defaults (no copy of the backend)
    return tok  # type: ignore[return-value]


def load_tokenizer(path: str | os.PathLike[str] | None) -> Tokenizer:
    """The tokenizer of an HF folder, a .gguf file or a hub id in the local HF cache (None: the
    embedded default model)."""
    from ..io.embedded import default_model_path
    from ..io.errors import CheckpointError
    from ..io.hub import resolve_model

    src = resolve_model(path) if path is not None else default_model_path()
    if src.is_file() and src.suffix == ".gguf":
        from ..io.gguf import open_gguf, read_gguf_tokenizer

        return read_gguf_tokenizer(open_gguf(src))
    if src.is_dir():
        return Tokenizer.from_folder(src)
    raise CheckpointError(f"{src}: no such folder or .gguf file")


# transformers load arguments that are true of swisslm already: accepted without a word.
NO_OP_LOAD_ARGS = frozenset({"use_fast", "trust_remote_code", "local_files_only"})


class AutoTokenizer:
    @staticmethod
    def from_pretrained(path: str | os.PathLike[str] | None = None, *, padding_side: str | None = None,
                        truncation_side: str | None = None, **kwargs: Any) -> PreTrainedTokenizer:
        """Load a tokenizer as transformers' AutoTokenizer does; `padding_side`/`truncation_side`
        override the checkpoint's. `use_fast`/`trust_remote_code`/`local_files_only` mean nothing
        here (always the fast backend, never remote code, always local) and are accepted; any other
        transformers argument is ignored with a warning naming it."""
        ignored = sorted(set(kwargs) - NO_OP_LOAD_ARGS)
        if ignored:
            warnings.warn(f"AutoTokenizer.from_pretrained ignores {ignored}", stacklevel=2)
        tok = _as_transformers_tokenizer(load_tokenizer(path))
        if padding_side is not None:
            tok.padding_side = padding_side
        if truncation_side is not None:
            tok.truncation_side = truncation_side
        return tok


# -- models ----------------------------------------------------------------------------------


class AutoModelForCausalLM:
    """transformers' AutoModelForCausalLM: a decoder with its LM head (forward gives .logits,
    .loss with labels; generate)."""

    @staticmethod
    def from_pretrained(path: str | os.PathLike[str] | None = None, *args: Any, **kwargs: Any) -> Any:
        if args:
            raise TypeError("from_pretrained takes the model path and keyword arguments only")
        from .loading import load_pretrained

        model = load_pretrained("AutoModelForCausalLM", path, kwargs)
        if not model.config.lm_head:
            raise ValueError(f"{path}: this checkpoint has no LM head ({model.config.family} encoder): "
                             "load it with AutoModel")
        return model


class AutoModel:
    """transformers' AutoModel: the BERT encoder, or a decoder's base model. forward gives
    .last_hidden_state (and .hidden_states, .pooler_output for BERT); a decoder's output also has
    .logits, and the swisslm Model API (generate, stream, score, ...) stays available."""

    @staticmethod
    def from_pretrained(path: str | os.PathLike[str] | None = None, *args: Any, **kwargs: Any) -> Any:
        if args:  # swisslm's positional (path, dtype, device, backend)
            for name, value in zip(("dtype", "device", "backend"), args):
                kwargs.setdefault(name, value)
        from .loading import load_pretrained

        return load_pretrained("AutoModel", path, kwargs)

    @staticmethod
    def from_config(*args: Any, **kwargs: Any) -> Any:
        """swisslm's random-init model (api.AutoModel.from_config) with transformers' surface."""
        from .. import api
        from .model import adopt

        return adopt(api.AutoModel.from_config(*args, **kwargs))


class AutoModelForSequenceClassification:
    """transformers' AutoModelForSequenceClassification over swisslm's classification head
    (mixins/heads.py): a `swisslm classify` output folder (its head, LoRA adapter and base
    model), or an HF *ForSequenceClassification folder (the linear `score` head on the last
    non-padding token, e.g. a `swisslm finetune --trainer reward` model). forward returns
    .logits (B, num_labels) and, with labels, transformers' loss."""

    @staticmethod
    def from_pretrained(path: str | os.PathLike[str], *args: Any, **kwargs: Any) -> Any:
        if args:
            raise TypeError("from_pretrained takes the model path and keyword arguments only")
        from .classify import load_sequence_classifier

        return load_sequence_classifier(path, kwargs)
