# SPDX-License-Identifier: Apache-2.0
"""Adapter arithmetic: weighted combinations of PEFT LoRA adapters, PEFT's `add_weighted_adapter`
maths applied to the files (no model needed), written in PEFT format.

For adapters i with weight w_i, scaling s_i (alpha_i / r_i, or alpha_i / sqrt(r_i) with rsLoRA)
and, per adapted module, A_i (r_i x in) and B_i (out x r_i):
- linear (all ranks equal): A = sum_i sign(w_i s_i) sqrt|w_i s_i| A_i, B = sum_i sqrt|w_i s_i| B_i.
  Not the weighted sum of the deltas: the cross terms B_i A_j stay, exactly as in PEFT.
- cat: A = [w_1 s_1 A_1; w_2 s_2 A_2; ...], B = [B_1 B_2 ...], rank sum_i r_i: the delta is
  exactly sum_i w_i s_i B_i A_i.
- svd: delta = sum_i w_i s_i B_i A_i, truncated to rank `svd_rank` (default: the largest r_i):
  B = U_k diag(S_k), A = Vh_k.
The result's config is the first adapter's with r = lora_alpha = the new rank (PEFT's `replace`),
target_modules the union. A module that only some adapters adapt takes those adapters only (cat
leaves the others' rows zero), as PEFT does.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .peft_format import CONFIG_NAME, WEIGHTS_NAME, adapter_module_name, read_adapter

METHODS = ("linear", "cat", "svd")


def _scaling(cfg: dict[str, Any]) -> float:
    r, alpha = int(cfg["r"]), float(cfg.get("lora_alpha", 8))
    return alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r


def combine_adapters(folders: Sequence[str | Path], weights: Sequence[float], method: str = "linear",
                     svd_rank: int | None = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config, tensors) of the weighted combination of the PEFT adapters in `folders`."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    if len(weights) != len(folders):
        raise ValueError(f"{len(folders)} adapter(s) but {len(weights)} weight(s)")
    if not folders:
        raise ValueError("no adapters to combine")
    loaded = [read_adapter(f) for f in folders]
    for f, (cfg, _) in zip(folders, loaded):
        if cfg.get("target_parameters"):
            raise ValueError(f"{f}: adapters on expert parameters (target_parameters) cannot be combined "
                             "(PEFT's add_weighted_adapter refuses them too)")
    method = "linear" if len(folders) == 1 else method
    ranks = [int(c["r"]) for c, _ in loaded]
    if method == "linear":
        if len(set(ranks)) != 1:
            raise ValueError(f"--method linear needs adapters of one rank, got r = {ranks} (use cat or svd)")
        new_rank = ranks[0]
    elif method == "cat":
        new_rank = sum(ranks)
    else:
        new_rank = svd_rank or max(ranks)
    if new_rank <= 0:
        raise ValueError(f"--svd-rank must be > 0, got {new_rank}")
    scales = [_scaling(c) for c, _ in loaded]
    modules: dict[str, None] = {}
    for _, t in loaded:
        modules.update(dict.fromkeys(adapter_module_name(k) for k in t))
    prefix = "base_model.model."
    out: dict[str, torch.Tensor] = {}
    for mod in modules:
        parts = [(w, s, t[f"{prefix}{mod}.lora_A.weight"].double(), t[f"{prefix}{mod}.lora_B.weight"].double())
                 for (_, t), w, s in zip(loaded, weights, scales) if f"{prefix}{mod}.lora_A.weight" in t]
        dtype = loaded[0][1][next(iter(loaded[0][1]))].dtype
        if method == "linear":
            wa = [math.copysign(math.sqrt(abs(w * s)), w * s) for w, s, _, _ in parts]
            wb = [math.sqrt(abs(w * s)) for w, s, _, _ in parts]
            a = sum(x * p[2] for x, p in zip(wa, parts))
            b = sum(x * p[3] for x, p in zip(wb, parts))
        elif method == "cat":
            a_rows = torch.cat([w * s * A for w, s, A, _ in parts], 0)
            b_cols = torch.cat([B for _, _, _, B in parts], 1)
            a = a_rows.new_zeros(new_rank, a_rows.shape[1])
            b = b_cols.new_zeros(b_cols.shape[0], new_rank)
            a[: a_rows.shape[0]], b[:, : b_cols.shape[1]] = a_rows, b_cols
        else:
            delta = sum(w * s * (B @ A) for w, s, A, B in parts)
            U, S, Vh = torch.linalg.svd(delta, full_matrices=True)
            b = U[:, :new_rank] @ torch.diag(S[:new_rank])
            a = Vh[:new_rank, :]
            if a.shape[0] < new_rank:  # a module narrower than the rank: pad, as PEFT's layer is r wide
                a = torch.cat([a, a.new_zeros(new_rank - a.shape[0], a.shape[1])])
                b = torch.cat([b, b.new_zeros(b.shape[0], new_rank - b.shape[1])], 1)
        out[f"{prefix}{mod}.lora_A.weight"] = a.to(dtype).contiguous()
        out[f"{prefix}{mod}.lora_B.weight"] = b.to(dtype).contiguous()
    config = dict(loaded[0][0])
    targets: set[str] = set()
    for c, _ in loaded:
        tm = c.get("target_modules") or []
        if isinstance(tm, str):
            raise ValueError("adapters with a regex target_modules cannot be combined into a list; "
                             "PEFT joins regexes, which swisslm's loader does not need: name the modules")
        targets.update(tm)
    config.update(r=new_rank, lora_alpha=new_rank, target_modules=sorted(targets), alpha_pattern={}, rank_pattern={})
    return config, out


def write_combined(folders: Sequence[str | Path], weights: Sequence[float], out: str | Path, method: str = "linear",
                   svd_rank: int | None = None) -> Path:
    """Combine and write `out/adapter_config.json` + `out/adapter_model.safetensors`."""
    config, tensors = combine_adapters(folders, weights, method, svd_rank)
    o = Path(out)
    o.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(o / WEIGHTS_NAME), metadata={"format": "pt"})
    (o / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return o
