"""The LR is a pure function of the global step (ARCHITECTURE.md rule 2)."""

import math

import pytest

from trainer.config import TrainConfig
from trainer.optim import lr_at


def test_warmup_then_constant_by_default():
    cfg = TrainConfig(learning_rate=1e-3, warmup_steps=10)
    assert cfg.lr_schedule == "constant"
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert [lr_at(s, cfg) for s in (10, 1_000, 10_000_000)] == [1e-3] * 3


def test_warmup_is_monotonic_and_never_zero():
    cfg = TrainConfig(learning_rate=3e-4, warmup_steps=100)
    values = [lr_at(s, cfg) for s in range(100)]
    assert values[0] > 0
    assert values == sorted(values)


def test_cosine_decays_to_floor_and_stays():
    cfg = TrainConfig(
        learning_rate=1.0,
        warmup_steps=0,
        lr_schedule="cosine",
        lr_decay_steps=100,
        min_lr_ratio=0.1,
    )
    assert lr_at(0, cfg) == pytest.approx(1.0)
    assert lr_at(50, cfg) == pytest.approx(0.55)
    assert lr_at(100, cfg) == pytest.approx(0.1)
    assert lr_at(5_000, cfg) == pytest.approx(0.1)


def test_inverse_sqrt():
    cfg = TrainConfig(learning_rate=1.0, warmup_steps=100, lr_schedule="inverse_sqrt")
    assert lr_at(99, cfg) == pytest.approx(1.0)
    assert lr_at(399, cfg) == pytest.approx(0.5)
    assert lr_at(9_999, cfg) == pytest.approx(math.sqrt(100 / 10_000))


@pytest.mark.parametrize("schedule", ["constant", "cosine", "inverse_sqrt"])
def test_pure_function_of_the_step(schedule):
    """Same step, same LR, however we got there: nothing can reset or skip it."""
    cfg = TrainConfig(learning_rate=2e-4, warmup_steps=7, lr_schedule=schedule, lr_decay_steps=50)
    first = [lr_at(s, cfg) for s in range(200)]
    second = [lr_at(s, cfg) for s in reversed(range(200))][::-1]
    assert first == second


def test_negative_step_rejected():
    with pytest.raises(ValueError, match="negative"):
        lr_at(-1, TrainConfig())
