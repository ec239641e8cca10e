# SPDX-License-Identifier: Apache-2.0
"""The user-facing model: the backbone plus tokenizer, generation and HF export.

    model = swisslm.AutoModel.from_pretrained(path)   # HF folder, .gguf, hub id, or None (default)
    ids = model.generate(input_ids, max_new_tokens=20)
    model.save_pretrained("out/")
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from .config import ModelConfig
from .core.backbone import Transformer
from .generation.config import GenerationConfig, GenerationResult
from .generation.generate import run as run_generation
from .generation.params import SamplingParams
from .generation.rows import resolve_eos
from .generation.scoring import LoglikelihoodResult, loglikelihood
from .generation.streaming import TextStream, stream
from .io.build import new_model
from .io.embedded import default_model_path
from .io.hub import resolve_model
from .io.loader import SourceFormat, dtype_name, load_model, parse_dtype, save_hf

# GenerationConfig's own fields besides the rows' params: allowed next to sampling=
_BATCH_KEYWORDS = frozenset(f.name for f in dataclasses.fields(GenerationConfig)) - {"params"}


class Model(Transformer):
    """Transformer + the checkpoint's tokenizer + generate/save_pretrained."""

    tokenizer: Any = None
    source: str | None = None  # the local file or folder the weights came from
    name_or_path: str | None = None  # what from_pretrained was given (a path or a hub repo id)
    source_format: SourceFormat | None = None  # how that file stored the weights (set by the loader)

    def generation_config(
        self,
        max_new_tokens: int = 32,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        sampling: SamplingParams | None = None,
        **kwargs: Any,
    ) -> GenerationConfig:
        """A GenerationConfig with this checkpoint's EOS ids (tokenizer's stop ids, else the
        config's) and pad id filled in. The rows' sampling comes from `sampling` (a
        SamplingParams, as the CLI and the server build it) or from HF's keywords in kwargs
        (do_sample, temperature, top_k, ...); other kwargs are GenerationConfig's batch fields.
        `json_schema` (a dict or JSON text) or `regex`: every row's output follows it (constrained
        decoding, generation/constrained.py)."""
        eos = resolve_eos(self.tokenizer, self.config) if eos_token_id is None else eos_token_id
        constraint = self._constraint(kwargs.pop("json_schema", None), kwargs.pop("regex", None), eos)
        cfg = self._generation_config(max_new_tokens, eos, pad_token_id, sampling, **kwargs)
        if constraint is not None:
            cfg.params = dataclasses.replace(cfg.params, constraint=constraint)
        return cfg

    def _constraint(self, json_schema: Any, regex: str | None, eos: int | list[int]) -> Any:
        if json_schema is None and regex is None:
            return None
        if json_schema is not None and regex is not None:
            raise ValueError("pass json_schema or regex, not both")
        if self.tokenizer is None:
            raise ValueError("constrained decoding needs the model's tokenizer")
        from .generation.constrained import Grammar

        eos_ids = [eos] if isinstance(eos, int) else list(eos)
        if regex is not None:
            return Grammar.regex(regex, self.tokenizer, self.config.vocab_size, eos_ids)
        return Grammar.json_schema(json_schema, self.tokenizer, self.config.vocab_size, eos_ids)

    def _generation_config(self, max_new_tokens: int, eos: int | list[int], pad_token_id: int | None,
                           sampling: SamplingParams | None, **kwargs: Any) -> GenerationConfig:
        if pad_token_id is None:
            pad_token_id = self.config.pad_token_id
        if kwargs.get("stop") is None:
            kwargs.pop("stop", None)
        if sampling is None:
            return GenerationConfig.from_hf(max_new_tokens=max_new_tokens, eos_token_id=eos,
                                            pad_token_id=pad_token_id, **kwargs)
        given = set(kwargs) - _BATCH_KEYWORDS
        if given:
            raise TypeError(f"pass either sampling= or sampling keywords, not both: got {sorted(given)}")
        return GenerationConfig(sampling, eos_token_id=eos, pad_token_id=pad_token_id, **kwargs)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int = 32,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        num_beams: int = 1,
        seed: int | list[int] | None = None,
        stop: list[str] | None = None,
        attention_mask: torch.Tensor | None = None,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        return_dict_in_generate: bool = False,
        sampling: SamplingParams | None = None,
        **kwargs: Any,
    ) -> torch.Tensor | GenerationResult:
        """HF-like: returns (B * num_return_sequences, T + new) token ids; with
        `return_dict_in_generate=True` a GenerationResult (texts, finish reasons, logprobs,
        beam `sequences_scores`). Other kwargs are GenerationConfig fields: length_penalty,
        early_stopping, num_return_sequences, no_repeat_ngram_size, logprobs, top_logprobs,
        prompt_logprobs. Stop strings end a row once its decoded text contains one; the ids
        then include the token that completed it, the result's texts stop before it.

        `sampling`: a SamplingParams record instead of the HF sampling keywords (the CLI and the
        server build one); then only batch keywords (num_beams, num_return_sequences, ...) may
        be given besides it."""
        if sampling is not None:
            hf = dict(max_new_tokens=(max_new_tokens, 32), do_sample=(do_sample, False), temperature=(temperature, 1.0),
                      top_k=(top_k, 0), top_p=(top_p, 1.0), min_p=(min_p, 0.0), seed=(seed, None), stop=(stop, None),
                      repetition_penalty=(repetition_penalty, 1.0))
            given = sorted(k for k, (v, default) in hf.items() if v != default)
            if given:
                raise TypeError(f"pass either sampling= or sampling keywords, not both: got {given}")
            cfg = self.generation_config(eos_token_id=eos_token_id, pad_token_id=pad_token_id, sampling=sampling,
                                         num_beams=num_beams, **kwargs)
        else:
            cfg = self.generation_config(
                max_new_tokens=max_new_tokens, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                repetition_penalty=repetition_penalty, num_beams=num_beams, seed=seed, stop=stop, **kwargs)
        if (cfg.params.logprobs is not None or cfg.prompt_logprobs is not None) and not return_dict_in_generate:
            raise ValueError("logprobs come in the GenerationResult: pass return_dict_in_generate=True")
        res = run_generation(self, input_ids, attention_mask, cfg, self.tokenizer)
        return res if return_dict_in_generate else res.sequences

    def encode_prompt(self, prompt: str | list[int] | torch.Tensor, chat: bool = False) -> torch.Tensor:
        """A (1, T) tensor of ids on the model's device: text is encoded (in a one-turn chat
        template with chat=True), ids pass through. The CLI and `stream` encode through it."""
        device = next(self.parameters()).device
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("a text prompt needs a tokenizer")
            if chat:
                ids = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                         add_generation_prompt=True, tokenize=True)
            else:
                ids = self.tokenizer.encode(prompt)
            return torch.tensor([ids], device=device)
        return torch.as_tensor(prompt, device=device).long().reshape(1, -1)

    def stream(self, prompt: str | list[int] | torch.Tensor, chat: bool = False, **kwargs: Any) -> TextStream:
        """Iterate over the completion of one prompt as UTF-8-complete text deltas:

            for delta in model.stream("Once upon a time", max_new_tokens=50):
                print(delta, end="", flush=True)

        `prompt` is text (wrapped in the chat template with chat=True) or token ids; kwargs
        are generate()'s (greedy or sampling; stop strings are honoured and never emitted)."""
        cfg = self.generation_config(**kwargs)
        return stream(self, self.encode_prompt(prompt, chat), cfg, self.tokenizer)

    @torch.no_grad()
    def score(self, context: str | list[int], continuations: list[str] | list[list[int]],
              batch_size: int = 8) -> list[LoglikelihoodResult]:
        """log P(continuation | context) for each continuation (lm-evaluation-harness's
        loglikelihood). Text is split as the harness does: trailing spaces of the context
        move to the continuation, and the continuation's tokens are those of context +
        continuation past the context's tokens."""
        from .generation.scoring import encode_pair

        reqs = []
        for cont in continuations:
            if isinstance(context, str) != isinstance(cont, str):
                raise ValueError("context and continuations must both be text or both token ids")
            reqs.append(encode_pair(self.tokenizer, context, cont) if isinstance(cont, str)
                        else (list(context), list(cont)))
        return loglikelihood(self, reqs, batch_size=batch_size)

    def storage_format(self) -> str:
        """How the weights are stored, from the file to memory, e.g. "GGUF Q4_1 (79%), Q8_0 (21%)
        → fp32" (dequantized on load), "bf16 → fp32", "fp32", "int8 weight-only", "int4
        weight-only (group 32; embedding, head int8)", or "GGUF Q4_1 → fp32 → int8 weight-only"
        after `quantize_`."""
        steps = []
        src = self.source_format
        if src is not None and src.types:
            total = sum(src.types.values())
            ranked = sorted(src.types.items(), key=lambda kv: -kv[1])
            types = ranked[0][0] if len(ranked) == 1 else ", ".join(
                f"{name} ({_percent(n, total)})" for name, n in ranked)
            steps.append(f"GGUF {types}" if src.container == "gguf" else types)
        q = getattr(self, "quantization", None)
        floats = [p.dtype for p in self.parameters() if p.is_floating_point() and p.dim() >= 2]
        # The float dtype the matrices were loaded in (before quantize_, the norms still have it).
        loaded = dtype_name(max(set(floats), key=floats.count) if floats and not q else self._float_dtype())
        gguf_native = bool(q) and q.get("scheme") == "gguf"  # no float stage either
        if steps != [loaded] and (steps or not q) and not gguf_native:  # nor a quantized swisslm folder
            steps.append(loaded)
        if q:
            steps.append(_describe_quantization(q))
        return " → ".join(steps)

    def _float_dtype(self) -> torch.dtype:
        """The float dtype of the model's tensors (norms when the matrices are quantized)."""
        for t in (*self.parameters(), *self.buffers()):
            if t.is_floating_point():
                return t.dtype
        return torch.float32

    def save_pretrained(self, folder: str | Path, dtype: torch.dtype | str | None = None) -> Path:
        return save_hf(self, folder, self.tokenizer, parse_dtype(dtype) if dtype else None)


