# SPDX-License-Identifier: Apache-2.0
"""GGUF names as family data: how a llama.cpp architecture (`general.architecture`) maps onto a
family's HF config keys and tensor names. Each family file declares its `GGUF_NAMES` next to its
HF weight map, so there is one registry (families/__init__.py) for HF folders and GGUF files.

Nothing here reads files: io/gguf.py hands the config builders a `GGUFMetadata` view of the
file's header, so families stay below io/.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from ..config import ModelConfig
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

    def tensor_values(self, name: str) -> np.ndarray | None:
        """A small tensor's values as float32 (dequantized), or None when absent (rope_freqs)."""


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


def llama3_rope_factors(scaling: Mapping[str, Any], theta: float, dim: int) -> np.ndarray:
    """llama.cpp's `rope_freqs.weight` for HF's llama3 rope_scaling (convert_hf_to_gguf.py's
    LlamaModel.generate_extra_tensors): per frequency, 1 (high), `factor` (low) or the blend."""
    factor = float(scaling.get("factor", 8.0))
    low = float(scaling.get("low_freq_factor", 1.0))
    high = float(scaling.get("high_freq_factor", 4.0))
    old_ctx = float(scaling.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    wavelen = 2 * math.pi / freqs
    smooth = (old_ctx / wavelen - low) / (high - low)
    blend = 1 / ((1 - smooth) / factor + smooth)
    out = np.where(wavelen < old_ctx / high, 1.0, np.where(wavelen > old_ctx / low, factor, blend))
    return out.astype(np.float32)


def llama3_rope_from_factors(name: str, factors: np.ndarray, theta: float, dim: int,
                             context: int | None) -> dict[str, Any] | None:
    """HF's llama3 `rope_scaling` that regenerates a file's `rope_freqs.weight`.

    The tensor fixes `factor` (its largest entry) and, through the blended entries between the two
    wavelength bounds, original_max_position_embeddings / (high - low) and low / (high - low):
    only ratios, so low_freq_factor is taken as 1 (every Llama 3.x release) and the rest solved
    by least squares. With fewer than two blended entries Llama 3.1's own values are tried. The
    result must reproduce the tensor (relative 1e-4) or the file is refused: a guess that changes
    the maths is worse than an error.
    """
    factors = np.asarray(factors, dtype=np.float64).reshape(-1)
    if factors.size != dim // 2:
        raise CheckpointError(f"{name}: rope_freqs.weight has {factors.size} values, expected {dim // 2}")
    factor = float(factors.max())
    if np.allclose(factors, 1.0, rtol=0, atol=1e-6):
        return None
    freqs = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    inv_wavelen = freqs / (2 * math.pi)
    mid = (factors > 1 + 1e-6) & (factors < factor * (1 - 1e-6))
    candidates: list[dict[str, Any]] = []
    if mid.sum() >= 2:
        s = (1 / factors[mid] - 1 / factor) / (1 - 1 / factor)  # the blend weight of each entry
        a, b = np.polyfit(inv_wavelen[mid], s, 1)  # s = old_ctx/(high-low) / wavelen - low/(high-low)
        if b < 0:
            candidates.append({"low_freq_factor": 1.0, "high_freq_factor": round(1 - 1 / b, 4),
                               "original_max_position_embeddings": int(round(-a / b))})
    for ctx in dict.fromkeys((8192, context or 8192)):
        candidates.append({"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": ctx})
    for c in candidates:
        scaling = {"rope_type": "llama3", "factor": f32_short(factor), **c}
        if np.allclose(llama3_rope_factors(scaling, theta, dim), factors, rtol=1e-4, atol=0):
            return scaling
    raise CheckpointError(f"{name}: rope_freqs.weight does not match any llama3 rope scaling "
                          "(factor, low/high_freq_factor, original context); cannot load it faithfully")


# -- export: our tensor names -> llama.cpp's ---------------------------------------------------

TensorFn = Callable[[torch.Tensor, ModelConfig], torch.Tensor]


@dataclass(frozen=True)
class Out:
    """Where one of our tensors goes in a GGUF file: `names` (with `{layer}`), one per piece when
    the tensor is split along `dim` into `sizes(cfg)`; `fns` transform each piece (q/k permute).
    No names: the tensor is not written (llama.cpp has no place for it, e.g. BERT's pooler)."""

    names: tuple[str, ...]
    sizes: Callable[[ModelConfig], list[int]] | None = None
    dim: int = 0
    fns: tuple[TensorFn | None, ...] = ()


def out(name: str, fn: TensorFn | None = None) -> Out:
    return Out((name,), fns=(fn,))


def split(names: tuple[str, ...], sizes: Callable[[ModelConfig], list[int]], dim: int = 0,
          fns: tuple[TensorFn | None, ...] = ()) -> Out:
    return Out(names, sizes, dim, fns)


DROP = Out(())


def permute_q_out(w: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    return gguf_permute_qk(w, cfg.num_heads)


def permute_k_out(w: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    return gguf_permute_qk(w, cfg.num_kv_heads)


def export_tensors(table: Mapping[str, Out], cfg: ModelConfig,
                   state: Mapping[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    """(GGUF name, tensor) for each of our tensors, per `table`; one error lists every tensor the
    table has no entry for (nothing is silently left out of the file)."""
    compiled = []
    for src, target in table.items():
        rx = re.escape(src).replace(re.escape("{layer}"), r"(?P<layer>\d+)")
        compiled.append((re.compile(rx + r"\Z"), target))
    plan, unknown = [], []
    for name, t in state.items():
        hit = next(((m, target) for rx, target in compiled if (m := rx.match(name))), None)
        if hit is None:
            unknown.append(name)
        else:
            plan.append((t, hit[0].groupdict(), hit[1]))
    if unknown:
        raise CheckpointError(f"no GGUF name for tensor(s) of {cfg.family!r}: {', '.join(unknown[:8])}"
                              f"{' ...' if len(unknown) > 8 else ''}")
    for t, groups, target in plan:
        pieces = t.split(target.sizes(cfg), dim=target.dim) if target.sizes else (t,)
        for i, (gname, piece) in enumerate(zip(target.names, pieces)):
            fn = target.fns[i] if i < len(target.fns) else None
            yield gname.format(**groups), (fn(piece, cfg) if fn is not None else piece).contiguous()


def decoder_meta(cfg: ModelConfig, arch: str) -> dict[str, Any]:
    """The `{arch}.*` keys every llama.cpp decoder reads (TextModel.set_gguf_parameters)."""
    meta: dict[str, Any] = {
        f"{arch}.context_length": cfg.max_position_embeddings,
        f"{arch}.embedding_length": cfg.hidden_size,
        f"{arch}.block_count": cfg.num_layers,
        f"{arch}.feed_forward_length": cfg.intermediate_size,
        f"{arch}.attention.head_count": cfg.num_heads,
        f"{arch}.attention.head_count_kv": cfg.num_kv_heads,
        f"{arch}.rope.freq_base": float(cfg.rope_theta),
        f"{arch}.rope.dimension_count": cfg.rotary_dim,
        f"{arch}.vocab_size": cfg.vocab_size,
    }
    if cfg.head_dim * cfg.num_heads != cfg.hidden_size:
        meta[f"{arch}.attention.key_length"] = cfg.head_dim
        meta[f"{arch}.attention.value_length"] = cfg.head_dim
    eps_key = "layer_norm_rms_epsilon" if cfg.norm == "rmsnorm" else "layer_norm_epsilon"
    meta[f"{arch}.attention.{eps_key}"] = float(cfg.norm_eps)
    scaling = cfg.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "linear":
        meta[f"{arch}.rope.scaling.type"] = "linear"
        meta[f"{arch}.rope.scaling.factor"] = float(scaling["factor"])
    if cfg.num_experts:
        meta[f"{arch}.expert_count"] = cfg.num_experts
        meta[f"{arch}.expert_used_count"] = cfg.num_experts_per_tok
        meta[f"{arch}.feed_forward_length"] = cfg.moe_intermediate_size
    return meta


@dataclass(frozen=True)
class GGUFNames:
    """How one llama.cpp architecture maps onto its family's HF names, both ways.

    `config` builds the HF config.json dict from the file's metadata (a `GGUFMetadata`).
    `tensors` maps GGUF tensor names (with a `{layer}` placeholder) to (HF name, transform or
    None); an HF name of None drops the tensor on purpose. A tensor that matches no entry is an
    error, so nothing is silently lost.
    """

    config: Callable[[GGUFMetadata, str], dict[str, Any]]
    tensors: Mapping[str, tuple[str | None, Transform | None]]
    # Export (io/gguf_writer.py): `{arch}.*` metadata for a ModelConfig, and our tensors under
    # llama.cpp's names in its layout (plus generated ones such as rope_freqs).
    metadata: Callable[[ModelConfig, str], dict[str, Any]] | None = None
    export: Callable[[ModelConfig, Mapping[str, torch.Tensor]], Iterator[tuple[str, torch.Tensor]]] | None = None
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
