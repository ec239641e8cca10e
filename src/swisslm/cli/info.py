# SPDX-License-Identifier: Apache-2.0
"""swisslm info: config, parameter count, weight storage format and the slot report of a model."""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

from .common import add_model_args, load_model_from_args


def register(sub) -> None:
    p = sub.add_parser("info", help="show config, parameter count, weight format and slot providers")
    add_model_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = load_model_from_args(args)
    cfg = model.config
    if getattr(model, "quantization", None):  # quantized weights are buffers: count them by shape
        from ..quant.api import logical_num_parameters

        n_params = logical_num_parameters(model)
    else:
        n_params = model.num_parameters()
    info = {
        "source": model.source,
        "name_or_path": model.name_or_path,
        "family": cfg.family,
        "parameters": n_params,
        "weights": model.storage_format(),
        "config": cfg.to_dict(),
        "slots": model.slot_providers(),
        "tokenizer": None if model.tokenizer is None else {"vocab_size": model.tokenizer.vocab_size},
        "linears": _linears(model),
    }
    if args.json:
        print(json.dumps(info))
        return 0
    shown = info["source"]
    asked = info["name_or_path"]
    if asked is not None and Path(asked).expanduser() != Path(shown):  # a hub id: say where it is in the cache
        shown = f"{asked} ({shown})"
    print(f"source      {shown}")
    print(f"family      {cfg.family}")
    print(f"parameters  {info['parameters']:,}")
    print(f"weights     {info['weights']}")
    print(f"layers      {cfg.num_layers}  hidden {cfg.hidden_size}  heads {cfg.num_heads}/{cfg.num_kv_heads}"
          f" (q/kv)  head_dim {cfg.head_dim}  ffn {cfg.intermediate_size}  vocab {cfg.vocab_size}")
    if cfg.num_experts:
        print(f"experts     {cfg.num_experts} (top-{cfg.num_experts_per_tok})")
    print("backend     " + "\n            ".join(_backend_lines(info["linears"])))
    print(model.mixin_report())
    return 0


def _linears(model) -> list[dict]:
    """Which backend and instruction set each linear's products run on (kernels.describe)."""
    from ..kernels.backend import describe

    return describe(model)


def _backend_lines(linears: list[dict]) -> list[str]:
    """One line per (weight kind, backend, ISA), naming its linears with the layer index folded:
    `fp32 on swisslm (avx2): 120 (layers.*.attn.qkv, layers.*.attn.out, ...)`."""
    groups: dict[tuple, Counter] = {}
    for e in linears:
        key = (e["kind"], e["backend"], e["isa"])
        groups.setdefault(key, Counter())[re.sub(r"\.\d+\.", ".*.", e["name"])] += 1
    lines = []
    for (kind, backend, isa), names in groups.items():
        where = f"{backend} ({isa})" if isa else backend
        lines.append(f"{kind} on {where}: {sum(names.values())} ({', '.join(names)})")
    return lines or ["no linear layers"]