def _percent(n: int, total: int) -> str:
    pct = 100 * n / total
    return f"{pct:.0f}%" if pct >= 0.5 else "<1%"


def _describe_quantization(q: dict[str, Any]) -> str:
    """'int8 weight-only', or 'int4 weight-only (group 32; embedding, head int8)': int4 keeps the
    embedding, the LM head and layers whose width is not a multiple of the group at int8."""
    scheme = q.get("scheme", "?")
    if scheme == "gguf":
        return _describe_gguf(q)
    if scheme != "int4":
        return f"{scheme} weight-only"
    kinds = q.get("modules", {})
    int8 = []
    if "int8_embedding" in kinds.values():
        int8.append("embedding")
    if kinds.get("head.proj") in ("int8", "tied"):
        int8.append("head")
    n = sum(1 for name, kind in kinds.items() if kind == "int8" and name != "head.proj")
    if n:
        int8.append(f"{n} layer{'s' if n > 1 else ''}")
    if "int8_experts" in kinds.values():
        int8.append("experts")
    extra = f"; {', '.join(int8)} int8" if int8 else ""
    return f"int4 weight-only (group {q.get('group_size', '?')}{extra})"


def _describe_gguf(q: dict[str, Any]) -> str:
    """'kept quantized: Q4_1 as int4 g32 (210), Q8_0 as int8 g32 (embedding, tied head)': how each
    GGUF type of a natively loaded file runs (kinds "gguf Q4_1 int4 g32", quant/gguf_blocks.py);
    the source format before it lists every type, so types not named here were expanded."""
    runs: dict[str, list[str]] = {}
    for name, kind in q.get("modules", {}).items():
        if kind == "tied":
            continue
        _, source, *layout = kind.split(" ")
        key = f"{source} as {' '.join(layout)}"
        runs.setdefault(key, []).append("embedding" if name == "embed.word" else "head" if name == "head.proj"
                                        else "linear")
    tied = q.get("modules", {}).get("head.proj") == "tied"
    parts = []
    for key, names in runs.items():
        n = names.count("linear")
        what = [f"{n} linear{'s' if n != 1 else ''}"] if n else []
        what += [w for w in ("embedding", "head") if w in names]
        if "embedding" in names and tied:
            what.append("tied head")
        parts.append(f"{key} ({', '.join(what)})")
    return "kept quantized: " + "; ".join(parts)


