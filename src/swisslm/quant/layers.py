# SPDX-License-Identifier: Apache-2.0
"""Weight-only quantized layers: int8 per output channel, int4 per group, int8 embeddings.

Storage (what `state_dict` holds and the checkpoint stores) is plain tensors:

    Int8Linear      weight int8 [out, in], scales fp32 [out]             W = scales[:, None] * weight
    Int4Linear      weight uint8 [out, in/2] (two nibbles, low first),   W = q * scales + mins
                    scales, mins fp32 [out, in/group_size]              (per group of the input dim)
    Int8Embedding   weight int8 [V, C], scales fp32 [V]                  row = scales[v] * weight[v]

Compute. Decode-sized inputs (at most `kernels.MAX_ROWS` rows) run swisslm's own AVX2 kernels
(swisslm/kernels/cpu_linear.c): they stream the int8 / int4 weight once, dequantize in
registers and multiply fp32 activations, so the numerics are exact weight-only (no activation
quantization) and each row's result does not depend on what else is in the batch. torch's own
weight-only CPU kernels `_weight_int8pack_mm` / `_weight_int4pack_mm_for_cpu` have no fast AVX2
path (10-50x slower than an fp32 matmul on the CI machine). Up to CHUNKED_MAX_ROWS rows (a
serving step of many rows, a short prefill chunk) the kernels run MAX_ROWS rows at a time, which
beats dequantizing the whole weight per call on this hardware; larger inputs (long prefills,
scoring) dequantize once and run torch's fp32 GEMM, which is compute-bound there. Where the kernels cannot
build (no C compiler, no AVX2), decode falls back to fbgemm's dynamic-quantized linear (int8
activations per token, CTranslate2's scheme) on a packed copy of the weight built on first use.

Every quantized module is a plain nn.Module with `in_features`, `out_features`, `compute_dtype`
and `dequantize()` (the float weight), so LoRA can wrap it (QLoRA).
"""

from __future__ import annotations

import functools
import logging
import warnings
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels

log = logging.getLogger(__name__)

INT4_GROUP_SIZES = (32, 64, 128)

# Up to this many rows a product runs the kernels in chunks of kernels.MAX_ROWS (a serving step
# of many rows, a short prefill chunk); above it the layer dequantizes once and runs torch's GEMM.
CHUNKED_MAX_ROWS = 512

# `quantized::linear_dynamic(x, packed, reduce_range)`: reduce_range quantizes activations to 7
# bits so AVX2's u8*s8 pair sums (vpmaddubsw, int16) cannot saturate; PyTorch's own default.
REDUCE_RANGE = True


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule `name` of `model` by `new` (the quantize passes' module swap)."""
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)
    # Slot defaults that point at the replaced module must follow (the model's `embed` slot is
    # the Embeddings module, not `embed.word`, so today this only matters for whole-module swaps).
    defaults = parent.__dict__.get("_slot_defaults")
    if defaults and attr in defaults:
        defaults[attr] = new


# -- quantization maths ----------------------------------------------------------------------


