# SPDX-License-Identifier: Apache-2.0
"""Big models across devices: transformers' `device_map` / `max_memory` / `offload_folder`.

accelerate's big-model primitives do the work:
- `infer_auto_device_map` places our top-level modules (`embed`, `layers.i`, `final_norm`,
  `head`; a Block is never split) on the GPUs, then the CPU, then "disk", within `max_memory`,
  keeping room for the largest layer where offloaded layers are brought back;
- the checkpoint is read one module at a time (safetensors headers first, then only that
  module's tensors, its files closed after), mapped to our names and either placed on its device
  or written to `offload_folder` with `offload_weight` (a numpy memmap per tensor + index.json),
  so peak memory is the in-memory part plus one module;
- `dispatch_model` attaches `AlignDevicesHook`s: a disk module's weights are loaded from the
  memmaps (`OffloadedWeightsLoader`) right before its forward and dropped back to the meta device
  after it; with a GPU, CPU-resident modules move to it per layer the same way.

A .gguf file or a model already in memory is dispatched with `dispatch_model` writing the
offload files itself (the whole model passes through RAM once).
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..api import Model
from ..families import family_for_hf_config
from ..families.weight_map import CompiledMap, dest_of
from ..io.build import build_on_meta, materialize_buffers
from ..io.errors import CheckpointError
from ..io.loader import read_hf_config
from ..io.safetensors_io import safetensors_files
from .model import PreTrainedModel, adopt

log = logging.getLogger(__name__)

NO_SPLIT = ["Block"]  # a transformer block always runs on one device
SIMPLE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")

# transformers' module names -> ours, for device_map dicts written for a transformers model
_HF_MODULES = (
    ("model.embed_tokens", "embed"), ("gpt_neox.embed_in", "embed"), ("embeddings", "embed"),
    ("model.norm", "final_norm"), ("gpt_neox.final_layer_norm", "final_norm"),
    ("lm_head", "head"), ("embed_out", "head"),
    ("model.layers.", "layers."), ("gpt_neox.layers.", "layers."), ("encoder.layer.", "layers."),
    ("model.", ""), ("gpt_neox.", ""),
)


def is_dispatch_map(device_map: Any) -> bool:
    """Whether `device_map` asks for a placement (a dict or "auto"...) rather than one device;
    such a map needs accelerate (the `offload` extra)."""
    if not (isinstance(device_map, dict) or device_map in SIMPLE_MAPS):
        return False
    try:
        import accelerate  # noqa: F401
    except ImportError:
        raise ImportError(f"device_map={device_map!r} needs accelerate: pip install 'swisslm[offload]'") from None
    return True


def _our_module_name(name: str, model: torch.nn.Module) -> str:
    if name == "" or _has_module(model, name):
        return name
    for hf, ours in _HF_MODULES:
        if name == hf or name.startswith(hf):
            cand = ours + name[len(hf):]
            if _has_module(model, cand):
                return cand
    raise ValueError(f"device_map: {name!r} is not a module of this model (its modules: embed, layers.N, "
                     "final_norm, head)")


def _has_module(model: torch.nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False


def _device_value(d: Any) -> Any:
    return d if d in ("cpu", "disk") or isinstance(d, (int, torch.device)) else str(d)


def plan_device_map(model: torch.nn.Module, device_map: Any, max_memory: dict | None,
                    dtype: torch.dtype) -> dict[str, Any]:
    """Our module name -> device ("cpu", "disk", a GPU index or "cuda:i")."""
    from accelerate import infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    if isinstance(device_map, dict):
        return {_our_module_name(k, model): _device_value(v) for k, v in device_map.items()}
    if device_map in ("balanced", "balanced_low_0") and torch.cuda.device_count() > 1:
        max_memory = get_balanced_memory(model, max_memory, no_split_module_classes=NO_SPLIT, dtype=dtype,
                                         low_zero=device_map == "balanced_low_0")
    dmap = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=NO_SPLIT, dtype=dtype)
    # accelerate also lists the root's computed buffers (inv_freq) and empty containers (mixins):
    # neither holds a weight to place
    return {k: d for k, d in dmap.items() if k == "" or (_has_module(model, k) and any(
        True for _ in model.get_submodule(k).parameters()))}


def _module_of(name: str, device_map: dict[str, Any]) -> str:
    """The device_map entry holding tensor `name` (the longest prefix)."""
    best = None
    for k in device_map:
        if k == "" or name == k or name.startswith(k + "."):
            if best is None or len(k) > len(best):
                best = k
    if best is None:
        raise ValueError(f"device_map does not place {name!r}")
    return best


def _main_device(devices: set[Any]) -> torch.device:
    gpus = [d for d in devices if d not in ("cpu", "disk")]
    if not gpus:
        return torch.device("cpu")
    d = sorted(gpus, key=str)[0]
    return torch.device(f"cuda:{d}" if isinstance(d, int) else d)


def _read_group(files_keys: dict[Path, list[str]]) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of one module, one at a time (the weight map fuses them as they come), each
    copied out of the file's mapping: safetensors hands out tensors backed by the mmap, which
    would keep every page read resident (a fused qkv would then be held twice, as file pages and
    as its concatenation); with copies the mapping closes with the file."""
    from safetensors import safe_open

    for path, keys in files_keys.items():
        with safe_open(str(path), framework="pt") as f:
            for k in keys:
                yield k, f.get_tensor(k).clone()


