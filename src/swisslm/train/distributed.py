# SPDX-License-Identifier: Apache-2.0
"""Data parallelism with PyTorch's own engines, applied as passes after the model is built
(torchtitan's `apply_ac -> apply_compile -> apply_fsdp / apply_ddp` order).

Launch: `torchrun --nproc_per_node N -m swisslm train CONFIG.yaml` sets RANK / WORLD_SIZE /
LOCAL_RANK; `init_distributed` picks gloo on CPU and nccl on CUDA.

- DDP: `DistributedDataParallel`, gradients all-reduced (averaged) after backward.
- FSDP2: `fully_shard` on every block, then on the root (the embedding/head/final norm group);
  parameters become DTensors sharded on dim 0 and are all-gathered per block in forward/backward.
Both average gradients over ranks; the trainer scales the loss so the result is the global
token mean (see trainer.py).
"""

from __future__ import annotations

import functools
import logging
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

logger = logging.getLogger(__name__)


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def is_main_process() -> bool:
    """Rank 0, or not distributed; readable before and after the process group exists."""
    return int(os.environ.get("RANK", "0")) == 0


def init_distributed(device: str = "cpu") -> tuple[int, int, int]:
    """Initialise the default process group from torchrun's environment; (rank, world, local_rank)."""
    if not launched_by_torchrun():
        return 0, 1, 0
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
    local = int(os.environ.get("LOCAL_RANK", 0))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
    return dist.get_rank(), dist.get_world_size(), local


def destroy_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each block's activations in backward (memory for ~1/3 more compute).

    The block's forward is wrapped in place (no wrapper module), so parameter names, and
    therefore checkpoints and HF export, are unchanged."""
    for blk in model.layers:
        fwd = blk.forward

        @functools.wraps(fwd)
        def ckpt_forward(*args, _fwd=fwd, **kwargs):
            return checkpoint(_fwd, *args, use_reentrant=False, **kwargs)

        blk.forward = ckpt_forward


def apply_compile(model: nn.Module) -> None:
    """torch.compile per block (torchtitan): small graphs, compiled once, reused by every layer."""
    for blk in model.layers:
        blk.compile()  # in place: parameter names stay (no `_orig_mod.` prefix in checkpoints)


def apply_ddp(model: nn.Module, device: str = "cpu") -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [torch.cuda.current_device()] if device.startswith("cuda") else None
    # MoE: every expert receives gradients only if routed to; find_unused_parameters handles that
    find_unused = bool(getattr(model.config, "num_experts", 0))
    # broadcast_buffers=False: our buffers (RoPE tables, masks, frozen quantized weights under
    # QLoRA) are identical on every rank by construction; re-sending them from rank 0 before every
    # forward is pure traffic, and makes every forward a collective (so uneven eval shards hang)
    return DDP(model, device_ids=ids, find_unused_parameters=find_unused, broadcast_buffers=False)


def apply_fsdp(model: nn.Module, device: str = "cpu", mixed_bf16: bool = False) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh("cuda" if device.startswith("cuda") else "cpu", (dist.get_world_size(),))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed_bf16 else None
    kw = {"mesh": mesh, **({"mp_policy": mp} if mp else {})}
    for blk in model.layers:
        fully_shard(blk, **kw)
    fully_shard(model, **kw)
    return model
