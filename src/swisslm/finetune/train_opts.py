# SPDX-License-Identifier: Apache-2.0
"""autotrain `llm` training options shared by every trainer: optimizer choice, gradient
checkpointing, automatic batch-size search.

Gradient checkpointing wraps each transformer block's forward in
`torch.utils.checkpoint.checkpoint(use_reentrant=False)`: only the block inputs stay alive
during the forward, each block is recomputed in the backward. Non-reentrant checkpointing works
when no block input requires grad (a frozen base under LoRA), so no `enable_input_require_grads`
trick is needed, and dropout masks are replayed (RNG state preserved). It is an instance-level
forward override, installed and removed here; the model classes stay untouched.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "adamw_torch", "adafactor", "sgd")


def enable_gradient_checkpointing(model: nn.Module) -> int:
    """Checkpoint every block of `model.layers` while grad is enabled; returns how many."""
    from torch.utils.checkpoint import checkpoint

    n = 0
    for blk in getattr(model, "layers", []):
        if "forward" in blk.__dict__:  # already wrapped
            continue
        orig = blk.forward

        @functools.wraps(orig)
        def fwd(*args: Any, _orig: Callable = orig, **kw: Any) -> Any:
            if torch.is_grad_enabled():
                return checkpoint(_orig, *args, use_reentrant=False, **kw)
            return _orig(*args, **kw)

        blk.forward = fwd
        n += 1
    return n


def return_freed_memory_to_the_os(threshold: int = 1 << 20) -> bool:
    """glibc only: serve allocations >= `threshold` bytes with mmap, so freed tensors go back to
    the OS at once. By default glibc raises its mmap threshold after each large free (up to
    32 MB) and later serves such blocks from a heap it never shrinks; a training step's many
    short-lived activation and logit tensors then fragment it, and the process's RSS ends up
    near twice its live memory (SmolLM2 LoRA-DPO step: 2.0 GB peak vs 1.0 GB with this). Setting
    the threshold explicitly switches the adjustment off (mallopt(M_MMAP_THRESHOLD)); the cost
    is a page fault per fresh large block. Returns whether it was applied."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl, ...)
    M_MMAP_THRESHOLD = -3
    return bool(mallopt(M_MMAP_THRESHOLD, int(threshold)))


def disable_gradient_checkpointing(model: nn.Module) -> None:
    for blk in getattr(model, "layers", []):
        blk.__dict__.pop("forward", None)


def build_optimizer(name: str, groups: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
    """autotrain's `--optimizer`: adamw / adamw_torch (HF's adamw_torch: betas (0.9, 0.999),
    eps 1e-8), adafactor (torch.optim.Adafactor at a fixed lr, as HF's with
    `relative_step=False`), sgd (plain SGD, HF's default: no momentum)."""
    if name in ("adamw", "adamw_torch"):
        from ..train.optim import build_adamw

        return build_adamw(groups, lr=lr, betas=(0.9, 0.999))
    if name == "adafactor":
        if not hasattr(torch.optim, "Adafactor"):
            raise ValueError("--optimizer adafactor needs torch >= 2.5")
        return torch.optim.Adafactor(groups, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr)
    raise ValueError(f"--optimizer must be one of {list(OPTIMIZERS)}, got {name!r}")


def is_oom(e: BaseException) -> bool:
    """An allocation failure worth retrying with a smaller batch (CUDA OOM, CPU alloc failure)."""
    if isinstance(e, torch.cuda.OutOfMemoryError) or isinstance(e, MemoryError):
        return True
    return isinstance(e, RuntimeError) and ("out of memory" in str(e) or "can't allocate memory" in str(e)
                                            or "DefaultCPUAllocator" in str(e))


def find_batch_size(start: int, probe: Callable[[int], None]) -> int:
    """HF's auto_find_batch_size: try `probe(batch)` at `start`, halving on out-of-memory until
    one fits (1 is the floor: its failure is re-raised)."""
    b = start
    while True:
        try:
            probe(b)
            return b
        except Exception as e:
            if not is_oom(e) or b == 1:
                raise
            log.warning("batch size %d ran out of memory; trying %d", b, b // 2)
            b //= 2
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
