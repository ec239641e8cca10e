# SPDX-License-Identifier: Apache-2.0
"""Reading and writing (sharded) safetensors: never pickle, one tensor in memory at a time."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import CheckpointError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


def safetensors_files(folder: Path) -> list[Path]:
    index = folder / INDEX_NAME
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from None
        files = sorted({folder / f for f in weight_map.values()})
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise CheckpointError(f"{index}: shard file(s) missing: {', '.join(missing)}")
        return files
    if (folder / SINGLE_NAME).exists():
        return [folder / SINGLE_NAME]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{folder}: no *.safetensors weights found (pickled .bin files are never loaded)")
    return files


def iter_safetensors(folder: Path) -> Iterator[tuple[str, torch.Tensor]]:
    for path in safetensors_files(folder):
        try:
            f = safe_open(str(path), framework="pt")
            keys = list(f.keys())
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({e})") from None
        for k in keys:
            try:
                t = f.get_tensor(k)
            except Exception as e:
                raise CheckpointError(f"{path}: cannot read tensor {k!r} ({e})") from None
            yield k, t


def save_sharded(
    tensors: dict[str, torch.Tensor], folder: Path, max_shard_bytes: int = 5 * 1024**3
) -> list[Path]:
    """Write model.safetensors, or model-0000i-of-0000n.safetensors + index when it exceeds
    max_shard_bytes (HF's layout, so transformers and vLLM read it)."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t.contiguous()
        size += nbytes
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(folder / SINGLE_NAME), metadata=meta)
        return [folder / SINGLE_NAME]
    n = len(shards)
    paths, weight_map, total = [], {}, 0
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{n:05d}.safetensors"
        save_file(shard, str(folder / name), metadata=meta)
        paths.append(folder / name)
        for k, t in shard.items():
            weight_map[k] = name
            total += t.numel() * t.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / INDEX_NAME).write_text(json.dumps(index, indent=2))
    return paths
