# SPDX-License-Identifier: Apache-2.0
"""Preference data: (prompt, chosen, rejected) rows -> token ids with the prompt/response boundary.

Files: JSONL, CSV, or a folder holding `<split>.jsonl` / `<split>.csv` (autotrain's `data_path` +
`train_split` / `valid_split`). Columns are autotrain's: `prompt_text_column` (prompt),
`text_column` (chosen), `rejected_text_column` (rejected).

A row is one of TRL's two formats:
- standard: strings. prompt + chosen is tokenized as one text (EOS appended to the completion
  unless `add_eos=False`), as TRL's DPOTrainer does;
- conversational: chosen / rejected are message lists (`[{"role", "content"}, ...]`, also as a
  JSON / Python-literal string, as autotrain reads them). With a prompt column the prompt is a
  message list too; without one the prompt is chosen[:-1] (autotrain's rule). The chat template
  renders prompt (with the generation prompt) and prompt + completion.
A standard row with a chat template (`--chat-template`) becomes a one-turn conversation.

Where the completion starts: prompt and prompt + completion are tokenized separately and the
completion starts where the two id lists diverge (TRL's `common_prefix_length`), so a BPE merge
across the boundary cannot move prompt tokens into the trained span.

Truncation to `max_length` keeps the boundary: the completion is first cut to
`max_completion_length`; if prompt + longest completion still exceeds `max_length` the prompt
keeps its last `max_prompt_length` tokens, then the completions keep their first
`max_length - len(prompt)` tokens (TRL's pre-0.12 DPO rule; autotrain's max_prompt_length).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .data import DataError, parse_messages, read_rows

log = logging.getLogger(__name__)

# autotrain's named templates (autotrain/trainers/clm/utils.py). They only render text: the
# special tokens they name must already be in the vocabulary (SmolLM2 has ChatML's).
CHAT_TEMPLATES = {
    "chatml": ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] "
               "+ '<|im_end|>' + '\n'}}{% if loop.last and add_generation_prompt %}"
               "{{'<|im_start|>assistant\n' }}{% endif %}{% endfor %}"),
    "zephyr": ("{% for message in messages %}{% if message['role'] == 'user' %}"
               "{{ '<|user|>\n' + message['content'] + eos_token }}{% elif message['role'] == 'system' %}"
               "{{ '<|system|>\n' + message['content'] + eos_token }}{% elif message['role'] == 'assistant' %}"
               "{{ '<|assistant|>\n'  + message['content'] + eos_token }}{% endif %}"
               "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}{% endfor %}"),
}


def resolve_chat_template(spec: str | None, tok: Any = None) -> tuple[bool, str | None]:
    """(use a chat template?, template text or None for the tokenizer's own) for
    `--chat-template none|chatml|zephyr|tokenizer|FILE`."""
    if spec is None or spec == "none":
        return False, None
    if spec in CHAT_TEMPLATES:
        return True, CHAT_TEMPLATES[spec]
    if spec == "tokenizer":
        if tok is not None and getattr(tok, "chat_template", None) is None:
            raise DataError("--chat-template tokenizer: the tokenizer has no chat template")
        return True, None
    p = Path(spec)
    if not p.is_file():
        raise DataError(f"--chat-template {spec}: not chatml, zephyr, tokenizer, none or a file")
    return True, p.read_text()


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@dataclass
class PairExample:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    ref: tuple[float, float] | None = None  # reference (chosen, rejected) log-probs, when precomputed


@dataclass
class PairColumns:
    prompt: str | None = None  # None: the prompt is chosen[:-1] (conversational) or empty
    chosen: str = "chosen"
    rejected: str = "rejected"


def encode_pair(tok: Any, row: Mapping[str, Any], cols: PairColumns, use_template: bool = False,
                template: str | None = None, add_eos: bool = True) -> PairExample:
    """Token ids of one preference row (see the module docstring for the formats)."""
    for c in (cols.chosen, cols.rejected) + ((cols.prompt,) if cols.prompt else ()):
        if c not in row:
            raise DataError(f"no column {c!r} (columns: {sorted(row)})")
    chosen_m = parse_messages(row[cols.chosen], cols.chosen)
    rejected_m = parse_messages(row[cols.rejected], cols.rejected)
    prompt_v = row[cols.prompt] if cols.prompt else None
    prompt_m = parse_messages(prompt_v, cols.prompt) if prompt_v is not None else None
    conversational = chosen_m is not None or rejected_m is not None
    if conversational:
        if chosen_m is None or rejected_m is None:
            raise DataError("chosen and rejected must both be message lists or both be text")
        if prompt_m is None and isinstance(prompt_v, str) and prompt_v:
            prompt_m = [{"role": "user", "content": prompt_v}]
        if prompt_m is None:  # autotrain: the prompt is every turn but the last
            prompt_m, chosen_m, rejected_m = chosen_m[:-1], chosen_m[-1:], rejected_m[-1:]
    elif use_template:
        for name, v in ((cols.chosen, row[cols.chosen]), (cols.rejected, row[cols.rejected])):
            if not isinstance(v, str):
                raise DataError(f"column {name!r} must be text")
        prompt_m = [{"role": "user", "content": str(prompt_v or "")}]
        chosen_m = [{"role": "assistant", "content": row[cols.chosen]}]
        rejected_m = [{"role": "assistant", "content": row[cols.rejected]}]
        conversational = True
    if conversational:
        def render(msgs: list[dict[str, Any]], gen: bool) -> list[int]:
            return list(tok.apply_chat_template(msgs, add_generation_prompt=gen, tokenize=True,
                                                chat_template=template))

        prompt_ids = render(prompt_m, True) if prompt_m else []
        pc, pr = render(prompt_m + chosen_m, False), render(prompt_m + rejected_m, False)
        if add_eos and tok.eos_token_id is not None:
            pc, pr = _with_eos(pc, tok.eos_token_id), _with_eos(pr, tok.eos_token_id)
    else:
        prompt = "" if prompt_v is None else prompt_v
        chosen, rejected = row[cols.chosen], row[cols.rejected]
        if not all(isinstance(v, str) for v in (prompt, chosen, rejected)):
            raise DataError("prompt, chosen and rejected must be text (or message lists)")
        eos = tok.eos_token if add_eos and tok.eos_token else ""
        chosen = chosen if chosen.endswith(eos) else chosen + eos  # TRL: EOS on standard rows
        rejected = rejected if rejected.endswith(eos) else rejected + eos
        prompt_ids = list(tok.encode(prompt)) if prompt else []
        pc, pr = list(tok.encode(prompt + chosen)), list(tok.encode(prompt + rejected))
    n = min(common_prefix_length(prompt_ids, pc), common_prefix_length(prompt_ids, pr))
    return PairExample(prompt_ids[:n], pc[n:], pr[n:])


def _with_eos(ids: list[int], eos: int) -> list[int]:
    """autotrain's add_eos_token on chat rows: templates that end a turn without the tokenizer's
    EOS (ChatML ends with '<|im_end|>\\n') get it appended once."""
    return ids if ids and ids[-1] == eos else ids + [eos]


def truncate_pair(ex: PairExample, max_length: int, max_prompt_length: int | None,
                  max_completion_length: int | None = None) -> PairExample:
    """Fit prompt + completion into max_length without moving the boundary (module docstring)."""
    p, c, r = ex.prompt_ids, ex.chosen_ids, ex.rejected_ids
    if max_completion_length:
        c, r = c[:max_completion_length], r[:max_completion_length]
    if len(p) + max(len(c), len(r)) > max_length and max_prompt_length is not None and len(p) > max_prompt_length:
        p = p[len(p) - max_prompt_length:]
    if len(p) >= max_length:  # no room for a completion even after the prompt cut: keep the prompt's end
        p = p[len(p) - max_length + 1:]
    room = max_length - len(p)
    return PairExample(p, c[:room], r[:room])


def load_pairs(path: str | Path, tok: Any, cols: PairColumns, *, split: str | None = "train",
               max_length: int = 1024, max_prompt_length: int | None = 128,
               max_completion_length: int | None = None, use_template: bool = False,
               template: str | None = None, add_eos: bool = True) -> list[PairExample]:
    """Read, tokenize and truncate a preference split. Rows whose chosen or rejected completion is
    empty after truncation cannot be compared and are dropped with a warning."""
    rows = read_rows(path, split)
    out, dropped = [], 0
    for n, row in enumerate(rows, 1):
        try:
            ex = encode_pair(tok, row, cols, use_template, template, add_eos)
        except DataError as e:
            raise DataError(f"{path}: row {n}: {e}") from None
        ex = truncate_pair(ex, max_length, max_prompt_length, max_completion_length)
        if not ex.chosen_ids or not ex.rejected_ids:
            dropped += 1
            continue
        out.append(ex)
    if dropped:
        log.warning("%s: %d row(s) without a completion token after truncation were dropped", path, dropped)
    if not out:
        raise DataError(f"{path}: no usable preference rows")
    return out


def collate_pairs(examples: Sequence[PairExample], pad_id: int, padding: str = "right") -> dict[str, torch.Tensor]:
    """One batch of 2P rows, the P chosen sequences first, then the P rejected ones (TRL's
    concatenated layout, one forward for both). `loss_mask` marks completion tokens."""
    seqs, masks = [], []
    for ex in examples:
        seqs.append(ex.prompt_ids + ex.chosen_ids)
        masks.append([0] * len(ex.prompt_ids) + [1] * len(ex.chosen_ids))
    for ex in examples:
        seqs.append(ex.prompt_ids + ex.rejected_ids)
        masks.append([0] * len(ex.prompt_ids) + [1] * len(ex.rejected_ids))
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), T), dtype=torch.long)
    lm = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, (s, m) in enumerate(zip(seqs, masks)):
        sl = slice(0, len(s)) if padding == "right" else slice(T - len(s), T)
        ids[i, sl], att[i, sl], lm[i, sl] = torch.tensor(s), 1, torch.tensor(m)
    return {"input_ids": ids, "attention_mask": att, "loss_mask": lm, "pairs": torch.tensor(len(examples))}


class PairBatches:
    """Shuffled micro-batches of pairs over epochs, resumable like SFTBatches (the order is a pure
    function of (seed, epoch)). Each example's index rides along (`index`), so precomputed
    reference log-probs can be looked up."""

    def __init__(self, examples: Sequence[PairExample], batch_size: int, pad_id: int, seed: int = 0,
                 shuffle: bool = True, padding: str = "right") -> None:
        self.examples, self.batch_size, self.pad_id = list(examples), batch_size, pad_id
        self.seed, self.shuffle, self.padding = seed, shuffle, padding
        self.epoch, self.index = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return -(-len(self.examples) // self.batch_size)

    def _order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(len(self.examples)))
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(len(self.examples), generator=g).tolist()

    def batch(self, idx: Sequence[int]) -> dict[str, torch.Tensor]:
        b = collate_pairs([self.examples[j] for j in idx], self.pad_id, self.padding)
        b["index"] = torch.tensor(list(idx))
        return b

    def __iter__(self):
        while True:
            order = self._order(self.epoch)
            while self.index < self.batches_per_epoch:
                i = self.index * self.batch_size
                self.index += 1
                yield self.batch(order[i : i + self.batch_size])
            self.epoch, self.index = self.epoch + 1, 0

    def one_epoch(self):
        for i in range(0, len(self.examples), self.batch_size):
            yield self.batch(range(i, min(i + self.batch_size, len(self.examples))))

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed}

    def load_state_dict(self, st: Mapping[str, int]) -> None:
        self.epoch, self.index = int(st["epoch"]), int(st["index"])