def load_dispatched(src: Path, dtype: torch.dtype, device_map: Any, max_memory: dict | None,
                    offload_folder: str | os.PathLike[str] | None, offload_buffers: bool = False) -> Model:
    """An HF safetensors folder loaded module by module onto `device_map` (see the module doc)."""
    from accelerate.utils import offload_weight, save_offload_index, set_module_tensor_to_device

    hf = read_hf_config(src)
    if "swisslm" in hf:
        raise CheckpointError(f"{src}: a swisslm quantized folder cannot be loaded with a device_map")
    family = family_for_hf_config(hf)
    cfg = family.config_from_hf(hf)
    cmap = CompiledMap(family.weight_map(cfg))
    from safetensors import safe_open

    key_file: dict[str, Path] = {}
    for path in safetensors_files(src):
        with safe_open(str(path), framework="pt") as f:
            key_file.update({k: path for k in f.keys()})
    ours: dict[str, str] = {}  # HF name -> our tensor name
    problems: list[str] = []
    for k in key_file:
        hit = cmap.match_hf(k)
        if hit is None:
            problems.append(f"unexpected tensor {k!r}")
            continue
        _, target, groups = hit
        dest = dest_of(target)
        if dest is None:
            continue
        stacked = "expert" in groups and "{expert}" not in dest
        ours[k] = dest.format(layer=groups.get("layer")) if stacked else dest.format(**groups)
    cfg = family.config_from_weights(cfg, set(ours.values()))
    # built as the transformers-surface class: accelerate's hooks capture the class's forward
    model = build_on_meta(cfg, PreTrainedModel)
    model.to(dtype)
    dmap = plan_device_map(model, device_map, max_memory, dtype)
    devices = set(dmap.values())
    if "disk" in devices and offload_folder is None:
        raise ValueError(f"device_map puts {sorted(k for k, d in dmap.items() if d == 'disk')} on disk: "
                         "pass offload_folder=... (or more max_memory)")
    if "disk" in devices:
        _fixed_mmap_threshold()  # before the load: it frees a module's pieces after each one
    main = _main_device(devices)
    tied = cfg.lm_head and cfg.tie_embeddings
    groups: dict[str, dict[Path, list[str]]] = defaultdict(lambda: defaultdict(list))
    for k, name in ours.items():
        if tied and name == "head.proj.weight":
            continue
        groups[_module_of(name, dmap)][key_file[k]].append(k)
    index: dict[str, Any] = {}
    if offload_folder is not None:
        os.makedirs(offload_folder, exist_ok=True)
    filled: set[str] = set()
    for module, device in dmap.items():
        state, errs = cmap.to_ours(_read_group(groups.get(module, {})), cfg)
        problems += errs
        for name in list(state):
            t = state.pop(name)  # freed as soon as it is placed or written
            if tied and name == "head.proj.weight":
                continue
            t = t.to(dtype) if t.is_floating_point() else t
            if device == "disk":
                offload_weight(t, name, str(offload_folder), index=index)
            else:
                set_module_tensor_to_device(model, name, "cpu" if main.type == "cpu" else device, value=t)
            filled.add(name)
            del t
    expected = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    expected |= {n for n, b in model.named_buffers() if n in model.state_dict()}
    if tied:
        expected.discard("head.proj.weight")
    missing = sorted(n for n in expected - filled if not n.startswith("mixins."))
    problems += [f"missing tensor for {n!r}" for n in missing]
    if problems:
        shown = "; ".join(problems[:20]) + (f"; ... {len(problems) - 20} more" if len(problems) > 20 else "")
        raise CheckpointError(f"{src}: {len(problems)} weight problem(s): {shown}")
    if tied:
        model.head.proj.weight = model.embed.word.weight
    materialize_buffers(model, main)
    if index:
        save_offload_index(index, str(offload_folder))
    return dispatch(model, dmap, main, offload_folder, index or None, offload_buffers)


def dispatch(model: Model, dmap: dict[str, Any], main: torch.device, offload_folder: Any,
             index: dict[str, Any] | None, offload_buffers: bool = False) -> Model:
    """accelerate's dispatch_model, plus what swisslm's generation needs to know: the execution
    device (KV caches are allocated there) and no fused CPU path (it would bypass the hooks)."""
    from accelerate import dispatch_model

    devices = set(dmap.values())
    if len(devices) == 1 and "disk" not in devices:
        return model.to(main)
    if offload_folder is not None and index is None:
        os.makedirs(offload_folder, exist_ok=True)
    if "disk" in devices:
        _fixed_mmap_threshold()
    # accelerate compares main_device with the string "cpu"
    dispatch_model(model, dmap, main_device="cpu" if main.type == "cpu" else main, offload_dir=offload_folder,
                   offload_index=index, offload_buffers=offload_buffers)
    model.fused_layers = None
    model.main_device = main
    model.hf_device_map = dict(dmap)
    return model


def _fixed_mmap_threshold(nbytes: int = 256 * 1024) -> None:
    """Disk-offloaded layers allocate and free megabytes of weights per forward. glibc raises its
    mmap threshold after such frees and then serves them from the heap, which it keeps: RSS would
    grow by tens of MB per forward. A fixed threshold (what MALLOC_MMAP_THRESHOLD_ sets) returns
    every large block to the system when freed. Process-wide; a no-op off glibc."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(-3, nbytes)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def dispatch_loaded(model: Model, device_map: Any, max_memory: dict | None, offload_folder: Any,
                    offload_buffers: bool = False) -> Model:
    """Dispatch a model already in memory (a .gguf load): accelerate writes the offload files."""
    adopt(model)  # before the hooks: they capture the class's forward
    dtype = model._float_dtype()
    dmap = plan_device_map(model, device_map, max_memory, dtype)
    if "disk" in dmap.values() and offload_folder is None:
        raise ValueError("device_map puts modules on disk: pass offload_folder=... (or more max_memory)")
    return dispatch(model, dmap, _main_device(set(dmap.values())), offload_folder, None, offload_buffers)
