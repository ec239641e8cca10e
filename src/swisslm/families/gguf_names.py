# SPDX-License-Identifier: Apache-2.0
"""GGUF names as family data: how a llama.cpp architecture (`general.architecture`) maps onto a
family's HF config keys and tensor names. Each family file declares its `GGUF_NAMES` next to its
HF weight map, so there is one registry (families/__init__.py) for HF folders and GGUF files.

Nothing here reads files: io/gguf.py hands the config builders a `GGUFMetadata` view of the
file's header, so families stay below io/.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from ..errors import CheckpointError

Transform = Callable[[torch.Tensor, Mapping[str, Any]], torch.Tensor]


class GGUFMetadata(Protocol):
    """What a config builder may ask of a GGUF header."""

    name: str  # the file, for error messages

    def value(self, key: str, default: Any = None) -> Any:
        """A metadata value as a plain Python object, or `default` when absent."""

    def require(self, key: str) -> Any:
        """A scalar metadata value; CheckpointError naming the key when absent or per-layer."""

    def tensor_shape(self, name: str) -> tuple[int, ...] | None:
        """A tensor's shape in torch order, or None when the file has no such tensor."""


def f32_short(x: float) -> float:
    """The shortest decimal that round-trips the float32 GGUF stored.

    GGUF keeps floats as float32, so `1e-5` comes back as 9.999999747378752e-06. The short form is
    what the model's own config.json says, and it rounds to the same float32 in every kernel.
    """
    return float(str(np.float32(x)))


def gguf_permute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF -> GGUF: llama.cpp's `permute` of q_proj/k_proj rows (and biases).

    HF's Llama applies rotary as rotate-half (pairs i and i + D/2 of each head); llama.cpp rotates
    adjacent pairs (2i, 2i+1). Its converter reorders each head's rows so that the two agree:
    `w.reshape(n_head, 2, rows // n_head // 2, *rest).swapaxes(1, 2).reshape(w.shape)`.
    Use n_head = num_attention_heads for q and num_key_value_heads for k.
    """
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise ValueError(f"cannot permute {tuple(w.shape)} for {n_head} heads: rows % (2 * n_head) != 0")
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_unpermute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """GGUF -> HF: the exact inverse of `gguf_permute_qk` (rows back to rotate-half order)."""
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise ValueError(f"cannot unpermute {tuple(w.shape)} for {n_head} heads: rows % (2 * n_head) != 0")
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_q(w: torch.Tensor, config: Mapping[str, Any]) -> torch.Tensor:
    return gguf_unpermute_qk(w, config["num_attention_heads"])


def unpermute_k(w: torch.Tensor, config: Mapping[str, Any]) -> torch.Tensor:
    return gguf_unpermute_qk(w, config["num_key_value_heads"])


def rope_scaling_from_gguf(meta: GGUFMetadata, arch: str) -> dict[str, Any] | None:
    """HF `rope_scaling` from llama.cpp's `{arch}.rope.scaling.*` keys (None when absent or 'none')."""
    kind = meta.value(f"{arch}.rope.scaling.type")
    factor = meta.value(f"{arch}.rope.scaling.factor")
    if kind is None and meta.value(f"{arch}.rope.scale_linear") is not None:  # pre-2024 files
        kind, factor = "linear", meta.value(f"{arch}.rope.scale_linear")
    if kind in (None, "none"):
        return None
    if kind not in ("linear", "yarn"):
        raise CheckpointError(f"{meta.name}: rope scaling type {kind!r} is not supported (linear, yarn)")
    out: dict[str, Any] = {"rope_type": kind, "factor": f32_short(factor if factor is not None else 1.0)}
    orig = meta.value(f"{arch}.rope.scaling.original_context_length")
    if orig is not None:
        out["original_max_position_embeddings"] = int(orig)
    return out


@dataclass(frozen=True)
class GGUFNames:
    """How one llama.cpp architecture maps onto its family's HF names.

    `config` builds the HF config.json dict from the file's metadata (a `GGUFMetadata`).
    `tensors` maps GGUF tensor names (with a `{layer}` placeholder) to (HF name, transform or
    None); an HF name of None drops the tensor on purpose. A tensor that matches no entry is an
    error, so nothing is silently lost.
    """

    config: Callable[[GGUFMetadata, str], dict[str, Any]]
    tensors: Mapping[str, tuple[str | None, Transform | None]]
    _patterns: list[tuple[re.Pattern[str], str | None, Transform | None]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        pats = []
        for src, (dst, fn) in self.tensors.items():
            rx = re.escape(src).replace(re.escape("{layer}"), r"(?P<layer>\d+)")
            pats.append((re.compile(rx + r"\Z"), dst, fn))
        object.__setattr__(self, "_patterns", pats)

    def hf_name(self, gguf_name: str) -> tuple[str | None, Transform | None] | None:
        """(HF name or None to drop, transform) for a GGUF tensor name; None if unknown."""
        for rx, dst, fn in self._patterns:
            m = rx.match(gguf_name)
            if m:
                return (dst.format(**m.groupdict()) if dst is not None else None), fn
        return None
