# SPDX-License-Identifier: Apache-2.0
"""Write a model and its tokenizer as a GGUF file in llama.cpp's conventions.

    save_gguf(model, "out.gguf", "q4_k")   # f32 | f16 | q8_0 | q4_0 | q4_1 | q4_k | q6_k

What llama.cpp's convert_hf_to_gguf.py writes for the same HF model, through `gguf.GGUFWriter`:
`general.architecture` / name / type / file_type / quantization_version, the family's
`{arch}.*` hyper-parameters and tensors under llama.cpp's names and layout (families declare
both in their `GGUF_NAMES`: q/k rows permuted for llama-style rotary, fused tensors split,
experts stacked, Llama-3 rope scaling as `rope_freqs.weight`), and `tokenizer.ggml.*` (model,
pre, tokens, token types, merges, special ids, add_bos/eos flags) plus `tokenizer.chat_template`.
Tensor data is aligned to GGUF's default 32 bytes.

Which tensors keep which type (convert_hf_to_gguf.py prepare_tensors + llama-quant.cpp):
- f32 always: 1-D tensors (norms, biases), `*_norm.weight`, the MoE router (`ffn_gate_inp`),
  BERT's position and token-type embeddings, anything not named `.weight`;
- every other tensor takes the requested type, quantized along its rows; a row length that is
  not a multiple of the block size falls back as llama.cpp's quantizer does: Q4_K -> Q5_0,
  Q6_K -> Q8_0, and to F16 when even a 32-value block does not fit (Q8_0 / Q4_0 / Q4_1 too).
The requested type applies to all matrices alike (llama.cpp's Q4_K_M would keep some in Q6_K);
the file type recorded is the closest llama.cpp ftype (q4_k -> MOSTLY_Q4_K_S).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from ..families import get_family
from .errors import CheckpointError
from .gguf import LLAMA3_SPLIT, QWEN2_SPLIT  # the reader's split regexes: one table both ways
from .gguf_quants import block_size, quantize
from .loader import export_state

__all__ = ["GGUF_TYPES", "save_gguf", "tensor_type", "tokenizer_metadata"]

logger = logging.getLogger(__name__)

Q = gguf.GGMLQuantizationType

# CLI name -> (tensor type, llama.cpp file type)
GGUF_TYPES: dict[str, tuple[Q, gguf.LlamaFileType]] = {
    "f32": (Q.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (Q.F16, gguf.LlamaFileType.MOSTLY_F16),
    "q8_0": (Q.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    "q4_0": (Q.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0),
    "q4_1": (Q.Q4_1, gguf.LlamaFileType.MOSTLY_Q4_1),
    "q4_k": (Q.Q4_K, gguf.LlamaFileType.MOSTLY_Q4_K_S),
    "q6_k": (Q.Q6_K, gguf.LlamaFileType.MOSTLY_Q6_K),
}

# Matrices llama.cpp keeps in f32 whatever the file type (the converter's list, our families' part).
_F32_TENSORS = (".ffn_gate_inp.weight", "position_embd.weight", "token_types.weight")
# llama-quant.cpp tensor_type_fallback: a 256-block type whose rows do not fit -> a 32-block type.
_FALLBACK = {Q.Q4_K: Q.Q5_0, Q.Q6_K: Q.Q8_0}

# llama.cpp's token types (llama_token_type)
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6


def tensor_type(name: str, shape: tuple[int, ...], target: Q) -> Q:
    """The GGUF type one tensor is stored in when the file is `target` (rules in the module doc)."""
    if len(shape) <= 1 or name.endswith("_norm.weight") or name.endswith(_F32_TENSORS) \
            or not name.endswith(".weight"):
        return Q.F32
    qtype = target
    if shape[-1] % block_size(qtype):
        qtype = _FALLBACK.get(qtype, qtype)
        if shape[-1] % block_size(qtype):
            qtype = Q.F16
    return qtype


# ----------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------

def _pre_name(pre: dict[str, Any] | None) -> str:
    """llama.cpp's `tokenizer.ggml.pre` for a byte-level BPE pre-tokenizer (the splits our reader knows)."""
    if pre is None:
        return "default"
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        return "smollm"  # every digit alone, then GPT-2's regex (SmolLM2, StarCoder)
    if kinds == ["Split", "ByteLevel"]:
        regex = (steps[0].get("pattern") or {}).get("Regex")
        if regex == LLAMA3_SPLIT:
            return "llama-bpe"
        if regex == QWEN2_SPLIT:
            return "qwen2"
    logger.warning("pre-tokenizer %s has no llama.cpp name here; writing 'default'", kinds)
    return "default"


