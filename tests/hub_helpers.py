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
from gguf_blocks_data import write_tiny_llama

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
    rng = np.random.default_rng(seed)

    def tensor(name: str, shape: tuple[int, ...], j: int) -> tuple[np.ndarray, Q | None]:
        x = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        if len(shape) == 1:
            return x + 1.0, None
        qtype = Q.Q8_0 if name == "token_embd.weight" else Q.Q4_1
        return gguf.quants.quantize(x, qtype), qtype

    return write_tiny_llama(path, TINY_GGUF, tensor)


def tiny_gguf_type_counts() -> dict[str, int]:
    """Values per GGUF type in write_tiny_gguf's file (matrices only), from TINY_GGUF's shapes."""
    c = TINY_GGUF
    h, kv = c["hidden"], c["kv_heads"] * (c["hidden"] // c["heads"])
    per_layer = 2 * h * h + 2 * kv * h + 3 * c["ffn"] * h
    return {"Q4_1": c["layers"] * per_layer, "Q8_0": c["vocab"] * h}
