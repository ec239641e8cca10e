# SPDX-License-Identifier: Apache-2.0
"""The `swisslm train` config: a YAML file validated by pydantic, plus `--set a.b=v` overrides.

Every section forbids unknown keys, so a typo fails before any work with a message naming the
full key (`optimizer.lrr: unknown key; allowed: ...`). Model fields are ModelConfig's own
names (`model.config`), validated by ModelConfig. See examples/train_tiny_llama.yaml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..config import ConfigError, ModelConfig

# Family-independent shapes (Llama-style: gated SiLU MLP, RMSNorm, rotary). vocab_size comes
# from the prepared data unless model.config sets it. ~Parameter counts are for vocab 32000.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=192),
    "20m": dict(hidden_size=256, num_layers=8, num_heads=8, num_kv_heads=4, intermediate_size=768),  # ~22M
    "60m": dict(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, intermediate_size=1536),
    "125m": dict(hidden_size=768, num_layers=12, num_heads=12, num_kv_heads=4, intermediate_size=2048),
    "350m": dict(hidden_size=1024, num_layers=24, num_heads=16, num_kv_heads=8, intermediate_size=2816),
    "1b": dict(hidden_size=2048, num_layers=16, num_heads=32, num_kv_heads=8, intermediate_size=8192),
}
# What a family adds on top of a size (structural fields only; everything else is config).
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {},
    "granite": {},  # muP multipliers come from the `mup` section (Granite's defaults apply)
    "granite_moe": dict(num_experts=8, num_experts_per_tok=2, router_aux_loss_coef=0.01,
                        router_z_loss_coef=0.001),
    "olmoe": dict(num_experts=8, num_experts_per_tok=2, qk_norm="full", router_aux_loss_coef=0.01,
                  router_z_loss_coef=0.001),
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class MupConfig(_Section):
    """Granite's muP: hyperparameters tuned on a proxy of width `base_width` carry over.

    Applied to a model of hidden size d (m = d / base_width): attention scale 1/head_dim,
    logits divided by m, hidden-matrix init std / sqrt(m) and Adam lr / m; the embedding and
    residual multipliers are the proxy's values, unchanged with width."""

    base_width: int = 256
    embedding_multiplier: float = 12.0
    residual_multiplier: float = 0.22


class ModelSection(_Section):
    family: str = "llama"
    size: str | None = "tiny"
    from_pretrained: str | None = None  # HF folder (or .gguf) to continue training from
    config: dict[str, Any] = Field(default_factory=dict)  # ModelConfig field overrides
    mup: MupConfig | None = None
    init_seed: int | None = None  # None -> the run's seed

    @model_validator(mode="after")
    def _check(self) -> ModelSection:
        if self.from_pretrained is None and self.size is not None and self.size not in SIZES:
            raise ValueError(f"model.size={self.size!r} is not one of {list(SIZES)}")
        if self.from_pretrained is None and self.family not in FAMILY_DEFAULTS:
            raise ValueError(f"model.family={self.family!r} is not one of {list(FAMILY_DEFAULTS)}")
        return self


class DataSection(_Section):
    path: str  # a folder written by `swisslm prepare-data`
    eval_path: str | None = None  # None: eval (if enabled) reads a held-out seed over `path`
    seq_len: int = Field(256, gt=0)
    shift_windows: bool = True  # new random window offset each epoch after the first


class OptimizerSection(_Section):
    name: Literal["adamw"] = "adamw"
    lr: float = Field(3e-4, gt=0)  # peak lr (cosine / wsd / constant / linear_warmup)
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    fused: bool | None = None  # None: fused kernel where the device has one
    grad_clip: float | None = 1.0


