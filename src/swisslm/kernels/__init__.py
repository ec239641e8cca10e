# SPDX-License-Identifier: Apache-2.0
"""Hand-written CPU kernels for the decode step (the why is at the top of each C file).

    from swisslm import kernels
    if kernels.decode_ok(x, weight):          # small fp32 CPU batch, no autograd, not compiling
        y = kernels.linear_f32(x, weight, bias)   # AVX-512 where the CPU has it, else AVX2
        y = kernels.linear_i8(x, q, scales, bias)
        y = kernels.linear_i4(x, packed, scales, mins, group_size, bias)
        y = kernels.rms_norm(x, weight, eps)
        q, k = kernels.rope(q, k, cos, sin)
        y = kernels.decode_attention(q, k_cache, v_cache, mask, scale)

The C sources ship with the package and are compiled on first use with the system C compiler
(`$CC`, else `cc`/`gcc`; about a second) into a per-user cache as a small CPython extension
(pymodule.c): no torch headers, so building it costs nothing like a torch C++ extension. Everything
degrades cleanly: without a compiler, on a CPU without AVX2/FMA, or with SWISSLM_KERNELS=0,
`available()` is False and callers use their torch path. The kernels take data pointers and
release the GIL; they are called directly rather than through a torch custom op, whose
dispatch costs more than a decode-sized matmul. Under torch.compile callers take the torch
path, which inductor captures.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import shutil
import subprocess
import sysconfig
import tempfile
from pathlib import Path
from types import ModuleType

import torch

log = logging.getLogger(__name__)

SOURCES = [Path(__file__).with_name(n) for n in ("cpu_linear.c", "cpu_decode.c", "cpu_layer.c", "pymodule.c")]
HEADERS = [Path(__file__).with_name("swisslm_kernels.h")]  # part of the build's hash, not of its command
CFLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC", "-std=gnu11"]

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


@functools.cache
def _lib() -> ModuleType | None:
    """The compiled extension module, or None where it cannot be had (reason logged once)."""
    if os.environ.get("SWISSLM_KERNELS", "1") == "0":
        return None
    if os.uname().machine not in ("x86_64", "AMD64"):
        return None
    try:
        path = _build()
        # Loaded after torch (imported above), so the extension's libgomp dependency resolves to
        # the copy torch already loaded: one OpenMP thread pool for both.
        spec = importlib.util.spec_from_file_location("_swisslm_cpu", path)
        lib = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(lib)
    except (OSError, RuntimeError, ImportError) as e:
        log.warning("swisslm CPU kernels unavailable (%s); using torch's matmul", e)
        return None
    if not lib.cpu_supported():
        log.info("CPU lacks AVX2/FMA; swisslm CPU kernels disabled")
        return None
    return lib


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


def decode_sized(x: torch.Tensor) -> bool:
    """Whether `x` is a decode-sized product input: fp32 on the CPU, at most MAX_ROWS rows, and
    no autograd graph needed through it. (The quantized layers ask this on its own: under
    torch.compile they route such inputs to an opaque op that runs the kernels.)"""
    return (x.is_cpu and x.dtype == _F32 and x.numel() <= MAX_ROWS * x.shape[-1]
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


def attention_step(qkv: torch.Tensor, n_heads: int, n_kv: int, head_dim: int,
                   rope: tuple[torch.Tensor, torch.Tensor] | None, k_cache: torch.Tensor, v_cache: torch.Tensor,
                   input_pos: torch.Tensor, mask: torch.Tensor | None, scale: float | None) -> torch.Tensor:
    """One decode token of standard attention, fused: qkv (B, 1, (H + 2 H_kv) D) -> rotary ->
    cache write at input_pos ((1,) shared or (B, 1) per row) -> attention -> (B, 1, H D).
    Equals Attention's generic path with the default slots (identity qkv transform, rotate-half
    rotary or none, SDPA); Attention checks that before calling. The caches may be views into a
    larger buffer (the server binds row/slot windows) but k and v must share strides and have
    a contiguous head dim; the writes land in them in place."""
    B = qkv.shape[0]
    S = k_cache.shape[2]
    if qkv.shape[-1] != (n_heads + 2 * n_kv) * head_dim or k_cache.shape[-1] != head_dim:
        raise ValueError(f"qkv width {qkv.shape[-1]} does not match {n_heads}+2x{n_kv} heads of {head_dim}")
    if qkv.stride(-1) != 1:
        qkv = qkv.contiguous()
    step = step_args(B, S, rope, input_pos, mask)
    out = torch.empty(B, 1, n_heads * head_dim, dtype=_F32)
    qbuf = torch.empty(B, n_heads, head_dim, dtype=_F32)
    kc, vc = k_cache, v_cache
    ok = _lib().attention_step(qkv.data_ptr(), qkv.stride(0), *step[3:9], kc.data_ptr(), vc.data_ptr(),
                               kc.stride(0), kc.stride(1), kc.stride(2), *step[9:], out.data_ptr(), qbuf.data_ptr(),
                               B, n_heads, n_kv, S, head_dim, _scale(scale, head_dim), torch.get_num_threads())
    if not ok:  # what index_copy_ on the cache would say, instead of writing past it
        raise IndexError(f"cache position out of range for a KV cache of {S} slots")
    return out


def cache_ok(k_cache: torch.Tensor, v_cache: torch.Tensor) -> bool:
    """Whether the fused steps can read and write these caches in place: fp32, contiguous head
    dim, k and v with the same strides (views into a larger buffer are fine)."""
    return (k_cache.dtype == _F32 and k_cache.stride(-1) == 1 and k_cache.stride() == v_cache.stride())


def step_args(B: int, S: int, rope: tuple[torch.Tensor, torch.Tensor] | None, input_pos: torch.Tensor,
               mask: torch.Tensor | None) -> tuple:
    """The per-step attention arguments every layer shares: (tensors the pointers point into, for
    the caller to keep alive), B, S, then pos, pb, cos, sin, cb, rd, mask, mb, ms as the C entry
    points take them."""
    if input_pos.dtype != torch.int64 or input_pos.stride(-1) != 1:
        input_pos = input_pos.to(torch.int64).contiguous()
    pb = input_pos.stride(0) if input_pos.dim() == 2 else 0
    cptr = sptr = None
    cb = rd = 0
    alive = (input_pos,)
    if rope is not None:
        cos, sin = rope  # (B or 1, 1, 1, rd)
        if not (cos.is_contiguous() and sin.is_contiguous()):
            cos, sin = cos.contiguous(), sin.contiguous()
        cptr, sptr, rd = cos.data_ptr(), sin.data_ptr(), cos.shape[-1]
        cb = cos.stride(0) if cos.shape[0] == B else 0
        alive = (input_pos, cos, sin)
    return (alive, B, S, input_pos.data_ptr(), pb, cptr, sptr, cb, rd, *_mask_args(mask, B, S))


# (kind, weight, scales, mins, bias, group) of a linear, as `layer_step` takes it: what a module's
# `kernel_linear()` returns (core/linear.Linear, quant layers), or None where it has none.
KernelLinear = tuple[int, int, int | None, int | None, int | None, int]


def _check_linears(linears, who: str) -> None:
    if len(linears) != 4 or any(lin is None for lin in linears):
        raise ValueError(f"{who}: a linear the kernels cannot run (no kernel_linear() descriptor)")


def _check_status(rc: int, who: str, S: int) -> None:
    """layer_step / stack_step status: -1 a cache position out of range, -2 a linear the kernels
    cannot run; in both cases nothing was written."""
    if rc == -1:  # what index_copy_ on the cache would say, instead of writing past it
        raise IndexError(f"cache position out of range for a KV cache of {S} slots")
    if rc:
        raise ValueError(f"{who}: a linear the kernels cannot run (kind or int4 group size)")


def layer_step(x: torch.Tensor, norm1: torch.Tensor, norm2: torch.Tensor, eps: float, residual_multiplier: float,
               linears: tuple[KernelLinear, KernelLinear, KernelLinear, KernelLinear], inter: int,
               n_heads: int, n_kv: int, head_dim: int, rope: tuple[torch.Tensor, torch.Tensor] | None,
               k_cache: torch.Tensor, v_cache: torch.Tensor, input_pos: torch.Tensor, mask: torch.Tensor | None,
               scale: float | None, step: tuple | None = None) -> torch.Tensor:
    """A whole pre-norm decoder layer for one token (cpu_layer.c): x (B, 1, C) -> (B, 1, C),
    the KV caches written at input_pos. `linears`: qkv, out, gate_up, down as KernelLinear.
    `step`: step_args(...) computed once for all layers of a forward (recomputed if None).
    core/fused_step.py decides when a layer may take this; it equals the module path."""
    B, C = x.shape[0], x.shape[-1]
    S = k_cache.shape[2]
    if x.numel() != B * C or norm1.numel() != C or norm2.numel() != C or k_cache.shape[-1] != head_dim:
        raise ValueError(f"layer_step: x {tuple(x.shape)} / norms / cache do not fit width {C}, head_dim {head_dim}")
    _check_linears(linears, "layer_step")
    if not x.is_contiguous():
        x = x.contiguous()
    if step is None or step[1] != B or step[2] != S:  # built for other rows / another cache length
        step = step_args(B, S, rope, input_pos, mask)
    y = torch.empty_like(x)
    kc, vc = k_cache, v_cache
    rc = _lib().layer_step(x.data_ptr(), y.data_ptr(), B, C, norm1.data_ptr(), norm2.data_ptr(), eps,
                           residual_multiplier, *linears[0], *linears[1], *linears[2], *linears[3], inter,
                           *step[3:9], kc.data_ptr(), vc.data_ptr(), kc.stride(0), kc.stride(1), kc.stride(2),
                           *step[9:], n_heads, n_kv, S, head_dim, _scale(scale, head_dim), torch.get_num_threads())
    _check_status(rc, "layer_step", S)
    return y


# Per layer, what stack_step packs (cpu_layer.c STACK_NI / STACK_NF): ints = norm1, norm2,
# 4 x (kind, weight, scales, mins, bias, group), inter, H, H_kv, D, rotary?, k cache, v cache,
# cache strides (batch, head, position), cache length; floats = eps, residual multiplier, scale.
STACK_NI, STACK_NF = 37, 3


def stack_layer_args(norm1: torch.Tensor, norm2: torch.Tensor, eps: float, residual_multiplier: float,
                     linears: tuple, inter: int, n_heads: int, n_kv: int, head_dim: int, rotary: bool,
                     k_cache: torch.Tensor, v_cache: torch.Tensor, scale: float | None) -> tuple[list, list]:
    """One layer's (ints, floats) for stack_step, from the same values layer_step takes."""
    _check_linears(linears, "stack_step")
    ints = [norm1.data_ptr(), norm2.data_ptr()]
    for lin in linears:
        ints += [v or 0 for v in lin]
    ints += [inter, n_heads, n_kv, head_dim, int(rotary), k_cache.data_ptr(), v_cache.data_ptr(),
             k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), k_cache.shape[2]]
    return ints, [eps, residual_multiplier, _scale(scale, head_dim)]


