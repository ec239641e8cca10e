# SPDX-License-Identifier: Apache-2.0
"""FLOPs per token and peak FLOP/s, for the MFU figure the trainer prints.

Training FLOPs per token follow PaLM (Chowdhery et al. 2022, appendix B), as nanoGPT and
torchtitan count them: 6 * N (forward + backward over the non-embedding parameters, the head
included) + 12 * L * H * D * T for attention scores and values. For MoE only the active
experts count (top-k of E). Activation recomputation is not counted (MFU, not HFU).

The peak is the datasheet dense figure for known GPUs; on a CPU (or an unknown GPU) it is
measured once with a large GEMM in the training precision, so "MFU" on CPU means the fraction
of what this machine's matmul kernel reaches, which is the meaningful ceiling there.
"""

from __future__ import annotations

import functools
import logging
import time

import torch
from torch import nn

logger = logging.getLogger(__name__)

# dense bf16 / tf32-free fp32 peaks (FLOP/s) from the vendors' datasheets
_GPU_PEAKS = {"H100": (989e12, 67e12), "H200": (989e12, 67e12), "A100": (312e12, 19.5e12),
              "L40S": (362e12, 91.6e12), "A10": (125e12, 31.2e12), "4090": (165e12, 82.6e12)}


def flops_per_token(model: nn.Module, seq_len: int) -> float:
    cfg = model.config
    n = 0
    for name, p in model.named_parameters():
        if name.startswith("embed."):
            continue
        numel = p.numel()
        if cfg.num_experts and ".mlp." in name and ".shared." not in name and "router" not in name:
            numel = numel * cfg.num_experts_per_tok / cfg.num_experts
        n += numel
    if cfg.tie_embeddings and cfg.lm_head:  # the tied head still does its matmul
        n += cfg.vocab_size * cfg.hidden_size
    attn = 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len
    return 6.0 * n + attn


@functools.lru_cache(maxsize=8)
def _measured_gemm_flops(device_type: str, dtype: torch.dtype) -> float:
    # 512 is past the cache-blocking knee of CPU GEMMs and cheap even where bf16 has no fast
    # kernel (CPUs without AVX512-BF16/AMX run bf16 matmuls at well under 1 GFLOP/s)
    n = 512 if device_type == "cpu" else 8192
    a = torch.randn(n, n, device=device_type).to(dtype)
    b = torch.randn(n, n, device=device_type).to(dtype)
    a @ b
    reps, t0 = 0, time.perf_counter()
    while reps < 2 or time.perf_counter() - t0 < 0.2:
        a @ b
        reps += 1
    if device_type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def estimate_peak_flops(device: torch.device, precision: str = "fp32") -> float:
    half = precision == "bf16"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, (bf16, fp32) in _GPU_PEAKS.items():
            if key in name:
                return bf16 if half else fp32
    peak = _measured_gemm_flops(device.type, torch.bfloat16 if half else torch.float32)
    logger.info("peak FLOP/s for MFU measured with a GEMM on %s: %.3g", device.type, peak)
    return peak
