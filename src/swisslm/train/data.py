# SPDX-License-Identifier: Apache-2.0
"""Pretraining data: a flat memmap of token ids, and a deterministic, resumable window loader.

On disk (what `swisslm prepare-data` writes, nanoGPT/litgpt style):

    OUT/tokens.bin   every document's ids back to back (EOS after each), uint16 or uint32
    OUT/meta.json    {"format": "swisslm-tokens/1", "dtype", "num_tokens", "num_documents",
                      "vocab_size", "eos_token_id", "bos_token_id", "tokenizer", "sources"}

`WindowLoader` cuts the stream into fixed-length windows. Each epoch draws, from
(seed, epoch) alone, a start offset in [0, seq_len) and a permutation of the windows, so the
sample order is a pure function of the seed and the loader's position; `state_dict()` is two
integers and a resumed run sees exactly the batches an uninterrupted one would. With data
parallelism every rank computes the same permutation and takes its own slice of each global
micro-batch, so the position is global and a checkpoint can resume with another world size.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io.errors import CheckpointError

logger = logging.getLogger(__name__)

FORMAT = "swisslm-tokens/1"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def write_tokens(out: str | Path, ids: np.ndarray, *, vocab_size: int, eos_token_id: int | None = None,
                 bos_token_id: int | None = None, num_documents: int = 1, tokenizer: str | None = None,
                 sources: list[str] | None = None) -> Path:
    """Write an already tokenized stream in the prepare-data format (tests, custom pipelines)."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    dt = token_dtype(vocab_size)
    np.asarray(ids).astype(dt).tofile(folder / "tokens.bin")
    write_meta(folder, dtype=dt, num_tokens=int(np.asarray(ids).size), num_documents=num_documents,
               vocab_size=vocab_size, eos_token_id=eos_token_id, bos_token_id=bos_token_id,
               tokenizer=tokenizer, sources=sources or [])
    return folder


def write_meta(folder: Path, *, dtype: np.dtype, **fields: Any) -> None:
    meta = {"format": FORMAT, "dtype": np.dtype(dtype).name, **fields}
    tmp = folder / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, folder / "meta.json")


@dataclass
class TokenDataset:
    """A prepared token folder, memory-mapped (nothing is read until a window is sliced)."""

    path: Path
    meta: dict[str, Any]
    tokens: np.ndarray

    @classmethod
    def open(cls, path: str | Path) -> TokenDataset:
        folder = Path(path)
        meta_path = folder / "meta.json"
        if not meta_path.is_file():
            raise CheckpointError(f"{folder}: not a prepared data folder (no meta.json); "
                                  "run `swisslm prepare-data` first")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
        n = int(meta["num_tokens"])
        tokens = np.memmap(folder / "tokens.bin", dtype=np.dtype(meta["dtype"]), mode="r", shape=(n,))
        return cls(folder, meta, tokens)

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])


class WindowLoader:
    """Yields this rank's micro-batches {"input_ids", "labels"} of shape (micro_batch, seq_len).

    Labels are the input ids (HF convention: the loss shifts them), so the same trainer serves
    pretraining and SFT batches with -100-masked labels. Iteration never ends; epochs roll over.

    Global micro-batch k of an epoch is windows perm[k*G : (k+1)*G] with G = micro_batch *
    world_size; rank r takes the r-th slice of micro_batch windows. The incomplete tail of an
    epoch is dropped (every step sees full batches).
    """

    def __init__(self, dataset: TokenDataset, seq_len: int, micro_batch: int, *, seed: int = 0,
                 rank: int = 0, world_size: int = 1, shift_windows: bool = True) -> None:
        if seq_len <= 0 or micro_batch <= 0:
            raise ValueError("seq_len and micro_batch must be positive")
        self.ds, self.seq_len, self.micro_batch = dataset, seq_len, micro_batch
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.shift_windows = shift_windows
        self.epoch = 0
        self.index = 0  # global micro-batches consumed in this epoch
        self._epoch_cache: tuple[int, int, np.ndarray] | None = None
        if self.windows_per_epoch(0) < micro_batch * world_size:
            raise CheckpointError(
                f"{dataset.path}: {len(dataset)} tokens give fewer than one global micro-batch of "
                f"{micro_batch * world_size} windows of {seq_len} tokens"
            )

    # -- the deterministic order ------------------------------------------------------------
    def _plan(self, epoch: int) -> tuple[int, np.ndarray]:
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            offset = int(rng.integers(self.seq_len)) if (self.shift_windows and epoch > 0) else 0
            n = (len(self.ds) - offset) // self.seq_len
            self._epoch_cache = (epoch, offset, rng.permutation(n))
        return self._epoch_cache[1], self._epoch_cache[2]

    def windows_per_epoch(self, epoch: int) -> int:
        offset, perm = self._plan(epoch)
        return len(perm)

    def steps_per_epoch(self) -> int:
        """Global micro-batches in the current epoch."""
        return self.windows_per_epoch(self.epoch) // (self.micro_batch * self.world_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self.index >= self.steps_per_epoch():
            self.epoch += 1
            self.index = 0
        offset, perm = self._plan(self.epoch)
        g = self.micro_batch * self.world_size
        start = self.index * g + self.rank * self.micro_batch
        rows = perm[start:start + self.micro_batch]
        L = self.seq_len
        x = np.stack([np.asarray(self.ds.tokens[offset + w * L: offset + (w + 1) * L]) for w in rows])
        self.index += 1
        ids = torch.from_numpy(x.astype(np.int64))
        return {"input_ids": ids, "labels": ids.clone()}

    # -- resume -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "seq_len": self.seq_len,
                "global_micro_batch": self.micro_batch * self.world_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("seed", self.seed) != self.seed or state.get("seq_len", self.seq_len) != self.seq_len:
            raise CheckpointError("the checkpoint's data order (seed / seq_len) differs from this run's config")
        g_old = int(state.get("global_micro_batch", self.micro_batch * self.world_size))
        g_new = self.micro_batch * self.world_size
        consumed = int(state["index"]) * g_old
        if consumed % g_new:
            raise CheckpointError(f"cannot resume: {consumed} windows consumed is not a multiple of the "
                                  f"new global micro-batch {g_new}")
        self.epoch, self.index = int(state["epoch"]), consumed // g_new
