# SPDX-License-Identifier: Apache-2.0
"""Read llama.cpp GGUF files into what the HF loading path consumes.

A GGUF holds three things, and each gets one public reader here:

    read_gguf_config(path)     -> HF config.json dict   (from `{arch}.*` metadata)
    iter_gguf_tensors(path)    -> (HF name, fp32 tensor) (dequantized, q/k rows un-permuted)
    read_gguf_tokenizer(path)  -> swisslm Tokenizer     (from `tokenizer.*` metadata)

so a GGUF file goes through the same family weight maps as an HF folder: nothing downstream knows
the file was a GGUF. Parsing uses `gguf.GGUFReader`, which memory-maps the file; tensors are
dequantized one at a time as the iterator is consumed, so the file is never materialised twice.

Parsing the header is not free: `GGUFReader` builds a few numpy views per vocabulary entry
(SmolLM2's 49k tokens + 49k merges: ~4.5 s and ~150 MB of Python objects on a quiet CPU). Every
reader here therefore also accepts an open reader from `open_gguf`, so a loader parses the header
once for config, tensors and tokenizer, and can drop the reader when it is done.

Architectures come from the family registry: a family file declares the llama.cpp names it
reads (`gguf_architectures`) and their config / tensor-name maps (`GGUF_NAMES`, see
families/gguf_names.py) next to its HF weight map; this module only reads the file.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import gguf
import numpy as np
import tokenizers
import torch
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors

from ..errors import CheckpointError
from ..families import family_for_gguf, gguf_architectures
from ..families.gguf_names import GGUFNames, gguf_permute_qk, gguf_unpermute_qk
from ..quant.gguf_blocks import NATIVE_TYPES, BlockWeight, repack, row_permutation
from .gguf_header import FastGGUF
from .tokenizer import Tokenizer

__all__ = ["gguf_permute_qk", "gguf_tensor_types", "gguf_unpermute_qk", "iter_gguf_blocks", "iter_gguf_tensors",
           "open_gguf", "read_gguf_config", "read_gguf_metadata", "read_gguf_tokenizer"]

logger = logging.getLogger(__name__)

GGUFSource = str | os.PathLike[str] | gguf.GGUFReader | FastGGUF

# llama.cpp's `tokenizer.ggml.token_type` values (llama_token_type in llama.h).
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6


# ----------------------------------------------------------------------------------------------
# Opening and metadata
# ----------------------------------------------------------------------------------------------


def open_gguf(path: str | os.PathLike[str]) -> FastGGUF:
    """Open (memory-map) a GGUF file, turning every failure into one `CheckpointError` line.

    Pass the result to the other readers to parse the header only once.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such GGUF file")
    try:
        return FastGGUF(p)
    except (ValueError, KeyError, IndexError, OSError, UnicodeDecodeError, struct.error) as e:
        raise CheckpointError(f"{p}: not a readable GGUF file ({type(e).__name__}: {e})") from e


def _open(src: GGUFSource) -> gguf.GGUFReader | FastGGUF:
    return src if isinstance(src, gguf.GGUFReader | FastGGUF) else open_gguf(src)


def _name(reader: gguf.GGUFReader) -> str:
    """The file name for error messages (the reader's memmap keeps it)."""
    return str(getattr(reader.data, "filename", None) or "<gguf>")


def _value(reader: gguf.GGUFReader, key: str, default: Any = None) -> Any:
    """One metadata value as a plain Python object (str, int, float, bool or list)."""
    f = reader.fields.get(key)
    if f is None:
        return default
    try:
        return f.contents()
    except (UnicodeDecodeError, ValueError, IndexError) as e:
        raise CheckpointError(f"{_name(reader)}: metadata {key!r} is corrupt ({e})") from e


