# SPDX-License-Identifier: Apache-2.0
"""The user-facing model: the backbone plus tokenizer, generation and HF export.

    model = swisslm.AutoModel.from_pretrained(path)   # HF folder, .gguf, or None (default)
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
from .generation import GenerationConfig, GenerationResult, LoglikelihoodResult, TextStream, loglikelihood, stream
from .generation.generate import run as run_generation
from .io.embedded import default_model_path
from .io.loader import build_on_meta, load_model, materialize_buffers, parse_dtype, save_hf


class Model(Transformer):
    """Transformer + the checkpoint's tokenizer + generate/save_pretrained."""

    tokenizer: Any = None
    source: str | None = None

    def generation_config(
        self,
        max_new_tokens: int = 32,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        **kwargs: Any,
    ) -> GenerationConfig:
        """A GenerationConfig with this checkpoint's EOS ids (tokenizer's stop ids, else the
        config's) and pad id filled in; kwargs are GenerationConfig fields."""
        if eos_token_id is None:
            eos = list(getattr(self.tokenizer, "eos_token_ids", None) or []) or self.config.eos_ids
        else:
            eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        if pad_token_id is None:
            pad_token_id = self.config.pad_token_id
        if kwargs.get("stop") is None:
            kwargs.pop("stop", None)
        unknown = set(kwargs) - {f.name for f in dataclasses.fields(GenerationConfig)}
        if unknown:
            raise TypeError(f"generate() got unexpected keyword arguments: {sorted(unknown)}")
        return GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad_token_id,
                                **kwargs)

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
        **kwargs: Any,
    ) -> torch.Tensor | GenerationResult:
        """HF-like: returns (B * num_return_sequences, T + new) token ids; with
        `return_dict_in_generate=True` a GenerationResult (texts, finish reasons, logprobs,
        beam `sequences_scores`). Other kwargs are GenerationConfig fields: length_penalty,
        early_stopping, num_return_sequences, no_repeat_ngram_size, logprobs, top_logprobs,
        prompt_logprobs. Stop strings end a row once its decoded text contains one; the ids
        then include the token that completed it, the result's texts stop before it."""
        cfg = self.generation_config(
            max_new_tokens=max_new_tokens, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
            do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
            repetition_penalty=repetition_penalty, num_beams=num_beams, seed=seed, stop=stop, **kwargs)
        if (cfg.logprobs or cfg.prompt_logprobs) and not return_dict_in_generate:
            raise ValueError("logprobs come in the GenerationResult: pass return_dict_in_generate=True")
        res = run_generation(self, input_ids, attention_mask, cfg, self.tokenizer)
        return res if return_dict_in_generate else res.sequences

    def _encode_prompt(self, prompt: str | list[int] | torch.Tensor, chat: bool) -> torch.Tensor:
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
        return stream(self, self._encode_prompt(prompt, chat), cfg, self.tokenizer)

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

    def save_pretrained(self, folder: str | Path, dtype: torch.dtype | str | None = None) -> Path:
        return save_hf(self, folder, self.tokenizer, parse_dtype(dtype) if dtype else None)


class AutoModel:
    @staticmethod
    def from_pretrained(
        path: str | Path | None = None,
        dtype: str | torch.dtype = "float32",
        device: str | torch.device = "cpu",
        backend: str = "auto",
    ) -> Model:
        """Load an HF folder (config.json + safetensors), a .gguf file, or, with None, the
        embedded default SmolLM2-135M-Instruct. `backend`: "auto" puts a CPU model on swisslm's
        CPU kernels where they run (kernels.apply_), "cpu" insists on them, "torch" keeps plain
        torch."""
        from .kernels.backend import apply_backend_

        src = Path(path) if path is not None else default_model_path()
        model, tokenizer = load_model(src, dtype, device, model_cls=Model)
        model.tokenizer = tokenizer
        model.source = str(src)
        return apply_backend_(model, backend)

    @staticmethod
    def from_config(cfg: ModelConfig, dtype: str | torch.dtype = "float32", device: str = "cpu",
                    seed: int | None = None, backend: str = "auto") -> Model:
        """A randomly initialised model (for training from scratch and tests); `backend` as in
        from_pretrained."""
        from .kernels.backend import apply_backend_

        model = build_on_meta(cfg, Model)
        model.to_empty(device=device)
        materialize_buffers(model, device)
        if seed is not None:
            torch.manual_seed(seed)
        model.init_weights()
        return apply_backend_(model.to(parse_dtype(dtype)), backend)
