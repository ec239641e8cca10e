# SPDX-License-Identifier: Apache-2.0
"""FLOPs per token and peak FLOP/s, for the MFU figure the trainer prints.

Training FLOPs per token follow PaLM (Chowdhery et al. 2022, appendix B), as nanoGPT and
torchtitan count them: 6 * N (forward + backward over the non-embedding parameters, the head
included) + 12 * L * H * D * T for attention scores and values. For MoE only the active
experts count (top-k of E). Activation recomputation is not counted (MFU, not HFU).

MFU needs the hardware's peak, and only a datasheet figure is one: the user's `peak_flops`, or
the table below for known GPUs. Elsewhere (CPUs, unknown GPUs) no MFU is reported. A peak
measured with one GEMM at start-up, as this module once did, is a lower bound of the real peak
(turbo clocks, a kernel not at its best): it gave "MFU 221.8%" on a CPU.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)

# Dense (no sparsity) peaks in FLOP/s from the vendors' datasheets: (bf16 tensor core, fp32 without
# TF32). Matched against torch.cuda.get_device_name, longest key first ("H100 PCIe" before "H100").
GPU_PEAKS = {
    "H200": (989e12, 67e12), "H100 PCIe": (756e12, 51e12), "H100 NVL": (835e12, 60e12),
    "H100": (989e12, 67e12), "GH200": (989e12, 67e12),
    "A100": (312e12, 19.5e12), "A10": (125e12, 31.2e12),
    "L40S": (362e12, 91.6e12), "L4": (121e12, 30.3e12), "4090": (165e12, 82.6e12),
}


def gpu_peak_flops(device_name: str, precision: str = "fp32") -> float | None:
    """The datasheet peak of a GPU by its name (None when not in GPU_PEAKS)."""
    for key in sorted(GPU_PEAKS, key=len, reverse=True):
        if key in device_name:
            bf16, fp32 = GPU_PEAKS[key]
            return bf16 if precision == "bf16" else fp32
    return None


def known_peak_flops(device: torch.device, precision: str = "fp32") -> float | None:
    """Peak FLOP/s of `device` when known (a GPU in GPU_PEAKS), else None: no MFU."""
    if device.type != "cuda":
        return None
    return gpu_peak_flops(torch.cuda.get_device_name(device), precision)


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