def read_gguf_metadata(src: GGUFSource, *, with_arrays: bool = False) -> dict[str, Any]:
    """All key/value metadata of a GGUF file (for `swisslm info` and debugging).

    Arrays (the vocabulary, merges, token types) are replaced by their length unless
    `with_arrays` is set, so the result stays printable.
    """
    reader = _open(src)
    out: dict[str, Any] = {}
    for key, f in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        if f.types and f.types[0] == gguf.GGUFValueType.ARRAY and not with_arrays:
            out[key] = f"<array of {len(f.data)}>"
        else:
            out[key] = _value(reader, key)
    return out


# ----------------------------------------------------------------------------------------------
# Architectures: the family registry's GGUF names
# ----------------------------------------------------------------------------------------------


class _Metadata:
    """The `GGUFMetadata` view of a reader that the families' config builders read."""

    def __init__(self, reader: gguf.GGUFReader | FastGGUF) -> None:
        self.reader = reader
        self.name = _name(reader)

    def value(self, key: str, default: Any = None) -> Any:
        return _value(self.reader, key, default)

    def require(self, key: str) -> Any:
        return _req(self.reader, key)

    def tensor_shape(self, name: str) -> tuple[int, ...] | None:
        return _tensor_dims(self.reader, name)

    def tensor_values(self, name: str) -> np.ndarray | None:
        for t in self.reader.tensors:
            if t.name == name:
                w = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
                return np.asarray(w, dtype=np.float32).reshape(-1)
        return None


def _arch(reader: gguf.GGUFReader) -> str:
    arch = _value(reader, "general.architecture")
    if not isinstance(arch, str):
        raise CheckpointError(f"{_name(reader)}: GGUF has no general.architecture")
    return arch


def _req(reader: gguf.GGUFReader, key: str) -> Any:
    v = _value(reader, key)
    if v is None:
        raise CheckpointError(f"{_name(reader)}: GGUF metadata lacks {key!r}")
    if isinstance(v, list):
        raise CheckpointError(f"{_name(reader)}: per-layer {key!r} is not supported")
    return v


def _tensor_dims(reader: gguf.GGUFReader, name: str) -> tuple[int, ...] | None:
    """A tensor's shape in torch order (GGUF stores ne0 = the fastest dim first)."""
    for t in reader.tensors:
        if t.name == name:
            return tuple(int(d) for d in reversed(t.shape.tolist()))
    return None


def _architecture(reader: gguf.GGUFReader) -> tuple[str, GGUFNames]:
    arch = _arch(reader)
    family = family_for_gguf(arch)
    if family is None or family.GGUF_NAMES is None:
        raise CheckpointError(f"{_name(reader)}: GGUF architecture {arch!r} is not supported "
                              f"(supported: {gguf_architectures()})")
    return arch, family.GGUF_NAMES


# ----------------------------------------------------------------------------------------------
# Public readers
# ----------------------------------------------------------------------------------------------


def read_gguf_config(path: GGUFSource) -> dict[str, Any]:
    """An HF-style config.json dict for the model in a GGUF file.

    Keys are exactly those of the HF config class (LlamaConfig for `llama`), so the family
    adapters that read HF folders read this too. Raises CheckpointError for an architecture
    no family declares (`gguf_architectures`), naming it and the supported ones.
    """
    reader = _open(path)
    arch, conv = _architecture(reader)
    return conv.config(_Metadata(reader), arch)


# ggml block types dequantized here rather than by gguf.quants: the common llama.cpp formats,
# for which gguf's numpy code (16 rows at a time, with temporaries) was most of a GGUF load
# (~3 s of SmolLM2's Q4_1). Here each tensor is one pass of whole-array numpy into one output
# buffer, ~2-3x faster. The float32 results are bit-identical (the same float16 scales, the same
# multiply-then-add); tests/test_gguf.py compares the two. Type -> bytes per 32-value block.
_FAST_BLOCK_BYTES = {
    gguf.GGMLQuantizationType.Q4_0: 18,  # f16 d, 16 bytes of 4-bit q:   d * (q - 8)
    gguf.GGMLQuantizationType.Q4_1: 20,  # f16 d, f16 m, 16 bytes of q:  d * q + m
    gguf.GGMLQuantizationType.Q8_0: 34,  # f16 d, 32 int8 q:             q * d
}


