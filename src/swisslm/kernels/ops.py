# SPDX-License-Identifier: Apache-2.0
"""The ops of swisslm's CPU backend: building and loading the C extension, and one Python
wrapper per kernel (shape checks, then the raw-pointer call). `swisslm.kernels` re-exports them;
the modules and the fused step of the pass call them through this module.

The C sources ship with the package and are compiled on first use with the system C compiler
(`$CC`, else `cc`/`gcc`/`clang`; about a second) into a per-user cache as a small CPython
extension (pymodule.c): no torch headers, so building it costs nothing like a torch C++
extension. Without a compiler, on a CPU without AVX2/FMA, or with SWISSLM_KERNELS=0,
`available()` is False (the reason logged as a warning and in `unavailable_reason()`) and every
kernel-backed module takes its torch path. The kernels take data pointers and release the GIL;
they are called directly rather than through a torch custom op, whose dispatch costs more than a
decode-sized matmul. Under torch.compile callers take the torch path, which inductor captures.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.util
import logging
import os
import platform
import shutil
import subprocess
import sysconfig
import tempfile
from pathlib import Path
from types import ModuleType

import torch

from . import layout

__all__ = [
    "CFLAGS",
    "F32_ISAS",
    "HEADERS",
    "MAX_ROWS",
    "SOURCES",
    "attention_layout",
    "attention_step",
    "available",
    "cache_ok",
    "decode_attention",
    "decode_ok",
    "decode_sized",
    "f32_isa",
    "layer_layout",
    "layer_step",
    "linear_f32",
    "linear_g8",
    "linear_i4",
    "linear_i8",
    "rms_norm",
    "rope",
    "set_enabled",
    "silu_mul",
    "stack_step",
    "step_args",
    "unavailable_reason",
]

log = logging.getLogger(__name__)

SOURCES = [Path(__file__).with_name(n) for n in ("cpu_linear.c", "cpu_group.c", "cpu_decode.c", "cpu_layer.c",
                                                    "pymodule.c")]
HEADERS = [Path(__file__).with_name("swisslm_kernels.h")]  # part of the build's hash, not of its command
# No -mavx2: the kernel files raise their own ISA (SWL_AVX2_BEGIN in swisslm_kernels.h), so the
# module loads, and says it cannot run, on an x86-64 without AVX2.
CFLAGS = ["-O3", "-fopenmp", "-shared", "-fPIC", "-std=gnu11"]

_F32 = torch.float32  # outputs are always fp32 whatever torch's default dtype is set to

# Decode sizes: at most this many activation rows go to the kernels. Above it (prefill, scoring)
# the product is compute-bound and torch's blocked GEMM is the better tool.
MAX_ROWS = 16

def _cache_dir() -> Path:
    root = os.environ.get("SWISSLM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "swisslm")
    return Path(root) / "kernels"


def _compiler() -> str | None:
    for cc in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cc and shutil.which(cc):
            return cc
    return None


def _build() -> Path:
    """Compile the C sources once per source version into the cache (atomic rename, so parallel
    processes never load a half-written library)."""
    include = sysconfig.get_paths()["include"]
    src = b"".join(p.read_bytes() for p in SOURCES + HEADERS)
    tag = hashlib.sha256(src + " ".join(CFLAGS).encode() + include.encode()).hexdigest()[:16]
    out = _cache_dir() / f"_swisslm_cpu.{tag}.so"
    if out.exists():
        return out
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set $CC)")
    if not Path(include, "Python.h").exists():
        raise RuntimeError(f"Python headers not found in {include}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        cmd = [cc, *CFLAGS, f"-I{include}", *map(str, SOURCES), "-o", tmp, "-lm"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"{cc} failed: {proc.stderr.strip()[-500:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


_why_not: str | None = None  # why _lib() is None, for unavailable_reason()


def _unavailable(why: str, level: int = logging.WARNING) -> None:
    global _why_not
    _why_not = why
    log.log(level, "swisslm CPU kernels unavailable (%s); decode runs on torch", why)


@functools.cache
def _lib() -> ModuleType | None:
    """The compiled extension module, or None where it cannot be had (reason logged once)."""
    if os.environ.get("SWISSLM_KERNELS", "1") == "0":
        _unavailable("SWISSLM_KERNELS=0", logging.INFO)
        return None
    if platform.machine().lower() not in ("x86_64", "amd64"):
        _unavailable(f"{platform.machine()} is not x86-64", logging.INFO)
        return None
    try:
        path = _build()
        # Loaded after torch (imported above), so the extension's libgomp dependency resolves to
        # the copy torch already loaded: one OpenMP thread pool for both (docs/ARCHITECTURE.md).
        spec = importlib.util.spec_from_file_location("_swisslm_cpu", path)
        lib = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(lib)
    except (OSError, RuntimeError, ImportError) as e:
        _unavailable(str(e))
        return None
    if not lib.cpu_supported():
        _unavailable("this CPU lacks AVX2/FMA")
        return None
    try:
        layout.check_sizes(lib.layout_size)
    except RuntimeError as e:
        _unavailable(str(e))
        return None
    return lib


def unavailable_reason() -> str | None:
    """Why the kernels cannot run here (None where they can; "turned off" after set_enabled)."""
    if _lib() is None:
        return _why_not
    return None if _enabled else "turned off (kernels.set_enabled(False))"


_enabled = True


def set_enabled(enabled: bool) -> None:
    """Turn the kernels off (True turns them back on where they are available): every caller
    then takes its torch path. For A/B comparisons and debugging; SWISSLM_KERNELS=0 does the
    same for a whole process."""
    global _enabled
    _enabled = bool(enabled)


def available() -> bool:
    """Whether the kernels are enabled, built and run on this CPU (the build is checked once)."""
    return _enabled and _lib() is not None


F32_ISAS = ("avx2", "avx512")


def f32_isa(which: str | None = None) -> str:
    """The instruction set the fp32 kernel runs on: "avx512" where the CPU has it (and it was not
    turned off), else "avx2". `which` picks one for A/B runs and tests; asking for "avx512" on a
    CPU without it keeps "avx2". Needs the kernels to be available."""
    if which is not None and which not in F32_ISAS:
        raise ValueError(f"f32_isa: {which!r} is not one of {F32_ISAS}")
    return F32_ISAS[_lib().f32_isa(-1 if which is None else F32_ISAS.index(which))]


def decode_sized(x: torch.Tensor, max_rows: int = MAX_ROWS) -> bool:
    """Whether `x` is a decode-sized product input: fp32 on the CPU, at most `max_rows` rows, and
    no autograd graph needed through it. (The quantized layers ask this on its own: under
    torch.compile they route such inputs to an opaque op that runs the kernels; with a larger
    `max_rows` they ask whether the kernels can take `x` in MAX_ROWS-row chunks.)"""
    return (x.is_cpu and x.dtype == _F32 and x.numel() <= max_rows * x.shape[-1]
            and not (torch.is_grad_enabled() and x.requires_grad))


def decode_ok(x: torch.Tensor, weight: torch.Tensor | None = None) -> bool:
    """Whether the kernels should take `x` (and multiply it by `weight`, fp32 or not): `x` is
    decode_sized, autograd needs no graph through `weight` either, torch.compile is not tracing
    (it takes the torch path, which inductor captures), and the kernels are available."""
    return (decode_sized(x) and not torch.compiler.is_compiling()
            and (weight is None or not (torch.is_grad_enabled() and weight.requires_grad)) and available())


def _rows(x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    # No reshape: a contiguous (..., K) tensor already is (M, K) rows in memory, and at decode
    # sizes every avoided torch call is a measurable share of the step.
    if not x.is_contiguous():
        x = x.contiguous()
    K = x.shape[-1]
    return x, x.numel() // K, K


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _check(w: torch.Tensor, bias: torch.Tensor | None) -> None:
    # The kernels read raw pointers: a non-contiguous view or a bias in another dtype would be
    # read as garbage, so these are hard errors, not silent fallbacks.
    if not w.is_contiguous():
        raise ValueError("kernel weight must be contiguous")
    if bias is not None and (bias.dtype != torch.float32 or not bias.is_contiguous()):
        raise ValueError("kernel bias must be contiguous fp32")


def _mask_args(mask: torch.Tensor | None, B: int, S: int) -> tuple[int | None, int, int]:
    """(pointer, batch stride, key stride) of a bool mask broadcastable to (B, 1, 1, S); the
    kernels read it in place, broadcast rows included (stride 0)."""
    if mask is None:
        return None, 0, 0
    m = mask.expand(B, 1, 1, S)
    return m.data_ptr(), m.stride(0), m.stride(3)


def _out(x: torch.Tensor, N: int, out: torch.Tensor | None) -> torch.Tensor:
    if out is None:
        return torch.empty(*x.shape[:-1], N, dtype=_F32)  # ~2x cheaper than new_empty
    if not out.is_contiguous() or out.numel() != x.numel() // x.shape[-1] * N or out.dtype != torch.float32:
        raise ValueError("kernel out= must be a contiguous fp32 tensor of the result's size")
    return out


def linear_f32(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., K) fp32 @ weight (N, K).T + bias -> (..., N) (written into `out` when given)."""
    _check(weight, bias)
    x2, M, K = _rows(x)
    N = weight.shape[0]
    if weight.shape[1] != K:
        raise ValueError(f"x has {K} features, weight expects {weight.shape[1]}")
    y = _out(x, N, out)
    _lib().linear_f32(x2.data_ptr(), weight.data_ptr(), _ptr(bias), y.data_ptr(), M, K, N, torch.get_num_threads())
    return y


