# SPDX-License-Identifier: Apache-2.0
"""autotrain's YAML config (`autotrain --config llm.yml`) -> `swisslm finetune` option values.

    task: llm-dpo                 # llm-sft | llm-dpo | llm-orpo | llm-reward | llm-generic (= sft)
    base_model: path/to/model
    project_name: my-run
    data:
      path: data/                 # file or folder with <split>.jsonl|.csv
      train_split: train
      valid_split: null
      chat_template: chatml
      column_mapping: {text_column: chosen, rejected_text_column: rejected, prompt_text_column: prompt}
    params: {block_size: 1024, epochs: 1, batch_size: 2, lr: 3e-5, peft: true, ...}

Keys about the Hub, logging backends and hardware that have no meaning here (hub, backend, log,
push_to_hub, token, username, unsloth, use_flash_attention_2, distributed_backend, ...) are
ignored with a warning; any other unknown key is an error, so a typo does not silently train
with a default.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TASKS = {"llm": "sft", "llm-sft": "sft", "llm-generic": "sft", "llm-dpo": "dpo", "llm-orpo": "orpo",
         "llm-reward": "reward"}

# params: keys read under the same name (autotrain's LLMTrainingParams field = our option)
PARAMS = {"block_size", "model_max_length", "max_prompt_length", "max_completion_length", "epochs", "batch_size",
          "lr", "peft", "quantization", "target_modules", "padding", "optimizer", "scheduler",
          "gradient_accumulation", "mixed_precision", "lora_r", "lora_alpha", "lora_dropout", "warmup_ratio",
          "weight_decay", "max_grad_norm", "seed", "dpo_beta", "model_ref", "add_eos_token",
          "auto_find_batch_size", "disable_gradient_checkpointing", "merge_adapter", "save_total_limit",
          "logging_steps", "orpo_alpha", "max_steps", "use_rslora"}
FLOATS = {"lr", "warmup_ratio", "weight_decay", "max_grad_norm", "lora_dropout", "lora_alpha", "dpo_beta",
          "orpo_alpha"}
INTS = {"block_size", "model_max_length", "max_prompt_length", "max_completion_length", "epochs", "batch_size",
        "gradient_accumulation", "lora_r", "seed", "save_total_limit", "logging_steps", "max_steps"}
IGNORED = {"hub", "backend", "log", "push_to_hub", "token", "username", "repo_id", "unsloth",
           "use_flash_attention_2", "distributed_backend", "save_strategy", "eval_strategy",
           "evaluation_strategy", "trainer"}


def read_autotrain_yaml(path: str | Path) -> dict[str, Any]:
    """Option values (argparse dest names) from an autotrain LLM YAML; ValueError on bad input."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--config {p}: no such file")
    try:
        doc = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"--config {p}: invalid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"--config {p}: expected a mapping at the top level")
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if key == "task":
            if value not in TASKS:
                raise ValueError(f"--config {p}: task {value!r} is not one of {sorted(TASKS)}")
            out["trainer"] = TASKS[value]
        elif key == "base_model":
            out["model"] = value
        elif key == "project_name":
            out["output"] = value
        elif key == "data":
            out.update(_data(p, value))
        elif key == "params":
            out.update(_params(p, value))
        elif key in IGNORED:
            log.warning("--config %s: %r has no meaning for swisslm; ignored", p, key)
        else:
            raise ValueError(f"--config {p}: unknown key {key!r}")
    return out


def _data(p: Path, d: Any) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise ValueError(f"--config {p}: 'data' must be a mapping")
    out: dict[str, Any] = {}
    for k, v in d.items():
        if k == "path":
            out["data"] = v
        elif k in ("train_split", "valid_split", "chat_template"):
            out[k] = v
        elif k == "column_mapping":
            if not isinstance(v, dict):
                raise ValueError(f"--config {p}: data.column_mapping must be a mapping")
            for ck, cv in v.items():
                if ck not in ("text_column", "rejected_text_column", "prompt_text_column"):
                    raise ValueError(f"--config {p}: unknown column mapping {ck!r}")
                out[ck] = cv
        else:
            raise ValueError(f"--config {p}: unknown key data.{k}")
    return out


def _params(p: Path, d: Any) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise ValueError(f"--config {p}: 'params' must be a mapping")
    out: dict[str, Any] = {}
    for k, v in d.items():
        if k in IGNORED:
            log.warning("--config %s: params.%s has no meaning for swisslm; ignored", p, k)
            continue
        if k not in PARAMS:
            raise ValueError(f"--config {p}: unknown key params.{k}")
        try:  # YAML reads 3e-5 (no dot) as a string
            if k in FLOATS and v is not None:
                v = float(v)
            elif k in INTS and v is not None:
                v = int(v)
        except (TypeError, ValueError):
            raise ValueError(f"--config {p}: params.{k} {v!r} is not a number") from None
        if k == "mixed_precision":
            if v in (None, "none", "no"):
                v = "none"
            elif v != "bf16":
                raise ValueError(f"--config {p}: params.mixed_precision {v!r}: only bf16 or none")
        if k == "quantization" and v in ("none", "no"):
            v = None
        if k == "optimizer" and v not in ("adamw_torch", "adamw", "adafactor", "sgd"):
            raise ValueError(f"--config {p}: params.optimizer {v!r}: one of adamw_torch, adamw, adafactor, sgd")
        out[k] = v
    return out
