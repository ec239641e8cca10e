# SPDX-License-Identifier: Apache-2.0
"""Tokenizer: a `tokenizers.Tokenizer` plus special-token info and a chat template.

One class for both sources of a tokenizer: an HF folder (tokenizer.json + tokenizer_config.json
and friends, as transformers saves them) and a GGUF file (built in `swisslm.io.gguf`). It does
what generation and serving need, and no more: encode/decode, special ids, the stop ids, and
`apply_chat_template` rendered exactly as transformers renders it (same sandboxed jinja setup),
so prompts match token for token. `save` writes a folder that `transformers.AutoTokenizer`
loads with identical encodings.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import tokenizers
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import processors

from swisslm.io.errors import CheckpointError

logger = logging.getLogger(__name__)

# The named special tokens transformers knows (SPECIAL_TOKENS_ATTRIBUTES); all are passed to the
# chat template, as transformers passes its `special_tokens_map`.
SPECIAL_TOKEN_NAMES = (
    "bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token",
)

# Tokens that end an assistant turn in common chat formats. A token from this list that the chat
# template writes literally is a stop token too -- what the model's generation_config.json lists
# next to eos (Llama 3: <|eot_id|>, <|eom_id|>; ChatML models whose eos is <|endoftext|>: <|im_end|>).
END_OF_TURN_TOKENS = (
    "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
    "<|end_of_text|>", "<|END_OF_TURN_TOKEN|>", "<|return|>", "<|call|>",
)


# ----------------------------------------------------------------------------------------------
# Chat template environment: transformers' `_compile_jinja_template`, minus assistant-mask tracking
# ----------------------------------------------------------------------------------------------


class _GenerationTag(jinja2.ext.Extension):
    """Accept `{% generation %}...{% endgeneration %}` (used for assistant masks) and render the body.

    Without it such templates do not parse at all; we have no use for the mask itself.
    """

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller: Any) -> str:
        return caller()


class _Namespace(jinja2.utils.Namespace):
    """`namespace()` that refuses underscore names, as transformers' does (keeps templates off internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - jinja's own signature trick
        self, rest = args[0], args[1:]
        for name in dict(*rest, **kwargs):
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, *rest, **kwargs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat template may not set namespace attribute {name!r}")


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    # Jinja's own tojson HTML-escapes; chat templates want plain JSON (transformers overrides it too).
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=16)
def _compile_template(template: str) -> jinja2.Template:
    """Compile once per template string; templates come from checkpoints, so they run sandboxed."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["namespace"] = _Namespace
    return env.from_string(template)


def _clean_up_tokenization(text: str) -> str:
    """transformers' `clean_up_tokenization` (for configs that set clean_up_tokenization_spaces)."""
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                 (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(a, b)
    return text


def _token_str(value: Any) -> str | None:
    """A special token as saved by transformers: a string or an AddedToken dict with "content"."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable JSON ({e})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _id_list(ids: Any) -> list[int]:
    """Token ids from a list, a 1-D tensor/array or a single int (what transformers' decode takes)."""
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if isinstance(ids, int):
        return [ids]
    return [int(i) for i in ids]


def _check_side(name: str, side: str) -> str:
    if side not in ("left", "right"):
        raise ValueError(f"{name} must be 'left' or 'right', got {side!r}")
    return side


def _is_bert_class(name: Any) -> bool:
    """transformers' BERT-style tokenizer classes list token_type_ids in `model_input_names`."""
    return isinstance(name, str) and name.removesuffix("Fast") in (
        "BertTokenizer", "ElectraTokenizer", "ConvBertTokenizer", "SqueezeBertTokenizer", "LayoutLMTokenizer")


class BatchEncoding(dict):
    """What `Tokenizer.__call__` returns: a dict (so `model(**enc)` / `generate(**enc)` unpack it)
    whose keys also read as attributes, with `.to(device)` for tensors (transformers' BatchEncoding)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device: Any) -> BatchEncoding:
        return BatchEncoding({k: v.to(device) if hasattr(v, "to") else v for k, v in self.items()})


def _as_tensors(columns: dict[str, list[list[int]]], return_tensors: str | None) -> dict[str, Any]:
    if return_tensors is None:
        return columns
    if return_tensors not in ("pt", "np"):
        raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")
    lengths = {len(row) for rows in columns.values() for row in rows}
    if len(lengths) > 1:
        raise ValueError("rows have different lengths: pass padding=True to return tensors of a ragged batch")
    if return_tensors == "np":
        import numpy as np

        return {k: np.asarray(v, dtype=np.int64) for k, v in columns.items()}
    import torch

    return {k: torch.tensor(v, dtype=torch.long) for k, v in columns.items()}


class Tokenizer:
    """A `tokenizers.Tokenizer` with the special tokens, stop ids and chat template of a checkpoint.

    Build it with `Tokenizer.from_folder` or `swisslm.io.gguf.read_gguf_tokenizer`; the constructor
    is for those builders. The backend's padding and truncation are switched off (tokenizer.json
    files often carry them, e.g. MiniLM pads to 128): callers get exactly the ids of the text.
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        special_tokens: Mapping[str, str | None] | None = None,
        chat_template: str | None = None,
        add_bos_token: bool | None = None,
        add_eos_token: bool | None = None,
        extra_eos_token_ids: Sequence[int] = (),
        model_max_length: int | None = None,
        clean_up_tokenization_spaces: bool = False,
        padding_side: str = "right",
        truncation_side: str = "right",
        returns_token_type_ids: bool = False,
        source: str = "<tokenizer>",
    ) -> None:
        self.backend = backend
        self.backend.no_padding()
        self.backend.no_truncation()
        self.source = source
        self.chat_template = chat_template
        self.model_max_length = model_max_length
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        self.special_tokens: dict[str, str] = {}
        for name, tok in (special_tokens or {}).items():
            if name not in SPECIAL_TOKEN_NAMES:
                raise ValueError(f"unknown special token {name!r} (known: {', '.join(SPECIAL_TOKEN_NAMES)})")
            if tok is None:
                continue
            if self.backend.token_to_id(tok) is None:
                logger.warning("%s: %s %r is not in the vocabulary; ignoring it", source, name, tok)
                continue
            self.special_tokens[name] = tok
        # None = the checkpoint did not say, so tokenizer.json's post-processor stands (transformers
        # rebuilds it only when the config sets one of the flags, or when there is none).
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        if add_bos_token is not None or add_eos_token is not None or self.backend.post_processor is None:
            self._update_post_processor()
        self.extra_eos_token_ids = [int(i) for i in extra_eos_token_ids]
        # transformers' call surface: which side pads/truncates, and whether `__call__` returns
        # token_type_ids (BERT-family tokenizers do, as their `model_input_names` say).
        self.padding_side = _check_side("padding_side", padding_side)
        self.truncation_side = _check_side("truncation_side", truncation_side)
        self.returns_token_type_ids = returns_token_type_ids
        # The backend is switched into padding/truncation mode only inside `__call__`.
        self._call_lock = threading.Lock()

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def from_folder(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Load a tokenizer saved the way transformers saves one.

        Reads tokenizer.json (required), tokenizer_config.json, special_tokens_map.json (which
        overrides the config's tokens unless it lists added_tokens_decoder, as in transformers),
        the chat template (chat_template.jinja, chat_template.json, or tokenizer_config's
        `chat_template`) and generation_config.json's eos ids when present.
        """
        folder = Path(path)
        if not folder.is_dir():
            raise CheckpointError(f"{folder}: not a folder (a tokenizer folder holds tokenizer.json)")
        tok_file = folder / "tokenizer.json"
        if not tok_file.is_file():
            raise CheckpointError(f"{folder}: no tokenizer found (expected tokenizer.json)")
        try:
            backend = tokenizers.Tokenizer.from_file(str(tok_file))
        except Exception as e:  # tokenizers raises plain Exception subclasses from Rust
            raise CheckpointError(f"{tok_file}: cannot load ({e})") from e

        cfg_file = folder / "tokenizer_config.json"
        config = _read_json(cfg_file) if cfg_file.is_file() else {}
        specials = {name: _token_str(config.get(name)) for name in SPECIAL_TOKEN_NAMES}
        stm = folder / "special_tokens_map.json"
        if stm.is_file() and "added_tokens_decoder" not in config:
            for name, value in _read_json(stm).items():
                if name in SPECIAL_TOKEN_NAMES and _token_str(value) is not None:
                    specials[name] = _token_str(value)

        template = cls._find_chat_template(folder, config)
        eos_ids: list[int] = []
        gen = folder / "generation_config.json"
        if gen.is_file():  # the model's own statement of its stop ids
            eos = _read_json(gen).get("eos_token_id")
            if eos is not None:
                eos_ids = [int(e) for e in (eos if isinstance(eos, list) else [eos])]

        max_len = config.get("model_max_length")
        if not isinstance(max_len, int) or max_len >= 10**18:  # transformers writes 1e30 for "unbounded"
            max_len = None
        return cls(
            backend,
            special_tokens=specials,
            chat_template=template,
            add_bos_token=config.get("add_bos_token"),
            add_eos_token=config.get("add_eos_token"),
            extra_eos_token_ids=eos_ids,
            model_max_length=max_len,
            clean_up_tokenization_spaces=bool(config.get("clean_up_tokenization_spaces", False)),
            padding_side=config.get("padding_side") or "right",
            truncation_side=config.get("truncation_side") or "right",
            returns_token_type_ids=_is_bert_class(config.get("tokenizer_class")),
            source=str(folder),
        )

    @staticmethod
    def _find_chat_template(folder: Path, config: Mapping[str, Any]) -> str | None:
        jinja_file = folder / "chat_template.jinja"
        if jinja_file.is_file():
            return jinja_file.read_text(encoding="utf-8")
        json_file = folder / "chat_template.json"
        template: Any = _read_json(json_file).get("chat_template") if json_file.is_file() else None
        if template is None:
            template = config.get("chat_template")
        if isinstance(template, list):  # [{"name": ..., "template": ...}]: several named templates
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default", next(iter(named.values()), None))
        return template if isinstance(template, str) else None

    def save(self, folder: str | os.PathLike[str]) -> None:
        """Write tokenizer.json and tokenizer_config.json so transformers loads the same tokenizer.

        The config names the generic `PreTrainedTokenizerFast`, so transformers uses tokenizer.json
        as is rather than rebuilding a model-specific pipeline around it.
        """
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(out / "tokenizer.json"))
        config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", **self.special_tokens}
        if self.add_bos_token is not None:
            config["add_bos_token"] = self.add_bos_token
        if self.add_eos_token is not None:
            config["add_eos_token"] = self.add_eos_token
        config["clean_up_tokenization_spaces"] = self.clean_up_tokenization_spaces
        if self.model_max_length is not None:
            config["model_max_length"] = self.model_max_length
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        config["padding_side"] = self.padding_side
        config["truncation_side"] = self.truncation_side
        with open(out / "tokenizer_config.json", "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, ensure_ascii=False)
            f.write("\n")
        stale = out / "chat_template.jinja"  # transformers prefers this file over the config's template
        if stale.is_file() and self.chat_template is not None:
            stale.write_text(self.chat_template, encoding="utf-8")

    def _update_post_processor(self) -> None:
        """bos/eos around each sequence per the add_* flags (transformers' `update_post_processor`)."""
        bos = self.bos_token if self.add_bos_token else None
        eos = self.eos_token if self.add_eos_token else None
        single = f"{bos + ':0 ' if bos else ''}$A:0{' ' + eos + ':0' if eos else ''}"
        pair = f"{single}{' ' + bos + ':1' if bos else ''} $B:1{' ' + eos + ':1' if eos else ''}"
        specials = [(t, self.backend.token_to_id(t)) for t in (bos, eos) if t]
        self.backend.post_processor = processors.TemplateProcessing(single=single, pair=pair,
                                                                    special_tokens=specials)

    # -- special tokens ----------------------------------------------------------------------

    def _id(self, name: str) -> int | None:
        tok = self.special_tokens.get(name)
        return None if tok is None else self.backend.token_to_id(tok)

    @property
    def bos_token(self) -> str | None:
        return self.special_tokens.get("bos_token")

    @property
    def eos_token(self) -> str | None:
        return self.special_tokens.get("eos_token")

    @property
    def pad_token(self) -> str | None:
        return self.special_tokens.get("pad_token")

    @property
    def unk_token(self) -> str | None:
        return self.special_tokens.get("unk_token")

    @property
    def bos_token_id(self) -> int | None:
        return self._id("bos_token")

    @property
    def eos_token_id(self) -> int | None:
        return self._id("eos_token")

    @property
    def pad_token_id(self) -> int | None:
        return self._id("pad_token")

    @property
    def unk_token_id(self) -> int | None:
        return self._id("unk_token")

    @property
    def eos_token_ids(self) -> list[int]:
        """Every id that ends generation: eos, the checkpoint's other stop ids, end-of-turn tokens.

        Mirrors what a model's generation_config.json carries: eos, then `extra_eos_token_ids`
        (generation_config.json's list, GGUF eot/eom ids), then any END_OF_TURN_TOKENS the chat
        template writes literally. SmolLM2: [2] (its eos already is <|im_end|>); Llama 3 Instruct:
        eos + <|eot_id|> (+ <|eom_id|> for 3.1).
        """
        ids = ([] if self.eos_token_id is None else [self.eos_token_id]) + self.extra_eos_token_ids
        if self.chat_template:
            special = {t.content for t in self.backend.get_added_tokens_decoder().values() if t.special}
            for tok in END_OF_TURN_TOKENS:
                if tok in self.chat_template and tok in special:
                    ids.append(self.backend.token_to_id(tok))
        return list(dict.fromkeys(ids))

    # -- vocabulary --------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (the embedding rows the ids index)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str | None]:
        return [self.backend.id_to_token(int(i)) for i in ids]

    # -- encode / decode ---------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; special tokens are added per the post-processor (bos, [CLS]...)."""
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
        """`encode` over many texts at once (parallel in the Rust backend); no padding."""
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def decode(self, ids: Any, skip_special_tokens: bool = True,
               clean_up_tokenization_spaces: bool | None = None) -> str:
        """Text of `ids` (a list, a 1-D tensor or array, or one int)."""
        ids = _id_list(ids)
        text = self.backend.decode(ids, skip_special_tokens=skip_special_tokens)
        clean = self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None \
            else clean_up_tokenization_spaces
        if clean and type(self.backend.model).__name__ != "BPE":
            text = _clean_up_tokenization(text)  # transformers skips this for BPE, where it corrupts text
        return text

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = True,
                     clean_up_tokenization_spaces: bool | None = None) -> list[str]:
        """`decode` of each row of a 2-D tensor/array or a list of id lists."""
        rows = sequences.tolist() if hasattr(sequences, "tolist") else list(sequences)
        return [self.decode(r, skip_special_tokens, clean_up_tokenization_spaces) for r in rows]

    # -- transformers' call surface ----------------------------------------------------------

    def __call__(
        self,
        text: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        *,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_tensors: str | None = None,
        return_token_type_ids: bool | None = None,
        return_attention_mask: bool | None = None,
    ) -> BatchEncoding:
        """Encode text (or a batch) with transformers' meaning of every argument.

        Returns `input_ids` and `attention_mask` (plus `token_type_ids` for BERT-style tokenizers),
        as lists, or as tensors with `return_tensors="pt"` (numpy with "np"); a single text gives
        one row (a (1, T) tensor with return_tensors). `padding`: True/"longest" pads to the longest
        row, "max_length" to `max_length`; `truncation` (True/"longest_first"/"only_first"/
        "only_second") cuts to `max_length` (default: the tokenizer's model_max_length), counting
        the special tokens, on `truncation_side`. Padding and truncation are the Rust backend's own,
        as in transformers' fast tokenizers, so ids and masks are the same.
        """
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("text must be a string or a list of strings")
        pairs = None
        if text_pair is not None:
            pairs = [text_pair] if isinstance(text_pair, str) else list(text_pair)
            if len(pairs) != len(texts):
                raise ValueError(f"text_pair has {len(pairs)} entries for {len(texts)} texts")
        strategy = {False: None, "do_not_pad": None, True: "longest", "longest": "longest",
                    "max_length": "max_length"}.get(padding, "?")
        if strategy == "?":
            raise ValueError(f"padding must be True, False, 'longest', 'max_length' or 'do_not_pad', got {padding!r}")
        if truncation is None:  # transformers: a max_length without truncation means truncate
            truncation = max_length is not None
        trunc = {False: None, "do_not_truncate": None, True: "longest_first"}.get(truncation, truncation)
        if trunc not in (None, "longest_first", "only_first", "only_second"):
            raise ValueError(f"truncation must be a bool, 'longest_first', 'only_first' or 'only_second', "
                             f"got {truncation!r}")
        limit = max_length if max_length is not None else self.model_max_length
        if trunc and limit is None:
            raise ValueError("truncation needs max_length (this tokenizer has no model_max_length)")
        if strategy == "max_length" and limit is None:
            raise ValueError("padding='max_length' needs max_length")
        if strategy and self.pad_token_id is None:
            raise ValueError(f"{self.source}: asking to pad but the tokenizer has no pad token "
                             "(set tokenizer.pad_token = tokenizer.eos_token, as with transformers)")
        side = _check_side("padding_side", padding_side or self.padding_side)
        batch = texts if pairs is None else list(zip(texts, pairs))
        with self._call_lock:  # the backend's padding/truncation state is shared: set, encode, reset
            try:
                if trunc:
                    self.backend.enable_truncation(limit, strategy=trunc, direction=self.truncation_side)
                if strategy:
                    self.backend.enable_padding(direction=side, pad_id=self.pad_token_id, pad_token=self.pad_token,
                                                length=limit if strategy == "max_length" else None,
                                                pad_to_multiple_of=pad_to_multiple_of)
                encodings = self.backend.encode_batch(batch, add_special_tokens=add_special_tokens)
            finally:
                self.backend.no_padding()
                self.backend.no_truncation()
        columns: dict[str, list[list[int]]] = {"input_ids": [e.ids for e in encodings]}
        if return_token_type_ids if return_token_type_ids is not None else self.returns_token_type_ids:
            columns["token_type_ids"] = [e.type_ids for e in encodings]
        if return_attention_mask is None or return_attention_mask:
            columns["attention_mask"] = [e.attention_mask for e in encodings]
        out = _as_tensors(columns, return_tensors)
        if single and return_tensors is None:
            out = {k: v[0] for k, v in out.items()}
        return BatchEncoding(out)

    @pad_token.setter
    def pad_token(self, token: str | None) -> None:
        """transformers' idiom `tokenizer.pad_token = tokenizer.eos_token` works the same here."""
        if token is None:
            self.special_tokens.pop("pad_token", None)
        elif self.backend.token_to_id(token) is None:
            raise ValueError(f"pad_token {token!r} is not in the vocabulary")
        else:
            self.special_tokens["pad_token"] = token

    # -- chat --------------------------------------------------------------------------------

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        tokenize: bool = False,
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        documents: Sequence[Mapping[str, Any]] | None = None,
        chat_template: str | None = None,
        return_tensors: str | None = None,
        return_dict: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Render a conversation with the checkpoint's chat template (as transformers does).

        The template sees `messages`, `tools`, `documents`, `add_generation_prompt`, the named special
        tokens (bos_token, eos_token, ...) and `kwargs`. With `tokenize=True` the text is encoded
        without adding special tokens, since the template writes them itself. As in transformers,
        `return_tensors="pt"` gives a (1, T) tensor (or, with `return_dict=True`, a BatchEncoding
        with input_ids and attention_mask), and a list of conversations renders each one.
        """
        if messages and not isinstance(messages[0], Mapping) and not isinstance(messages, str):
            rendered = [self.apply_chat_template(c, add_generation_prompt, tokenize=False, tools=tools,
                                                 documents=documents, chat_template=chat_template, **kwargs)
                        for c in messages]
            if not tokenize:
                return rendered
            return self._chat_ids(rendered, return_tensors, return_dict)
        template = chat_template or self.chat_template
        if template is None:
            raise CheckpointError(f"{self.source}: tokenizer has no chat template")
        for m in messages:
            if not isinstance(m, Mapping):
                raise TypeError(f"chat messages must be dicts with 'role' and 'content', got {m!r}")
        context = {**self.special_tokens, **kwargs}
        text = _compile_template(template).render(
            messages=[dict(m) for m in messages],
            tools=None if tools is None else [dict(t) for t in tools],
            documents=None if documents is None else [dict(d) for d in documents],
            add_generation_prompt=add_generation_prompt,
            **context,
        )
        if not tokenize:
            return text
        if return_tensors is None and not return_dict:
            return self.encode(text, add_special_tokens=False)
        out = self._chat_ids([text], return_tensors, return_dict)
        return out if return_dict or return_tensors is not None else out[0]

    def _chat_ids(self, texts: list[str], return_tensors: str | None, return_dict: bool) -> Any:
        enc = self(texts, add_special_tokens=False, padding=len(texts) > 1, return_tensors=return_tensors,
                   return_token_type_ids=False)
        return enc if return_dict else enc["input_ids"]

    def __repr__(self) -> str:
        return (f"Tokenizer(source={self.source!r}, vocab_size={self.vocab_size}, "
                f"special_tokens={self.special_tokens}, chat_template={self.chat_template is not None})")
