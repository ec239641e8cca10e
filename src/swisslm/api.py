# SPDX-License-Identifier: Apache-2.0
"""The user-facing model: the backbone plus tokenizer, generation and HF export.

    model = swisslm.AutoModel.from_pretrained(path)   # HF folder, .gguf, or None (default)
    ids = model.generate(input_ids, max_new_tokens=20)
    model.save_pretrained("out/")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .config import ModelConfig
from .core.backbone import Transformer
from .generation import GenerationConfig
from .generation import generate as _generate
from .io.embedded import default_model_path
from .io.loader import build_on_meta, load_model, materialize_buffers, parse_dtype, save_hf


class Model(Transformer):
    """Transformer + the checkpoint's tokenizer + generate/save_pretrained."""

    tokenizer: Any = None
    source: str | None = None

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
        seed: int | None = None,
        stop: list[str] | None = None,
        attention_mask: torch.Tensor | None = None,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """HF-like: returns (B, T + new) token ids."""
        if eos_token_id is None:
            eos = list(getattr(self.tokenizer, "eos_token_ids", None) or []) or self.config.eos_ids
        else:
            eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        if pad_token_id is None:
            pad_token_id = self.config.pad_token_id
        gen_cfg = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_k=top_k,
            top_p=top_p, min_p=min_p, repetition_penalty=repetition_penalty, seed=seed,
            eos_token_id=eos, pad_token_id=pad_token_id,
        )
        if num_beams != 1 or stop or kwargs:
            from .generation import advanced  # beam search, stop strings, logprobs

            return advanced.generate(self, input_ids, attention_mask, gen_cfg, num_beams=num_beams,
                                     stop=stop, tokenizer=self.tokenizer, **kwargs)
        return _generate(self, input_ids, attention_mask, gen_cfg)

    def save_pretrained(self, folder: str | Path, dtype: torch.dtype | str | None = None) -> Path:
        return save_hf(self, folder, self.tokenizer, parse_dtype(dtype) if dtype else None)


class AutoModel:
    @staticmethod
    def from_pretrained(
        path: str | Path | None = None,
        dtype: str | torch.dtype = "float32",
        device: str | torch.device = "cpu",
    ) -> Model:
        """Load an HF folder (config.json + safetensors), a .gguf file, or, with None, the
        embedded default SmolLM2-135M-Instruct."""
        src = Path(path) if path is not None else default_model_path()
        model, tokenizer = load_model(src, dtype, device, model_cls=Model)
        model.tokenizer = tokenizer
        model.source = str(src)
        return model

    @staticmethod
    def from_config(cfg: ModelConfig, dtype: str | torch.dtype = "float32", device: str = "cpu",
                    seed: int | None = None) -> Model:
        """A randomly initialised model (for training from scratch and tests)."""
        model = build_on_meta(cfg, Model)
        model.to_empty(device=device)
        materialize_buffers(model, device)
        if seed is not None:
            torch.manual_seed(seed)
        model.init_weights()
        return model.to(parse_dtype(dtype))
