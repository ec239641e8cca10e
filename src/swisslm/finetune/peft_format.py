# SPDX-License-Identifier: Apache-2.0
"""LoRA adapters in PEFT's on-disk format (adapter_config.json + adapter_model.safetensors).

Our fused linears carry one A/B pair per HF projection (mixins/lora.py), so the map is a
renaming: slice i of `layers.3.attn.qkv` is `base_model.model.model.layers.3.self_attn.q_proj`
with `lora_A.weight` [r, in] and `lora_B.weight` [out, r]. Stacked MoE experts use PEFT's
`target_parameters` layout for transformers' fused expert parameters: `lora_A.weight`
[E * r, in] (expert-major rows) and `lora_B.weight` [out, r * E] (column j * E + e); when a
module has several targeted parameters PEFT nests its wrappers, so the first listed parameter's
tensors sit under `experts.base_layer.` and the last under `experts.` -- we write and read the
same nesting.

`peft.PeftModel.from_pretrained(hf_model, folder)` loads what `save_adapter` writes with
identical outputs, and `load_adapter` loads adapters that PEFT trained (tests/test_peft*.py).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..io.errors import CheckpointError
from ..mixins.lora import ExpertLoRA, LoRALinear, LoRAMixin, find_sites, lora_mixins, param_key

log = logging.getLogger(__name__)

PREFIX = "base_model.model."
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"

# PEFT features whose adapters we cannot reproduce exactly: refuse rather than load wrongly.
_UNSUPPORTED_TRUE = ("use_dora", "fan_in_fan_out", "use_qalora", "use_bdlora")


def _get_lora(model: Any, name: str | None) -> LoRAMixin:
    found = lora_mixins(model)
    if name is not None:
        found = [(n, m) for n, m in found if n == name]
    if not found:
        raise ValueError("the model has no LoRA mixin" + (f" named {name!r}" if name else ""))
    if len(found) > 1:
        raise ValueError(f"several LoRA mixins installed ({[n for n, _ in found]}); pass name=")
    return found[0][1]


def _nest(model: Any, module: str, param: str, targeted: set[str]) -> str:
    """PEFT wraps each targeted parameter of a module in its own ParamWrapper, nesting them in the
    module's parameter order (first innermost, under `.base_layer`). Our MoE registers its
    stacked parameters in transformers' order (gate_up, down), so our order stands for theirs."""
    own = model.get_submodule(module)._parameters
    order = [n for n in own if n in targeted]
    return ".base_layer" * (len(order) - 1 - order.index(param))


