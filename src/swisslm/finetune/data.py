# SPDX-License-Identifier: Apache-2.0
"""SFT data: JSONL / CSV rows -> (input_ids, labels) -> padded, resumable micro-batches.

A row is either `{"text": ...}` (any column, `text_column`): every token is trained, EOS appended
as TRL's SFTTrainer does (autotrain's `add_eos_token`; chat rows end with their template's own
end-of-turn and are left as rendered); or `{"messages": [{"role", "content"}, ...]}`: the model's chat template
renders the conversation and only assistant turns carry a loss (TRL's `assistant_only_loss`).

Assistant spans come from rendering the conversation incrementally: the text of messages[:i]
with the generation prompt ends where assistant turn i starts, the text of messages[:i+1] ends
where it stops. The whole conversation is then tokenized once and a token is trained when its
first character lies inside an assistant span -- character offsets, so BPE merges across a
boundary cannot shift the mask. Templates that rewrite earlier turns (so a prefix is not a
prefix) are reported, not silently mis-masked.
"""

from __future__ import annotations

import ast
import csv
import json
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..io.jsonl import iter_jsonl

log = logging.getLogger(__name__)

IGNORE = -100


class DataError(ValueError):
    """A data file or row that cannot be used (message names the file and line)."""


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    rows = [row for _, row in iter_jsonl(p, DataError)]
    if not rows:
        raise DataError(f"{p}: no rows")
    return rows


def _render(tok: Any, messages: Sequence[Mapping[str, Any]], gen: bool, template: str | None) -> str:
    return tok.apply_chat_template(list(messages), add_generation_prompt=gen, tokenize=False,
                                   chat_template=template)


def assistant_spans(tok: Any, messages: Sequence[Mapping[str, Any]], template: str | None = None,
                    ) -> tuple[str, list[tuple[int, int]]]:
    """(rendered conversation, [(start, end) character span of each assistant turn])."""
    for m in messages:
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise DataError(f"chat messages need 'role' and 'content', got {m!r}")
    full = _render(tok, messages, False, template)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        try:
            prefix = _render(tok, messages[:i], True, template) if i else ""
        except Exception:  # some templates reject an empty or system-only conversation
            prefix = ""
        upto = _render(tok, messages[: i + 1], False, template)
        if not (full.startswith(upto) and upto.startswith(prefix)):
            raise DataError("the chat template does not render conversations incrementally (an earlier turn "
                            "changes when later turns are added), so assistant tokens cannot be located")
        spans.append((len(prefix), len(upto)))
    return full, spans


def encode_chat(tok: Any, messages: Sequence[Mapping[str, Any]], template: str | None = None,
                ) -> tuple[list[int], list[int]]:
    """input_ids and labels (-100 outside assistant turns) of a templated conversation."""
    text, spans = assistant_spans(tok, messages, template)
    enc = tok.backend.encode(text, add_special_tokens=False)
    ids = list(enc.ids)
    labels = [IGNORE] * len(ids)
    for j, (start, end) in enumerate(enc.offsets):
        if end > start and any(s <= start < e for s, e in spans):
            labels[j] = ids[j]
    return ids, labels


def encode_text(tok: Any, text: str, add_eos: bool = True) -> tuple[list[int], list[int]]:
    ids = list(tok.encode(text, add_special_tokens=True))
    eos = tok.eos_token_id
    if add_eos and eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
    return ids, list(ids)


def encode_row(tok: Any, row: Mapping[str, Any], text_column: str = "text", template: str | None = None,
               add_eos: bool = True) -> tuple[list[int], list[int]]:
    if "messages" in row and text_column not in row:
        msgs = row["messages"]
        if isinstance(msgs, str):  # a CSV cell: autotrain stores conversations as JSON / Python literals

            msgs = parse_messages(msgs, "'messages'")
        if not isinstance(msgs, list) or not msgs:
            raise DataError("'messages' must be a non-empty list")
        return encode_chat(tok, msgs, template)
    if text_column not in row:
        raise DataError(f"row has neither {text_column!r} nor 'messages' (keys: {sorted(row)})")
    text = row[text_column]
    if not isinstance(text, str):
        raise DataError(f"column {text_column!r} must be a string")
    return encode_text(tok, text, add_eos)


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]


def load_sft_examples(path: str | Path, tok: Any, block_size: int, text_column: str = "text",
                      template: str | None = None, add_eos: bool = True) -> list[Example]:
    """Read and tokenize a JSONL or CSV file; rows are truncated to `block_size` tokens. Rows left
    without any trained token (e.g. an assistant turn cut off by truncation) are dropped, with a
    warning."""

    rows = read_rows(path, split=None)
    out, dropped = [], 0
    for n, row in enumerate(rows, 1):
        try:
            ids, labels = encode_row(tok, row, text_column, template, add_eos)
        except DataError as e:
            raise DataError(f"{path}: row {n}: {e}") from None
        ids, labels = ids[:block_size], labels[:block_size]
        if sum(1 for x in labels[1:] if x != IGNORE) == 0:
            dropped += 1
            continue
        out.append(Example(ids, labels))
    if dropped:
        log.warning("%s: %d row(s) have no trained token after truncation to %d and were dropped",
                    path, dropped, block_size)
    if not out:
        raise DataError(f"{path}: no usable rows (block size {block_size})")
    return out