def linear_i8(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None,
              out: torch.Tensor | None = None, act16: bool = True) -> torch.Tensor:
    """x @ (scales[:, None] * q).T + bias for an int8 weight. `act16`: each activation row is
    scaled to int16 for integer multiply-adds (relative error ~1e-5, per row, so results stay
    batch-invariant); False keeps fp32 activations (the exact weight-only product)."""
    _check(q, bias)
    x2, M, K = _rows(x)
    N = q.shape[0]
    if q.shape[1] != K or scales.numel() != N:
        raise ValueError(f"x has {K} features, int8 weight is {tuple(q.shape)} with {scales.numel()} scales")
    y = _out(x, N, out)
    _lib().linear_i8(x2.data_ptr(), q.data_ptr(), scales.data_ptr(), _ptr(bias), y.data_ptr(), M, K, N,
                     int(act16), torch.get_num_threads())
    return y


def linear_i4(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor, group_size: int,
              bias: torch.Tensor | None = None) -> torch.Tensor | None:
    """int4 weight (see quant.layers.Int4Linear for the layout) times activation rows scaled to
    int16, as linear_i8 does. None when the group size is not a multiple of 16 (the caller then
    uses its dequantizing path)."""
    _check(packed, bias)
    x2, M, K = _rows(x)
    N = packed.shape[0]
    if packed.shape[1] * 2 != K or scales.shape != (N, K // group_size) or mins.shape != scales.shape:
        raise ValueError(f"x has {K} features, int4 weight is {tuple(packed.shape)} with group {group_size}")
    y = _out(x, N, None)
    ran = _lib().linear_i4(x2.data_ptr(), packed.data_ptr(), scales.data_ptr(), mins.data_ptr(), _ptr(bias),
                           y.data_ptr(), M, K, N, group_size, torch.get_num_threads())
    return y if ran else None


def linear_g8(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor | None, group_size: int,
              bias: torch.Tensor | None = None) -> torch.Tensor | None:
    """x @ W.T + bias for int8 codes per group (cpu_group.c; quant.layers.GroupInt8Linear):
    W = q * scales (+ mins), one scale [and min] per `group_size` columns, scales/mins
    (N, K / group_size) fp32. Activation rows scaled to int16 as in linear_i8. None when the group
    size is not a multiple of 16 (the caller then dequantizes)."""
    _check(q, bias)
    x2, M, K = _rows(x)
    N = q.shape[0]
    if (q.shape[1] != K or q.dtype != torch.int8 or K % group_size or scales.shape != (N, K // group_size)
            or (mins is not None and mins.shape != scales.shape)):
        raise ValueError(f"x has {K} features, int8 group weight is {tuple(q.shape)} with group {group_size}")
    for t in (scales, mins):
        if t is not None and (t.dtype != torch.float32 or not t.is_contiguous()):
            raise ValueError("linear_g8: scales and mins must be contiguous fp32")
    y = _out(x, N, None)
    ran = _lib().linear_g8(x2.data_ptr(), q.data_ptr(), scales.data_ptr(), _ptr(mins), _ptr(bias),
                           y.data_ptr(), M, K, N, group_size, torch.get_num_threads())
    return y if ran else None


# -- decode-step ops -------------------------------------------------------------------------
# Decode sizes only: one call replaces several small torch ops; the C side splits work across
# threads only where it is large enough to pay for a thread team.


def _scale(scale: float | None, head_dim: int) -> float:
    return head_dim**-0.5 if scale is None else scale  # None: SDPA's default


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * x / sqrt(mean(x^2, -1) + eps), over the last dim (fp32 weight of that size)."""
    x2, R, C = _rows(x)
    _check(weight, None)
    if weight.numel() != C:
        raise ValueError(f"norm weight has {weight.numel()} entries for {C} features")
    y = torch.empty_like(x2)
    _lib().rmsnorm(x2.data_ptr(), weight.data_ptr(), y.data_ptr(), R, C, eps)
    return y


def _rope_one(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    B, H, T, D = x.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    y = torch.empty(B, T, H, D, dtype=_F32)
    _lib().rope(x.data_ptr(), x.stride(0), x.stride(2), x.stride(1), cos.data_ptr(), sin.data_ptr(),
                y.data_ptr(), B, T, H, D, cos.shape[-1])
    return y.transpose(1, 2)


def rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate-half rotary on q (B, H, T, D), k (B, H_kv, T, D) with cos/sin (B, 1, T, rd) as
    rope_cos_sin builds them; returns (B, H, T, D) views of (B, T, H, D) buffers, the layout
    the attention output projection reads without a copy."""
    B, _, T, _ = q.shape
    cos, sin = cos.expand(B, 1, T, -1).contiguous(), sin.expand(B, 1, T, -1).contiguous()
    return _rope_one(q, cos, sin), _rope_one(k, cos, sin)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                     scale: float | None) -> torch.Tensor:
    """One query per row: q (B, H, 1, D), k/v (B, H_kv, S, D) contiguous caches, mask bool
    broadcastable to (B, 1, 1, S) (True = attend) or None. Returns (B, H, 1, D), a view of a
    (B, 1, H, D) buffer. Keys after the last visible one are never read."""
    B, H, _, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    scale = _scale(scale, D)
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k.stride(-1) != 1 or v.stride() != k.stride():
        k, v = k.contiguous(), v.contiguous()
    mptr, mb, ms = _mask_args(mask, B, S)
    out = torch.empty(B, 1, H, D, dtype=_F32)
    _lib().decode_attention(q.data_ptr(), q.stride(0), q.stride(1), k.data_ptr(), v.data_ptr(), k.stride(0),
                            k.stride(1), k.stride(2), mptr, mb, ms, out.data_ptr(), B, H, Hkv, S, D, scale,
                            torch.get_num_threads())
    return out.transpose(1, 2)


def silu_mul(h: torch.Tensor, row_scale: torch.Tensor | None = None) -> torch.Tensor:
    """h (..., 2I) = [gate | up] -> silu(gate) * up (..., I), each row times row_scale (rows,) if given."""
    h2, R, W = _rows(h)
    if row_scale is not None:
        if row_scale.dtype != _F32 or row_scale.numel() != R:
            raise ValueError(f"row_scale must be {R} fp32 values, one per row")
        row_scale = row_scale.contiguous()
    out = torch.empty(*h.shape[:-1], W // 2, dtype=_F32)
    _lib().silu_mul(h2.data_ptr(), out.data_ptr(), R, W // 2, _ptr(row_scale), torch.get_num_threads())
    return out


def cache_ok(k_cache: torch.Tensor, v_cache: torch.Tensor) -> bool:
    """Whether the fused steps can read and write these caches in place: fp32, contiguous head
    dim, k and v with the same strides (views into a larger buffer are fine)."""
    return (k_cache.dtype == _F32 and k_cache.stride(-1) == 1 and k_cache.stride() == v_cache.stride())


def step_args(B: int, rope: tuple[torch.Tensor, torch.Tensor] | None, input_pos: torch.Tensor,
              mask: torch.Tensor | None, S: int | None = None) -> layout.Step:
    """The per-step arguments every layer shares, as the SwlStep struct: input_pos ((1,) shared
    or (B, 1) per row), rotary cos/sin (B or 1, 1, 1, rd) or None, and a bool mask broadcastable
    to (B, 1, 1, S) or None. The struct keeps the tensors its pointers point into (`.keep`)."""
    if input_pos.dtype != torch.int64 or input_pos.stride(-1) != 1:
        input_pos = input_pos.to(torch.int64).contiguous()
    st = layout.Step()
    st.pos = input_pos.data_ptr()
    st.pb = input_pos.stride(0) if input_pos.dim() == 2 else 0
    keep: tuple = (input_pos,)
    if rope is not None:
        cos, sin = rope
        if not (cos.is_contiguous() and sin.is_contiguous()):
            cos, sin = cos.contiguous(), sin.contiguous()
        st.cos, st.sin, st.rd = cos.data_ptr(), sin.data_ptr(), cos.shape[-1]
        st.cb = cos.stride(0) if cos.shape[0] == B else 0
        keep = (input_pos, cos, sin)
    if mask is not None:
        S = mask.shape[-1] if S is None else S
        st.mask, st.mb, st.ms = _mask_args(mask, B, S)
        keep += (mask,)
    st.keep, st.B = keep, B
    return st


def attention_layout(n_heads: int, n_kv: int, head_dim: int, rotary: bool, scale: float | None) -> layout.Attention:
    """An SwlAttention with the layer's shapes (the cache is set per step: Attention.set_cache)."""
    return layout.Attention(H=n_heads, Hkv=n_kv, D=head_dim, rotary=int(rotary), scale=_scale(scale, head_dim))


def attention_step(qkv: torch.Tensor, n_heads: int, n_kv: int, head_dim: int,
                   rope: tuple[torch.Tensor, torch.Tensor] | None, k_cache: torch.Tensor, v_cache: torch.Tensor,
                   input_pos: torch.Tensor, mask: torch.Tensor | None, scale: float | None) -> torch.Tensor:
    """One decode token of standard attention, fused: qkv (B, 1, (H + 2 H_kv) D) -> rotary ->
    cache write at input_pos ((1,) shared or (B, 1) per row) -> attention -> (B, 1, H D).
    Equals Attention's generic path with the default slots (identity qkv transform, rotate-half
    rotary or none, SDPA); the kernel backend checks that before calling. The caches may be views
    into a larger buffer (the server binds row/slot windows) but k and v must share strides and
    have a contiguous head dim; the writes land in them in place."""
    B = qkv.shape[0]
    S = k_cache.shape[2]
    if qkv.shape[-1] != (n_heads + 2 * n_kv) * head_dim or k_cache.shape[-1] != head_dim:
        raise ValueError(f"qkv width {qkv.shape[-1]} does not match {n_heads}+2x{n_kv} heads of {head_dim}")
    if not cache_ok(k_cache, v_cache):
        raise ValueError("attention_step: the caches must be fp32 with a contiguous head dim and equal strides")
    if qkv.stride(-1) != 1:
        qkv = qkv.contiguous()
    st = step_args(B, rope, input_pos, mask, S)
    attn = attention_layout(n_heads, n_kv, head_dim, rope is not None, scale)
    attn.set_cache(k_cache, v_cache)
    out = torch.empty(B, 1, n_heads * head_dim, dtype=_F32)
    qbuf = torch.empty(B, n_heads, head_dim, dtype=_F32)
    ok = _lib().attention_step(qkv.data_ptr(), qkv.stride(0), B, layout.address(attn), layout.address(st),
                               out.data_ptr(), qbuf.data_ptr(), torch.get_num_threads())
    if not ok:  # what index_copy_ on the cache would say, instead of writing past it
        raise IndexError(f"cache position out of range for a KV cache of {S} slots")
    return out


# (kind, weight, scales, mins, bias, group) of a linear, the fields of SwlLinear: what a module's
# `kernel_linear()` returns (quant layers; kernels.fused_step.linear_layout for fp32), or None.
LinearFields = tuple[int, int, int | None, int | None, int | None, int]


def layer_layout(norm1: torch.Tensor, norm2: torch.Tensor, eps: float, residual_multiplier: float,
                 linears, inter: int, attn: layout.Attention) -> layout.Layer:
    """An SwlLayer: `linears` are qkv, out, gate_up, down as LinearFields tuples. The caller
    keeps every tensor the pointers point into alive (kernels/fused_step.py's plans do)."""
    if len(linears) != 4 or any(lin is None for lin in linears):
        raise ValueError("layer_layout: a linear the kernels cannot run (no kernel_linear() descriptor)")
    layer = layout.Layer(norm1=norm1.data_ptr(), norm2=norm2.data_ptr(), eps=eps, res_mult=residual_multiplier,
                         inter=inter, attn=attn)
    for i, lin in enumerate(linears):
        layer.lin[i] = layout.Linear(*lin)
    return layer


def _check_status(rc: int, who: str, S: int) -> None:
    """layer_step / stack_step status: -1 a cache position out of range, -2 a linear the kernels
    cannot run; in both cases nothing was written."""
    if rc == -1:  # what index_copy_ on the cache would say, instead of writing past it
        raise IndexError(f"cache position out of range for a KV cache of {S} slots")
    if rc:
        raise ValueError(f"{who}: a linear the kernels cannot run (kind or int4 group size)")


def _check_x(x: torch.Tensor, st: layout.Step, who: str) -> tuple[torch.Tensor, int, int]:
    B, C = x.shape[0], x.shape[-1]
    if x.numel() != B * C or x.dtype != _F32 or st.B != B:
        raise ValueError(f"{who}: x {tuple(x.shape)} is not one fp32 row per step row ({st.B})")
    return (x if x.is_contiguous() else x.contiguous()), B, C


def layer_step(x: torch.Tensor, layer: layout.Layer, st: layout.Step) -> torch.Tensor:
    """A whole pre-norm decoder layer for one token (cpu_layer.c): x (B, 1, C) -> (B, 1, C), the
    layer's KV cache written at the step's positions. `layer` (layer_layout, its cache set) and
    `st` (step_args) hold the pointers; kernels/fused_step.py decides when a layer may take it."""
    x, B, C = _check_x(x, st, "layer_step")
    y = torch.empty_like(x)
    rc = _lib().layer_step(x.data_ptr(), y.data_ptr(), B, C, layout.address(layer), layout.address(st),
                           torch.get_num_threads())
    _check_status(rc, "layer_step", layer.attn.S)
    return y


def stack_step(x: torch.Tensor, layers: ctypes.Array, st: layout.Step) -> torch.Tensor:
    """Every layer of a stack for one token in one call (cpu_layer.c swl_stack_step): x (B, 1, C)
    -> (B, 1, C); `layers` a ctypes array of layout.Layer (caches set)."""
    x, B, C = _check_x(x, st, "stack_step")
    y = torch.empty_like(x)
    rc = _lib().stack_step(x.data_ptr(), y.data_ptr(), B, C, len(layers), layout.address(layers),
                           layout.address(st), torch.get_num_threads())
    _check_status(rc, "stack_step", layers[0].attn.S if len(layers) else 0)
    return y

