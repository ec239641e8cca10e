# SPDX-License-Identifier: Apache-2.0
"""The records of a generate() call: `GenerationConfig` (in), `Step` (per decode step) and
`GenerationResult` (out).

A `GenerationConfig` is the rows' `SamplingParams` plus what concerns the batch: EOS and pad ids,
per-prompt seeds, copies per prompt, beam search and prompt logprobs. `from_hf()` maps HF's
generate() keywords (`do_sample`, `temperature`, `logprobs=True`, `top_logprobs`, a seed list)
onto it; that mapping is the only place HF's names are known.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch

from .params import MAX_TOP_LOGPROBS, SamplingParams

_PARAM_NAMES = frozenset(f.name for f in fields(SamplingParams))


@dataclass
class GenerationConfig:
    """Rows' sampling params + batch settings (HF's names and defaults for the batch ones)."""

    params: SamplingParams = field(default_factory=lambda: SamplingParams(max_new_tokens=32))
    eos_token_id: list[int] = field(default_factory=list)
    pad_token_id: int | None = None
    seeds: list[int] | None = None  # one per prompt (overrides params.seed)
    # beam search
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    num_return_sequences: int = 1
    # logprob of each prompt token given the previous ones, with this many alternatives
    prompt_logprobs: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.eos_token_id, int):
            self.eos_token_id = [self.eos_token_id]
        self.eos_token_id = [int(e) for e in self.eos_token_id]
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {self.num_beams}")
        if self.num_return_sequences < 1:
            raise ValueError(f"num_return_sequences must be >= 1, got {self.num_return_sequences}")
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise ValueError(f"num_return_sequences ({self.num_return_sequences}) must be <= num_beams "
                             f"({self.num_beams})")
        if self.num_beams == 1 and self.params.greedy and self.num_return_sequences > 1:
            raise ValueError("num_return_sequences > 1 needs sampling (do_sample=True) or beam search "
                             "(greedy decoding would return identical copies)")
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        if self.prompt_logprobs is not None and not 0 <= self.prompt_logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {self.prompt_logprobs}")

    @classmethod
    def from_hf(
        cls,
        max_new_tokens: int = 32,
        do_sample: bool = False,
        temperature: float = 1.0,
        seed: int | list[int] | None = None,
        logprobs: bool = False,
        top_logprobs: int = 0,
        prompt_logprobs: bool = False,
        stop: str | list[str] | None = None,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        num_beams: int = 1,
        length_penalty: float = 1.0,
        early_stopping: bool | str = False,
        num_return_sequences: int = 1,
        **params: Any,
    ) -> GenerationConfig:
        """HF's generate() keywords -> a GenerationConfig. `do_sample=False` is greedy whatever
        the temperature; `top_logprobs` alone implies `logprobs`; other keywords are
        SamplingParams fields (top_k, top_p, min_p, repetition_penalty, min_new_tokens, ...)."""
        unknown = set(params) - _PARAM_NAMES
        if unknown:
            raise TypeError(f"generate() got unexpected keyword arguments: {sorted(unknown)}")
        if do_sample and not temperature > 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
        want = logprobs or (bool(top_logprobs) and not prompt_logprobs)
        try:
            sp = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature if do_sample else 0.0,
                                seed=seed if isinstance(seed, int) else None, stop=stop or [],
                                logprobs=top_logprobs if want else None, **params)
        except ValueError as e:  # name the keyword the caller used
            msg = str(e)
            raise ValueError("top_" + msg if msg.startswith("logprobs ") else msg) from None
        seeds = None if seed is None or isinstance(seed, int) else [int(s) for s in seed]
        return cls(sp, eos_token_id=[] if eos_token_id is None else eos_token_id, pad_token_id=pad_token_id,
                   seeds=seeds, num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping,
                   num_return_sequences=num_return_sequences,
                   prompt_logprobs=top_logprobs if prompt_logprobs else None)

    @property
    def fill_id(self) -> int:
        """What finished rows are padded with: pad id, else the first EOS, else 0."""
        if self.pad_token_id is not None:
            return self.pad_token_id
        return self.eos_token_id[0] if self.eos_token_id else 0


@dataclass
class GenerationResult:
    """Everything one generate call produced. Rows: prompt b's j-th return sequence is row
    b * num_return_sequences + j (HF's layout)."""

    sequences: torch.Tensor  # (N, T + n) prompt (left-padded as given) + new tokens, fill_id after the end
    prompt_length: int  # T
    num_new_tokens: list[int]  # per row: real new tokens (EOS / the token completing a stop string included)
    finish_reasons: list[str]  # per row: "stop" (EOS, stop token or stop string) or "length"
    stop_strings: list[str | None] = field(default_factory=list)  # which stop string ended the row
    texts: list[str] | None = None  # new text per row (needs a tokenizer), cut before a stop string
    sequences_scores: torch.Tensor | None = None  # beam search: HF's length-penalised scores (N,)
    logprobs: torch.Tensor | None = None  # (N, n) raw logprob of each new token; NaN past the row's end
    top_logprob_ids: torch.Tensor | None = None  # (N, n, k); -1 past the end
    top_logprobs: torch.Tensor | None = None  # (N, n, k)
    prompt_logprobs: torch.Tensor | None = None  # (N, T): logprob of prompt token t given < t; NaN at first/pad
    prompt_top_logprob_ids: torch.Tensor | None = None  # (N, T, k)
    prompt_top_logprobs: torch.Tensor | None = None  # (N, T, k)

    def new_tokens(self, row: int) -> list[int]:
        return self.sequences[row, self.prompt_length : self.prompt_length + self.num_new_tokens[row]].tolist()


@dataclass
class Step:
    """One decode step, as `decode_steps` yields it."""

    index: int
    tokens: torch.Tensor  # (N,) fill_id on rows that had already finished
    active: list[bool]  # rows that produced a real token this step
    finished: list[bool]  # rows that are done after this step (any finish reason)
    deltas: list[str] | None  # per row: text now safe to show (UTF-8 complete, no stop-string prefix)
    logprob: torch.Tensor | None = None  # (N,)
    top_ids: torch.Tensor | None = None  # (N, k)
    top_logprobs: torch.Tensor | None = None  # (N, k)
    finish_reasons: list[str | None] = field(default_factory=list)  # per row: "stop" / "length" once done


# generation_config.json keys that mean the same in swisslm's generate (transformers' names):
# these defaults are honoured; others in the file are reported by the caller.
HF_GENERATION_KEYS = frozenset({
    "max_length", "max_new_tokens", "min_length", "min_new_tokens", "do_sample", "temperature", "top_k", "top_p",
    "min_p", "repetition_penalty", "no_repeat_ngram_size", "num_beams", "num_return_sequences", "length_penalty",
    "early_stopping", "eos_token_id", "pad_token_id", "bos_token_id",
})
# bookkeeping keys transformers writes into every generation_config.json
HF_GENERATION_METADATA = frozenset({"transformers_version", "_from_model_config", "use_cache"})


def read_hf_generation_config(folder: Any) -> tuple[dict[str, Any], list[str]]:
    """A checkpoint folder's generation_config.json as (the keys swisslm honours, the other keys
    it holds), ({}, []) when the folder has none. Values are transformers' meanings
    (`max_length` counts the prompt, `do_sample` switches sampling on)."""
    import json
    from pathlib import Path

    path = Path(folder) / "generation_config.json"
    if not path.is_file():
        return {}, []
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    known = {k: v for k, v in data.items() if k in HF_GENERATION_KEYS and v is not None}
    other = sorted(k for k in data if k not in HF_GENERATION_KEYS and k not in HF_GENERATION_METADATA)
    return known, other
