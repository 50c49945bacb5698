from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privspk.errors import BudgetExceededError, ConfigError
from privspk.privacy.accounting import SpendStep, epsilon
from privspk.privacy.budget import PrivacyBudget
from privspk.privacy.planner import plan_mechanism, search_noise_multiplier

# --- the search on functions with a known answer (fast, many examples) ----------------------------------------


@given(
    c=st.floats(min_value=0.01, max_value=1e3),
    power=st.floats(min_value=0.5, max_value=3.0),
    target=st.floats(min_value=0.05, max_value=50.0),
    tolerance=st.sampled_from([1e-3, 1e-2, 0.1]),
)
def test_search_is_below_target_and_tight(c: float, power: float, target: float, tolerance: float) -> None:
    def eps_of(sigma: float) -> float:
        return c / sigma**power

    sigma, eps = search_noise_multiplier(eps_of, target_epsilon=target, tolerance=tolerance, max_sigma=1e12)
    exact = (c / target) ** (1 / power)  # the sigma where eps_of hits the target
    assert eps == eps_of(sigma)
    assert eps <= target
    assert target - eps <= tolerance or math.isclose(sigma, exact, rel_tol=1e-9)
    assert sigma >= exact * (1 - 1e-9)  # never less noise than the exact answer


def test_search_gives_up_at_max_sigma() -> None:
    with pytest.raises(BudgetExceededError, match="no noise multiplier up to 100 reaches epsilon <= 0.001"):
        search_noise_multiplier(lambda s: 1.0 / s, target_epsilon=1e-3, max_sigma=100.0)


def test_search_validates_its_settings() -> None:
    with pytest.raises(ConfigError, match="tolerance must be > 0"):
        search_noise_multiplier(lambda s: 1.0 / s, target_epsilon=1.0, tolerance=0.0)


# --- the planner on the real accountant -----------------------------------------------------------------------


def test_matches_opacus_get_noise_multiplier_and_its_published_values() -> None:
    from opacus.accountants.utils import get_noise_multiplier

    budget = PrivacyBudget(epsilon=8, delta=1e-5)
    # opacus/tests/accountants_test.py: steps=2000 -> 1.3562; epochs=90 (2250 steps) -> 1.416
    plan = plan_mechanism(budget=budget, sample_rate=0.04, steps=2000, clip=1.0)
    assert plan.noise_multiplier == pytest.approx(1.3562, abs=5e-5)
    ref = get_noise_multiplier(target_epsilon=8, target_delta=1e-5, sample_rate=0.04, steps=2000)
    assert plan.noise_multiplier == ref  # same search, same answer
    plan90 = plan_mechanism(budget=budget, sample_rate=0.04, steps=225, rounds=10, clip=1.0)
    assert plan90.noise_multiplier == pytest.approx(1.416, abs=5e-4)
    assert plan90.steps == 225 and plan90.unit == "utterance" and plan90.delta == 1e-5 and plan90.clip == 1.0


def _check_plan(target: float, q: float, steps: int, rounds: int, spent_steps: int, accountant: str) -> None:
    budget = PrivacyBudget(epsilon=target, delta=1e-5)
    already = [SpendStep(noise_multiplier=3.0, sample_rate=q, steps=spent_steps)] if spent_steps else []
    plan = plan_mechanism(budget=budget, sample_rate=q, steps=steps, rounds=rounds, already_spent=already,
                          accountant=accountant, clip=1.0)
    planned = plan.epsilon(rounds, already_spent=already)
    assert planned <= target
    assert target - planned <= 0.01  # tight: a bit less noise would cross the target
    # the guard composes round by round; it must get the same epsilon, so the planned rounds all fit
    per_round = epsilon([*already, *[plan.step] * rounds], delta=1e-5, accountant=accountant)
    assert per_round == pytest.approx(planned, rel=1e-9)