def _merges(model: dict[str, Any]) -> list[str]:
    return [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]


def tokenizer_metadata(tokenizer: Any, vocab_size: int) -> dict[str, Any]:
    """`tokenizer.ggml.*` and `tokenizer.chat_template` for a swisslm Tokenizer, as llama.cpp's
    converter writes them: byte-level BPE -> "gpt2", WordPiece -> "bert" (tokens in its
    phantom-space spelling), sentencepiece-style BPE with byte fallback -> "llama".

    The token list is padded to the model's `vocab_size` with `[PADn]` tokens of type UNUSED,
    as convert_hf_to_gguf.py does (llama.cpp wants one token per embedding row).
    """
    backend = tokenizer.backend
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    vocab = backend.get_vocab(with_added_tokens=True)
    n = max(vocab_size, max(vocab.values()) + 1)
    tokens = [f"[PAD{i}]" for i in range(n)]
    types = [TOKEN_UNUSED] * n
    for tok, i in vocab.items():
        tokens[i], types[i] = tok, TOKEN_NORMAL
    for i, added in backend.get_added_tokens_decoder().items():
        types[i] = TOKEN_CONTROL if added.special else TOKEN_USER_DEFINED
    ids = {name: backend.token_to_id(tok) for name, tok in tokenizer.special_tokens.items()}
    meta: dict[str, Any] = {}
    kind = model.get("type")
    if kind == "BPE" and not model.get("byte_fallback"):
        meta["tokenizer.ggml.model"] = "gpt2"
        meta["tokenizer.ggml.pre"] = _pre_name(spec.get("pre_tokenizer"))
        meta["tokenizer.ggml.merges"] = _merges(model)
    elif kind == "BPE":
        meta["tokenizer.ggml.model"] = "llama"
        meta["tokenizer.ggml.pre"] = "default"
        meta["tokenizer.ggml.merges"] = _merges(model)
        # sentencepiece ranks: earlier vocabulary entries win (what our reader rebuilds merges from)
        meta["tokenizer.ggml.scores"] = [float(-i) for i in range(n)]
        for i, tok in enumerate(tokens):
            if len(tok) == 6 and tok.startswith("<0x") and tok.endswith(">"):
                types[i] = TOKEN_BYTE
        prefix = (spec.get("pre_tokenizer") or {}).get("prepend_scheme", "first") != "never"
        meta["tokenizer.ggml.add_space_prefix"] = prefix
    elif kind == "WordPiece":
        prefix = model.get("continuing_subword_prefix", "##")
        meta["tokenizer.ggml.model"] = "bert"
        meta["tokenizer.ggml.pre"] = "default"
        tokens = [t if ty in (TOKEN_CONTROL, TOKEN_UNUSED) else
                  (t[len(prefix):] if t.startswith(prefix) else "\u2581" + t) for t, ty in zip(tokens, types)]
    else:
        raise CheckpointError(f"{tokenizer.source}: tokenizer model {kind!r} has no GGUF form here "
                              "(byte-level BPE, sentencepiece BPE, WordPiece)")
    meta["tokenizer.ggml.tokens"] = tokens
    meta["tokenizer.ggml.token_type"] = types
    for key, name in (("bos_token_id", "bos_token"), ("eos_token_id", "eos_token"), ("unknown_token_id", "unk_token"),
                      ("padding_token_id", "pad_token"), ("seperator_token_id", "sep_token"),
                      ("cls_token_id", "cls_token"), ("mask_token_id", "mask_token")):
        if ids.get(name) is not None:
            meta[f"tokenizer.ggml.{key}"] = ids[name]
    if kind == "WordPiece":  # llama.cpp's WPM: [CLS] is the BOS it adds, [SEP] ends each text
        if ids.get("cls_token") is not None:
            meta["tokenizer.ggml.bos_token_id"] = ids["cls_token"]
        meta["tokenizer.ggml.add_bos_token"] = True
        meta["tokenizer.ggml.add_sep_token"] = True
    else:  # what the tokenizer really does on encode (flags or a post-processor template)
        plain = backend.encode("a", add_special_tokens=False).ids
        full = backend.encode("a").ids
        bos, eos = ids.get("bos_token"), ids.get("eos_token")
        meta["tokenizer.ggml.add_bos_token"] = bool(len(full) > len(plain) and bos is not None and full[0] == bos)
        meta["tokenizer.ggml.add_eos_token"] = bool(len(full) > len(plain) and eos is not None and full[-1] == eos)
    eot = [i for i in tokenizer.extra_eos_token_ids if i != ids.get("eos_token")]
    if eot:
        meta["tokenizer.ggml.eot_token_id"] = eot[0]
    if tokenizer.chat_template:
        meta["tokenizer.chat_template"] = tokenizer.chat_template
    return meta


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------

