import math

import pytest

from lmforge.training.schedule import LRSchedule


def test_warmup_is_linear_from_near_zero_to_lr():
    s = LRSchedule(lr=1.0, max_steps=100, warmup_steps=9, min_lr=0.1, kind="cosine")
    assert [s(i) for i in range(9)] == pytest.approx([(i + 1) / 10 for i in range(9)])
    assert s(9) == pytest.approx(1.0)  # first step after warmup: the peak


def test_cosine_hits_midpoint_and_floor():
    s = LRSchedule(lr=1.0, max_steps=110, warmup_steps=10, min_lr=0.1, kind="cosine")
    assert s(60) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway: cos(pi/2) = 0
    assert s(35) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.25)))
    assert s(110) == pytest.approx(0.1)
    assert s(500) == pytest.approx(0.1)  # clamped past the end


def test_linear_decay():
    s = LRSchedule(lr=2.0, max_steps=100, warmup_steps=0, min_lr=0.0, kind="linear")
    assert s(0) == pytest.approx(2.0)
    assert s(25) == pytest.approx(1.5)
    assert s(100) == pytest.approx(0.0)


def test_wsd_is_flat_then_decays_over_the_last_fraction():
    s = LRSchedule(lr=1.0, max_steps=100, warmup_steps=10, min_lr=0.0, kind="wsd",
                   decay_frac=0.2)
    assert all(s(i) == 1.0 for i in range(10, 80))
    assert s(90) == pytest.approx(0.5)
    assert s(100) == pytest.approx(0.0)
    assert s(85) > s(95)


def test_constant_and_factor():
    s = LRSchedule(lr=0.5, max_steps=10, warmup_steps=1, kind="constant")
    assert s(0) == pytest.approx(0.25)
    assert s(7) == 0.5
    assert s.factor(0) == pytest.approx(0.5)


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="unknown schedule"):
        LRSchedule(lr=1.0, max_steps=10, kind="step")
