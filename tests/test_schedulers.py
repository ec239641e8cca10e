# SPDX-License-Identifier: Apache-2.0
"""Schedules against their formulas, with values worked out by hand (see the comments)."""

from __future__ import annotations

import math

import pytest

from swisslm.train.schedulers import cosine, decay_factor, linear_warmup, make_schedule, power, power_lr, wsd


def test_linear_warmup():
    assert linear_warmup(1, lr=1.0, warmup_steps=4) == 0.25
    assert linear_warmup(4, lr=1.0, warmup_steps=4) == 1.0
    assert linear_warmup(400, lr=1.0, warmup_steps=4) == 1.0
    assert linear_warmup(7, lr=0.5, warmup_steps=0) == 0.5


def test_cosine_values():
    kw = dict(lr=1.0, warmup_steps=10, total_steps=110, min_lr=0.1)
    assert cosine(5, **kw) == pytest.approx(0.5)  # 5/10 of the way up
    assert cosine(10, **kw) == pytest.approx(1.0)
    # p = 25/100: 0.1 + 0.9 * (1 + cos(pi/4)) / 2 = 0.1 + 0.45 * 1.70710678 = 0.86819805
    assert cosine(35, **kw) == pytest.approx(0.8681980515339464, rel=1e-12)
    assert cosine(60, **kw) == pytest.approx(0.55)  # half way: (1 + min) / 2
    assert cosine(110, **kw) == pytest.approx(0.1)
    assert cosine(500, **kw) == pytest.approx(0.1)  # past the end: stays at the floor


def test_wsd_values():
    kw = dict(lr=2.0, warmup_steps=10, total_steps=100, decay_steps=20, min_lr=0.2)
    assert wsd(5, **kw) == pytest.approx(1.0)
    assert wsd(50, **kw) == 2.0  # stable phase
    assert wsd(80, **kw) == 2.0  # decay starts after step 80
    assert wsd(90, **kw) == pytest.approx(1.1)  # linear: 2 * (1 - 0.9 * 0.5)
    assert wsd(100, **kw) == pytest.approx(0.2)
    # 1-sqrt at p = 1/4: 2 * (0.1 + 0.9 * (1 - 0.5)) = 1.1
    assert wsd(85, **kw, decay_style="1-sqrt") == pytest.approx(1.1)
    # cosine at p = 1/2: 2 * (0.1 + 0.9 * 0.5) = 1.1
    assert wsd(90, **kw, decay_style="cosine") == pytest.approx(1.1)
    assert wsd(100, **kw, decay_style="exponential") == pytest.approx(0.2)


def test_exponential_decay_shape():
    # ((1-r) e exp(-p) + r e - 1) / (e - 1): 1 at p=0, r at p=1; r=0, p=1/2 -> (sqrt(e)-1)/(e-1)
    assert decay_factor(0.0, "exponential", 0.3) == pytest.approx(1.0)
    assert decay_factor(1.0, "exponential", 0.3) == pytest.approx(0.3)
    assert decay_factor(0.5, "exponential", 0.0) == pytest.approx(0.3775406687981455, rel=1e-12)
    with pytest.raises(ValueError, match="decay style"):
        decay_factor(0.5, "bogus")  # type: ignore[arg-type]


def test_power_law_and_cap():
    # the paper's defaults a=4, b=-0.51, eta_max=0.02; beta (batch) = 4 sequences
    assert power_lr(1e4, batch_size=4) == 0.02  # 16 * 1e4**-0.51 = 0.146 -> capped at eta_max
    # 16 * (5e5)**-0.51 = 16 * 10**(-0.51 * 5.69897) = 16 * 0.00124030 = 0.0198447
    assert power_lr(5e5, batch_size=4) == pytest.approx(0.019844733930158148, rel=1e-12)
    assert power_lr(5e5, batch_size=4, a=1.0, b=-0.5, eta_max=1.0) == pytest.approx(4 / math.sqrt(5e5))


def test_power_schedule_phases():
    kw = dict(tokens_per_step=1000, batch_size=4, warmup_steps=10, total_steps=1000, decay_steps=100)
    # warmup: step/N_w * eta(N_w tokens) = 5/10 * min(0.02, 16 * 1e4**-0.51) = 0.5 * 0.02
    assert power(5, **kw) == pytest.approx(0.01)
    assert power(500, **kw) == pytest.approx(0.019844733930158148, rel=1e-12)  # n = 5e5 tokens
    # decay from eta(9e5) = 16 * (9e5)**-0.51 = 0.0147047; p = 1/2 -> x 0.37754067
    assert power(900, **kw) == pytest.approx(0.014704704544809575, rel=1e-12)
    assert power(950, **kw) == pytest.approx(0.005551623988326537, rel=1e-12)
    assert power(1000, **kw) == pytest.approx(0.0, abs=1e-15)
    # no decay phase: open-ended, keeps following the power law
    assert power(5000, **{**kw, "decay_steps": 0}) == pytest.approx(16 * (5e6) ** -0.51)


def test_make_schedule():
    s = make_schedule("cosine", lr=1.0, warmup_steps=10, total_steps=110, min_lr=0.1)
    assert s(60) == pytest.approx(0.55)
    with pytest.raises(ValueError, match="unknown schedule"):
        make_schedule("triangle")