def _add_value(writer: gguf.GGUFWriter, key: str, value: Any) -> None:
    """Typed as llama.cpp reads them: counts uint32, scales float32, token types int32, lists of str."""
    V = gguf.GGUFValueType
    if key == "tokenizer.ggml.token_type":
        writer.add_key_value(key, value, V.ARRAY, sub_type=V.INT32)
    elif key == "tokenizer.ggml.scores":
        writer.add_key_value(key, value, V.ARRAY, sub_type=V.FLOAT32)
    elif isinstance(value, list):
        writer.add_key_value(key, value, V.ARRAY, sub_type=V.STRING)
    elif isinstance(value, bool):
        writer.add_key_value(key, value, V.BOOL)
    elif isinstance(value, int):
        writer.add_key_value(key, value, V.UINT32)
    elif isinstance(value, float):
        writer.add_key_value(key, value, V.FLOAT32)
    else:
        writer.add_key_value(key, str(value), V.STRING)


def _tensors(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    cfg = model.config
    family = get_family(cfg.family)
    names = family.GGUF_NAMES
    if names is None or names.export is None:
        raise CheckpointError(f"family {cfg.family!r} has no GGUF form")
    state = {k: v.detach().to("cpu", torch.float32) for k, v in export_state(model).items()}
    yield from names.export(cfg, state)


def save_gguf(model: Any, path: str | os.PathLike[str], qtype: str = "f16", tokenizer: Any = None,
              name: str | None = None) -> dict[str, int]:
    """Write `model` (and `tokenizer`, when given) to `path` as a GGUF file of type `qtype`.

    Returns how many tensors went into each GGUF type ({"Q4_K": 12, "F32": 9, ...}). The file is
    written under a temporary name and renamed at the end, so a failure leaves no partial file.
    """
    if qtype not in GGUF_TYPES:
        raise ValueError(f"GGUF type {qtype!r} is not one of {sorted(GGUF_TYPES)}")
    target, ftype = GGUF_TYPES[qtype]
    cfg = model.config
    family = get_family(cfg.family)
    if family.GGUF_NAMES is None or family.GGUF_NAMES.metadata is None:
        raise CheckpointError(f"family {cfg.family!r} has no GGUF form (GGUF families: llama, granite, "
                              "granite_moe, olmoe, gpt_neox, bert)")
    if getattr(model, "quantization", None):
        raise CheckpointError("a quantized swisslm model cannot be exported to GGUF; load the float checkpoint")
    arch = family.gguf_architectures[0]
    out = Path(path)
    tmp = out.with_name(out.name + ".part")
    writer = gguf.GGUFWriter(str(tmp), arch=arch)
    counts: Counter[str] = Counter()
    fallbacks: Counter[str] = Counter()
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name or Path(str(getattr(model, "name_or_path", "") or "model")).name)
        writer.add_file_type(int(ftype))
        if target not in (Q.F32, Q.F16):
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for key, value in family.GGUF_NAMES.metadata(cfg, arch).items():
            _add_value(writer, key, value)
        if tokenizer is not None:
            for key, value in tokenizer_metadata(tokenizer, cfg.vocab_size).items():
                _add_value(writer, key, value)
        else:  # llama.cpp reads the special ids from the tokenizer section; keep the config's
            eos = cfg.eos_ids[0] if cfg.eos_ids else None
            for key, v in (("bos_token_id", cfg.bos_token_id), ("eos_token_id", eos),
                           ("padding_token_id", cfg.pad_token_id)):
                if v is not None:
                    _add_value(writer, f"tokenizer.ggml.{key}", int(v))
        for tname, t in _tensors(model):
            arr = t.numpy()
            ttype = tensor_type(tname, tuple(arr.shape), target)
            if ttype not in (target, Q.F32):
                fallbacks[f"{ttype.name} (rows of {arr.shape[-1]})"] += 1
            data = quantize(arr, ttype)
            writer.add_tensor(tname, data, raw_dtype=ttype if data.dtype == np.uint8 else None)
            counts[ttype.name] += 1
        if fallbacks:  # one line, as llama-quantize's summary: which rows did not fit the blocks
            logger.warning("%d tensor(s) have rows that do not fit %s blocks and fell back: %s",
                           sum(fallbacks.values()), target.name,
                           ", ".join(f"{n} to {k}" for k, n in fallbacks.items()))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return dict(counts)
