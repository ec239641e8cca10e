# SPDX-License-Identifier: Apache-2.0
"""transformers' Auto classes over swisslm, so model-card code runs with only its import changed:

    from swisslm import AutoTokenizer, AutoModelForCausalLM
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    out = model.generate(**tokenizer(prompt, return_tensors="pt"), max_new_tokens=100)
    print(tokenizer.batch_decode(out))

A thin layer: the tokenizer is swisslm's `Tokenizer` with transformers' defaults where the two
differ (decode keeps special tokens, apply_chat_template tokenizes and returns a dict); the model
is swisslm's `Model` with transformers' forward/generate arguments (model.py), placed across
devices by accelerate when a `device_map` asks for it (dispatch.py). `path` is an HF folder, a
.gguf file, a hub id in the local HF cache, or None for the embedded default model.

from_pretrained's transformers arguments: `LOAD_ACCEPTED` are honoured, `LOAD_NO_OP` are true of
swisslm already (accepted silently), `LOAD_WARN` change nothing here (a warning names them),
`LOAD_REFUSED` would change the result if ignored (an error); anything else is an error too.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

from ..io.tokenizer import Tokenizer


class PreTrainedTokenizer(Tokenizer):
    """swisslm's Tokenizer with transformers' defaults (`AutoTokenizer.from_pretrained` returns one)."""

    def decode(self, ids: Any, skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: bool | None = None) -> str:
        return super().decode(ids, skip_special_tokens, clean_up_tokenization_spaces)

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = False,
                     clean_up_tokenization_spaces: bool | None = None) -> list[str]:
        return super().batch_decode(sequences, skip_special_tokens, clean_up_tokenization_spaces)

    def apply_chat_template(self, conversation: Any, add_generation_prompt: bool = False, tokenize: bool = True,
                            *, return_dict: bool = True, padding: bool = False, **kwargs: Any) -> Any:
        # transformers 5: tokenize=True and return_dict=True by default (input_ids + attention_mask).
        return super().apply_chat_template(conversation, add_generation_prompt, tokenize,
                                           return_dict=return_dict and tokenize, **kwargs)


def _as_transformers_tokenizer(tok: Tokenizer) -> PreTrainedTokenizer:
    tok.__class__ = PreTrainedTokenizer  # same state, transformers' defaults (no copy of the backend)
    return tok  # type: ignore[return-value]


def load_tokenizer(path: str | os.PathLike[str] | None) -> Tokenizer:
    """The tokenizer of an HF folder, a .gguf file or a hub id in the local HF cache (None: the
    embedded default model)."""
    from ..io.embedded import default_model_path
    from ..io.errors import CheckpointError
    from ..io.hub import resolve_model

    src = resolve_model(path) if path is not None else default_model_path()
    if src.is_file() and src.suffix == ".gguf":
        from ..io.gguf import open_gguf, read_gguf_tokenizer

        return read_gguf_tokenizer(open_gguf(src))
    if src.is_dir():
        return Tokenizer.from_folder(src)
    raise CheckpointError(f"{src}: no such folder or .gguf file")


# transformers load arguments that are true of swisslm already: accepted without a word.
NO_OP_LOAD_ARGS = frozenset({"use_fast", "trust_remote_code", "local_files_only"})


class AutoTokenizer:
    @staticmethod
    def from_pretrained(path: str | os.PathLike[str] | None = None, *, padding_side: str | None = None,
                        truncation_side: str | None = None, **kwargs: Any) -> PreTrainedTokenizer:
        """Load a tokenizer as transformers' AutoTokenizer does; `padding_side`/`truncation_side`
        override the checkpoint's. `use_fast`/`trust_remote_code`/`local_files_only` mean nothing
        here (always the fast backend, never remote code, always local) and are accepted; any other
        transformers argument is ignored with a warning naming it."""
        ignored = sorted(set(kwargs) - NO_OP_LOAD_ARGS)
        if ignored:
            warnings.warn(f"AutoTokenizer.from_pretrained ignores {ignored}", stacklevel=2)
        tok = _as_transformers_tokenizer(load_tokenizer(path))
        if padding_side is not None:
            tok.padding_side = padding_side
        if truncation_side is not None:
            tok.truncation_side = truncation_side
        return tok


# -- models ----------------------------------------------------------------------------------

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


def _check_load_kwargs(cls_name: str, kwargs: dict[str, Any]) -> None:
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
    torch_dtype / dtype), fp32 for a GGUF file; default fp32 as transformers."""
    import torch

    d = kwargs.get("dtype", kwargs.get("torch_dtype"))
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

    _check_load_kwargs(cls_name, kwargs)
    if path is not None and kwargs.get("revision") and "@" not in str(path) and not Path(str(path)).exists():
        path = f"{path}@{kwargs['revision']}"
    if path is not None and kwargs.get("gguf_file"):
        path = Path(resolve_model(path)) / kwargs["gguf_file"]
    src = resolve_model(path) if path is not None else default_model_path()
    dtype = _dtype_arg(kwargs, src)
    device_map = kwargs.get("device_map")
    device = kwargs.get("device", "cpu")
    backend = kwargs.get("backend", "auto")
    if device_map is not None and not is_dispatch_map(device_map):
        device = f"cuda:{device_map}" if isinstance(device_map, int) else device_map  # one device for all
        device_map = None
    max_memory, folder = kwargs.get("max_memory"), kwargs.get("offload_folder")
    if device_map is not None and not (src.is_file() and src.suffix == ".gguf"):
        model = load_dispatched(src, api.parse_dtype(dtype), device_map, max_memory, folder,
                                bool(kwargs.get("offload_buffers")))
        model.tokenizer = _folder_tokenizer(src)
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


