from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize, stats

from privspk.errors import ConfigError
from privspk.privacy.accounting import (
    PrivacyAccountant,
    RoundSpend,
    SpendStep,
    compact,
    epsilon,
    rdp_orders,
    rounds_epsilon,
    speaker_epsilons,
)

# --- published values -----------------------------------------------------------------------------------------


def test_rdp_matches_opacus_published_value() -> None:
    # opacus/tests/accountants_test.py::test_rdp_accountant: sigma 1.5, q 0.04, int(90 / 0.04) steps, delta 1e-5
    assert epsilon([(1.5, 0.04, 2250)], delta=1e-5) == pytest.approx(7.32911117143, abs=1e-7)


@pytest.mark.parametrize(
    ("sigma", "q", "steps", "expected"),
    [
        # Microsoft prv_accountant values quoted in opacus/tests/prv_accountant.py (delta 1e-6)
        (1.5, 0.05, 100, 1.95385313568420015961635272106),
        (2.0, 0.001, 1000, 0.0712187825381152272985474382949),
        (3.0, 0.05, 1000, 2.52757432605973830774814814504),
    ],
)
def test_prv_matches_published_values(sigma: float, q: float, steps: int, expected: float) -> None:
    assert epsilon([(sigma, q, steps)], delta=1e-6, accountant="prv") == pytest.approx(expected, abs=1e-4)


# --- independent references -----------------------------------------------------------------------------------


def _exact_gaussian_epsilon(mu: float, delta: float) -> float:
    """Exact epsilon of a Gaussian mechanism with mu = sensitivity/sigma (Balle & Wang 2018, Theorem 8)."""

    def gap(eps: float) -> float:
        return stats.norm.cdf(mu / 2 - eps / mu) - math.exp(eps) * stats.norm.cdf(-mu / 2 - eps / mu) - delta

    return optimize.brentq(gap, 0.0, 500.0, xtol=1e-12)


@pytest.mark.parametrize(("sigma", "steps"), [(1.0, 1), (2.0, 10), (5.0, 40), (0.8, 3)])
def test_full_batch_is_the_gaussian_mechanism(sigma: float, steps: int) -> None:
    """q = 1: k Gaussian steps are one Gaussian with mu = sqrt(k)/sigma, whose epsilon is known exactly."""
    exact = _exact_gaussian_epsilon(math.sqrt(steps) / sigma, 1e-5)
    prv = epsilon([(sigma, 1.0, steps)], delta=1e-5, accountant="prv")
    rdp = epsilon([(sigma, 1.0, steps)], delta=1e-5, accountant="rdp")
    assert exact - 1e-6 <= prv <= exact + 0.02  # PRV: an upper bound within eps_error (0.01) + mesh
    assert rdp >= exact - 1e-6  # RDP: a valid, looser upper bound
    assert rdp <= exact * 1.5 + 0.5


histories = st.lists(
    st.tuples(
        st.floats(min_value=0.7, max_value=6.0),
        st.sampled_from([1e-3, 5e-3, 0.01, 0.04, 0.1, 0.25]),
        st.integers(min_value=1, max_value=400),
    ),
    min_size=1,
    max_size=3,
)


@settings(max_examples=8, deadline=None)
@given(history=histories, delta=st.sampled_from([1e-4, 1e-5, 1e-6]))
def test_rdp_equals_opacus_accountant(history: list[tuple[float, float, int]], delta: float) -> None:
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = list(history)
    assert epsilon(history, delta=delta) == pytest.approx(acc.get_epsilon(delta=delta), rel=1e-12, abs=1e-12)


# --- composition properties -----------------------------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(
    sigma=st.sampled_from([0.9, 1.3, 2.5]),
    q=st.sampled_from([0.01, 0.05]),
    parts=st.lists(st.integers(min_value=1, max_value=200), min_size=1, max_size=5),
)
def test_splitting_steps_into_rounds_changes_nothing(sigma: float, q: float, parts: list[int]) -> None:
    whole = epsilon([(sigma, q, sum(parts))], delta=1e-5)
    assert epsilon([(sigma, q, p) for p in parts], delta=1e-5) == pytest.approx(whole, rel=1e-12)


def test_composition_is_order_free() -> None:
    a, b = (1.1, 0.05, 30), (2.0, 0.1, 7)
    assert epsilon([a, b, a], delta=1e-5) == pytest.approx(epsilon([a, a, b], delta=1e-5), rel=1e-12)


@settings(max_examples=15, deadline=None)
@given(
    sigma=st.sampled_from([0.8, 1.0, 1.5, 3.0]),
    q=st.sampled_from([0.01, 0.05, 0.2]),
    steps=st.integers(min_value=1, max_value=300),
    more=st.integers(min_value=1, max_value=300),
)
def test_more_steps_more_epsilon_more_noise_less(sigma: float, q: float, steps: int, more: int) -> None:
    base = epsilon([(sigma, q, steps)], delta=1e-5)
    assert epsilon([(sigma, q, steps + more)], delta=1e-5) >= base
    assert epsilon([(sigma * 1.5, q, steps)], delta=1e-5) <= base


def test_compact_merges_only_neighbours_with_equal_settings() -> None:
    out = compact([(1.0, 0.1, 2), (1.0, 0.1, 3), (2.0, 0.1, 1), (1.0, 0.1, 4)])
    assert [s.as_tuple() for s in out] == [(1.0, 0.1, 5), (2.0, 0.1, 1), (1.0, 0.1, 4)]


