# SPDX-License-Identifier: Apache-2.0
"""SamplingParams: what one generated row asks for, validated once, in its constructor.

The one record behind `Model.generate` / `Model.stream` (through `GenerationConfig`), the server
(one per sequence) and the CLI (its flags are generated from the fields marked `cli`). It is a
plain dataclass and this module imports no torch, so the CLI can validate options before it loads
a model and `--help` stays fast.

    p = SamplingParams(max_new_tokens=64, temperature=0.7, top_p=0.9, seed=1)
    p.greedy            # temperature == 0

Field names are the CLI's (`--max-new-tokens` -> max_new_tokens); the server maps OpenAI's
`max_tokens` and HF's `max_new_tokens` onto them, `Model.generate` maps HF's `do_sample`.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

MAX_TOP_LOGPROBS = 20  # OpenAI's limit for `top_logprobs`


def _cli(help: str) -> dict[str, Any]:
    """Field metadata: this field is a CLI flag (--name-with-dashes) with this help."""
    return {"cli": help}


@dataclass
class SamplingParams:
    """How to choose and when to stop the tokens of one row. temperature 0 means greedy (argmax
    of the processed logits); > 0 samples."""

    max_new_tokens: int = field(default=128, metadata=_cli("most tokens to generate"))
    temperature: float = field(default=0.0, metadata=_cli("0 = greedy (default); > 0 samples"))
    top_k: int = field(default=0, metadata=_cli("sample from the k most likely tokens (0 = all)"))
    top_p: float = field(default=1.0, metadata=_cli("nucleus sampling: smallest set of tokens with this mass"))
    min_p: float = field(default=0.0, metadata=_cli("drop tokens below min_p x the top token's probability"))
    typical_p: float = field(default=1.0, metadata=_cli("locally typical sampling: keep this mass of the tokens "
                                                        "closest to the expected information (1 = off)"))
    repetition_penalty: float = field(default=1.0, metadata=_cli("> 1 discourages tokens already seen"))
    seed: int | None = field(default=None, metadata=_cli("seed of this row's random generator"))
    min_new_tokens: int = 0  # EOS is masked until this many tokens exist (HF's MinNewTokens)
    no_repeat_ngram_size: int = 0  # ban tokens that would repeat an n-gram of the row
    presence_penalty: float = 0.0  # OpenAI: subtracted once from every generated token's logit
    frequency_penalty: float = 0.0  # OpenAI: subtracted per occurrence in the generated tokens
    logit_bias: dict[int, float] | None = None  # token id -> added to its logit
    stop: list[str] = field(default_factory=list)  # text that ends the row (never shown)
    stop_token_ids: list[int] = field(default_factory=list)  # tokens that end the row besides EOS
    ignore_eos: bool = False  # EOS neither ends the row nor is masked (benchmarks)
    logprobs: int | None = None  # None: off; n >= 0: chosen token's logprob + n best alternatives
    skip_special_tokens: bool = True  # special tokens are left out of the text
    prompt_logprobs: int | None = None  # serving: each prompt token's logprob + n best alternatives
    # A compiled grammar (generation/constrained.py Grammar) every row must follow: JSON schema,
    # JSON object or regex. Each row keeps its own parser state; EOS only where it is complete.
    constraint: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = [int(t) for t in self.stop_token_ids or []]
        _check(isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 0, "max_new_tokens", ">= 0",
               self.max_new_tokens)
        _check(isinstance(self.min_new_tokens, int) and self.min_new_tokens >= 0, "min_new_tokens", ">= 0",
               self.min_new_tokens)
        _check(_finite(self.temperature) and self.temperature >= 0, "temperature", ">= 0 (0 = greedy)",
               self.temperature)
        _check(isinstance(self.top_k, int) and self.top_k >= 0, "top_k", ">= 0", self.top_k)
        _check(_finite(self.top_p) and 0.0 < self.top_p <= 1.0, "top_p", "in (0, 1]", self.top_p)
        _check(_finite(self.min_p) and 0.0 <= self.min_p <= 1.0, "min_p", "in [0, 1]", self.min_p)
        _check(_finite(self.typical_p) and 0.0 < self.typical_p <= 1.0, "typical_p", "in (0, 1]", self.typical_p)
        _check(_finite(self.repetition_penalty) and self.repetition_penalty > 0, "repetition_penalty", "> 0",
               self.repetition_penalty)
        _check(isinstance(self.no_repeat_ngram_size, int) and self.no_repeat_ngram_size >= 0,
               "no_repeat_ngram_size", ">= 0", self.no_repeat_ngram_size)
        _check(_finite(self.presence_penalty), "presence_penalty", "finite", self.presence_penalty)
        _check(_finite(self.frequency_penalty), "frequency_penalty", "finite", self.frequency_penalty)
        _check(self.seed is None or isinstance(self.seed, int), "seed", "an integer", self.seed)
        _check(self.logprobs is None or (isinstance(self.logprobs, int) and 0 <= self.logprobs <= MAX_TOP_LOGPROBS),
               "logprobs", f"in [0, {MAX_TOP_LOGPROBS}]", self.logprobs)
        _check(self.prompt_logprobs is None or (isinstance(self.prompt_logprobs, int)
                                                and 0 <= self.prompt_logprobs <= MAX_TOP_LOGPROBS),
               "prompt_logprobs", f"in [0, {MAX_TOP_LOGPROBS}]", self.prompt_logprobs)
        if self.logit_bias:
            self.logit_bias = {int(k): float(v) for k, v in self.logit_bias.items()}
            _check(all(k >= 0 and _finite(v) for k, v in self.logit_bias.items()), "logit_bias",
                   "token ids >= 0 with finite biases", self.logit_bias)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def plain_greedy(self) -> bool:
        """Greedy with nothing that reshapes the logits: the argmax of the raw logits (several
        such rows share one batched argmax)."""
        return (self.greedy and self.repetition_penalty == 1.0 and not self.presence_penalty
                and not self.frequency_penalty and not self.logit_bias and not self.no_repeat_ngram_size
                and not self.min_new_tokens and self.constraint is None)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check(ok: bool, name: str, rule: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"{name} must be {rule}, got {value!r}")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _cli_fields() -> list:
    return [f for f in fields(SamplingParams) if "cli" in f.metadata]


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    """Add one flag per CLI field of SamplingParams (--max-new-tokens, --temperature, --top-k,
    --top-p, --min-p, --typical-p, --repetition-penalty, --seed), typed and defaulted from the record."""
    for f in _cli_fields():
        default = f.default if f.default is not MISSING else None
        kind = int if str(f.type).startswith("int") else float
        parser.add_argument(_flag(f.name), type=kind, default=default, help=f.metadata["cli"])


def from_cli_args(args: argparse.Namespace, **extra: Any) -> SamplingParams:
    """The SamplingParams of parsed CLI flags (`extra`: fields the command sets itself, e.g.
    stop=args.stop). An invalid value raises ValueError naming the flag, not the field."""
    values = {f.name: getattr(args, f.name) for f in _cli_fields() if hasattr(args, f.name)}
    if values.get("max_new_tokens", 1) < 1:  # a command that generates nothing is a mistake
        raise ValueError(f"--max-new-tokens must be > 0, got {values['max_new_tokens']}")
    try:
        return SamplingParams(**values, **extra)
    except ValueError as e:
        msg = str(e)
        name = msg.split(" ", 1)[0]
        if name in values:
            msg = _flag(name) + msg[len(name):]
        raise ValueError(msg) from None
