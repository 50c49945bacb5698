"""The one-run bound (Steinke, Nasr & Jagielski 2023) against its worked values and its edge cases."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privspk.audit.one_run import best_lower_bound, ceiling, default_ks, epsilon_lower_bound, p_value
from privspk.errors import ConfigError


@pytest.mark.parametrize("m, expected", [(100, 3.5), (200, 4.2), (1000, 5.8)])
def test_all_guesses_right_reach_the_published_ceiling(m, expected):
    """Every canary guessed and every guess right: the ceiling of m canaries at 95 % (DESIGN.md)."""
    assert ceiling(m=m, delta=1e-5) == pytest.approx(expected, abs=0.05)
    assert epsilon_lower_bound(m=m, r=m, v=m, delta=0.0, significance=0.05) == pytest.approx(expected, abs=0.05)


def test_pure_dp_p_value_is_the_binomial_tail():
    """delta = 0: the p-value is P[Binom(r, e^eps/(1+e^eps)) >= v] exactly (here r = v = 3)."""
    q = np.exp(1.0) / (1 + np.exp(1.0))
    assert p_value(m=3, r=3, v=3, epsilon=1.0, delta=0.0) == pytest.approx(q**3, rel=1e-12)


def test_delta_only_raises_the_p_value():
    base = p_value(m=1000, r=200, v=180, epsilon=2.0, delta=0.0)
    assert p_value(m=1000, r=200, v=180, epsilon=2.0, delta=1e-3) > base


def test_random_guesses_give_about_zero():
    """Scores independent of inclusion: the bound is ~0 (at most a small value by chance)."""
    rng = np.random.default_rng(1)
    bounds = []
    for _ in range(5):
        inc = rng.random(1000) < 0.5
        bounds.append(best_lower_bound(rng.normal(size=1000), inc, delta=1e-5).epsilon)
    assert max(bounds) < 0.3
    assert np.median(bounds) == pytest.approx(0.0, abs=0.05)


def test_perfect_separation_with_the_true_split_is_the_ceiling():
    inc = np.array([True] * 500 + [False] * 500)
    res = best_lower_bound(inc.astype(float), inc, delta=0.0, ks=[(500, 500)])
    assert res.correct == res.guesses == 1000
    assert res.epsilon == pytest.approx(res.ceiling) == pytest.approx(5.8, abs=0.05)


def test_choosing_among_guess_counts_costs_confidence():
    """The searched bound never exceeds its corrected ceiling, which is below the fixed-k ceiling."""
    rng = np.random.default_rng(2)
    inc = rng.random(1000) < 0.5
    res = best_lower_bound(inc.astype(float), inc, delta=1e-5)
    assert res.choices == len(default_ks(1000))
    assert 4.0 < res.epsilon <= res.corrected_ceiling < res.ceiling


@settings(max_examples=40)
@given(m=st.integers(2, 300), data=st.data())
def test_bound_is_monotone_in_right_guesses(m, data):
    r = data.draw(st.integers(1, m))
    v = data.draw(st.integers(0, r - 1))
    lo = epsilon_lower_bound(m=m, r=r, v=v, delta=1e-5)
    hi = epsilon_lower_bound(m=m, r=r, v=v + 1, delta=1e-5)
    assert 0.0 <= lo <= hi


def test_bad_counts_are_refused():
    with pytest.raises(ConfigError, match="v \\(right guesses\\) <= r"):
        epsilon_lower_bound(m=10, r=5, v=6, delta=0.0)
    with pytest.raises(ConfigError, match="equal-length"):
        best_lower_bound(np.zeros(3), np.zeros(4, dtype=bool), delta=0.0)
