# SPDX-License-Identifier: Apache-2.0
"""from_pretrained of the Auto model classes: transformers' arguments sorted into what is honoured
(`LOAD_ACCEPTED`), what is already true of swisslm (`LOAD_NO_OP`, accepted silently), what changes
nothing here (`LOAD_WARN`, a warning names them) and what would change the result if ignored
(`LOAD_REFUSED`, an error); any other argument is an error too. The checkpoint is loaded by
api.AutoModel (one device) or dispatch.py (a device_map), then given transformers' surface."""

from __future__ import annotations

import importlib.util
from typing import Any

from ..io.tokenizer import Tokenizer

LOAD_ACCEPTED = frozenset({"torch_dtype", "dtype", "device_map", "max_memory", "offload_folder", "offload_buffers",
                           "revision", "gguf_file", "device", "backend", "num_labels", "id2label", "label2id"})
LOAD_NO_OP = frozenset({"trust_remote_code", "local_files_only", "low_cpu_mem_usage", "use_safetensors",
                        "offload_state_dict", "_fast_init"})
LOAD_WARN = frozenset({"cache_dir", "force_download", "resume_download", "proxies", "token", "use_auth_token",
                       "attn_implementation", "mirror", "_from_pipeline", "_from_auto"})
LOAD_REFUSED = {
    "quantization_config": "quantize after loading with swisslm.quant (or `swisslm quantize`)",
    "load_in_8bit": "quantize after loading with swisslm.quant (or `swisslm quantize`)",
    "load_in_4bit": "quantize after loading with swisslm.quant (or `swisslm quantize`)",
    "config": "swisslm reads config.json from the checkpoint",
    "subfolder": "pass the folder itself",
    "variant": "pass the variant's folder or file itself",
    "output_loading_info": "swisslm raises on any missing or unexpected weight",
    "ignore_mismatched_sizes": "swisslm refuses mismatched weights",
    "from_tf": "only safetensors and GGUF are read",
    "from_flax": "only safetensors and GGUF are read",
    "tp_plan": "no tensor parallelism here",
}


def check_load_kwargs(cls_name: str, kwargs: dict[str, Any]) -> None:
    for k, v in kwargs.items():
        if k in LOAD_REFUSED and v not in (None, False, ""):
            raise ValueError(f"{cls_name}.from_pretrained({k}=...) is not supported: {LOAD_REFUSED[k]}")
    if kwargs.get("use_safetensors") is False:
        raise ValueError(f"{cls_name}.from_pretrained(use_safetensors=False): pickled weights are never loaded")
    unknown = sorted(set(kwargs) - LOAD_ACCEPTED - LOAD_NO_OP - LOAD_WARN - set(LOAD_REFUSED))
    if unknown:
        raise TypeError(f"{cls_name}.from_pretrained() got unexpected keyword arguments: {unknown}")
    warned = sorted(k for k in kwargs if k in LOAD_WARN and kwargs[k] not in (None, False))
    if warned:
        from .model import warn_once

        warn_once(f"{cls_name}.from_pretrained ignores {warned}")


def _dtype_arg(kwargs: dict[str, Any], src: Any) -> Any:
    """torch_dtype / dtype: a torch dtype or its name; "auto" is the checkpoint's own (config.json's
    torch_dtype / dtype); default fp32 as transformers. A GGUF file (loaded whole, no device_map)
    keeps its quantized blocks for both (None: swisslm's native GGUF execution, issue 17), where
    transformers would expand it to fp32; an explicit float dtype still expands."""
    import torch

    d = kwargs.get("dtype", kwargs.get("torch_dtype"))
    is_gguf = getattr(src, "suffix", "") == ".gguf" and kwargs.get("device_map") is None
    if d in (None, "auto") and is_gguf:
        return None
    if d is None:
        return torch.float32
    if d == "auto":
        from pathlib import Path

        cfg = Path(src) / "config.json"
        if cfg.is_file():
            import json

            conf = json.loads(cfg.read_text())
            name = conf.get("dtype") or conf.get("torch_dtype") or "float32"
            return getattr(torch, str(name).removeprefix("torch."))
        return torch.float32
    return d


def load_pretrained(cls_name: str, path: Any, kwargs: dict[str, Any]) -> Any:
    """The Auto classes' from_pretrained: a PreTrainedModel (model.py) on the asked devices."""
    from pathlib import Path

    import torch

    from .. import api
    from ..io.embedded import default_model_path
    from ..io.hub import resolve_model
    from .dispatch import dispatch_loaded, is_dispatch_map, load_dispatched
    from .model import adopt

    check_load_kwargs(cls_name, kwargs)
    if path is not None and kwargs.get("revision") and "@" not in str(path) and not Path(str(path)).exists():
        path = f"{path}@{kwargs['revision']}"
    if path is not None and kwargs.get("gguf_file"):
        path = Path(resolve_model(path)) / kwargs["gguf_file"]
    src = resolve_model(path) if path is not None else default_model_path()
    dtype = _dtype_arg(kwargs, src)
    device_map = kwargs.get("device_map")
    device = kwargs.get("device", "cpu")
    backend = kwargs.get("backend", "auto")
    if device_map == "auto" and kwargs.get("max_memory") is None and kwargs.get("offload_folder") is None \
            and importlib.util.find_spec("accelerate") is None:
        device_map = "cuda" if torch.cuda.is_available() else "cpu"  # the cards' "auto", without accelerate
    if device_map is not None and not is_dispatch_map(device_map):
        device = f"cuda:{device_map}" if isinstance(device_map, int) else device_map  # one device for all
        device_map = None
    max_memory, folder = kwargs.get("max_memory"), kwargs.get("offload_folder")
    if device_map is not None and not (src.is_file() and src.suffix == ".gguf"):
        model = load_dispatched(src, api.parse_dtype(dtype), device_map, max_memory, folder,
                                bool(kwargs.get("offload_buffers")))
        model.tokenizer = Tokenizer.from_folder(src) if (src / "tokenizer.json").exists() else None
        if getattr(model, "main_device", None) is None:  # all on one device: the kernels may apply
            from ..kernels.backend import apply_backend_

            apply_backend_(model, backend)
    else:
        model = api.AutoModel.from_pretrained(src, dtype=dtype, device=torch.device(device) if isinstance(
            device, int) else device, backend=backend if device_map is None else "torch")
        if device_map is not None:
            model = dispatch_loaded(model, device_map, max_memory, folder, bool(kwargs.get("offload_buffers")))
    model.source = str(src)
    model.name_or_path = str(path) if path is not None else str(src)
    return adopt(model, src if src.is_dir() else None)
