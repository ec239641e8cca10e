# SPDX-License-Identifier: Apache-2.0
"""Building a model without weights: on the meta device (with its family's modules attached),
then its computed buffers off meta; or a randomly initialised one. The loaders (loader.py,
quantized.py), AutoModel and train/ share it."""

from __future__ import annotations

from typing import TypeVar

import torch
from torch.overrides import TorchFunctionMode

from ..config import ModelConfig
from ..core.backbone import Transformer
from ..families import get_family

M = TypeVar("M", bound=Transformer)


class _SkipInit(TorchFunctionMode):
    """Skips torch.nn.init's fills while a model is built on the meta device: meta tensors hold
    no values, and `normal_` on a meta tensor goes through torch._refs, whose first call imports
    torch._dynamo (1-5 s of a CLI start-up). The weights are loaded or `init_weights()`ed after."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def build_on_meta(cfg: ModelConfig, model_cls: type[M]) -> M:
    with torch.device("meta"), _SkipInit():
        model = model_cls(cfg)
        get_family(cfg.family).attach_modules(model)
        return model


def materialize_buffers(model: Transformer, device: torch.device | str) -> None:
    """Non-persistent buffers (rotary inv_freq, ...) are computed, not loaded: rebuild them off meta."""
    from ..core.rope import rope_inv_freq

    model.register_buffer("inv_freq", rope_inv_freq(model.config).to(device), persistent=False)
    for m in model.modules():
        if hasattr(m, "materialize_buffers"):
            m.materialize_buffers(device)


def new_model(cfg: ModelConfig, model_cls: type[M] = Transformer, dtype: torch.dtype = torch.float32,  # type: ignore[assignment]
              device: str | torch.device = "cpu", seed: int | None = None) -> M:
    """A randomly initialised model (training from scratch, tests): built on meta, allocated on
    `device`, buffers computed, weights drawn by `init_weights` (seeded when `seed` is given)."""
    model = build_on_meta(cfg, model_cls)
    model.to_empty(device=device)
    materialize_buffers(model, device)
    if seed is not None:
        torch.manual_seed(seed)
    model.init_weights()
    return model.to(dtype)