class AutoModel:
    @staticmethod
    def from_pretrained(
        path: str | Path | None = None,
        dtype: str | torch.dtype | None = None,
        device: str | torch.device = "cpu",
        backend: str = "auto",
    ) -> Model:
        """Load an HF folder (config.json + safetensors), a .gguf file, a Hugging Face repo id
        found in the local HF cache (`ORG/NAME`, `ORG/NAME@REVISION`, `ORG/NAME/FILE.gguf`; a
        local path of the same name wins; never downloads), or, with None, the embedded default
        SmolLM2-135M-Instruct. `backend`: "auto" puts a CPU model on swisslm's CPU kernels where
        they run (kernels.apply_), "cpu" insists on them, "torch" keeps plain torch. `dtype`
        None: a .gguf file's Q4_0/Q4_1/Q4_K/Q8_0/Q5_K/Q6_K matrices stay quantized and run on the
        int kernels, everything else loads fp32; "float32" (or another float dtype) expands."""
        from .kernels.backend import apply_backend_

        src = resolve_model(path) if path is not None else default_model_path()
        model, tokenizer = load_model(src, dtype, device, model_cls=Model)
        model.tokenizer = tokenizer
        model.source = str(src)
        model.name_or_path = str(path) if path is not None else str(src)
        return apply_backend_(model, backend)

    @staticmethod
    def from_config(cfg: ModelConfig, dtype: str | torch.dtype = "float32", device: str = "cpu",
                    seed: int | None = None, backend: str = "auto") -> Model:
        """A randomly initialised model (for training from scratch and tests); `backend` as in
        from_pretrained."""
        from .kernels.backend import apply_backend_

        return apply_backend_(new_model(cfg, Model, parse_dtype(dtype), device, seed), backend)