def _dequantize_blocks(raw: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    """Q4_0 / Q4_1 / Q8_0 blocks (uint8, any shape) -> flat float32, as gguf.quants computes it.

    The products are written straight into the output (numpy casts the small integer codes to
    float32 inside the multiply), so each value costs one write, plus one in-place add for Q4_1.
    """
    blocks = raw.reshape(-1, _FAST_BLOCK_BYTES[qtype])
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)  # (n, 1) scale per block
    w = np.empty((blocks.shape[0], 32), dtype=np.float32)
    if qtype == gguf.GGMLQuantizationType.Q8_0:
        np.multiply(blocks[:, 2:].view(np.int8), d, out=w)
        return w.reshape(-1)
    qs = blocks[:, 4:] if qtype == gguf.GGMLQuantizationType.Q4_1 else blocks[:, 2:]
    lo, hi = qs & 0x0F, qs >> 4  # byte j holds value j (low nibble) and value j + 16 (high nibble)
    if qtype == gguf.GGMLQuantizationType.Q4_0:  # codes are offset by 8
        lo, hi = lo.view(np.int8) - np.int8(8), hi.view(np.int8) - np.int8(8)
    np.multiply(lo, d, out=w[:, :16])
    np.multiply(hi, d, out=w[:, 16:])
    if qtype == gguf.GGMLQuantizationType.Q4_1:
        w += blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
    return w.reshape(-1)


def _dequantize(reader: gguf.GGUFReader, t: Any) -> np.ndarray:
    """One tensor as a writable float32 array in torch order ([out, in] for linears)."""
    try:
        if t.tensor_type in _FAST_BLOCK_BYTES:
            w = _dequantize_blocks(t.data.view(np.ndarray), t.tensor_type)
        else:
            # A plain ndarray view of the memmap (no copy): numpy skips memmap bookkeeping per block slice.
            w = gguf.quants.dequantize(t.data.view(np.ndarray), t.tensor_type)
    except NotImplementedError as e:
        raise CheckpointError(f"{_name(reader)}: tensor {t.name} is {t.tensor_type.name}, which gguf "
                              f"{_gguf_version()} cannot dequantize") from e
    shape = tuple(int(d) for d in reversed(t.shape.tolist()))  # GGUF lists ne0 (innermost) first
    if w.size != int(np.prod(shape)):
        raise CheckpointError(f"{_name(reader)}: tensor {t.name} dequantized to {w.size} values, "
                              f"expected {shape}")
    w = w.reshape(shape)
    if w.dtype != np.float32:
        w = w.astype(np.float32)
    elif not w.flags.writeable:  # F32 comes back as a view of the read-only memmap
        w = w.copy()
    return w


def _gguf_version() -> str:
    try:
        return importlib.metadata.version("gguf")
    except importlib.metadata.PackageNotFoundError:
        return "(unknown version)"


def _tensor_plan(reader: gguf.GGUFReader | FastGGUF, conv: GGUFNames, arch: str) -> list[tuple[Any, str, Any]]:
    """(tensor, HF name, transform) for every tensor the family's map reads; one clear error
    naming the tensors it does not know."""
    plan, unknown = [], []
    for t in reader.tensors:
        entry = conv.hf_name(t.name)
        if entry is None:
            unknown.append(t.name)
        elif entry[0] is not None:
            plan.append((t, entry[0], entry[1]))
    if unknown:
        raise CheckpointError(f"{_name(reader)}: {len(unknown)} GGUF tensor(s) unknown to the {arch!r} map: "
                              f"{', '.join(unknown[:8])}{' ...' if len(unknown) > 8 else ''}")
    return plan


