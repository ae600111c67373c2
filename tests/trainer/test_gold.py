"""The gold decision (ARCHITECTURE.md rule 10) on scripted val/train sequences: each guard alone,
their combination, ties, and the first gold."""

import math

import pytest

from trainer.config import GoldConfig
from trainer.gold import EvalPoint, decide_gold

CONFIG = GoldConfig(overfit_ratio=5.0, consecutive_rises=2, regression_threshold=0.2)


def point(val, train=None, sets=None, step=100):
    train = val if train is None else train
    return EvalPoint(step=step, val_loss=val, train_loss=train, sets=sets or {"val": val})


def gold_at(val, sets=None, step=50):
    return {"step": step, "val_loss": val, "sets": sets or {"val": val}}


def test_the_first_evaluation_becomes_gold():
    decision = decide_gold(point(3.0), history=[], gold=None, config=CONFIG)
    assert decision.candidate and decision.promote
    assert decision.reason is None and decision.guards == ()


def test_a_new_best_that_passes_every_guard_is_promoted():
    decision = decide_gold(point(2.0), history=[3.0, 2.5], gold=gold_at(2.5), config=CONFIG)
    assert decision.promote


def test_no_better_is_not_a_candidate_and_a_tie_is_not_better():
    for val in (2.5, 2.6):
        decision = decide_gold(point(val), history=[2.5], gold=gold_at(2.5), config=CONFIG)
        assert not decision.candidate and not decision.promote and decision.reason is None


def test_the_best_is_measured_against_gold_not_against_blocked_candidates():
    # 1.9 was a blocked candidate earlier (it is in the history, never became gold); 2.0 is
    # still below the gold's 2.5, so it is a candidate of its own.
    decision = decide_gold(point(2.0), history=[2.5, 1.9, 2.1], gold=gold_at(2.5), config=CONFIG)
    assert decision.candidate and decision.promote


def test_missing_or_non_finite_val_loss_decides_nothing():
    for val in (None, math.nan, math.inf):
        decision = decide_gold(point(val, train=1.0), history=[], gold=None, config=CONFIG)
        assert not decision.candidate and not decision.promote


@pytest.mark.parametrize(
    ("val", "train", "blocked"),
    [
        (2.0, 0.5, False),  # ratio 4.0
        (2.5, 0.5, False),  # ratio 5.0: at the limit is allowed
        (2.0, 0.39, True),  # ratio 5.13
        (1.0, 0.0, True),  # a zero training loss is an infinite ratio
    ],
)
def test_overfit_guard_blocks_above_the_ratio(val, train, blocked):
    decision = decide_gold(point(val, train), history=[3.0], gold=gold_at(3.0), config=CONFIG)
    assert decision.candidate
    assert decision.promote is not blocked
    if blocked:
        assert decision.guards == ("overfit",)
        assert decision.reason.startswith("overfit: val/train loss ratio")
        assert "above the limit 5" in decision.reason


def test_overfit_guard_names_the_numbers():
    decision = decide_gold(point(2.0, 0.25), history=[3.0], gold=gold_at(3.0), config=CONFIG)
    assert decision.reason == (
        "overfit: val/train loss ratio 8.00 is above the limit 5 (val 2.0000, train 0.2500)"
    )


def test_no_training_loss_blocks_as_overfit_cannot_be_checked():
    decision = decide_gold(
        EvalPoint(step=9, val_loss=2.0, train_loss=None, sets={"val": 2.0}),
        history=[],
        gold=None,
        config=CONFIG,
    )
    assert not decision.promote and decision.guards == ("overfit",)
    assert "no training loss" in decision.reason