class SFTBatches:
    """Shuffled, right-padded micro-batches over epochs; resumable (`state_dict()` is the epoch
    and the position in it, the order a pure function of (seed, epoch)).

    Under data parallelism (`world_size` > 1) each rank takes every `world_size`-th example of
    the epoch's order, as torch's DistributedSampler does: the order is first padded by wrapping
    around so every rank gets the same number of examples (a rank with fewer micro-batches would
    hang the others' gradient all-reduce). Rank r's i-th micro-batch plus the other ranks' i-th
    ones hold exactly the examples of one process's i-th and following micro-batches, so N
    processes with batch size B match one process accumulating N micro-batches of B.

    Yields {"input_ids", "labels"} and, when a batch has padding, "attention_mask" (a batch
    without padding leaves it out so attention runs the plain causal kernel).
    """

    def __init__(self, examples: Sequence[Example], batch_size: int, pad_id: int, seed: int = 0,
                 shuffle: bool = True, rank: int = 0, world_size: int = 1, padding: str = "right") -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.examples, self.batch_size, self.pad_id = list(examples), batch_size, pad_id
        self.seed, self.shuffle, self.padding = seed, shuffle, padding
        self.rank, self.world_size = rank, world_size
        self.epoch, self.index = 0, 0  # index = micro-batches already yielded in this epoch

    @property
    def shard_size(self) -> int:
        """Examples this rank sees per epoch."""
        return math.ceil(len(self.examples) / self.world_size)

    @property
    def batches_per_epoch(self) -> int:
        """Micro-batches per epoch on this rank (the same on every rank)."""
        return math.ceil(self.shard_size / self.batch_size)

    def _order(self, epoch: int) -> list[int]:
        n = len(self.examples)
        if not self.shuffle:
            order = list(range(n))
        else:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(n, generator=g).tolist()
        if self.world_size == 1:
            return order
        total = self.shard_size * self.world_size
        order = (order * math.ceil(total / n))[:total]  # wrap around to an even split
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            order = self._order(self.epoch)
            while self.index < self.batches_per_epoch:
                i = self.index * self.batch_size
                batch = collate([self.examples[j] for j in order[i : i + self.batch_size]], self.pad_id,
                                self.padding)
                self.index += 1
                yield batch
            self.epoch, self.index = self.epoch + 1, 0

    def one_epoch(self) -> Iterator[dict[str, torch.Tensor]]:
        """This rank's share of the examples once, in file order, without the wrap-around padding
        (for evaluation, whose sums are all-reduced: every example counts exactly once)."""
        mine = list(range(self.rank, len(self.examples), self.world_size))
        for i in range(0, len(mine), self.batch_size):
            yield collate([self.examples[j] for j in mine[i : i + self.batch_size]], self.pad_id, self.padding)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "world_size": self.world_size}

    def load_state_dict(self, st: Mapping[str, int]) -> None:
        # the position counts this rank's micro-batches: it means something else at another world size
        saved = int(st.get("world_size", 1))
        if saved != self.world_size:
            raise ValueError(f"the checkpoint was written by {saved} process(es); resume it with as many "
                             f"(this run has {self.world_size})")
        self.epoch, self.index = int(st["epoch"]), int(st["index"])


def collate(examples: Sequence[Example], pad_id: int, padding: str = "right") -> dict[str, torch.Tensor]:
    """Pad to the longest example on the `padding` side ("right" or "left", autotrain's
    --padding). Left padding is exact too: the backbone derives positions from the attention
    mask, so a left-padded row sees the same positions and trains the same tokens as unpadded."""
    if padding not in ("right", "left"):
        raise ValueError(f"padding must be right or left, got {padding!r}")
    T = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), T), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), T), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        sl = slice(0, n) if padding == "right" else slice(T - n, T)
        ids[i, sl] = torch.tensor(e.input_ids)
        labels[i, sl] = torch.tensor(e.labels)
        mask[i, sl] = 1
        if padding == "left" and n < T:
            # a sequence's first token is never a target: right-padded, the one-token shift drops
            # it; left-padded it would be "predicted" from the pad before it
            labels[i, T - n] = IGNORE
    out = {"input_ids": ids, "labels": labels}
    if not bool(mask.all()):
        out["attention_mask"] = mask
    return out


# -- JSONL / CSV rows and data folders (SFT and the preference trainers) -----------------------

DATA_SUFFIXES = (".jsonl", ".json", ".csv")


def data_file(path: str | Path, split: str | None) -> Path:
    """The file holding `split` of `path` (a file, or a folder with `<split>.jsonl|.json|.csv`)."""
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        if split is None:
            raise DataError(f"{p}: a data folder needs a split name")
        for suffix in DATA_SUFFIXES:
            if (p / f"{split}{suffix}").is_file():
                return p / f"{split}{suffix}"
        raise DataError(f"{p}: no {split}.jsonl, {split}.json or {split}.csv")
    raise DataError(f"{p}: no such file or folder")


def read_rows(path: str | Path, split: str | None = "train") -> list[dict[str, Any]]:
    """Rows of a JSONL / CSV file or of a split in a data folder."""
    f = data_file(path, split)
    if f.suffix == ".csv":
        with open(f, newline="", encoding="utf-8") as fh:
            rows = [dict(r) for r in csv.DictReader(fh)]
        if not rows:
            raise DataError(f"{f}: no rows")
        return rows
    return read_jsonl(f)


def parse_messages(value: Any, where: str) -> list[dict[str, Any]] | None:
    """A message list, or None for plain text. Strings that look like lists are parsed (autotrain
    stores conversations in CSV cells as Python literals)."""
    if isinstance(value, str):
        s = value.strip()
        if not (s.startswith("[") and s.endswith("]") and "role" in s):
            return None
        try:
            value = json.loads(s)
        except json.JSONDecodeError:
            try:
                value = ast.literal_eval(s)
            except (ValueError, SyntaxError):
                return None
    if isinstance(value, list) and value and all(isinstance(m, Mapping) and "role" in m and "content" in m
                                                 for m in value):
        return [dict(m) for m in value]
    raise DataError(f"{where}: expected a string or a list of {{'role', 'content'}} messages")