plan_inputs = {
    "target": st.floats(min_value=1.0, max_value=10.0),
    "q": st.sampled_from([0.01, 0.04, 0.1]),
    "steps": st.integers(min_value=5, max_value=60),
    "rounds": st.integers(min_value=1, max_value=8),
    "spent_steps": st.integers(min_value=0, max_value=40),
}


@settings(max_examples=4, deadline=None)
@given(**plan_inputs)
def test_plan_fits_the_budget_and_the_guard_recomposition(
    target: float, q: float, steps: int, rounds: int, spent_steps: int
) -> None:
    _check_plan(target, q, steps, rounds, spent_steps, "rdp")


@pytest.mark.slow
@settings(max_examples=40, deadline=None)
@given(**plan_inputs, accountant=st.sampled_from(["rdp", "prv"]))
def test_plan_property_sweep(target: float, q: float, steps: int, rounds: int, spent_steps: int,
                             accountant: str) -> None:
    _check_plan(target, q, steps, rounds, spent_steps, accountant)


def test_prv_plan_is_within_budget() -> None:
    budget = PrivacyBudget(epsilon=2.0, delta=1e-5)
    plan = plan_mechanism(budget=budget, sample_rate=0.05, steps=10, rounds=2, accountant="prv", tolerance=0.1,
                          clip=1.0)
    got = epsilon([plan.step] * 2, delta=1e-5, accountant="prv")
    assert got == pytest.approx(plan.epsilon(2), rel=1e-9)
    assert 2.0 - 0.1 <= got <= 2.0
    rdp = plan_mechanism(budget=budget, sample_rate=0.05, steps=10, rounds=2, tolerance=0.1, clip=1.0)
    assert plan.noise_multiplier < rdp.noise_multiplier  # PRV is tighter: less noise for the same budget


def test_budget_too_small_for_rdp_says_what_to_change() -> None:
    with pytest.raises(BudgetExceededError) as info:
        plan_mechanism(budget=PrivacyBudget(epsilon=0.05, delta=1e-5), sample_rate=0.04, steps=100, clip=1.0)
    msg = str(info.value)
    for needle in ("no noise multiplier up to 1e+06", "1 round(s) x 100 step(s)", "accountant='prv'",
                   "fewer rounds", "bigger epsilon"):
        assert needle in msg


def test_too_many_rounds_for_the_noise_cap() -> None:
    with pytest.raises(BudgetExceededError, match="500 round"):
        plan_mechanism(
            budget=PrivacyBudget(epsilon=1.0, delta=1e-5), sample_rate=0.5, steps=100, rounds=500, max_sigma=2.0,
            clip=1.0,
        )


def test_already_spent_budget_refuses_more_rounds() -> None:
    with pytest.raises(BudgetExceededError, match="already spent epsilon=.* no further round fits"):
        plan_mechanism(
            budget=PrivacyBudget(epsilon=1.0, delta=1e-5), sample_rate=0.1, steps=10,
            already_spent=[(0.8, 0.1, 500)], clip=1.0,
        )


@pytest.mark.parametrize(
    ("kwargs", "error", "needle"),
    [
        ({"sample_rate": 0.0}, ConfigError, "sample_rate must be in (0, 1]"),
        ({"steps": 0}, ConfigError, "steps must be >= 1"),
        ({"rounds": 0}, ConfigError, "rounds must be >= 1"),
        ({"accountant": "moments"}, ConfigError, "unknown accountant"),
        ({"tolerance": -1.0}, ConfigError, "tolerance must be > 0"),
        ({"budget": {"epsilon": 8, "delta": 1e-5}}, TypeError, "budget must be a PrivacyBudget"),
    ],
)
def test_bad_planner_input(kwargs: dict[str, object], error: type[Exception], needle: str) -> None:
    args: dict[str, object] = {"budget": PrivacyBudget(epsilon=8, delta=1e-5), "sample_rate": 0.04, "steps": 10,
                               "clip": 1.0}
    args.update(kwargs)
    with pytest.raises(error) as info:
        plan_mechanism(**args)  # type: ignore[arg-type]
    assert needle in str(info.value)