def test_empty_history_spends_nothing() -> None:
    assert epsilon([], delta=1e-5) == 0.0
    assert epsilon([], delta=1e-5, accountant="prv") == 0.0


def test_opacus_orders_are_used() -> None:
    from opacus.accountants import RDPAccountant

    assert list(rdp_orders()) == list(RDPAccountant.DEFAULT_ALPHAS)


# --- bad input ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        ((0.0, 0.1, 10), "noise_multiplier must be > 0"),
        ((-1.0, 0.1, 10), "noise_multiplier must be > 0"),
        ((1.0, 0.0, 10), "sample_rate must be in (0, 1]"),
        ((1.0, 1.5, 10), "sample_rate must be in (0, 1]"),
        ((1.0, 0.1, 0), "steps must be >= 1"),
        ((1.0, 0.1, 2.5), "steps must be an integer"),
        ((1.0, 0.1, True), "steps must be an integer"),
        ((1.0, 0.1), "must be a SpendStep or a (noise_multiplier, sample_rate, steps) tuple"),
        ((math.nan, 0.1, 3), "noise_multiplier must be finite"),
    ],
)
def test_bad_history_entries(entry: tuple, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        epsilon([entry], delta=1e-5)
    assert needle in str(info.value)


@pytest.mark.parametrize("delta", [0.0, 1.0, -0.1, 2.0])
def test_bad_delta(delta: float) -> None:
    with pytest.raises(ConfigError, match="delta must be in"):
        epsilon([(1.0, 0.1, 1)], delta=delta)


def test_unknown_accountant() -> None:
    with pytest.raises(ConfigError, match="unknown accountant 'gdp'; choose one of: rdp, prv"):
        epsilon([(1.0, 0.1, 1)], delta=1e-5, accountant="gdp")


# --- speakers -------------------------------------------------------------------------------------------------

STEP = SpendStep(noise_multiplier=1.2, sample_rate=0.05, steps=40)
OTHER = SpendStep(noise_multiplier=0.9, sample_rate=0.1, steps=25)


def test_each_speaker_pays_only_for_its_rounds() -> None:
    rounds = [
        RoundSpend(round=1, step=STEP, speakers=("ann", "bob")),
        RoundSpend(round=2, step=OTHER, speakers=("bob",)),
        RoundSpend(round=3, step=STEP),  # no list: every speaker took part
        RoundSpend(round=5, step=OTHER, speakers=("cid",)),
    ]
    got = speaker_epsilons(rounds, delta=1e-5)
    assert got["ann"] == pytest.approx(epsilon([STEP, STEP], delta=1e-5))
    assert got["bob"] == pytest.approx(epsilon([STEP, OTHER, STEP], delta=1e-5))
    assert got["cid"] == pytest.approx(epsilon([STEP, OTHER], delta=1e-5))
    assert rounds_epsilon(rounds, delta=1e-5) == max(got.values())
    everyone = epsilon([r.step for r in rounds], delta=1e-5)
    assert rounds_epsilon(rounds, delta=1e-5) < everyone


def test_without_speakers_every_round_counts() -> None:
    rounds = [RoundSpend(round=1, step=STEP), RoundSpend(round=2, step=OTHER)]
    assert speaker_epsilons(rounds, delta=1e-5) == {}
    assert rounds_epsilon(rounds, delta=1e-5) == epsilon([STEP, OTHER], delta=1e-5)


def test_round_spend_validates() -> None:
    with pytest.raises(ConfigError, match="round must be >= 1"):
        RoundSpend(round=0, step=STEP)
    with pytest.raises(ConfigError, match="step must be a SpendStep"):
        RoundSpend(round=1, step=(1.0, 0.1, 3))  # type: ignore[arg-type]


# --- accountant state -----------------------------------------------------------------------------------------


def test_accountant_state_round_trip_is_plain_json() -> None:
    acc = PrivacyAccountant(accountant="prv")
    acc.step(noise_multiplier=1.0, sample_rate=0.1, steps=5)
    acc.step(noise_multiplier=1.0, sample_rate=0.1, steps=5)
    acc.step(noise_multiplier=2.0, sample_rate=0.2)
    state = json.loads(json.dumps(acc.state_dict()))
    assert state == {"accountant": "prv", "history": [[1.0, 0.1, 10], [2.0, 0.2, 1]]}
    again = PrivacyAccountant.from_state_dict(state)
    assert again.history == acc.history and len(again) == 11
    assert again.epsilon(delta=1e-5) == acc.epsilon(delta=1e-5)


def test_accountant_refuses_another_mechanisms_state() -> None:
    acc = PrivacyAccountant(accountant="rdp")
    with pytest.raises(ConfigError, match="state is for 'prv', this accountant is 'rdp'"):
        acc.load_state_dict({"accountant": "prv", "history": []})
    with pytest.raises(ConfigError, match="exactly the keys"):
        acc.load_state_dict({"accountant": "rdp"})
    assert acc.history == ()


def test_accountant_epsilon_matches_function() -> None:
    acc = PrivacyAccountant(history=[(1.0, 0.05, 100)])
    assert acc.epsilon(delta=1e-5) == epsilon([(1.0, 0.05, 100)], delta=1e-5)
    assert np.isfinite(acc.epsilon(delta=1e-5))