@torch.no_grad()
def adapter_state_dict(model: Any, name: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(PEFT tensors, PEFT config) for the LoRA mixin of `model`."""
    lora = _get_lora(model, name)
    tensors: dict[str, torch.Tensor] = {}
    params = lora.target_parameters()
    r = lora.r
    targeted: dict[str, set[str]] = {}
    for site, _, _ in lora.adapters():
        if site.expert:
            targeted.setdefault(site.module, set()).add(site.param)
    for site, slices, ad in lora.adapters():
        if isinstance(ad, ExpertLoRA):
            hf = site.slices[0].hf  # model.layers.3.mlp.experts.gate_up_proj
            key = PREFIX + hf.rpartition(".")[0] + _nest(model, site.module, site.param, targeted[site.module])
            E, out, _ = ad.lora_b.shape
            tensors[key + ".lora_A.weight"] = ad.lora_a.reshape(E * r, -1)
            tensors[key + ".lora_B.weight"] = ad.lora_b.permute(1, 2, 0).reshape(out, r * E)
            continue
        assert isinstance(ad, LoRALinear)
        a_parts = ad.lora_a.split(r)
        b_parts = ad.lora_b.split([s.size for s in slices])
        for s, a, b in zip(slices, a_parts, b_parts):
            if s.to_hf is not None:
                b = s.to_hf(b)
            tensors[PREFIX + s.hf + ".lora_A.weight"] = a
            tensors[PREFIX + s.hf + ".lora_B.weight"] = b
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM" if model.config.lm_head else "FEATURE_EXTRACTION",
        "base_model_name_or_path": None,
        "r": r,
        "lora_alpha": lora.alpha if lora.alpha != int(lora.alpha) else int(lora.alpha),
        # PEFT refuses dropout on target_parameters (expert) adapters; dropout only matters while
        # training, so an adapter with experts is written with 0 to stay loadable by PEFT.
        "lora_dropout": 0.0 if params else lora.dropout_p,
        "use_rslora": lora.use_rslora,
        "target_modules": lora.target_names() or None,
        "target_parameters": params or None,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_dora": False,
        "lora_bias": False,
    }
    if not config["target_modules"]:
        config["target_modules"] = []
    return tensors, config


def save_adapter(model: Any, folder: str | Path, name: str | None = None,
                 base_model_name_or_path: str | None = None) -> Path:
    """Write `folder/adapter_config.json` + `folder/adapter_model.safetensors` (PEFT format)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tensors, config = adapter_state_dict(model, name)
    config["base_model_name_or_path"] = base_model_name_or_path
    save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return out


def read_adapter(folder: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config, tensors) of a PEFT LoRA folder; CheckpointError for anything we cannot load."""
    p = Path(folder)
    cfg_path, w_path = p / CONFIG_NAME, p / WEIGHTS_NAME
    if not cfg_path.is_file():
        raise CheckpointError(f"{p}: no {CONFIG_NAME} (expected a PEFT adapter folder)")
    if not w_path.is_file():
        if (p / "adapter_model.bin").is_file():
            raise CheckpointError(f"{p}: adapter_model.bin is a pickle; only {WEIGHTS_NAME} is loaded")
        raise CheckpointError(f"{p}: no {WEIGHTS_NAME}")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path}: invalid JSON ({e})") from None
    if config.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(f"{p}: peft_type {config.get('peft_type')!r} is not LORA")
    bad = [k for k in _UNSUPPORTED_TRUE if config.get(k)]
    bad += [k for k in ("rank_pattern", "alpha_pattern") if config.get(k)]
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        bad.append("bias")
    if config.get("modules_to_save"):
        bad.append("modules_to_save")
    if bad:
        raise CheckpointError(f"{p}: unsupported LoRA option(s) {bad}")
    tensors: dict[str, torch.Tensor] = {}
    with safe_open(str(w_path), framework="pt") as f:
        for k in f.keys():  # noqa: SIM118 - safe_open has no __iter__
            tensors[k] = f.get_tensor(k)
    return config, tensors


def adapter_module_name(key: str) -> str:
    """The module a PEFT LoRA tensor belongs to (`base_model.model.x.y.lora_A.weight` -> `x.y`)."""
    key = key.removeprefix(PREFIX)
    for suffix in (".lora_A.weight", ".lora_B.weight", ".lora_A.default.weight", ".lora_B.default.weight"):
        if key.endswith(suffix):
            return key[: -len(suffix)]
    raise CheckpointError(f"unexpected tensor {key!r} in a LoRA adapter")


@torch.no_grad()
def load_adapter(model: Any, folder: str | Path, name: str = "lora", trainable: bool = False) -> LoRAMixin:
    """Install a PEFT LoRA adapter on `model` as mixin `name` (frozen unless `trainable`)."""
    config, tensors = read_adapter(folder)
    r, alpha = int(config["r"]), float(config.get("lora_alpha", 8))
    params: list[str] = list(config.get("target_parameters") or [])
    # The exact set of HF modules present in the file (PEFT may have matched by regex).
    wanted = {adapter_module_name(k) for k in tensors}
    linear_names: set[str] = set()
    expert_keys: dict[str, str] = {}  # PEFT key (with nesting) -> our HF param name
    sites = find_sites(model)
    targeted: dict[str, set[str]] = {}
    for site in sites:
        if site.expert and param_key(site.slices[0].hf) in params:
            targeted.setdefault(site.module, set()).add(site.param)
    for site in sites:
        for s in site.slices:
            if site.expert:
                if site.param in targeted.get(site.module, ()):
                    key = s.hf.rpartition(".")[0] + _nest(model, site.module, site.param, targeted[site.module])
                    if key in wanted:
                        expert_keys[key] = s.hf
            elif s.hf in wanted:
                linear_names.add(s.hf)
    unknown = wanted - linear_names - set(expert_keys)
    if unknown:
        raise CheckpointError(f"{folder}: adapter tensors for module(s) this model does not have: "
                              f"{sorted(unknown)[:5]}")
    lora = LoRAMixin(r=r, alpha=alpha, dropout=float(config.get("lora_dropout", 0.0)),
                     target_modules=sorted(linear_names | set(expert_keys.values())),
                     use_rslora=bool(config.get("use_rslora", False)), freeze_base=True)
    model.add_mixin(name, lora)
    for site, slices, ad in lora.adapters():
        if isinstance(ad, ExpertLoRA):
            hf = site.slices[0].hf
            key = next(k for k, v in expert_keys.items() if v == hf)
            a, b = tensors[PREFIX + key + ".lora_A.weight"], tensors[PREFIX + key + ".lora_B.weight"]
            E, out, _ = ad.lora_b.shape
            _check(folder, key, a, (E * r, ad.in_features))
            _check(folder, key, b, (out, r * E))
            ad.lora_a.copy_(a.reshape(E, r, -1))
            ad.lora_b.copy_(b.reshape(out, r, E).permute(2, 0, 1))
            continue
        for i, s in enumerate(slices):
            a, b = tensors[PREFIX + s.hf + ".lora_A.weight"], tensors[PREFIX + s.hf + ".lora_B.weight"]
            _check(folder, s.hf, a, (r, ad.in_features))
            _check(folder, s.hf, b, (s.size, r))
            if s.to_ours is not None:
                b = s.to_ours(b)
            off = sum(x.size for x in slices[:i])
            ad.lora_a[i * r : (i + 1) * r].copy_(a)
            ad.lora_b[off : off + s.size].copy_(b)
    for p in lora.adapter_parameters():
        p.requires_grad_(trainable)
    return lora


def _check(folder: Any, key: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(t.shape) != shape:
        raise CheckpointError(f"{folder}: {key}: LoRA tensor shape {tuple(t.shape)} != expected {shape}")
