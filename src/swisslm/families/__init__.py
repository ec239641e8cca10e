# SPDX-License-Identifier: Apache-2.0
"""Family registry: one small file per family, keyed on HF `architectures` / `model_type`.

A family translates HF's config.json to and from ModelConfig and declares its weight map as
data (weight_map.py) and, when llama.cpp has the architecture, its GGUF names (gguf_names.py):
one registry for HF folders and GGUF files. Structural differences are ModelConfig fields, so a
family never subclasses the backbone.
"""

from __future__ import annotations

import importlib
from typing import Any, ClassVar

from ..config import ConfigError, ModelConfig
from .gguf_names import GGUFNames
from .weight_map import WeightMap

FAMILIES: dict[str, type[Family]] = {}  # family name -> class
_BY_ARCH: dict[str, type[Family]] = {}
_BY_MODEL_TYPE: dict[str, type[Family]] = {}
_BY_GGUF_ARCH: dict[str, type[Family]] = {}

# Imported lazily by `get_family` so that importing swisslm stays cheap.
_FAMILY_MODULES = ("llama", "granite", "granite_moe", "olmoe", "gpt_neox", "bert")

_REQUIRED = object()


def register_family(cls: type[Family]) -> type[Family]:
    FAMILIES[cls.name] = cls
    for arch in cls.architectures:
        _BY_ARCH[arch] = cls
    _BY_MODEL_TYPE[cls.model_type] = cls
    for arch in cls.__dict__.get("gguf_architectures", ()):  # declared here, not inherited
        _BY_GGUF_ARCH[arch] = cls
    return cls


def _load_all() -> None:
    for mod in _FAMILY_MODULES:
        try:
            importlib.import_module(f"{__name__}.{mod}")
        except ModuleNotFoundError as e:  # a family file not written yet
            if e.name != f"{__name__}.{mod}":
                raise


def get_family(name: str) -> type[Family]:
    _load_all()
    if name not in FAMILIES:
        raise ConfigError(f"unknown family {name!r}; registered: {sorted(FAMILIES)}")
    return FAMILIES[name]


def family_for_hf_config(hf: dict[str, Any]) -> type[Family]:
    _load_all()
    for arch in hf.get("architectures") or []:
        if arch in _BY_ARCH:
            return _BY_ARCH[arch]
    if hf.get("model_type") in _BY_MODEL_TYPE:
        return _BY_MODEL_TYPE[hf["model_type"]]
    raise ConfigError(
        f"unsupported architecture {hf.get('architectures') or hf.get('model_type')!r}; "
        f"supported: {sorted(_BY_ARCH)}"
    )


def family_for_gguf(arch: str) -> type[Family] | None:
    """The family that reads llama.cpp's `general.architecture` = arch, or None."""
    _load_all()
    return _BY_GGUF_ARCH.get(arch)


def gguf_architectures() -> list[str]:
    """llama.cpp architectures some family reads."""
    _load_all()
    return sorted(_BY_GGUF_ARCH)


def hf_get(hf: dict[str, Any], key: str, default: Any = _REQUIRED) -> Any:
    """Read a config.json key; a missing required key is an error naming it."""
    if key in hf and hf[key] is not None:
        return hf[key]
    if default is _REQUIRED:
        raise ConfigError(f"config.json is missing required key {key!r}")
    return default


def common_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    """The ModelConfig fields every family reads under the same config.json keys."""
    return dict(
        vocab_size=hf_get(hf, "vocab_size"),
        hidden_size=hf_get(hf, "hidden_size"),
        num_layers=hf_get(hf, "num_hidden_layers"),
        num_heads=hf_get(hf, "num_attention_heads"),
        intermediate_size=hf_get(hf, "intermediate_size"),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=hf.get("eos_token_id"),
        pad_token_id=hf.get("pad_token_id"),
        initializer_range=float(hf.get("initializer_range", 0.02)),
    )


class Family:
    """Base: subclasses set the class attributes and implement the two config adapters."""

    name: ClassVar[str]
    architectures: ClassVar[tuple[str, ...]]
    model_type: ClassVar[str]
    WEIGHT_MAP: ClassVar[WeightMap]
    gguf_architectures: ClassVar[tuple[str, ...]] = ()  # llama.cpp names this family reads
    GGUF_NAMES: ClassVar[GGUFNames | None] = None

    @classmethod
    def config_from_hf(cls, hf: dict[str, Any]) -> ModelConfig:
        raise NotImplementedError

    @classmethod
    def config_to_hf(cls, cfg: ModelConfig) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def weight_map(cls, cfg: ModelConfig) -> WeightMap:
        return cls.WEIGHT_MAP

    @classmethod
    def config_from_weights(cls, cfg: ModelConfig, names: set[str]) -> ModelConfig:
        """Adjust `cfg` to what only the checkpoint's tensors tell (our names after mapping), e.g.
        BERT's pooler: BertModel(add_pooling_layer=False) writes the same config.json."""
        return cfg

    @classmethod
    def attach_modules(cls, model: Any) -> None:
        """Called once the backbone is built (on meta): add family-owned modules outside the shared
        stack (BERT's pooler). Their parameters load and export like the backbone's."""

    @classmethod
    def common_to_hf(cls, cfg: ModelConfig) -> dict[str, Any]:
        """The inverse of `common_from_hf`, plus the keys that name the architecture."""
        return {
            "architectures": list(cls.architectures),
            "model_type": cls.model_type,
            "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.intermediate_size,
            "num_hidden_layers": cfg.num_layers,
            "num_attention_heads": cfg.num_heads,
            "bos_token_id": cfg.bos_token_id,
            "eos_token_id": cfg.eos_token_id,
            "pad_token_id": cfg.pad_token_id,
            "initializer_range": cfg.initializer_range,
        }