def iter_gguf_tensors(
    path: GGUFSource, dtype: torch.dtype = torch.float32
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (HF name, tensor) for every tensor of a GGUF file, dequantized, in HF layout.

    Tensors come out in file order, one at a time, so peak memory is one dequantized tensor on
    top of the memory-mapped file. q_proj/k_proj rows are un-permuted (`gguf_unpermute_qk`), so the
    result equals what transformers' own GGUF loading produces. Dequantization is
    `gguf.quants.dequantize` in float32, then cast to `dtype`. Every tensor must be known to the
    architecture's map (unknown ones are listed in one CheckpointError before anything is yielded).
    """
    reader = _open(path)
    arch, conv = _architecture(reader)
    config = conv.config(_Metadata(reader), arch)
    plan = _tensor_plan(reader, conv, arch)
    for t, hf, fn in plan:
        w = torch.from_numpy(_dequantize(reader, t))
        if fn is not None:
            w = fn(w, config)
        yield hf, (w if dtype == torch.float32 else w.to(dtype))


# ----------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, in which byte-level BPE vocabularies are spelled."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


# Split regexes for `tokenizer.ggml.pre` names whose rule is one regex before byte-level BPE
# (llama.cpp llama-vocab.cpp; the same strings transformers' GGUF converter uses).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE_SPLITS = {
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "smaug-bpe", "dbrx", "pixtral"),
                    LLAMA3_SPLIT),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "megrez"), QWEN2_SPLIT),
}
# llama.cpp splits off every digit first, then applies GPT-2's regex, for these names. The HF
# tokenizer.json of these models says the same: Digits(individual_digits=True) + ByteLevel.
_DIGITS_THEN_GPT2 = frozenset(
    ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva")
)


def _byte_level_pre_tokenizer(pre: str | None, mode: str) -> Any:
    if pre in _PRE_SPLITS:
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_PRE_SPLITS[pre]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    if pre in _DIGITS_THEN_GPT2 and mode == "llama.cpp":
        return pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
    if pre not in (None, "default", "gpt2", "gpt-2") and pre not in _DIGITS_THEN_GPT2:
        logger.warning("GGUF pre-tokenizer %r is not known here; splitting text with GPT-2's regex", pre)
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _merges_from_scores(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """Rebuild BPE merges from a sentencepiece vocabulary's scores (transformers' generate_merges)."""
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = []
    for piece, score in zip(tokens, scores):
        local = [(piece[:k], piece[k:], score) for k in range(1, len(piece))
                 if piece[:k] in vocab and piece[k:] in vocab]
        local.sort(key=lambda x: (vocab[x[0]], vocab[x[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(a, b) for a, b, _ in merges]


def _wordpiece_tokenizer(reader: Any, name: str, tokens: list[str], types: list[int], tok: Any) -> Tokenizer:
    """llama.cpp's "bert" (WPM) vocabulary as HF's BertTokenizerFast pipeline.

    llama.cpp spells a word-initial piece with a leading U+2581 and a continuation without the
    `##` (convert_hf_to_gguf.py BertModel.set_vocab); control tokens keep their text. Its WPM
    tokenizer lowercases and strips accents; a vocabulary with A-Z in its pieces (a cased BERT)
    is kept cased here, as its own tokenizer.json would say.
    """
    vocab: dict[str, int] = {}
    for i, (t, ty) in enumerate(zip(tokens, types)):
        piece = t if ty in (TOKEN_CONTROL, TOKEN_UNUSED) else (t[1:] if t.startswith("\u2581") else "##" + t)
        vocab.setdefault(piece, i)
    unk = tok("unknown_token_id") or "[UNK]"
    backend = tokenizers.Tokenizer(models.WordPiece(vocab=vocab, unk_token=unk, continuing_subword_prefix="##",
                                                    max_input_chars_per_word=100))
    # ASCII capitals only: uncased vocabularies hold symbols such as U+211D that str.isupper() calls upper
    cased = any("A" <= c <= "Z" for t, ty in zip(tokens, types) if ty == TOKEN_NORMAL for c in t)
    backend.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                    strip_accents=None, lowercase=not cased)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    control = [AddedToken(t, normalized=False, special=True)
               for t, ty in zip(tokens, types) if ty == TOKEN_CONTROL]
    if control:
        backend.add_special_tokens(control)
    cls = tok("cls_token_id") or tok("bos_token_id")
    sep = tok("seperator_token_id") or tok("eos_token_id")
    if cls is not None and sep is not None:  # [CLS] A [SEP] (B [SEP]), token types 0 then 1
        backend.post_processor = processors.BertProcessing((sep, vocab[sep]), (cls, vocab[cls]))
    arch = _value(reader, "general.architecture")
    ctx = _value(reader, f"{arch}.context_length") if arch else None
    return Tokenizer(
        backend,
        special_tokens={"cls_token": cls, "sep_token": sep, "unk_token": tok("unknown_token_id"),
                        "pad_token": tok("padding_token_id"), "mask_token": tok("mask_token_id")},
        chat_template=_value(reader, "tokenizer.chat_template"),
        model_max_length=int(ctx) if ctx is not None else None,
        returns_token_type_ids=True,
        source=name,
    )


def read_gguf_tokenizer(path: GGUFSource, *,
                        pre_tokenizer: Literal["llama.cpp", "transformers"] = "llama.cpp") -> Tokenizer:
    """The tokenizer a GGUF file describes, as a swisslm Tokenizer.

    Built from `tokenizer.ggml.*`: model "gpt2" (byte-level BPE), "llama" (sentencepiece-style
    BPE with byte fallback) or "bert" (WordPiece,
    `_wordpiece_tokenizer`); tokens, merges (or scores), token types, bos/eos/unk/pad ids,
    add_bos/add_eos flags and `tokenizer.chat_template`. Control tokens become special added
    tokens and user-defined ones plain added tokens, as in llama.cpp and transformers.

    `pre_tokenizer` says how to read `tokenizer.ggml.pre`. "llama.cpp" (default) splits text as
    llama.cpp does for that name, which is how the model was trained: for SmolLM2's "smollm",
    every digit alone and then GPT-2's regex, as in its original tokenizer.json. "transformers"
    copies transformers' GGUF converter, which lacks "smollm" and falls back to GPT-2's regex:
    ids then differ where whitespace precedes a digit ("a  1" -> "a", " ", " 1" vs "a", "  ", "1").
    """
    reader = _open(path)
    name = _name(reader)
    if pre_tokenizer not in ("llama.cpp", "transformers"):
        raise ValueError(f"pre_tokenizer must be 'llama.cpp' or 'transformers', not {pre_tokenizer!r}")
    kind = _value(reader, "tokenizer.ggml.model")
    tokens = _value(reader, "tokenizer.ggml.tokens")
    if kind is None or not tokens:
        raise CheckpointError(f"{name}: GGUF has no tokenizer (tokenizer.ggml.model / tokens missing)")
    types = _value(reader, "tokenizer.ggml.token_type") or [TOKEN_NORMAL] * len(tokens)
    merges_raw = _value(reader, "tokenizer.ggml.merges")
    pre = _value(reader, "tokenizer.ggml.pre")

    def tok(key: str) -> str | None:
        i = _value(reader, f"tokenizer.ggml.{key}")
        return tokens[i] if i is not None and 0 <= i < len(tokens) else None

    if kind == "gpt2":
        spelling = _bytes_to_unicode()
        alphabet = set(spelling.values())
        # Vocabularies are spelled in GPT-2's byte alphabet; a token that is not (a mislabelled
        # special written in plain text) is respelled, as transformers does.
        vocab = {t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8")): i
                 for i, t in enumerate(tokens)}
        merges = [tuple(m.split(" ", 1)) for m in (merges_raw or [])]
        backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None,
                                                  continuing_subword_prefix="", end_of_word_suffix="",
                                                  fuse_unk=False))
        backend.pre_tokenizer = _byte_level_pre_tokenizer(pre, pre_tokenizer)
        backend.decoder = decoders.ByteLevel()
        add_bos = bool(_value(reader, "tokenizer.ggml.add_bos_token", False))
        # A control token outside the byte alphabet would be a new id past the model's vocabulary.
        control_ok = lambda t: set(t) <= alphabet  # noqa: E731
    elif kind == "llama":
        vocab = {t: i for i, t in enumerate(tokens)}
        if merges_raw:
            merges = [tuple(m.split(" ", 1)) for m in merges_raw]
        else:
            scores = _value(reader, "tokenizer.ggml.scores")
            if scores is None:
                raise CheckpointError(f"{name}: sentencepiece GGUF tokenizer has neither merges nor scores")
            merges = _merges_from_scores(tokens, scores)
        prefix = bool(_value(reader, "tokenizer.ggml.add_space_prefix", True))
        backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None, fuse_unk=True,
                                                  byte_fallback=True, unk_token=tok("unknown_token_id")))
        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581",
                                                         prepend_scheme="first" if prefix else "never",
                                                         split=False)
        steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
        if prefix:
            steps.append(decoders.Strip(content=" ", left=1, right=0))
        backend.decoder = decoders.Sequence(steps)
        # Older files lack the flag; llama.cpp adds BOS for sentencepiece vocabularies by default.
        add_bos = bool(_value(reader, "tokenizer.ggml.add_bos_token", True))
        control_ok = lambda t: True  # noqa: E731
    elif kind == "bert":
        return _wordpiece_tokenizer(reader, name, tokens, types, tok)
    else:
        raise CheckpointError(f"{name}: GGUF tokenizer model {kind!r} is not supported (gpt2, llama, bert)")

    control = [AddedToken(t, normalized=False, special=True)
               for t, ty in zip(tokens, types) if ty == TOKEN_CONTROL and control_ok(t)]
    if control:
        backend.add_special_tokens(control)
    user = [AddedToken(t, normalized=False, special=False)
            for t, ty in zip(tokens, types) if ty == TOKEN_USER_DEFINED and t in vocab]
    if user:
        backend.add_tokens(user)

    specials = {"bos_token": tok("bos_token_id"), "eos_token": tok("eos_token_id"),
                "unk_token": tok("unknown_token_id"), "pad_token": tok("padding_token_id")}
    named = [AddedToken(t, normalized=False, special=True) for t in dict.fromkeys(specials.values())
             if t is not None and backend.get_added_tokens_decoder().get(vocab.get(t, -1)) is None]
    if named:  # transformers makes every named special token an added special token
        backend.add_special_tokens(named)
    eos_ids = [i for i in (_value(reader, "tokenizer.ggml.eot_token_id"),
                           _value(reader, "tokenizer.ggml.eom_token_id")) if i is not None]
    arch = _value(reader, "general.architecture")
    ctx = _value(reader, f"{arch}.context_length") if arch else None
    return Tokenizer(
        backend,
        special_tokens=specials,
        chat_template=_value(reader, "tokenizer.chat_template"),
        add_bos_token=add_bos,
        add_eos_token=bool(_value(reader, "tokenizer.ggml.add_eos_token", False)),
        extra_eos_token_ids=[int(i) for i in eos_ids],
        model_max_length=int(ctx) if ctx is not None else None,
        source=name,
    )


# ----------------------------------------------------------------------------------------------
# Tensors kept quantized
# ----------------------------------------------------------------------------------------------


# Rows of a block-quantized tensor read and repacked per step: the transient memory of a load is
# this much raw data plus its repacked form, not a whole tensor's (SmolLM2's Q8_0 embedding is
# 32 MB raw).
_CHUNK_BYTES = 4 << 20


def _read_rows(f: Any, reader: gguf.GGUFReader | FastGGUF, t: Any, start: int, stop: int) -> np.ndarray:
    """Rows start..stop of a 2-D block tensor (uint8 [rows, row bytes]) read with pread rather
    than through the memory map: the pages of a mapping count in this process's RSS for as long
    as the map lives, a read's page cache does not."""
    view = t.data.view(np.ndarray)
    base = reader.data.view(np.ndarray)
    row_bytes = view.shape[-1]
    offset = view.__array_interface__["data"][0] - base.__array_interface__["data"][0] + start * row_bytes
    out = np.empty((stop - start, row_bytes), dtype=np.uint8)
    buf = memoryview(out.reshape(-1))
    got = 0
    while got < len(buf):
        n = os.preadv(f.fileno(), [buf[got:]], offset + got)
        if n <= 0:
            raise CheckpointError(f"{_name(reader)}: tensor {t.name} runs past the end of the file")
        got += n
    return out


