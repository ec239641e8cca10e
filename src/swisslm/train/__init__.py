# SPDX-License-Identifier: Apache-2.0
"""Training: the loop, schedules, memmap data, checkpoints, distributed wrappers.

Reusable core (see `trainer.py`'s docstring for a full example):

- `Trainer(model, optimizer, schedule, TrainerConfig(...), checkpoints=..., loggers=...)`
  with `.fit(batches)`, `.resume(path, batches)` / `.resume_latest(batches)`; batches are
  dicts with `input_ids` and HF-style `labels` (-100 = no loss).
- `make_schedule(name, **kw)` and the plain functions in `schedulers.py`.
- `optim.param_groups(model, weight_decay, mup_width_mult)` + `optim.build_adamw(...)`.
- `CheckpointManager(folder, keep_last)`: safetensors + JSON, atomic, resumable.
- `metrics.CSVLogger(run_dir)` (+ TensorBoard when installed).
"""

from .checkpoint import CheckpointManager
from .schedulers import make_schedule
from .trainer import Trainer, TrainerConfig, TrainState, causal_lm_loss_sum

__all__ = ["CheckpointManager", "Trainer", "TrainerConfig", "TrainState", "causal_lm_loss_sum",
           "make_schedule"]
