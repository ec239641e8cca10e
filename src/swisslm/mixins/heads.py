# SPDX-License-Identifier: Apache-2.0
"""Classification head as a mixin: an MLP on pooled hidden states (SAT's MLPHeadMixin).

    head = ClassificationHeadMixin(model.config.hidden_size, num_labels=2, pooling="last")
    model.add_mixin("cls", head)
    logits = head.classify(model, input_ids, attention_mask)      # (B, num_labels)

Pooling needs the attention mask, which the `output_head` slot does not receive, so pooling and
the MLP run on `last_hidden_state` in `classify`. For causal LMs the mixin also takes the
`output_head` slot so the forward skips the vocabulary projection: `model(ids).logits` is then the
head applied to every position (B, T, num_labels) -- what HF's *ForSequenceClassification computes
before it picks the last non-padding token. Pooling: "last" (last non-padding token; decoders),
"mean" (masked mean; sentence encoders such as MiniLM), "first" ([CLS]; BERT).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from ..core.mlp import ACTIVATIONS
from ..core.slots import Mixin
from .lora import attach_trainable, detach_trainable

Pooling = Literal["last", "mean", "first"]


def pool(h: torch.Tensor, attention_mask: torch.Tensor | None, pooling: Pooling) -> torch.Tensor:
    """h (B, T, C) -> (B, C). Works for left and right padding."""
    if pooling == "first":
        if attention_mask is None:
            return h[:, 0]
        first = attention_mask.long().argmax(-1)  # first real token (left padding safe)
        return h[torch.arange(h.shape[0], device=h.device), first]
    if attention_mask is None:
        return h[:, -1] if pooling == "last" else h.mean(1)
    m = attention_mask.to(h.dtype)
    if pooling == "mean":
        return (h * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)
    T = h.shape[1]
    last = (attention_mask.long() * torch.arange(1, T + 1, device=h.device)).argmax(-1)  # (B,)
    return h[torch.arange(h.shape[0], device=h.device), last]


class ClassificationHeadMixin(Mixin):
    """MLP head: [Linear -> act -> dropout] x len(hidden_sizes) -> Linear(num_labels).

    `hidden_sizes=()` gives HF's linear `score` head. Base weights are frozen by default (train
    the head, optionally with LoRA); pass `freeze_base=False` for a full fine-tune.
    """

    def __init__(self, hidden_size: int, num_labels: int, hidden_sizes: Sequence[int] = (256,),
                 activation: str = "gelu", dropout: float = 0.1, pooling: Pooling = "last",
                 freeze_base: bool = True) -> None:
        super().__init__()
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}")
        if pooling not in ("last", "mean", "first"):
            raise ValueError(f"pooling must be 'last', 'mean' or 'first', got {pooling!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r} is not one of {sorted(ACTIVATIONS)}")
        layers: list[nn.Module] = []
        width = hidden_size
        for hs in hidden_sizes:
            layers += [nn.Linear(width, hs), _Act(activation), nn.Dropout(dropout)]
            width = hs
        layers.append(nn.Linear(width, num_labels))
        self.mlp = nn.Sequential(*layers)
        self.num_labels = num_labels
        self.pooling: Pooling = pooling
        self.freeze_base = freeze_base
        self._frozen: list[nn.Parameter] = []

    def attach(self, model: nn.Module) -> None:
        attach_trainable(self, model)

    def detach(self, model: nn.Module) -> None:
        detach_trainable(self, model)

    def output_head(self, h: torch.Tensor) -> torch.Tensor:
        """Slot: per-position scores (B, T, num_labels) instead of vocabulary logits."""
        return self.mlp(h)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """hidden (B, T, C) -> logits (B, num_labels)."""
        return self.mlp(pool(hidden, attention_mask, self.pooling))

    def classify(self, model: nn.Module, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Run the backbone and the head: (B, num_labels) logits."""
        out = model(input_ids, attention_mask=attention_mask, num_logits_to_keep=1)
        return self(out.last_hidden_state, attention_mask)

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        return f"labels={self.num_labels}, pooling={self.pooling}, {n:,} parameters"


class _Act(nn.Module):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.fn = ACTIVATIONS[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name