class ScheduleSection(_Section):
    name: Literal["cosine", "wsd", "power", "linear_warmup", "constant"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    decay_steps: int = Field(0, ge=0)  # wsd / power: length of the final decay phase
    min_lr_ratio: float = Field(0.1, ge=0, le=1)  # cosine / wsd: floor as a fraction of the peak
    decay_style: Literal["linear", "cosine", "1-sqrt", "exponential"] | None = None  # wsd: linear; power: exp
    power_a: float = 4.0  # Power scheduler: lr = min(eta_max, batch * a * tokens**b)
    power_b: float = -0.51
    eta_max: float = 0.02


class TrainingSection(_Section):
    max_steps: int = Field(gt=0)
    micro_batch_size: int = Field(8, gt=0)  # sequences per rank per forward
    grad_accum: int = Field(1, gt=0)
    global_batch_size: int | None = None  # if set, grad_accum = global / (micro * world)
    precision: Literal["fp32", "bf16"] = "fp32"
    activation_checkpointing: bool = False
    compile: bool = False
    device: str = "cpu"
    threads: int | None = None
    parallel: Literal["auto", "none", "ddp", "fsdp"] = "auto"  # auto: ddp when launched by torchrun


class EvalSection(_Section):
    every: int = Field(0, ge=0)
    batches: int = Field(8, gt=0)


class LoggingSection(_Section):
    every: int = Field(10, gt=0)
    tensorboard: bool = True
    progress: bool = True
    peak_flops: float | None = Field(None, gt=0)  # MFU denominator per device; None = a known GPU, else no MFU


class CheckpointSection(_Section):
    every: int = Field(0, ge=0)  # 0 = only at the end
    keep_last: int = Field(3, ge=1)
    export_hf: bool = False  # write RUN_DIR/hf (an HF folder) at the end


class TrainConfig(_Section):
    run_dir: str
    seed: int = 0
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection
    optimizer: OptimizerSection = Field(default_factory=OptimizerSection)
    schedule: ScheduleSection = Field(default_factory=ScheduleSection)
    training: TrainingSection
    eval: EvalSection = Field(default_factory=EvalSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)

    def model_config_for(self, vocab_size: int | None, special: dict[str, Any] | None = None) -> ModelConfig:
        """ModelConfig from family + size + overrides (+ muP), with the data's vocabulary."""
        m = self.model
        fields: dict[str, Any] = {"family": m.family, **SIZES.get(m.size or "", {}),
                                  **FAMILY_DEFAULTS.get(m.family, {})}
        if vocab_size is not None:
            fields["vocab_size"] = vocab_size
        fields.update({k: v for k, v in (special or {}).items() if v is not None})
        fields.update(m.config)
        try:
            cfg = ModelConfig.from_dict(fields)
        except ConfigError as e:
            raise ConfigError(f"model.config: {e}") from None
        except TypeError as e:
            raise ConfigError(f"model.config: {e}") from None
        if self.mup is not None:
            from .mup import apply_mup_config

            cfg = apply_mup_config(cfg, self.mup)
        return cfg

    @property
    def mup(self) -> MupConfig | None:
        if self.model.mup is None and self.model.family == "granite" and self.model.from_pretrained is None:
            return MupConfig()
        return self.model.mup


def _format_error(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        if err["type"] == "extra_forbidden":
            parts.append(f"{loc}: unknown key")
        elif err["type"] == "missing":
            parts.append(f"{loc}: required key is missing")
        else:
            parts.append(f"{loc}: {err['msg']}" if loc else err["msg"])
    return "invalid train config: " + "; ".join(parts)


def set_override(d: dict[str, Any], assignment: str) -> None:
    """Apply one `a.b.c=value` (value parsed as YAML: numbers, booleans, lists, null)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE (e.g. optimizer.lr=1e-3)")
    key, raw = assignment.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {assignment!r}: empty key")
    value = yaml.safe_load(raw) if raw.strip() else ""
    cur = d
    for p in parts[:-1]:
        nxt = cur.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {key}: {p!r} is not a section")
        cur = nxt
    cur[parts[-1]] = value


def parse_train_config(data: dict[str, Any], overrides: list[str] | None = None) -> TrainConfig:
    data = dict(data or {})
    for ov in overrides or []:
        set_override(data, ov)
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(e)) from None


def load_train_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(2, "No such file or directory", str(p))
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of sections")
    return parse_train_config(data, overrides)
