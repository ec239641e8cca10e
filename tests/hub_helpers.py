# SPDX-License-Identifier: Apache-2.0
"""Test helpers: a Hugging Face hub cache laid out as huggingface_hub lays it out, and a tiny
GGUF Llama (Q4_1 matrices, Q8_0 embedding: the mix of SmolLM2's Q4_1 file) that loads in
milliseconds."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cache_repo(cache: Path, repo_id: str, src: Path, commit: str = COMMIT, ref: str = "main") -> Path:
    """Put `src` (a folder, or one file) into the hub cache `cache` as a download would:
    models--ORG--NAME/blobs/<sha256> holds the bytes, snapshots/<commit>/<path> is a relative
    symlink to its blob, refs/<ref> holds the commit. Returns the snapshot folder."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
    for f in files:
        rel = f.name if src.is_file() else f.relative_to(src).as_posix()
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return repo / "snapshots" / commit


# Tiny Llama: widths are multiples of 32, the Q4_1 / Q8_0 block.
TINY_GGUF = dict(vocab=64, hidden=64, heads=4, kv_heads=2, ffn=128, layers=1)


def write_tiny_gguf(path: Path, seed: int = 0) -> Path:
    """A loadable GGUF Llama with a byte-level BPE vocabulary of single letters; matrices Q4_1,
    token embedding Q8_0 (tied head), norms F32."""
    c = TINY_GGUF
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch="llama")
    for key, value in {"llama.block_count": c["layers"], "llama.context_length": 64,
                       "llama.embedding_length": c["hidden"], "llama.feed_forward_length": c["ffn"],
                       "llama.attention.head_count": c["heads"], "llama.attention.head_count_kv": c["kv_heads"],
                       "llama.rope.dimension_count": c["hidden"] // c["heads"], "llama.vocab_size": c["vocab"]}.items():
        w.add_uint32(key, value)
    w.add_float32("llama.rope.freq_base", 10000.0)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-6)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([chr(ord("a") + i % 26) * (1 + i // 26) for i in range(c["vocab"])])
    w.add_token_types([1] * c["vocab"])
    w.add_token_merges([])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    h, kv = c["hidden"], c["kv_heads"] * (c["hidden"] // c["heads"])
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (c["vocab"], h), "output_norm.weight": (h,)}
    for i in range(c["layers"]):
        shapes |= {f"blk.{i}.attn_norm.weight": (h,), f"blk.{i}.ffn_norm.weight": (h,),
                   f"blk.{i}.attn_q.weight": (h, h), f"blk.{i}.attn_k.weight": (kv, h),
                   f"blk.{i}.attn_v.weight": (kv, h), f"blk.{i}.attn_output.weight": (h, h),
                   f"blk.{i}.ffn_gate.weight": (c["ffn"], h), f"blk.{i}.ffn_up.weight": (c["ffn"], h),
                   f"blk.{i}.ffn_down.weight": (h, c["ffn"])}
    for name, shape in shapes.items():
        x = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        if len(shape) == 1:
            w.add_tensor(name, x + 1.0)
        else:
            qtype = Q.Q8_0 if name == "token_embd.weight" else Q.Q4_1
            w.add_tensor(name, gguf.quants.quantize(x, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def tiny_gguf_type_counts() -> dict[str, int]:
    """Values per GGUF type in write_tiny_gguf's file (matrices only), from TINY_GGUF's shapes."""
    c = TINY_GGUF
    h, kv = c["hidden"], c["kv_heads"] * (c["hidden"] // c["heads"])
    per_layer = 2 * h * h + 2 * kv * h + 3 * c["ffn"] * h
    return {"Q4_1": c["layers"] * per_layer, "Q8_0": c["vocab"] * h}
