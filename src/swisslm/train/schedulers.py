# SPDX-License-Identifier: Apache-2.0
"""Learning-rate schedules as plain functions of the optimizer step.

Convention (all schedules): `step` is the 1-based index of the optimizer update being made,
so the first update uses `lr(1)`; a run of `total_steps` updates ends with `lr(total_steps)`.
A schedule is a pure function of the step, which is why resuming needs no scheduler state
beyond the step counter stored in the checkpoint.

- `linear_warmup`: lr * step / warmup_steps, then lr.
- `cosine`: linear warmup, then min_lr + (lr - min_lr) * (1 + cos(pi * p)) / 2, p = progress.
- `wsd` (warmup-stable-decay, MiniCPM): warmup, constant lr, then a decay over the last
  `decay_steps` with one of the decay shapes below.
- `power` (Granite's Power scheduler, Shen et al. 2024): with n = tokens seen after this step,
  eta(n) = min(eta_max, beta * a * n**b), beta = batch size in sequences. Warmup is linear in
  tokens up to eta(N_warmup); the last `decay_steps` decay from eta(N - N_decay) with the
  exponential shape (as IBM's dolomite-engine decays its Power runs).

Decay shapes, f(p) for p in [0, 1] going from 1 to `final_ratio` (= min_lr / peak):
    linear       1 - (1 - r) p
    cosine       r + (1 - r) (1 + cos(pi p)) / 2
    1-sqrt       r + (1 - r) (1 - sqrt(p))
    exponential  ((1 - r) e exp(-p) + r e - 1) / (e - 1)    (exp(-p) rescaled to end exactly at r)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Literal

DecayStyle = Literal["linear", "cosine", "1-sqrt", "exponential"]
Schedule = Callable[[int], float]


def decay_factor(p: float, style: DecayStyle, final_ratio: float = 0.0) -> float:
    """Multiplier at decay progress p in [0, 1]: 1 at p=0, `final_ratio` at p=1."""
    p = min(max(p, 0.0), 1.0)
    r = final_ratio
    if style == "linear":
        return 1.0 - (1.0 - r) * p
    if style == "cosine":
        return r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * p))
    if style == "1-sqrt":
        return r + (1.0 - r) * (1.0 - math.sqrt(p))
    if style == "exponential":
        e = math.e
        return ((1.0 - r) * e * math.exp(-p) + r * e - 1.0) / (e - 1.0)
    raise ValueError(f"decay style {style!r} is not one of linear, cosine, 1-sqrt, exponential")


def _warm(step: int, warmup_steps: int) -> float:
    return min(1.0, step / warmup_steps) if warmup_steps > 0 else 1.0


def constant(step: int, *, lr: float) -> float:
    return lr


def linear_warmup(step: int, *, lr: float, warmup_steps: int) -> float:
    """lr * step / warmup_steps during warmup, then lr."""
    return lr * _warm(step, warmup_steps)


def cosine(step: int, *, lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """Linear warmup to `lr`, then half a cosine down to `min_lr` at `total_steps`."""
    if step <= warmup_steps:
        return lr * _warm(step, warmup_steps)
    p = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(p, 1.0)))


def wsd(step: int, *, lr: float, warmup_steps: int, total_steps: int, decay_steps: int,
        min_lr: float = 0.0, decay_style: DecayStyle = "linear") -> float:
    """Warmup-stable-decay: warmup, hold `lr`, decay during the last `decay_steps` steps."""
    if step <= warmup_steps:
        return lr * _warm(step, warmup_steps)
    decay_start = total_steps - decay_steps
    if decay_steps <= 0 or step <= decay_start:
        return lr
    return lr * decay_factor((step - decay_start) / decay_steps, decay_style, min_lr / lr if lr else 0.0)


def power_lr(tokens: float, *, batch_size: float, a: float = 4.0, b: float = -0.51,
             eta_max: float = 0.02) -> float:
    """The Power law itself: min(eta_max, beta * a * n**b) with n tokens seen, beta = batch size."""
    if tokens <= 0:
        return eta_max
    return min(eta_max, batch_size * a * tokens**b)


def power(step: int, *, tokens_per_step: int, batch_size: int, warmup_steps: int, total_steps: int,
          decay_steps: int = 0, a: float = 4.0, b: float = -0.51, eta_max: float = 0.02,
          final_ratio: float = 0.0, decay_style: DecayStyle = "exponential") -> float:
    """Granite's Power scheduler with warmup and decay (n = step * tokens_per_step).

        n < N_w:              n / N_w * eta(N_w)
        N_w <= n <= N - N_d:  eta(n) = min(eta_max, beta * a * n**b)
        n > N - N_d:          f((n - (N - N_d)) / N_d) * eta(N - N_d)

    `decay_steps=0` gives the open-ended schedule (no decay; the point of Power is that the
    number of tokens need not be known in advance).
    """
    eta = partial(power_lr, batch_size=batch_size, a=a, b=b, eta_max=eta_max)
    if step < warmup_steps:
        return step / warmup_steps * eta(warmup_steps * tokens_per_step)
    decay_start = total_steps - decay_steps
    if decay_steps <= 0 or step <= decay_start:
        return eta(step * tokens_per_step)
    p = (step - decay_start) / decay_steps
    return decay_factor(p, decay_style, final_ratio) * eta(decay_start * tokens_per_step)


def make_schedule(name: str, **kwargs: float | int | str) -> Schedule:
    """`make_schedule("cosine", lr=3e-4, warmup_steps=100, total_steps=1000)` -> step -> lr."""
    table: dict[str, Callable[..., float]] = {
        "constant": constant, "linear_warmup": linear_warmup, "cosine": cosine, "wsd": wsd, "power": power,
    }
    if name not in table:
        raise ValueError(f"unknown schedule {name!r}; one of {sorted(table)}")
    return partial(table[name], **kwargs)
