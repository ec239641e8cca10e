# SPDX-License-Identifier: Apache-2.0
"""Load any supported checkpoint into the backbone, and export HF folders.

Both sources (HF folder, GGUF file) are turned into a stream of (HF name, tensor) pairs plus
an HF-style config dict, so one code path maps names, checks shapes and fills the model.
The model is built on the meta device and filled with `load_state_dict(assign=True)`:
no random init, no second copy of the weights.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from ..config import ConfigError
from ..core.backbone import Transformer
from ..families import family_for_hf_config, get_family
from ..families.weight_map import CompiledMap
from .build import build_on_meta, materialize_buffers
from .errors import CheckpointError
from .safetensors_io import iter_safetensors, save_sharded

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Transformer)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclass
class SourceFormat:
    """How a checkpoint stored its weight matrices, recorded on the model as `source_format` by
    `load_model` (what `Model.storage_format()` describes: "GGUF Q4_1 → fp32", "bf16 → fp32").

    `types` maps each storage type of the matrices (tensors of 2+ dims; norms and biases are fp32
    in every GGUF and say nothing about the format) to how many values it holds: GGUF type names
    ("Q4_1", "Q8_0", "F16") for a .gguf file, "fp32" / "bf16" / "fp16" for safetensors."""

    container: str  # "gguf" | "safetensors"
    types: dict[str, int] = field(default_factory=dict)


def dtype_name(dtype: torch.dtype) -> str:
    return DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def read_hf_config(path: Path) -> dict[str, Any]:
    cfg_path = path / "config.json"
    if not cfg_path.exists():
        raise CheckpointError(f"{path}: no config.json (expected an HF model folder or a .gguf file)")
    try:
        hf = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path}: invalid JSON ({e})") from None
    if not isinstance(hf, dict):
        raise CheckpointError(f"{cfg_path}: expected a JSON object")
    return hf


def _tally(tensors: Iterable[tuple[str, torch.Tensor]], types: Counter[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """Pass the stream through, counting the values of each matrix by its stored dtype."""
    for name, t in tensors:
        if t.dim() >= 2:
            types[dtype_name(t.dtype)] += t.numel()
        yield name, t


def open_checkpoint(
    path: str | Path,
) -> tuple[dict[str, Any], Iterable[tuple[str, torch.Tensor]], Any, SourceFormat]:
    """(hf_config, tensor stream, tokenizer or None, source format) for an HF folder or a .gguf
    file. A safetensors folder's format fills in as the stream is consumed."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or folder")
    if p.is_file():
        if p.suffix != ".gguf":
            raise CheckpointError(f"{p}: not a .gguf file or an HF model folder")
        from .gguf import iter_gguf_tensors, open_gguf, read_gguf_config, read_gguf_tokenizer

        reader = open_gguf(p)  # parse the header once for config, tensors and tokenizer
        types: Counter[str] = Counter()
        for t in reader.tensors:  # tensors are dequantized on load: remember what they were
            if len(t.shape) >= 2:
                types[t.tensor_type.name] += int(t.shape.prod())
        fmt = SourceFormat("gguf", dict(types))
        # a GGUF without a vocabulary (llama.cpp loads those too) has no tokenizer, like a bare HF folder
        tokenizer = read_gguf_tokenizer(reader) if "tokenizer.ggml.model" in reader.fields else None
        return read_gguf_config(reader), iter_gguf_tensors(reader), tokenizer, fmt
    hf = read_hf_config(p)
    tokenizer = None
    if (p / "tokenizer.json").exists():
        from .tokenizer import Tokenizer

        tokenizer = Tokenizer.from_folder(p)
    counts: Counter[str] = Counter()  # filled by _tally as the stream is read
    return hf, _tally(iter_safetensors(p), counts), tokenizer, SourceFormat("safetensors", counts)