def _repack_tensor(f: Any, reader: gguf.GGUFReader | FastGGUF, t: Any, shape: tuple[int, int]) -> Any:
    """One block tensor -> BlockWeight, read and repacked _CHUNK_BYTES of rows at a time into the
    final buffers."""
    N, K = shape
    step = max(1, _CHUNK_BYTES // max(1, t.data.shape[-1]))
    out: BlockWeight | None = None
    for r0 in range(0, N, step):
        r1 = min(N, r0 + step)
        part = repack(_read_rows(f, reader, t, r0, r1), t.tensor_type, (r1 - r0, K))
        if r0 == 0 and r1 == N:
            return part
        if out is None:
            alloc = lambda x: None if x is None else x.new_empty((N, *x.shape[1:]))  # noqa: E731
            out = BlockWeight(part.kind, alloc(part.q), alloc(part.scales), alloc(part.mins), part.group, part.source)
        for dst, src in ((out.q, part.q), (out.scales, part.scales), (out.mins, part.mins)):
            if dst is not None:
                dst[r0:r1] = src
    return out


def iter_gguf_blocks(path: GGUFSource) -> Iterator[tuple[str, Any]]:
    """Like `iter_gguf_tensors`, but the matrices of a type in `quant.gguf_blocks.NATIVE_TYPES`
    (Q4_0, Q4_1, Q4_K, Q8_0, Q5_K, Q6_K) come out as `BlockWeight`s, repacked for the int
    kernels and never expanded; q/k row un-permutations are applied to their rows. Everything
    else (F32 norms, F16/BF16 matrices, other quant types, 3-D expert stacks, transforms that
    are not row orders) is dequantized to fp32 as there. Each tensor is read with pread, one at
    a time (see `_read_raw`)."""
    reader = _open(path)
    arch, conv = _architecture(reader)
    config = conv.config(_Metadata(reader), arch)
    plan = _tensor_plan(reader, conv, arch)
    with open(getattr(reader, "path", None) or _name(reader), "rb", buffering=0) as f:
        yield from _iter_blocks(f, reader, plan, config)


def _iter_blocks(f: Any, reader: gguf.GGUFReader | FastGGUF, plan: list, config: dict[str, Any]
                 ) -> Iterator[tuple[str, Any]]:
    for t, hf, fn in plan:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        perm = None
        native = t.tensor_type in NATIVE_TYPES and len(shape) == 2
        if native and fn is not None:
            perm = row_permutation(fn, shape[0], config)
            native = perm is not None
        if not native:
            w = torch.from_numpy(_dequantize(reader, t))
            yield hf, (fn(w, config) if fn is not None else w)
            continue
        bw = _repack_tensor(f, reader, t, shape)
        yield hf, (bw.rows(perm) if perm is not None else bw)


def gguf_tensor_types(path: GGUFSource) -> dict[str, int]:
    """{GGUF type name: values} over the file's matrices (2+ dims), for SourceFormat."""
    from collections import Counter

    types: Counter[str] = Counter()
    for t in _open(path).tensors:
        if len(t.shape) >= 2:
            types[t.tensor_type.name] += int(t.shape.prod())
    return dict(types)
