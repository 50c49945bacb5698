"""DP-FTRL: the tree's released prefix sums (statistically), restarts, randomness modes, and the accountant."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from privspk.errors import BudgetExceededError, ConfigError
from privspk.privacy.distributed import rdp_to_epsilon
from privspk.privacy.ftrl import (
    FTRL_RDP_ORDERS,
    TreeAggregator,
    ftrl_epsilon,
    ftrl_rho,
    noise_for_ftrl_epsilon,
    tree_height,
    tree_sensitivity_squared,
)

# --- the tree mechanism ------------------------------------------------------------------------------------------

DIM, SIGMA, T = 40_000, 2.0, 8


def _run(agg: TreeAggregator, xs: list[np.ndarray]) -> list[np.ndarray]:
    return [agg.add(x) for x in xs]


def test_released_prefix_sums_are_true_prefix_sums_plus_tree_noise():
    """Each coordinate is an independent trial: error of S_t has mean 0 and variance popcount(t) sigma^2.

    Tolerance: with n = 40,000 samples the sample variance has relative s.e. sqrt(2/n) = 0.7 %; we allow 4 %
    (about 5.6 s.e.); the mean is allowed 5 standard errors.
    """
    rng = np.random.default_rng(11)
    xs = [rng.normal(size=DIM) for _ in range(T)]
    agg = TreeAggregator(dim=DIM, noise_std=SIGMA, rounds=T, randomness="simulation", seed=5)
    released = _run(agg, xs)
    truth = np.cumsum(np.stack(xs), axis=0)
    errs = [released[t] - truth[t] for t in range(T)]
    for t in range(1, T + 1):
        var = agg.prefix_noise_variance(t)
        assert var == bin(t).count("1") * SIGMA**2
        e = errs[t - 1]
        assert abs(float(e.mean())) < 5 * np.sqrt(var / DIM)
        assert float(e.var()) == pytest.approx(var, rel=0.04)
    # the tree's structure: S_2 and S_3 share node [1,2] (cov sigma^2); S_3 and S_4 share nothing (cov 0)
    assert float(np.mean(errs[1] * errs[2])) == pytest.approx(SIGMA**2, abs=0.25)
    assert abs(float(np.mean(errs[2] * errs[3]))) < 0.25
    # S_4 is the root alone: one node's noise, the same draw S_5..S_7 reuse
    assert np.allclose(errs[4] - errs[3], released[4] - released[3] - xs[4])


def test_secret_randomness_is_fresh_and_simulation_repeats_bit_for_bit():
    xs = [np.ones(16)] * 3
    a = _run(TreeAggregator(dim=16, noise_std=1.0, rounds=4), xs)
    b = _run(TreeAggregator(dim=16, noise_std=1.0, rounds=4), xs)
    assert not np.array_equal(a[0], b[0])
    c = _run(TreeAggregator(dim=16, noise_std=1.0, rounds=4, randomness="simulation", seed=3), xs)
    d = _run(TreeAggregator(dim=16, noise_std=1.0, rounds=4, randomness="simulation", seed=3), xs)
    assert all(np.array_equal(u, v) for u, v in zip(c, d))
    assert TreeAggregator(dim=1, noise_std=1.0, rounds=2, randomness="simulation", seed=0).note


def test_restart_starts_a_fresh_tree_and_no_restart_refuses_past_the_horizon():
    agg = TreeAggregator(dim=1, noise_std=0.0, rounds=3, restart=True, randomness="simulation", seed=0)
    outs = [float(agg.add(np.array([float(i)]))[0]) for i in range(1, 8)]
    assert outs == [1.0, 3.0, 6.0, 4.0, 9.0, 15.0, 7.0]
    assert agg.trees == 3
    once = TreeAggregator(dim=1, noise_std=1.0, rounds=2)
    once.add(np.zeros(1))
    once.add(np.zeros(1))
    with pytest.raises(ConfigError, match="restart is off"):
        once.add(np.zeros(1))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(noise_std=-1.0), "noise_std"),
        (dict(rounds=0), "rounds"),
        (dict(randomness="os"), "randomness must be one of"),
        (dict(seed=3), "only for randomness"),
        (dict(randomness="simulation"), "needs an int seed"),
        (dict(restart="yes"), "restart"),
    ],
)
def test_tree_aggregator_refuses_bad_settings(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TreeAggregator(**{**dict(dim=4, noise_std=1.0, rounds=4), **kwargs})


def test_tree_aggregator_refuses_bad_updates():
    agg = TreeAggregator(dim=3, noise_std=1.0, rounds=4)
    with pytest.raises(ConfigError, match="3 finite values"):
        agg.add(np.array([1.0, np.nan, 0.0]))
    with pytest.raises(ConfigError, match="3 finite values"):
        agg.add(np.ones(4))


# --- the accountant ----------------------------------------------------------------------------------------------

def _brute_sensitivity(rounds: int, k: int) -> int:
    """Max over participation patterns of sum over tree nodes of (participations under the node)^2."""
    h = tree_height(rounds)
    best = 0
    for pattern in itertools.combinations(range(rounds), k):
        total = 0
        for lvl in range(h):
            counts: dict[int, int] = {}
            for r in pattern:
                counts[r >> lvl] = counts.get(r >> lvl, 0) + 1
            total += sum(c * c for c in counts.values())
        best = max(best, total)
    return best


@pytest.mark.parametrize("rounds", [1, 2, 5, 8, 16])
@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_tree_sensitivity_bounds_every_participation_pattern(rounds, k):
    if k > rounds:
        pytest.skip("more participations than rounds")
    brute = _brute_sensitivity(rounds, k)
    bound = tree_sensitivity_squared(rounds=rounds, participations=k)
    assert brute <= bound
    if k == 1:
        assert bound == brute == tree_height(rounds)  # tight: a leaf's path
    assert bound <= k * k * tree_height(rounds)  # never worse than the plain product


def test_one_round_is_the_gaussian_mechanism():
    eps = ftrl_epsilon(noise_multiplier=1.3, rounds=1, max_participations=1, delta=1e-5)
    orders = np.asarray(FTRL_RDP_ORDERS)
    assert eps == pytest.approx(rdp_to_epsilon(orders / (2 * 1.3**2), orders=FTRL_RDP_ORDERS, delta=1e-5), rel=1e-12)


def test_known_rho_and_monotonicity():
    assert ftrl_rho(noise_multiplier=2.0, rounds=1024, max_participations=1) == 11 / 8
    assert ftrl_rho(noise_multiplier=1.0, rounds=16, max_participations=16) == 16 * (1 + 2 + 4 + 8 + 16) / 2
    e = lambda **kw: ftrl_epsilon(**{**dict(noise_multiplier=4.0, rounds=256, max_participations=2,  # noqa: E731
                                            delta=1e-6), **kw})
    assert e() < e(max_participations=3) < e(max_participations=10)
    assert e() < e(rounds=2048)
    assert e() > e(noise_multiplier=5.0)
    # restarting costs no more than one long tree for a device in one tree, and bounds a spread one
    assert ftrl_rho(noise_multiplier=1.0, rounds=64, max_participations=1, restart_every=16) == 5 / 2
    assert ftrl_rho(noise_multiplier=1.0, rounds=64, max_participations=4, restart_every=16) <= \
        ftrl_rho(noise_multiplier=1.0, rounds=16, max_participations=4)


def test_noise_for_ftrl_epsilon_round_trip():
    z = noise_for_ftrl_epsilon(epsilon=2.0, delta=1e-6, rounds=500, max_participations=3)
    assert 1.99 <= ftrl_epsilon(noise_multiplier=z, rounds=500, max_participations=3, delta=1e-6) <= 2.0
    with pytest.raises(BudgetExceededError):
        noise_for_ftrl_epsilon(epsilon=1e-9, delta=1e-6, rounds=500, max_participations=3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(max_participations=11), "exceeds rounds"),
        (dict(max_participations=0), "max_participations"),
        (dict(noise_multiplier=0.0), "noise_multiplier"),
        (dict(delta=1.0), "delta"),
        (dict(restart_every=0), "restart_every"),
        (dict(rounds=2.5), "rounds"),
    ],
)
def test_accountant_refuses_bad_inputs(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ftrl_epsilon(**{**dict(noise_multiplier=1.0, rounds=10, max_participations=1, delta=1e-5), **kwargs})