def _cast(tensors: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    for name, t in tensors:
        yield name, (t.to(dtype) if t.is_floating_point() else t)


def fill_model(model: Transformer, state: dict[str, torch.Tensor], problems: list[str], source: str) -> None:
    """Assign `state` into a meta-built model; every parameter filled, every shape equal, or one
    error listing all mismatches."""
    cfg = model.config
    expected = model.state_dict()
    tied = cfg.lm_head and cfg.tie_embeddings
    if tied:
        state.pop("head.proj.weight", None)  # the head *is* the embedding
        expected.pop("head.proj.weight", None)
    for name, t in state.items():
        if name not in expected:
            problems.append(f"tensor {name!r} has no parameter in the model")
        elif tuple(t.shape) != tuple(expected[name].shape):
            problems.append(f"{name}: shape {tuple(t.shape)} != expected {tuple(expected[name].shape)}")
    missing = [n for n in expected if n not in state and not n.startswith("mixins.")]
    problems += [f"missing tensor for {n!r}" for n in missing]
    if problems:
        shown = "; ".join(problems[:20]) + (f"; ... {len(problems) - 20} more" if len(problems) > 20 else "")
        raise CheckpointError(f"{source}: {len(problems)} weight problem(s): {shown}")
    model.load_state_dict(state, strict=False, assign=True)
    if tied:
        model.head.proj.weight = model.embed.word.weight


def load_model(
    path: str | Path,
    dtype: str | torch.dtype | None = "float32",
    device: str | torch.device = "cpu",
    model_cls: type[M] = Transformer,  # type: ignore[assignment]
) -> tuple[M, Any]:
    """Load a checkpoint; returns (model in eval mode, tokenizer or None). The model's
    `source_format` (a SourceFormat) says how the file stored the float weights; a quantized
    swisslm folder describes itself through `model.quantization` instead.

    `dtype` None ("auto"): a .gguf file's block-quantized matrices stay quantized (see
    `load_gguf_native`), anything else loads in fp32. A float dtype expands a GGUF to it."""
    p = Path(path)
    if dtype is None or dtype == "auto":
        if p.is_file() and p.suffix == ".gguf":
            return load_gguf_native(p, device, model_cls)
        dtype = "float32"
    torch_dtype = parse_dtype(dtype)
    hf, tensors, tokenizer, fmt = open_checkpoint(path)
    if "swisslm" in hf:  # our own formats (quantized checkpoints) carry a native config
        from .quantized import load_quantized  # noqa: PLC0415

        return load_quantized(Path(path), hf, tensors, tokenizer, torch_dtype, device, model_cls)
    family = family_for_hf_config(hf)
    cfg = family.config_from_hf(hf)
    state, problems = CompiledMap(family.weight_map(cfg)).to_ours(_cast(tensors, torch_dtype), cfg)
    cfg = family.config_from_weights(cfg, set(state))
    model = build_on_meta(cfg, model_cls)
    fill_model(model, state, problems, str(path))
    materialize_buffers(model, "cpu")
    model.to(device)
    model.eval()
    model.source_format = fmt
    return model, tokenizer


def load_gguf_native(
    path: str | Path,
    device: str | torch.device = "cpu",
    model_cls: type[M] = Transformer,  # type: ignore[assignment]
) -> tuple[M, Any]:
    """Load a .gguf keeping its Q4_0/Q4_1/Q4_K/Q8_0/Q5_K/Q6_K matrices quantized (repacked for the
    int kernels, quant/gguf_blocks.py); other tensors load in fp32. The model's `quantization`
    is {"scheme": "gguf", "modules": {name: "gguf Q4_1 int4 g32" | "tied"}}, and its
    `source_format` lists the file's types, so `swisslm info` tells what ran quantized and what
    expanded."""
    # One thread for the load's copies (row concatenations, permutations): they are small and
    # memory-bound, and on a busy machine a 2-thread team waiting for a descheduled thread made
    # the load 3x slower (0.8 s vs 2.8 s for SmolLM2 at load average 6).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _load_gguf_native(Path(path), device, model_cls)
    finally:
        torch.set_num_threads(threads)


def _load_gguf_native(path: Path, device: str | torch.device, model_cls: type[M]) -> tuple[M, Any]:
    from ..quant.gguf_blocks import attach_blocks
    from .gguf import gguf_tensor_types, iter_gguf_blocks, open_gguf, read_gguf_config, read_gguf_tokenizer

    reader = open_gguf(path)  # parse the header once for config, tensors and tokenizer
    hf = read_gguf_config(reader)
    # a GGUF without a vocabulary (llama.cpp loads those too) has no tokenizer, like a bare HF folder
    tokenizer = read_gguf_tokenizer(reader) if "tokenizer.ggml.model" in reader.fields else None
    fmt = SourceFormat("gguf", gguf_tensor_types(reader))
    family = family_for_hf_config(hf)
    cfg = family.config_from_hf(hf)
    state, problems = CompiledMap(family.weight_map(cfg)).to_ours(iter_gguf_blocks(reader), cfg)
    cfg = family.config_from_weights(cfg, set(state))
    model = build_on_meta(cfg, model_cls)
    kinds = attach_blocks(model, state, bool(cfg.lm_head and cfg.tie_embeddings))
    fill_model(model, state, problems, str(path))
    materialize_buffers(model, "cpu")
    model.to(device)
    model.eval()
    model.source_format = fmt
    if kinds:
        model.quantization = {"scheme": "gguf", "group_size": 32, "modules": kinds}
    return model, tokenizer


def export_state(model: Transformer) -> dict[str, torch.Tensor]:
    """Our state dict minus what HF does not store (tied head, mixin-owned tensors)."""
    cfg = model.config
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("mixins.")}
    if cfg.lm_head and cfg.tie_embeddings:
        state.pop("head.proj.weight", None)
    return state


def save_hf(
    model: Transformer,
    folder: str | Path,
    tokenizer: Any = None,
    dtype: torch.dtype | None = None,
    max_shard_bytes: int = 5 * 1024**3,
) -> Path:
    """Write an HF folder (config.json, generation_config.json, safetensors, tokenizer files)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    family = get_family(cfg.family)
    hf_cfg = family.config_to_hf(cfg)
    state = export_state(model)
    dtype = dtype or next(iter(state.values())).dtype
    hf_cfg["dtype"] = str(dtype).removeprefix("torch.")
    hf_cfg.update({k: v for k, v in cfg.extra.items() if k not in hf_cfg})
    tensors = {
        name: t.detach().to("cpu", dtype if t.is_floating_point() else t.dtype)
        for name, t in CompiledMap(family.weight_map(cfg)).to_hf(state, cfg)
    }
    save_sharded(tensors, out, max_shard_bytes)
    (out / "config.json").write_text(json.dumps(hf_cfg, indent=2))
    gen = {k: getattr(cfg, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id") if getattr(cfg, k) is not None}
    if gen:
        (out / "generation_config.json").write_text(json.dumps(gen, indent=2))
    if tokenizer is not None:
        tokenizer.save(out)
    return out
