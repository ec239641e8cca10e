# SPDX-License-Identifier: Apache-2.0
"""The KV-cached decode loop: prefill once, then one token per step for the whole batch.

Prompts may differ in length: they arrive left-padded with an attention mask (HF's
convention); positions are counted per row from each row's first real token.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .sampling import process_logits, sample


@dataclass
class GenerationConfig:
    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    eos_token_id: list[int] = field(default_factory=list)
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.do_sample and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")


def prepare_cache(model, batch: int, total_len: int) -> None:
    """(Re)allocate the static cache only when the shape changes, so repeated calls reuse it."""
    blk = model.layers[0].attn
    cache = blk.cache
    if cache is None or cache.k.shape[0] != batch or model.max_cache_len < total_len:
        model.setup_cache(batch, total_len)


@torch.no_grad()
def generate(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
             config: GenerationConfig | None = None, streamer=None) -> torch.Tensor:
    """Returns (B, T + n) token ids, n <= max_new_tokens (stops early when every row ended).
    Finished rows are filled with pad_token_id (or their EOS when no pad id is set).
    `streamer(tokens (B,))` is called with each new column of tokens."""
    cfg = config or GenerationConfig()
    B, T = input_ids.shape
    device = input_ids.device
    if cfg.max_new_tokens == 0:
        return input_ids
    S = T + cfg.max_new_tokens
    prepare_cache(model, B, S)
    mask = torch.ones(B, model.max_cache_len, dtype=torch.long, device=device)
    if attention_mask is not None:
        mask[:, :T] = attention_mask
    positions = (mask[:, :T].cumsum(-1) - 1).clamp(min=0)  # (B, T)
    generator = None
    if cfg.do_sample:
        generator = torch.Generator(device=device)
        generator.manual_seed(cfg.seed if cfg.seed is not None else torch.seed())
    eos = torch.tensor(cfg.eos_token_id or [-1], device=device)
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else (cfg.eos_token_id or [0])[0]
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    out = torch.empty(B, S, dtype=torch.long, device=device)
    out[:, :T] = input_ids
    logits = model(input_ids, attention_mask=mask, position_ids=positions,
                   input_pos=torch.arange(T, device=device), num_logits_to_keep=1).logits[:, -1]
    next_pos = positions[:, -1] + 1
    n = 0
    for step in range(cfg.max_new_tokens):
        seen = out[:, : T + step] if cfg.repetition_penalty != 1.0 else None
        scores = process_logits(logits, seen, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                                min_p=cfg.min_p, repetition_penalty=cfg.repetition_penalty,
                                do_sample=cfg.do_sample)
        tok = sample(scores, generator) if cfg.do_sample else scores.argmax(-1)
        tok = torch.where(finished, torch.full_like(tok, pad), tok)
        out[:, T + step] = tok
        n = step + 1
        if streamer is not None:
            streamer(tok)
        finished |= torch.isin(tok, eos)
        if bool(finished.all()) or step == cfg.max_new_tokens - 1:
            break
        logits = model(tok[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                       input_pos=torch.tensor([T + step], device=device)).logits[:, -1]
        next_pos = next_pos + 1
    return out[:, : T + n]