def stack_step(x: torch.Tensor, ints: torch.Tensor, floats: torch.Tensor, step: tuple) -> torch.Tensor:
    """Every layer of a stack for one token in one call (cpu_layer.c swl_stack_step): x (B, 1, C)
    -> (B, 1, C). `ints` (L, STACK_NI) int64 and `floats` (L, STACK_NF) float64 hold each layer's
    stack_layer_args; `step` is step_args(...) of this forward. The caller keeps every tensor the
    packed pointers point into alive (core/fused_step.py's plans do)."""
    B, C = x.shape[0], x.shape[-1]
    L = ints.shape[0]
    if (x.numel() != B * C or ints.dtype != torch.int64 or floats.dtype != torch.float64
            or ints.shape != (L, STACK_NI) or floats.shape != (L, STACK_NF)
            or not (ints.is_contiguous() and floats.is_contiguous()) or step[1] != B):
        raise ValueError("stack_step: x, the packed layer tables or the step arguments do not fit")
    if not x.is_contiguous():
        x = x.contiguous()
    y = torch.empty_like(x)
    rc = _lib().stack_step(x.data_ptr(), y.data_ptr(), B, C, L, ints.data_ptr(), floats.data_ptr(), *step[3:],
                           torch.get_num_threads())
    _check_status(rc, "stack_step", step[2])
    return y
