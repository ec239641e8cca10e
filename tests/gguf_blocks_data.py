# SPDX-License-Identifier: Apache-2.0
"""Test data in GGUF block formats: random blocks of each type swisslm keeps quantized, and a tiny
Llama GGUF (written with gguf.GGUFWriter, llama.cpp's tensor names) whose matrices are of one
chosen type. gguf's Python package quantizes Q4_0/Q4_1/Q8_0 but not the K-quants, so their blocks
are random bytes with small float16 super-block scales: every code and sub-block scale is valid."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q

NATIVE = (Q.Q4_0, Q.Q4_1, Q.Q8_0, Q.Q4_K, Q.Q5_K, Q.Q6_K)
# Where each K-quant block keeps its float16 scales: (d offset, dmin offset or None).
_K_SCALES = {Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208, None)}


def random_blocks(qtype: Q, N: int, K: int, seed: int = 0, scale: float = 0.05) -> np.ndarray:
    """uint8 [N, row bytes] of `qtype` blocks for an [N, K] matrix (entries of size ~`scale`)."""
    rng = np.random.default_rng(seed)
    if qtype in (Q.Q4_0, Q.Q4_1, Q.Q8_0):
        return gguf.quants.quantize((rng.standard_normal((N, K)) * scale).astype(np.float32), qtype)
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(N, K // block, size), dtype=np.uint8)
    d_at, dmin_at = _K_SCALES[qtype]
    # typical |sub-scale * code|: Q4_K 32 * 8, Q5_K 32 * 16, Q6_K 64 * 16 (random bytes)
    typical = {Q.Q4_K: 256, Q.Q5_K: 512, Q.Q6_K: 1024}[qtype]
    d = (rng.uniform(0.5, 1.5, size=(N, K // block)) * scale / typical).astype(np.float16)
    raw[..., d_at:d_at + 2] = d.view(np.uint8).reshape(N, K // block, 2)
    if dmin_at is not None:  # mins of about half an entry
        dmin = (d.astype(np.float32) * typical / 64).astype(np.float16)
        raw[..., dmin_at:dmin_at + 2] = dmin.view(np.uint8).reshape(N, K // block, 2)
    return raw.reshape(N, -1)


def dequantized(raw: np.ndarray, qtype: Q) -> np.ndarray:
    return gguf.quants.dequantize(raw, qtype).astype(np.float32)


# Tiny Llama for the K-quants too: every matrix width a multiple of 256.
TINY = dict(vocab=96, hidden=256, heads=4, kv_heads=2, ffn=512, layers=2)


def write_llama_gguf(path: Path, qtype: Q, seed: int = 0, types: dict[str, Q] | None = None,
                     tied: bool = True) -> Path:
    """A loadable tiny GGUF Llama, matrices in `qtype` (per tensor-name suffix overrides in
    `types`, e.g. {"attn_v.weight": Q.Q6_K} for a Q4_K_M-style mix), norms F32."""
    rng = np.random.default_rng(seed)

    def tensor(name: str, shape: tuple[int, ...], j: int) -> tuple[np.ndarray, Q | None]:
        if len(shape) == 1:
            return (1.0 + rng.standard_normal(shape) * 0.05).astype(np.float32), None
        t = next((v for k, v in (types or {}).items() if name.endswith(k)), qtype)
        scale = 1.0 if name == "token_embd.weight" else 0.06
        return random_blocks(t, *shape, seed=seed * 1000 + j, scale=scale), t

    return write_tiny_llama(path, TINY, tensor, tied)


def write_tiny_llama(path: Path, c: dict[str, int], tensor: Callable[[str, tuple[int, ...], int],
                     tuple[np.ndarray, Q | None]], tied: bool = True) -> Path:
    """A tiny GGUF Llama of config `c` (vocab, hidden, heads, kv_heads, ffn, layers) with a
    byte-level vocabulary of letters; `tensor(name, shape, index)` gives each tensor's data and
    its GGUF type (None: a float array stored as is)."""
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
    if not tied:
        shapes["output.weight"] = (c["vocab"], h)
    for i in range(c["layers"]):
        shapes |= {f"blk.{i}.attn_norm.weight": (h,), f"blk.{i}.ffn_norm.weight": (h,),
                   f"blk.{i}.attn_q.weight": (h, h), f"blk.{i}.attn_k.weight": (kv, h),
                   f"blk.{i}.attn_v.weight": (kv, h), f"blk.{i}.attn_output.weight": (h, h),
                   f"blk.{i}.ffn_gate.weight": (c["ffn"], h), f"blk.{i}.ffn_up.weight": (c["ffn"], h),
                   f"blk.{i}.ffn_down.weight": (h, c["ffn"])}
    for j, (name, shape) in enumerate(shapes.items()):
        data, raw = tensor(name, shape, j)
        if raw is None:
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
