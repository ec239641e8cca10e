# SPDX-License-Identifier: Apache-2.0
"""The quantized checkpoint format: save_quantized / load_quantized (the loader calls the latter
when config.json carries a "swisslm" object). Format: see quant/api.py's docstring."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import CheckpointError
from ..families import get_family
from ..quant.api import FORMAT_VERSION, SCHEMES, apply_structure, tie_head
from .build import build_on_meta, materialize_buffers
from .safetensors_io import save_sharded


def save_quantized(model: nn.Module, folder: str | Path, tokenizer: Any = None) -> Path:
    """Write a quantized checkpoint folder (see module docstring)."""
    q = getattr(model, "quantization", None)
    if not q:
        raise ValueError("model is not quantized; call quantize_(model, scheme) first")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    cfg: ModelConfig = model.config
    hf = get_family(cfg.family).config_to_hf(cfg)
    hf.update({k: v for k, v in cfg.extra.items() if k not in hf})
    hf["swisslm"] = {"format": FORMAT_VERSION, "config": cfg.to_dict(), "quantization": q}
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("mixins.")}
    if q["modules"].get("head.proj") == "tied" or (cfg.tie_embeddings and "head.proj" not in q["modules"]):
        for k in [k for k in state if k.startswith("head.proj.")]:
            state.pop(k)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    save_sharded(tensors, out, 5 * 1024**3)
    (out / "config.json").write_text(json.dumps(hf, indent=2))
    gen = {k: getattr(cfg, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id") if getattr(cfg, k) is not None}
    if gen:
        (out / "generation_config.json").write_text(json.dumps(gen, indent=2))
    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tok is not None:
        tok.save(out)
    return out


def load_quantized(
    path: Path,
    hf: dict[str, Any],
    tensors: Iterable[tuple[str, torch.Tensor]],
    tokenizer: Any,
    dtype: torch.dtype,
    device: str | torch.device,
    model_cls: type,
) -> tuple[nn.Module, Any]:
    """Build on meta, swap in quantized modules, assign the stored tensors (no float detour)."""
    meta = hf["swisslm"]
    if not isinstance(meta, dict) or "config" not in meta or "quantization" not in meta:
        raise CheckpointError(f"{path}: config.json 'swisslm' needs 'config' and 'quantization'")
    if int(meta.get("format", 1)) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: quantized format {meta['format']} is newer than this swisslm reads")
    q = meta["quantization"]
    if q.get("scheme") not in SCHEMES:
        raise CheckpointError(f"{path}: unknown quantization scheme {q.get('scheme')!r}")
    cfg = ModelConfig.from_dict(meta["config"])
    model = build_on_meta(cfg, model_cls)
    apply_structure(model, q, str(path))
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("mixins.")}
    tied = q["modules"].get("head.proj") == "tied" or (cfg.tie_embeddings and "head.proj" not in q["modules"])
    if tied:
        for k in [k for k in expected if k.startswith("head.proj.")]:
            expected.pop(k)
    state: dict[str, torch.Tensor] = {}
    problems: list[str] = []
    for name, t in tensors:
        if name not in expected:
            problems.append(f"tensor {name!r} has no place in the model")
            continue
        want = expected[name]
        if tuple(t.shape) != tuple(want.shape):
            problems.append(f"{name}: shape {tuple(t.shape)} != expected {tuple(want.shape)}")
        elif t.dtype != want.dtype and not (t.is_floating_point() and want.is_floating_point()):
            problems.append(f"{name}: dtype {t.dtype} != expected {want.dtype}")
        # Quantized payloads keep their dtype; float tensors (norms, biases) follow `dtype`,
        # scales stay fp32.
        keep = not t.is_floating_point() or name.endswith(("scales", "mins"))
        state[name] = t if keep else t.to(dtype)
    problems += [f"missing tensor for {n!r}" for n in expected if n not in state]
    if problems:
        shown = "; ".join(problems[:20]) + (f"; ... {len(problems) - 20} more" if len(problems) > 20 else "")
        raise CheckpointError(f"{path}: {len(problems)} weight problem(s): {shown}")
    model.load_state_dict(state, strict=False, assign=True)
    if tied:
        if q["modules"].get("head.proj") == "tied":
            tie_head(model)
        else:
            model.head.proj.weight = model.embed.word.weight
    for m in model.modules():  # quantized layers compute in the requested float dtype
        if hasattr(m, "compute_dtype"):
            m.compute_dtype = dtype
    materialize_buffers(model, "cpu")
    model.to(device)
    model.quantization = q
    model.eval()
    return model, tokenizer
