# SPDX-License-Identifier: Apache-2.0
"""AutoModelForSequenceClassification over swisslm's classification head: a `swisslm classify`
output folder (classifier_config.json + classifier_head.safetensors [+ LoRA adapter]) loaded by
finetune.classify.load_classifier, with transformers' forward (logits (B, num_labels), loss with
labels: cross-entropy, or MSE when num_labels == 1, as transformers' single_label /
regression problem types)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .outputs import ModelOutput


class SequenceClassifier(nn.Module):
    """The backbone (a PreTrainedModel) plus its ClassificationHeadMixin."""

    def __init__(self, model: Any, head: Any, meta: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.head = head
        self.labels = list(meta.get("labels", []))
        self.config = model.config
        self.tokenizer = model.tokenizer

    @property
    def num_labels(self) -> int:
        return self.head.num_labels

    @property
    def id2label(self) -> dict[int, str]:
        return {i: str(lab) for i, lab in enumerate(self.labels)}

    @property
    def device(self) -> torch.device:
        return self.model.device

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, **kwargs: Any) -> Any:
        if kwargs:
            raise TypeError(f"forward() got unexpected keyword arguments: {sorted(kwargs)}")
        out = self.model(input_ids, attention_mask=attention_mask, output_hidden_states=output_hidden_states)
        logits = self.head(out.last_hidden_state, attention_mask)
        loss = None
        if labels is not None:
            labels = labels.to(logits.device)
            if self.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1).float(), labels.float())
            else:
                loss = F.cross_entropy(logits.float(), labels.long())
        res = ModelOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)
        return res if return_dict is not False else res.to_tuple()


def load_sequence_classifier(path: str | os.PathLike[str], kwargs: dict[str, Any]) -> SequenceClassifier:
    from ..finetune.classify import CONFIG_FILE, load_classifier
    from .loading import check_load_kwargs
    from .model import adopt

    check_load_kwargs("AutoModelForSequenceClassification", kwargs)
    run = Path(path)
    if not (run / CONFIG_FILE).is_file():
        raise ValueError(f"{run}: AutoModelForSequenceClassification loads a `swisslm classify` output folder "
                         f"(with {CONFIG_FILE}); transformers' *ForSequenceClassification folders are not supported")
    if kwargs.get("device_map") not in (None, "cpu", "auto"):
        raise ValueError("AutoModelForSequenceClassification: device_map must be 'cpu' or 'auto' here")
    dtype = kwargs.get("dtype", kwargs.get("torch_dtype")) or "float32"
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    model, head, meta = load_classifier(run, dtype=dtype, device=kwargs.get("device", "cpu"))
    n = kwargs.get("num_labels")
    if n is not None and n != head.num_labels:
        raise ValueError(f"num_labels={n} but the saved head has {head.num_labels} labels")
    return SequenceClassifier(adopt(model), head, meta).eval()
