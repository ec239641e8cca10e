# SPDX-License-Identifier: Apache-2.0
"""Sentence embeddings from an encoder (BERT / MiniLM), as sentence-transformers computes them:
masked mean of the last hidden states, then (when the model folder asks for it) L2 normalised.

    vecs = sentence_embeddings(model, model.tokenizer, ["a cat", "a dog"])   # (2, C)
    sims = cosine_matrix(vecs)                                                # (2, 2)

A sentence-transformers folder says what to do in modules.json (Pooling, Normalize),
1_Pooling/config.json (mean / cls) and sentence_bert_config.json (max_seq_length); a plain HF
encoder folder gets mean pooling, no normalisation, truncation at max_position_embeddings.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


def mean_pool(h: torch.Tensor, attention_mask: torch.Tensor | None, normalize: bool = False) -> torch.Tensor:
    """h (B, T, C), mask (B, T) 1 = real token -> (B, C): mean over the real tokens, in fp32."""
    h = h.float()
    if attention_mask is None:
        out = h.mean(1)
    else:
        m = attention_mask.to(h.dtype)[..., None]  # (B, T, 1)
        out = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)  # sentence-transformers' clamp
    return F.normalize(out, p=2, dim=-1) if normalize else out


def cls_pool(h: torch.Tensor, attention_mask: torch.Tensor | None = None, normalize: bool = False) -> torch.Tensor:
    out = h[:, 0].float()
    return F.normalize(out, p=2, dim=-1) if normalize else out


def cosine_matrix(vecs: torch.Tensor) -> torch.Tensor:
    """(N, C) -> (N, N) pairwise cosine similarities."""
    v = F.normalize(vecs.float(), p=2, dim=-1)
    return v @ v.T


@dataclass
class PoolingConfig:
    mode: Literal["mean", "cls"] = "mean"
    normalize: bool = False
    max_seq_length: int | None = None

    @classmethod
    def from_folder(cls, folder: str | Path | None) -> PoolingConfig:
        """Read a sentence-transformers folder's modules.json & co.; defaults for anything else."""
        out = cls()
        if folder is None or not Path(folder).is_dir():
            return out
        folder = Path(folder)
        modules = _read(folder / "modules.json") or []
        for mod in modules:
            kind = str(mod.get("type", ""))
            if kind.endswith(".Normalize"):
                out.normalize = True
            elif kind.endswith(".Pooling"):
                pcfg = _read(folder / mod.get("path", "") / "config.json") or {}
                if pcfg.get("pooling_mode_cls_token"):
                    out.mode = "cls"
                elif not pcfg.get("pooling_mode_mean_tokens", True):
                    log.warning("%s: pooling mode other than mean/cls; using mean", folder)
        st = _read(folder / "sentence_bert_config.json") or {}
        if isinstance(st.get("max_seq_length"), int):
            out.max_seq_length = st["max_seq_length"]
        return out


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _truncate(ids: list[int], max_len: int) -> list[int]:
    """Keep the final special token ([SEP]) when cutting, as HF tokenizers' truncation does."""
    return ids if len(ids) <= max_len else ids[: max_len - 1] + ids[-1:]


@torch.no_grad()
def sentence_embeddings(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    pooling: PoolingConfig | None = None,
    batch_size: int = 32,
) -> torch.Tensor:
    """Embed `texts` with an encoder model -> (N, C) fp32. `pooling` defaults to what the model's
    folder (`model.source`) declares."""
    if pooling is None:
        pooling = PoolingConfig.from_folder(getattr(model, "source", None))
    cfg = model.config
    limit = min(x for x in (pooling.max_seq_length, getattr(tokenizer, "model_max_length", None),
                            cfg.max_position_embeddings) if x)
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else 0
    device = next(model.parameters()).device
    pool = mean_pool if pooling.mode == "mean" else cls_pool
    out = []
    for start in range(0, len(texts), batch_size):
        batch = [_truncate(ids, limit) for ids in tokenizer.encode_batch(list(texts[start : start + batch_size]))]
        T = max(len(ids) for ids in batch)
        ids = torch.full((len(batch), T), pad, dtype=torch.long)
        mask = torch.zeros(len(batch), T, dtype=torch.long)
        for i, row in enumerate(batch):  # right padding, as sentence-transformers pads
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        ids, mask = ids.to(device), mask.to(device)
        h = model(ids, attention_mask=mask).last_hidden_state  # (B, T, C)
        out.append(pool(h, mask, pooling.normalize).cpu())
    return torch.cat(out)