@torch.no_grad()
def quantize_int8_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w (..., out, in) float -> (int8 (..., out, in), scales fp32 (..., out)); symmetric absmax."""
    w = w.float()
    scales = w.abs().amax(dim=-1).clamp(min=1e-12) / 127.0
    q = torch.round(w / scales[..., None]).clamp(-127, 127).to(torch.int8)
    return q, scales


@torch.no_grad()
def quantize_int4_per_group(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w (out, in) float -> (packed uint8 (out, in/2), scales (out, G), mins (out, G)).

    Asymmetric min/max per group of `group_size` input columns (GGUF Q4_1 / GPTQ-style):
    q = round((w - min) / scale) in 0..15, w ~ q * scale + min."""
    out_f, in_f = w.shape
    if in_f % group_size:
        raise ValueError(f"in_features {in_f} is not a multiple of group_size {group_size}")
    g = w.float().reshape(out_f, in_f // group_size, group_size)  # (out, G, gs)
    lo, hi = g.amin(-1), g.amax(-1)
    scales = ((hi - lo) / 15.0).clamp(min=1e-12)
    q = torch.round((g - lo[..., None]) / scales[..., None]).clamp(0, 15).to(torch.uint8)
    q = q.reshape(out_f, in_f)
    packed = q[:, 0::2] | (q[:, 1::2] << 4)  # (out, in/2): low nibble = even column
    return packed, scales, lo


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """(out, in/2) uint8 -> (out, in) uint8 values 0..15."""
    lo, hi = packed & 0x0F, packed >> 4
    return torch.stack((lo, hi), dim=-1).reshape(packed.shape[0], -1)


def dequantize_int4(packed: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor) -> torch.Tensor:
    q = unpack_int4(packed).float()  # (out, in)
    out_f, in_f = q.shape
    G = scales.shape[1]
    w = q.view(out_f, G, in_f // G) * scales[..., None] + mins[..., None]
    return w.reshape(out_f, in_f)


# -- fbgemm packed runtime -------------------------------------------------------------------


def _packed_forward(x: torch.Tensor, packed, bias: torch.Tensor | None) -> torch.Tensor:
    """fbgemm's dynamic linear quantizes activations with one scale per *tensor*; dividing each
    row by its absmax first (and multiplying back after, the product being linear) makes that one
    scale per *token*, as CTranslate2 does. Measured on SmolLM2 (bench/data/two_cities.txt):
    per-tensor int8 activations give perplexity 112 vs 44.2 fp32; per-token 49.3."""
    r = x.abs().amax(-1, keepdim=True).clamp(min=1e-6)  # (..., 1)
    y = torch.ops.quantized.linear_dynamic(x / r, packed, REDUCE_RANGE) * r
    return y if bias is None else y + bias


@functools.cache
def fbgemm_available() -> bool:
    """Whether the x86/fbgemm dynamic-quantized linear runs here (probed once on a tiny problem)."""
    try:
        w = torch.randint(-127, 128, (4, 8), dtype=torch.int8)
        packed = _prepack(w, torch.ones(4), None)
        torch.ops.quantized.linear_dynamic(torch.randn(2, 8), packed, REDUCE_RANGE)
        return True
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


def _prepack(q: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None):
    # Quantized tensor factories warn that they are deprecated (pytorch#184982); the kernel they
    # feed is still the fastest int8 CPU matmul torch ships, and fbgemm_available() falls back
    # to the dequantizing path the day it goes away.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        qt = torch._make_per_channel_quantized_tensor(
            q.contiguous(), scales.double(), torch.zeros(q.shape[0], dtype=torch.long), 0)
        return torch.ops.quantized.linear_prepack(qt, None if bias is None else bias.float())


class _QuantLinearBase(nn.Module):
    """Shared runtime: a lazily built fbgemm pack (not part of the state dict), rebuilt when the
    stored tensors are replaced (load_state_dict) or moved."""

    in_features: int
    out_features: int

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.compute_dtype = dtype  # activations / output dtype (fp32 on CPU)
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=dtype))
        else:
            self.bias = None
        self._packed = None
        self._packed_key: tuple | None = None
        self.use_packed = True  # False forces the exact weight-only path (tests, debugging)
        self._handle = _register(self)
        self._fbgemm = fbgemm_available()  # probed here, in eager mode (never inside a compiled graph)

    def int8_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(int8 [out, in], scales [out]) of the runtime form."""
        raise NotImplementedError

    def dequantize(self) -> torch.Tensor:
        """The float weight [out, in] (compute dtype) this layer represents."""
        raise NotImplementedError

    def _key(self) -> tuple:
        return tuple((t.data_ptr(), t._version) for t in self.buffers())

    def packed(self):
        key = self._key()
        if self._packed is None or self._packed_key != key:
            q, s = self.int8_weight()
            self._packed = _prepack(q, s, None)  # bias is added after the per-row rescale
            self._packed_key = key
        return self._packed

    def _decode_sized(self, x: torch.Tensor) -> bool:
        # Above kernels.MAX_ROWS rows (prefill, scoring) the layer dequantizes and runs the GEMM,
        # with or without the kernels (the fbgemm fallback uses the same bound).
        return self.use_packed and kernels.decode_sized(x) and (self._fbgemm or kernels.available())

    def _kernel(self, x: torch.Tensor) -> torch.Tensor | None:
        """swisslm's CPU kernel product, or None where the kernel does not take this layer."""
        raise NotImplementedError

    def kernel_linear(self) -> tuple | None:
        """This layer as the fused decode step takes it (kernels.LinearFields: the fields of the C
        struct SwlLinear), or None where the kernels cannot take it."""
        raise NotImplementedError

    def _kernel_tensors_ok(self, *tensors: torch.Tensor | None) -> bool:
        return (self.use_packed and self.compute_dtype == torch.float32
                and all(t is None or (t.is_cpu and t.is_contiguous()) for t in tensors))

    def _decode_forward(self, x: torch.Tensor) -> torch.Tensor:
        if kernels.available():
            y = self._kernel(x)
            if y is not None:
                return y
        return _packed_forward(x, self.packed(), self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._decode_sized(x):
            if torch.compiler.is_compiling():
                return int8_packed_linear(x, self._handle, self.out_features)
            return self._decode_forward(x)
        if self._chunkable(x):
            y = self._chunked_forward(x)
            if y is not None:
                return y
        return F.linear(x, self.dequantize().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def _chunkable(self, x: torch.Tensor) -> bool:
        # A serving batch of 17..CHUNKED_MAX_ROWS rows (and short prefill chunks) runs the kernels
        # MAX_ROWS rows at a time: dequantizing the whole weight for every such step cost more
        # than the product itself (measured in bench/README.md: 32 rows of a 1536x576 int4 layer
        # 0.41 ms chunked vs 1.99 ms dequantize + GEMM; the 49152x576 head 13.5 vs 170 ms).
        return (self.use_packed and not torch.compiler.is_compiling()
                and kernels.decode_sized(x, CHUNKED_MAX_ROWS) and kernels.available())

    def _chunked_forward(self, x: torch.Tensor) -> torch.Tensor | None:
        x2 = x.reshape(-1, x.shape[-1]).contiguous()
        out = torch.empty(x2.shape[0], self.out_features, dtype=torch.float32)
        step = kernels.MAX_ROWS
        for i in range(0, x2.shape[0], step):
            y = self._kernel(x2[i:i + step])
            if y is None:
                return None
            out[i:i + step] = y.reshape(-1, self.out_features)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Int8Linear(_QuantLinearBase):
    """Weight-only int8 linear, symmetric per output channel."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        super().__init__(in_features, out_features, bias, dtype)
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.ones(out_features, dtype=torch.float32, device=device))

    @classmethod
    def from_linear(cls, lin: nn.Module) -> Int8Linear:
        w = lin.weight.detach()
        m = cls(lin.in_features, lin.out_features, lin.bias is not None, torch.float32, "meta")
        m.weight, m.scales = quantize_int8_per_channel(w)
        if lin.bias is not None:
            m.bias = lin.bias.detach().float().clone()
        return m

    def int8_weight(self):
        return self.weight, self.scales

    def _kernel(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.linear_i8(x, self.weight, self.scales, self.bias)

    def kernel_linear(self) -> tuple | None:
        w, s, b = self.weight, self.scales, self.bias
        if not self._kernel_tensors_ok(w, s, b):
            return None
        return (1, w.data_ptr(), s.data_ptr(), None, None if b is None else b.data_ptr(), 0)

    def dequantize(self) -> torch.Tensor:
        return (self.weight.float() * self.scales[:, None]).to(self.compute_dtype)


class Int4Linear(_QuantLinearBase):
    """Weight-only int4 linear, asymmetric per group of `group_size` input columns."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, group_size: int = 64,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        super().__init__(in_features, out_features, bias, dtype)
        if group_size not in INT4_GROUP_SIZES:
            raise ValueError(f"group_size must be one of {INT4_GROUP_SIZES}, got {group_size}")
        if in_features % group_size or in_features % 2:
            raise ValueError(f"in_features {in_features} is not a multiple of group_size {group_size}")
        self.group_size = group_size
        G = in_features // group_size
        self.register_buffer("weight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8, device=device))
        self.register_buffer("scales", torch.ones(out_features, G, dtype=torch.float32, device=device))
        self.register_buffer("mins", torch.zeros(out_features, G, dtype=torch.float32, device=device))

    @classmethod
    def from_linear(cls, lin: nn.Module, group_size: int = 64) -> Int4Linear:
        m = cls(lin.in_features, lin.out_features, lin.bias is not None, group_size, torch.float32, "meta")
        m.weight, m.scales, m.mins = quantize_int4_per_group(lin.weight.detach(), group_size)
        if lin.bias is not None:
            m.bias = lin.bias.detach().float().clone()
        return m

    def dequantize(self) -> torch.Tensor:
        return dequantize_int4(self.weight, self.scales, self.mins).to(self.compute_dtype)

    def _kernel(self, x: torch.Tensor) -> torch.Tensor | None:
        return kernels.linear_i4(x, self.weight, self.scales, self.mins, self.group_size, self.bias)

    def kernel_linear(self) -> tuple | None:
        w, s, m, b = self.weight, self.scales, self.mins, self.bias
        if not self._kernel_tensors_ok(w, s, m, b):
            return None
        return (2, w.data_ptr(), s.data_ptr(), m.data_ptr(), None if b is None else b.data_ptr(), self.group_size)

    def int8_weight(self):
        # Runtime form for the int8 kernel: the int4 weight re-expressed per channel in 8 bits.
        return quantize_int8_per_channel(dequantize_int4(self.weight, self.scales, self.mins))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", group_size={self.group_size}"


class GroupInt8Linear(_QuantLinearBase):
    """Weight-only linear in int8 codes per group of `group_size` input columns (16 or 32), each
    group with its own fp32 scale and, optionally, min: W = q * scales + mins. The layout GGUF's
    Q8_0 (group 32, no min), Q5_K (group 32, codes 0..31 with a min) and Q6_K (group 16, codes
    -32..31) repack into exactly (quant/gguf_blocks.py); decode runs kernels.linear_g8.

    Off the kernels the decode product dequantizes this layer's weight for the call and runs
    F.linear (exact, one layer's fp32 at a time) instead of fbgemm's int8-per-channel copy, which
    would re-round the block scales."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, group_size: int = 32,
                 has_mins: bool = True, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> None:
        super().__init__(in_features, out_features, bias, dtype)
        if group_size % 16 or in_features % group_size:
            raise ValueError(f"group_size {group_size} must be a multiple of 16 dividing in_features {in_features}")
        self.group_size = group_size
        self._fbgemm = False
        G = in_features // group_size
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.ones(out_features, G, dtype=torch.float32, device=device))
        if has_mins:
            self.register_buffer("mins", torch.zeros(out_features, G, dtype=torch.float32, device=device))
        else:
            self.mins = None

    def dequantize(self) -> torch.Tensor:
        return dequantize_groups(self.weight, self.scales, self.mins).to(self.compute_dtype)

    def int8_weight(self):
        return quantize_int8_per_channel(dequantize_groups(self.weight, self.scales, self.mins))

    def _kernel(self, x: torch.Tensor) -> torch.Tensor | None:
        return kernels.linear_g8(x, self.weight, self.scales, self.mins, self.group_size, self.bias)

    def _decode_forward(self, x: torch.Tensor) -> torch.Tensor:
        if kernels.available():
            y = self._kernel(x)
            if y is not None:
                return y
        return F.linear(x, self.dequantize().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def kernel_linear(self) -> tuple | None:
        w, s, m, b = self.weight, self.scales, self.mins, self.bias
        if not self._kernel_tensors_ok(w, s, m, b):
            return None
        return (3, w.data_ptr(), s.data_ptr(), None if m is None else m.data_ptr(),
                None if b is None else b.data_ptr(), self.group_size)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", group_size={self.group_size}, mins={self.mins is not None}"


def dequantize_groups(q: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor | None) -> torch.Tensor:
    """int8 codes (..., K) with per-group scales [and mins] (..., K/gs) -> fp32 (..., K):
    q * scale (+ min), one rounding per product and one per sum, as gguf.quants computes it."""
    G = scales.shape[-1]
    w = q.float().unflatten(-1, (G, -1)) * scales[..., None]
    if mins is not None:
        w += mins[..., None]
    return w.flatten(-2)


class Int8Embedding(nn.Module):
    """Token embedding stored int8 per row (one scale per token): a lookup reads B*T rows and
    scales them, so nothing is ever dequantized in full."""

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.compute_dtype = dtype
        self.register_buffer("weight", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.ones(num_embeddings, dtype=torch.float32, device=device))

    @classmethod
    def from_embedding(cls, emb: nn.Embedding) -> Int8Embedding:
        m = cls(emb.num_embeddings, emb.embedding_dim, torch.float32, "meta")
        m.weight, m.scales = quantize_int8_per_channel(emb.weight.detach())
        return m

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(ids, self.weight).to(self.compute_dtype)  # (B, T, C)
        return rows * self.scales[ids].unsqueeze(-1).to(self.compute_dtype)

    def dequantize(self) -> torch.Tensor:
        return (self.weight.float() * self.scales[:, None]).to(self.compute_dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8"


# -- compile support -------------------------------------------------------------------------
# Neither the ctypes kernel call nor fbgemm's packed weight (a TorchScript object) can be traced
# by dynamo. Under torch.compile the layer calls this opaque custom op with an integer handle
# instead (a constant in the graph), so a whole decode step still compiles with fullgraph=True.

_LAYERS: weakref.WeakValueDictionary[int, _QuantLinearBase] = weakref.WeakValueDictionary()


def _register(layer: _QuantLinearBase) -> int:
    key = id(layer)
    _LAYERS[key] = layer
    return key


@torch.library.custom_op("swisslm::int8_packed_linear", mutates_args=())
def int8_packed_linear(x: torch.Tensor, handle: int, out_features: int) -> torch.Tensor:
    return _LAYERS[handle]._decode_forward(x)


@int8_packed_linear.register_fake
def _(x, handle, out_features):
    return x.new_empty(*x.shape[:-1], out_features)
