# SPDX-License-Identifier: Apache-2.0
"""GGUF block-quantized tensors kept quantized: repacked once at load into the layouts of
swisslm's int kernels, exactly (every weight equals `gguf.quants.dequantize`'s float32), and
carried through the family weight maps as `BlockWeight` objects that support the row operations
those maps do (concatenate q/k/v or gate/up rows, permute q/k rows).

    GGUF type  block                          repacked into                       module
    Q4_0       d, 32 x 4-bit                  int4 group 32: scale d, min -8d     Int4Linear
    Q4_1       d, m, 32 x 4-bit               int4 group 32: scale d, min m       Int4Linear
    Q4_K       d, dmin, 8 x (6-bit sc, m)     int4 group 32: d*sc, -dmin*m        Int4Linear
    Q8_0       d, 32 x int8                   int8 group 32: scale d              GroupInt8Linear
    Q5_K       d, dmin, 8 x (sc, m), 5-bit    int8 group 32: d*sc, -dmin*m        GroupInt8Linear
    Q6_K       d, 16 x int8 sc, 6-bit         int8 group 16: d*sc, codes q-32     GroupInt8Linear

The int4 layout is Int4Linear's (two nibbles per byte, low = even column), so the GGUF nibble
order (byte j holds values j and j+16 of a 32-block) is reordered once. Scales and mins are
products of a float16 and a small integer, exact in float32, so `q * scale + min` rounds exactly
as gguf.quants' `d * q - dm` does.

A linear whose pieces come in different layouts (Q4_K_M files mix Q4_K and Q6_K rows in one
fused qkv) is stored in the common one: int4 codes widen to int8 codes exactly, and a group of 32
splits into two of 16 with the same scale, so the fused weight is int8 groups of the smallest
group size. A token embedding stays quantized too (`BlockEmbedding`: a lookup dequantizes only
the rows it reads); a tied LM head reads the same tensors through its linear kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gguf.constants import GGMLQuantizationType as T
from gguf.quants import Q4_K
from torch import nn

from .layers import GroupInt8Linear, Int4Linear, dequantize_groups, dequantize_int4, set_module

# The GGUF types kept quantized, and the layout each repacks into.
NATIVE_TYPES: dict[T, str] = {T.Q4_0: "int4", T.Q4_1: "int4", T.Q4_K: "int4",
                              T.Q8_0: "int8g", T.Q5_K: "int8g", T.Q6_K: "int8g"}


@dataclass
class BlockWeight:
    """A quantized [N, K] matrix in a kernel layout.

    kind "int4": `q` uint8 [N, K/2] (Int4Linear's nibbles), `scales`/`mins` fp32 [N, K/group].
    kind "int8g": `q` int8 [N, K], `scales` fp32 [N, K/group], `mins` the same or None.
    `source` names the GGUF type(s) it came from ("Q4_1", "Q4_K+Q6_K")."""

    kind: str
    q: torch.Tensor
    scales: torch.Tensor
    mins: torch.Tensor | None
    group: int
    source: str

    @property
    def shape(self) -> torch.Size:
        n, g = self.scales.shape
        return torch.Size((n, g * self.group))

    def dim(self) -> int:
        return 2

    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    def is_floating_point(self) -> bool:
        return False

    @property
    def layout(self) -> str:
        """How it runs, for `swisslm info`: "int4 g32", "int8 g16"."""
        return f"{'int4' if self.kind == 'int4' else 'int8'} g{self.group}"

    def dequantize(self) -> torch.Tensor:
        """The fp32 matrix (equal to gguf.quants.dequantize of the source blocks)."""
        if self.kind == "int4":
            return dequantize_int4(self.q, self.scales, self.mins)
        return dequantize_groups(self.q, self.scales, self.mins)

    def rows(self, index: torch.Tensor) -> BlockWeight:
        """Rows `index` (a permutation or a selection), in that order."""
        pick = lambda t: None if t is None else t.index_select(0, index)  # noqa: E731
        return BlockWeight(self.kind, pick(self.q), pick(self.scales), pick(self.mins), self.group, self.source)

    def as_int8(self, group: int) -> BlockWeight:
        """The same matrix as int8 codes in groups of `group` (dividing self.group): exact."""
        if group > self.group or self.group % group:
            raise ValueError(f"cannot regroup {self.group} into {group}")
        q = self.q
        if self.kind == "int4":
            q = torch.stack((q & 0x0F, q >> 4), dim=-1).reshape(q.shape[0], -1).to(torch.int8)
        r = self.group // group
        rep = (lambda t: t.repeat_interleave(r, dim=1)) if r > 1 else (lambda t: t)  # noqa: E731
        mins = None if self.mins is None else rep(self.mins)
        return BlockWeight("int8g", q, rep(self.scales), mins, group, self.source)

    @staticmethod
    def cat(parts: list[BlockWeight]) -> BlockWeight:
        """Row concatenation; parts in different layouts meet in int8 groups of the smallest group."""
        source = "+".join(dict.fromkeys(p.source for p in parts))
        if all(p.kind == "int4" and p.group == parts[0].group for p in parts):
            return BlockWeight("int4", torch.cat([p.q for p in parts]), torch.cat([p.scales for p in parts]),
                               torch.cat([p.mins for p in parts]), parts[0].group, source)
        group = min(p.group for p in parts)
        parts = [p.as_int8(group) for p in parts]
        if any(p.mins is not None for p in parts):
            mins = torch.cat([p.mins if p.mins is not None else torch.zeros_like(p.scales) for p in parts])
        else:
            mins = None
        return BlockWeight("int8g", torch.cat([p.q for p in parts]), torch.cat([p.scales for p in parts]), mins,
                           group, source)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        # The family weight maps assemble fused linears with torch.cat(pieces, dim=0); that is
        # the one torch op a BlockWeight takes (rows stay whole blocks).
        kwargs = kwargs or {}
        if func is torch.cat:
            parts, dim = args[0], kwargs.get("dim", args[1] if len(args) > 1 else 0)
            if dim == 0 and all(isinstance(p, BlockWeight) for p in parts):
                return BlockWeight.cat(list(parts))
            parts = [p.dequantize() if isinstance(p, BlockWeight) else p for p in parts]
            return torch.cat(parts, dim=dim)
        return NotImplemented


# -- repacking GGUF blocks -------------------------------------------------------------------


def _f16(b: np.ndarray) -> np.ndarray:
    """(..., 2) uint8 -> (...) float32."""
    return np.ascontiguousarray(b).view(np.float16)[..., 0].astype(np.float32)


def _pack_pairs(v: np.ndarray) -> np.ndarray:
    """(..., 2n) codes 0..15 in column order -> (..., n) bytes, low nibble = even column."""
    return v[..., 0::2] | (v[..., 1::2] << np.uint8(4))


def repack(raw: np.ndarray, qtype: T, shape: tuple[int, int]) -> BlockWeight:
    """One GGUF tensor's blocks (uint8 [N, row bytes]) -> its BlockWeight (see the table above)."""
    N, K = shape
    t = torch.from_numpy
    name = qtype.name
    if qtype in (T.Q4_0, T.Q4_1):
        off = 2 if qtype == T.Q4_0 else 4
        b = raw.reshape(N, K // 32, off + 16)
        d = _f16(b[..., 0:2])
        qs = b[..., off:]
        codes = np.concatenate((qs & np.uint8(0x0F), qs >> np.uint8(4)), axis=-1)  # (N, nb, 32) column order
        mins = -8.0 * d if qtype == T.Q4_0 else _f16(b[..., 2:4])
        return BlockWeight("int4", t(_pack_pairs(codes).reshape(N, K // 2)), t(d), t(mins.astype(np.float32)),
                           32, name)
    if qtype == T.Q8_0:
        b = raw.reshape(N, K // 32, 34)
        q = np.ascontiguousarray(b[..., 2:]).view(np.int8).reshape(N, K)
        return BlockWeight("int8g", t(q), t(_f16(b[..., 0:2])), None, 32, name)
    if qtype in (T.Q4_K, T.Q5_K):
        nb = K // 256
        b = raw.reshape(N * nb, -1)
        d, dmin = _f16(b[:, 0:2])[:, None], _f16(b[:, 2:4])[:, None]
        sc, m = Q4_K.get_scale_min(np.ascontiguousarray(b[:, 4:16]))
        scales = (d * sc.astype(np.float32)).reshape(N, nb * 8)
        mins = -(dmin * m.astype(np.float32)).reshape(N, nb * 8)
        if qtype == T.Q4_K:
            qs = b[:, 16:].reshape(N * nb, 4, 32)  # each 64 values: low nibbles, then high nibbles
            codes = np.concatenate((qs & np.uint8(0x0F), qs >> np.uint8(4)), axis=-1)
            return BlockWeight("int4", t(_pack_pairs(codes).reshape(N, K // 2)), t(scales), t(mins), 32, name)
        qh = b[:, 16:48].reshape(N * nb, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)
        qs = b[:, 48:].reshape(N * nb, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
        q = (qs & np.uint8(0x0F)).reshape(N * nb, 8, 32) | ((qh & np.uint8(1)) << np.uint8(4))
        return BlockWeight("int8g", t(q.view(np.int8).reshape(N, K)), t(scales), t(mins), 32, name)
    if qtype == T.Q6_K:
        nb = K // 256
        b = raw.reshape(N * nb, 210)
        ql = b[:, :128].reshape(-1, 2, 1, 64) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
        qh = b[:, 128:192].reshape(-1, 2, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
        q = ((ql & np.uint8(0x0F)).reshape(-1, 8, 32) | ((qh & np.uint8(3)) << np.uint8(4)).reshape(-1, 8, 32))
        q = (q.view(np.int8) - np.int8(32)).reshape(N, K)
        sc = b[:, 192:208].view(np.int8).astype(np.float32)
        scales = (_f16(b[:, 208:210])[:, None] * sc).reshape(N, nb * 16)
        return BlockWeight("int8g", t(q), t(scales), None, 16, name)
    raise ValueError(f"GGUF type {name} is not kept quantized")


def row_permutation(fn: Callable[[torch.Tensor, Mapping[str, Any]], torch.Tensor], rows: int,
                    config: Mapping[str, Any]) -> torch.Tensor | None:
    """The row order a weight-map transform applies, when it only reorders rows (gguf_unpermute_qk);
    None when it does something else (the tensor is then expanded to fp32 first)."""
    probe = torch.arange(rows, dtype=torch.float64)[:, None] * torch.tensor([[1.0, 1.0]])
    probe[:, 1] += 0.5
    try:
        out = fn(probe, config)
    except (RuntimeError, ValueError, IndexError):
        return None
    if out.shape != probe.shape:
        return None
    perm = out[:, 0].long()
    if not torch.equal(out[:, 1], out[:, 0] + 0.5) or not torch.equal(perm.sort().values, torch.arange(rows)):
        return None
    return perm


# -- modules ---------------------------------------------------------------------------------


class BlockEmbedding(nn.Module):
    """A token embedding kept in a BlockWeight layout: a lookup dequantizes the rows it reads."""

    def __init__(self, bw: BlockWeight, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = bw.shape
        self.kind, self.group, self.source = bw.kind, bw.group, bw.source
        self.compute_dtype = dtype
        self.register_buffer("weight", bw.q)
        self.register_buffer("scales", bw.scales)
        if bw.mins is not None:
            self.register_buffer("mins", bw.mins)
        else:
            self.mins = None

    def block_weight(self) -> BlockWeight:
        return BlockWeight(self.kind, self.weight, self.scales, self.mins, self.group, self.source)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        rows = self.block_weight().rows(flat).dequantize()
        return rows.reshape(*ids.shape, self.embedding_dim).to(self.compute_dtype)

    def dequantize(self) -> torch.Tensor:
        return self.block_weight().dequantize().to(self.compute_dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {self.source} as {self.block_weight().layout}"


def linear_from_block(bw: BlockWeight, bias: torch.Tensor | None = None) -> nn.Module:
    """The quantized linear that runs `bw` (sharing its tensors): Int4Linear or GroupInt8Linear.
    Neither falls back to fbgemm's re-rounded int8 copy off the kernels: they dequantize one
    layer per call instead (exact)."""
    N, K = bw.shape
    has_bias = bias is not None
    if bw.kind == "int4":
        m = Int4Linear(K, N, has_bias, bw.group, device="meta")
        m.weight, m.scales, m.mins = bw.q, bw.scales, bw.mins
    else:
        m = GroupInt8Linear(K, N, has_bias, bw.group, bw.mins is not None, device="meta")
        m.weight, m.scales = bw.q, bw.scales
        if bw.mins is not None:
            m.mins = bw.mins
    m._fbgemm = False
    if has_bias:
        m.bias = bias.detach().float()
    m.gguf_source = bw.source
    return m


def block_kind(bw: BlockWeight) -> str:
    """`model.quantization["modules"]` entry: "gguf Q4_1 int4 g32"."""
    return f"gguf {bw.source} {bw.layout}"


def attach_blocks(model: nn.Module, state: dict[str, Any], tied: bool) -> dict[str, str]:
    """Swap in quantized modules for the BlockWeights of `state` (our parameter names, from the
    weight map) and replace them in `state` by the new modules' tensors, so that the loader's
    fill checks every name and shape as usual. A BlockWeight whose module is neither a linear nor
    the token embedding is expanded to fp32. Returns {module name: kind} for model.quantization.
    `tied`: the LM head is the embedding; with a quantized embedding it reads the same blocks."""
    kinds: dict[str, str] = {}
    for key in [k for k, v in state.items() if isinstance(v, BlockWeight)]:
        bw = state.pop(key)
        name = key.removesuffix(".weight")
        try:
            old = model.get_submodule(name)
        except AttributeError:
            old = None
        if key.endswith(".weight") and isinstance(old, nn.Linear):
            bias = state.get(f"{name}.bias")
            new = linear_from_block(bw, bias)
        elif key.endswith(".weight") and isinstance(old, nn.Embedding) and not name.startswith("mixins."):
            new = BlockEmbedding(bw)
        else:
            state[key] = bw.dequantize()
            continue
        set_module(model, name, new)
        kinds[name] = block_kind(bw)
        state.update({f"{name}.{k}": v for k, v in new.state_dict().items()})
    emb = getattr(getattr(model, "embed", None), "word", None)
    if tied and isinstance(emb, BlockEmbedding):
        head = linear_from_block(emb.block_weight())
        set_module(model, "head.proj", head)
        state.update({f"head.proj.{k}": v for k, v in head.state_dict().items() if k != "weight"})
        kinds["head.proj"] = "tied"
    return kinds


def logical_numel(model: nn.Module) -> dict[int, int]:
    """{id(weight tensor): logical value count} of the block-quantized modules (info's count)."""
    out = {}
    for m in model.modules():
        if isinstance(m, BlockEmbedding):
            out[id(m.weight)] = m.num_embeddings * m.embedding_dim
        elif isinstance(m, GroupInt8Linear):
            out[id(m.weight)] = m.in_features * m.out_features
    return out