@pytest.mark.parametrize(
    ("history", "blocked"),
    [
        ([2.0, 2.2, 2.4], True),  # rose twice just before the dip
        ([2.0, 2.2], False),  # two rises need three values
        ([2.2], False),  # too short to have risen twice
        ([2.0, 2.4, 2.2], False),  # rose, then fell: not two rises in a row
        ([2.4, 2.2, 2.3], False),  # only the last rose
        ([2.0, 2.2, 2.2], False),  # flat is not a rise
        ([2.0, None, 2.2, 2.4], True),  # evaluations without a val loss are skipped
    ],
)
def test_rising_guard_blocks_a_dip_right_after_consecutive_rises(history, blocked):
    gold = gold_at(1.9, step=10)
    decision = decide_gold(point(1.8), history=history, gold=gold, config=CONFIG)
    assert decision.candidate
    assert decision.promote is not blocked
    if blocked:
        assert decision.guards == ("rising",)
        assert "rose at each of the last 2 evaluations" in decision.reason


def test_rising_guard_follows_the_configured_count():
    config = GoldConfig(consecutive_rises=3)
    history = [2.0, 2.2, 2.4]
    assert decide_gold(point(1.8), history=history, gold=gold_at(1.9), config=config).promote
    history = [1.9, 2.0, 2.2, 2.4]
    decision = decide_gold(point(1.8), history=history, gold=gold_at(1.95), config=config)
    assert decision.guards == ("rising",)


def test_regression_guard_compares_each_set_with_its_value_at_gold():
    gold = gold_at(2.0, sets={"val": 2.0, "general": 2.5, "domain": 3.0})
    fine = {"val": 1.9, "general": 2.9, "domain": 3.3}  # +16%, +10%
    assert decide_gold(point(1.9, sets=fine), history=[2.0], gold=gold, config=CONFIG).promote
    worse = {"val": 1.9, "general": 3.1, "domain": 3.3}  # general +24%
    decision = decide_gold(point(1.9, sets=worse), history=[2.0], gold=gold, config=CONFIG)
    assert not decision.promote and decision.guards == ("regression",)
    assert decision.reason == (
        "regression: eval set 'general' is 24.0% worse than at gold step 50 "
        "(3.1000 vs 2.5000, limit 20%)"
    )


def test_regression_guard_ignores_sets_gold_did_not_have():
    gold = gold_at(2.0, sets={"val": 2.0})
    sets = {"val": 1.9, "new_set": 9.0}
    assert decide_gold(point(1.9, sets=sets), history=[2.0], gold=gold, config=CONFIG).promote


def test_guards_combine_and_the_reason_names_each():
    gold = gold_at(2.0, sets={"val": 2.0, "general": 2.0})
    decision = decide_gold(
        point(1.9, train=0.1, sets={"val": 1.9, "general": 3.0, "domain": 5.0}),
        history=[1.5, 1.8, 2.1],
        gold=gold,
        config=CONFIG,
    )
    assert not decision.promote
    assert decision.guards == ("overfit", "rising", "regression")
    parts = decision.reason.split("; ")
    assert [p.split(":")[0] for p in parts] == ["overfit", "rising", "regression"]


def test_a_scripted_run_promotes_and_blocks_in_order():
    """A whole sequence, evaluated as the trainer does it: history grows, gold moves."""
    evals = [
        # (val, train): expected outcome
        ((3.0, 3.1), "gold"),
        ((2.6, 2.7), "gold"),
        ((2.6, 2.4), None),  # tie with gold: nothing
        ((2.4, 0.3), "overfit"),  # new best but ratio 8
        ((2.7, 0.2), None),
        ((2.9, 0.2), None),
        ((2.5, 0.6), "rising"),  # dip right after two rises (2.4 -> 2.7 -> 2.9)
        ((2.3, 0.6), "gold"),  # ratio 3.8, last two: rise then fall
    ]
    history, gold, outcomes = [], None, []
    for step, ((val, train), _expected) in enumerate(evals, start=1):
        decision = decide_gold(
            point(val, train, step=step), history=history, gold=gold, config=CONFIG
        )
        if decision.promote:
            gold = {"step": step, "val_loss": val, "sets": {"val": val}}
            outcomes.append("gold")
        elif decision.candidate:
            outcomes.append(decision.guards[0])
        else:
            outcomes.append(None)
        history.append(val)
    assert outcomes == [expected for _, expected in evals]
    assert gold["step"] == 8