def _folder_tokenizer(src: Any) -> Any:
    if (src / "tokenizer.json").exists():
        return Tokenizer.from_folder(src)
    return None


class AutoModelForCausalLM:
    """transformers' AutoModelForCausalLM: a decoder with its LM head (forward gives .logits,
    .loss with labels; generate)."""

    @staticmethod
    def from_pretrained(path: str | os.PathLike[str] | None = None, *args: Any, **kwargs: Any) -> Any:
        if args:
            raise TypeError("from_pretrained takes the model path and keyword arguments only")
        model = load_pretrained("AutoModelForCausalLM", path, kwargs)
        if not model.config.lm_head:
            raise ValueError(f"{path}: this checkpoint has no LM head ({model.config.family} encoder): "
                             "load it with AutoModel")
        return model


class AutoModel:
    """transformers' AutoModel: the BERT encoder, or a decoder's base model. forward gives
    .last_hidden_state (and .hidden_states, .pooler_output for BERT); a decoder's output also has
    .logits, and the swisslm Model API (generate, stream, score, ...) stays available."""

    @staticmethod
    def from_pretrained(path: str | os.PathLike[str] | None = None, *args: Any, **kwargs: Any) -> Any:
        if args:  # swisslm's positional (path, dtype, device, backend)
            for name, value in zip(("dtype", "device", "backend"), args):
                kwargs.setdefault(name, value)
        return load_pretrained("AutoModel", path, kwargs)

    @staticmethod
    def from_config(*args: Any, **kwargs: Any) -> Any:
        """swisslm's random-init model (api.AutoModel.from_config) with transformers' surface."""
        from .. import api
        from .model import adopt

        return adopt(api.AutoModel.from_config(*args, **kwargs))


class AutoModelForSequenceClassification:
    """transformers' AutoModelForSequenceClassification over swisslm's classification head
    (mixins/heads.py): a `swisslm classify` output folder (its head, LoRA adapter and base
    model), or an HF *ForSequenceClassification folder (the linear `score` head on the last
    non-padding token, e.g. a `swisslm finetune --trainer reward` model). forward returns
    .logits (B, num_labels) and, with labels, transformers' loss."""

    @staticmethod
    def from_pretrained(path: str | os.PathLike[str], *args: Any, **kwargs: Any) -> Any:
        if args:
            raise TypeError("from_pretrained takes the model path and keyword arguments only")
        from .classify import load_sequence_classifier

        return load_sequence_classifier(path, kwargs)
