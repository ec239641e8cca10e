# SPDX-License-Identifier: Apache-2.0
"""Training checkpoints: safetensors for every tensor, JSON for everything else, no pickle.

A checkpoint is a folder `step-00000100/` under the run's checkpoint dir:

    model.safetensors        full (unsharded) model state dict, our parameter names
    optimizer.safetensors    optimizer state flattened to "state.<param fqn>.<key>" tensors
    optimizer.json           param_groups (hyperparameters + the fqns of their params), scalar state
    rng-rank<R>.safetensors  each rank's torch CPU (and CUDA) generator state
    trainer_state.json       step, tokens seen, data-loader position, config, anything the trainer adds

It is written into `.tmp-step-...` and renamed into place only when complete (rename is
atomic on POSIX), so a crash (even SIGKILL) mid-write leaves the previous checkpoint as the
latest and a stale temp dir that the next save or resume removes. The last `keep_last`
checkpoints are kept.

Model and optimizer states go through `torch.distributed.checkpoint.state_dict`
(`get_state_dict`/`set_state_dict` with full_state_dict), so the same files serve a single
process, DDP and FSDP2: parameters are keyed by their fully qualified names, wrappers' prefixes
stripped, and sharded tensors are gathered on save and re-sharded on load.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from ..io.errors import CheckpointError

logger = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step-(\d{8})$")
# Testing hook (fault injection): "checkpoint_write:<step>" SIGKILLs this process half-way
# through writing that step's checkpoint, so tests can prove the write is atomic.
FAULT_ENV = "SWISSLM_FAULT_INJECT"


def _dist() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if _dist()[1] > 1:
        dist.barrier()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    seen: set[int] = set()
    out = {}
    for name, t in tensors.items():
        t = t.detach().to("cpu").contiguous()
        key = t.untyped_storage().data_ptr() if t.numel() else id(t)
        out[name] = t.clone() if key in seen else t  # safetensors refuses shared storage (tied weights)
        seen.add(key)
    save_file(out, str(path), metadata=metadata)
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__


# -- optimizer state <-> flat tensors + JSON ----------------------------------------------------

def flatten_optimizer_state(osd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for fqn, st in osd.get("state", {}).items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{fqn}.{k}"] = v
            else:
                scalars.setdefault(str(fqn), {})[k] = v
    return tensors, {"param_groups": osd.get("param_groups", []), "scalars": scalars}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    fqns = sorted({p for g in meta["param_groups"] for p in g["params"]}, key=len, reverse=True)
    state: dict[str, dict[str, Any]] = {}
    for name, t in tensors.items():
        rest = name[len("state."):]
        fqn = next((f for f in fqns if rest.startswith(f + ".")), None)  # longest fqn first
        if fqn is None:
            raise CheckpointError(f"optimizer tensor {name!r} belongs to no parameter group")
        state.setdefault(fqn, {})[rest[len(fqn) + 1:]] = t
    for fqn, st in meta.get("scalars", {}).items():
        state.setdefault(fqn, {}).update(st)
    return {"state": state, "param_groups": meta["param_groups"]}


# -- RNG --------------------------------------------------------------------------------------

def rng_state() -> dict[str, torch.Tensor]:
    out = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"torch_cuda_{i}"] = s
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    out["numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.uint32).astype(np.int64))
    out["numpy_misc"] = torch.tensor([pos, has_gauss], dtype=torch.int64)
    out["numpy_gauss"] = torch.tensor([gauss], dtype=torch.float64)
    return out


def set_rng_state(st: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(st["torch_cpu"])
    cuda = [st[k] for k in sorted(k for k in st if k.startswith("torch_cuda_"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    if "numpy_keys" in st:
        pos, has_gauss = (int(v) for v in st["numpy_misc"])
        np.random.set_state(("MT19937", st["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss,
                             float(st["numpy_gauss"][0])))


# -- the manager ---------------------------------------------------------------------------------

class CheckpointManager:
    """Save / find / load checkpoints under `folder` (one per step, the last `keep_last` kept)."""

    def __init__(self, folder: str | Path, keep_last: int = 3) -> None:
        self.folder = Path(folder)
        self.keep_last = keep_last

    def checkpoints(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        found = [p for p in self.folder.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)
                 and (p / "trainer_state.json").is_file()]
        return sorted(found, key=lambda p: p.name)

    def latest(self) -> Path | None:
        ckpts = self.checkpoints()
        return ckpts[-1] if ckpts else None

    def _clean_temps(self) -> None:
        if self.folder.is_dir():
            for p in self.folder.glob(".tmp-step-*"):
                shutil.rmtree(p, ignore_errors=True)

    def save(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
             trainer_state: dict[str, Any]) -> Path:
        """Collective under torch.distributed: every rank must call it."""
        rank, world = _dist()
        name = f"step-{step:08d}"
        final, tmp = self.folder / name, self.folder / f".tmp-{name}"
        if rank == 0:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._clean_temps()
            tmp.mkdir()
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        if optimizer is not None:
            msd, osd = get_state_dict(model, optimizer, options=opts)
        else:
            msd, osd = get_state_dict(model, [], options=opts)[0], {}
        _barrier()
        _save_tensors(rng_state(), tmp / f"rng-rank{rank}.safetensors")
        if rank == 0:
            _save_tensors(msd, tmp / "model.safetensors", {"format": "pt"})
            fault = os.environ.get(FAULT_ENV, "")
            if fault == f"checkpoint_write:{step}":
                logger.warning("fault injection: SIGKILL while writing %s", tmp)
                os.kill(os.getpid(), signal.SIGKILL)
            if optimizer is not None:
                tensors, meta = flatten_optimizer_state(osd)
                _save_tensors(tensors, tmp / "optimizer.safetensors")
                (tmp / "optimizer.json").write_text(json.dumps(meta, indent=1))
        _barrier()
        if rank == 0:
            state = {**trainer_state, "step": step, "world_size": world}
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
            with open(tmp / "trainer_state.json", "rb") as f:
                os.fsync(f.fileno())
            _fsync_dir(tmp)
            if final.exists():  # re-saving a step (e.g. after resume): swap, then drop the old one
                old = self.folder / f".tmp-old-{name}"
                os.rename(final, old)
                os.rename(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, final)
            _fsync_dir(self.folder)
            for stale in self.checkpoints()[:-self.keep_last] if self.keep_last > 0 else []:
                shutil.rmtree(stale, ignore_errors=True)
            logger.info("saved checkpoint %s", final)
        _barrier()
        return final

    def load(self, path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
             restore_rng: bool = True) -> dict[str, Any]:
        """Load model (+ optimizer, + this rank's RNG) in place; returns trainer_state.json."""
        path = Path(path)
        if not (path / "trainer_state.json").is_file():
            raise CheckpointError(f"{path}: not a complete checkpoint (no trainer_state.json)")
        rank, _ = _dist()
        if rank == 0:
            self._clean_temps()
        state = json.loads((path / "trainer_state.json").read_text())
        msd = _load_tensors(path / "model.safetensors")
        opts = StateDictOptions(full_state_dict=True, strict=True)
        if optimizer is not None:
            if not (path / "optimizer.safetensors").is_file():
                raise CheckpointError(f"{path}: has no optimizer state")
            meta = json.loads((path / "optimizer.json").read_text())
            osd = unflatten_optimizer_state(_load_tensors(path / "optimizer.safetensors"), meta)
            set_state_dict(model, optimizer, model_state_dict=msd, optim_state_dict=osd, options=opts)
        else:
            set_state_dict(model, [], model_state_dict=msd, optim_state_dict={}, options=opts)
        rng_file = path / f"rng-rank{rank}.safetensors"
        if restore_rng and rng_file.is_file():
            set_rng_state(_load_tensors(rng_file))
        return state
