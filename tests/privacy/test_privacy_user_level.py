"""User-level DP for sampled devices: the accountants against independent RDP values, the noise-share planner."""

from __future__ import annotations

import math

import numpy as np
import pytest

from privspk.errors import BudgetExceededError, ConfigError
from privspk.privacy.distributed import make_rng
from privspk.privacy.user_level import (
    USER_RDP_ORDERS,
    fixed_size_rdp,
    noise_for_user_epsilon,
    plan_device_noise,
    poisson_rdp,
    user_epsilon,
)


def _poisson_gaussian_rdp(q: float, z: float, alpha: int) -> float:
    """Mironov, Talwar, Zhang 2019, integer alpha: log sum_k C(a,k) (1-q)^(a-k) q^k exp((k^2-k)/(2 z^2)) / (a-1)."""
    terms = [math.log(math.comb(alpha, k)) + (alpha - k) * math.log1p(-q) + k * math.log(q) + (k * k - k) / (2 * z * z)
             for k in range(alpha + 1)]
    m = max(terms)
    return (m + math.log(sum(math.exp(t - m) for t in terms))) / (alpha - 1)


def _wbk19_rdp(gamma: float, z: float, alpha: int) -> float:
    """Wang, Balle, Kasiviswanathan 2019 Theorem 9 for the replace-one Gaussian (eps(j) = 2j/z^2), written out again."""
    eps = lambda j: 2.0 * j / (z * z)  # noqa: E731
    s = 1.0 + gamma**2 * math.comb(alpha, 2) * min(4.0 * (math.exp(eps(2)) - 1.0), 2.0 * math.exp(eps(2)))
    for j in range(3, alpha + 1):
        s += gamma**j * math.comb(alpha, j) * math.exp((j - 1) * eps(j)) * 2.0
    return min(math.log(s) / (alpha - 1), eps(alpha))


def _classic_epsilon(rdp: np.ndarray, orders, delta: float) -> float:
    """Mironov 2017's conversion: a looser, independent upper bound."""
    return float(min(r + math.log(1 / delta) / (a - 1) for r, a in zip(rdp, orders)))


@pytest.mark.parametrize(("q", "z"), [(0.01, 1.1), (0.1, 0.8), (0.5, 2.0), (0.99, 1.0)])
def test_poisson_rdp_matches_the_closed_form(q, z):
    got = poisson_rdp(noise_multiplier=z, sample_rate=q, rounds=7)
    for alpha in (2, 3, 8, 16, 32):
        want = 7 * _poisson_gaussian_rdp(q, z, alpha)
        assert got[alpha - 2] == pytest.approx(want, rel=1e-9)


def test_user_epsilon_against_opacus_accountant_and_classic_conversion():
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [(1.1, 0.01, 1000)]
    theirs = acc.get_epsilon(delta=1e-5)
    ours = user_epsilon(noise_multiplier=1.1, sample_rate=0.01, rounds=1000, delta=1e-5)
    assert ours == pytest.approx(theirs, rel=0.02)  # same bound, other order grid
    # independent: closed-form RDP + Mironov's conversion is looser than, and close to, ours
    rdp = np.array([1000 * _poisson_gaussian_rdp(0.01, 1.1, a) for a in range(2, 65)])
    classic = _classic_epsilon(rdp, range(2, 65), 1e-5)
    assert ours <= classic <= ours * 1.25


@pytest.mark.parametrize(("gamma", "z"), [(0.01, 1.0), (0.1, 1.5), (0.5, 3.0)])
def test_fixed_size_rdp_matches_wbk19_written_out(gamma, z):
    got = fixed_size_rdp(noise_multiplier=z, sample_rate=gamma, rounds=3)
    for alpha in (2, 3, 5, 10):
        assert got[alpha - 2] == pytest.approx(3 * _wbk19_rdp(gamma, z, alpha), rel=1e-9)


def test_fixed_size_without_sampling_is_the_replace_one_gaussian():
    got = fixed_size_rdp(noise_multiplier=2.0, sample_rate=1.0, rounds=5)
    assert np.allclose(got, 5 * 2.0 * np.asarray(USER_RDP_ORDERS) / 4.0)


def test_epsilon_grows_with_rounds_and_rate_and_shrinks_with_noise():
    base = dict(noise_multiplier=1.0, sample_rate=0.05, rounds=100, delta=1e-6)
    for sampling, pop in (("poisson", None), ("fixed", 1000)):
        e = user_epsilon(**base, sampling=sampling, population=pop)
        assert e < user_epsilon(**{**base, "rounds": 200}, sampling=sampling, population=pop)
        assert e < user_epsilon(**{**base, "sample_rate": 0.1}, sampling=sampling, population=pop)
        assert e > user_epsilon(**{**base, "noise_multiplier": 1.5}, sampling=sampling, population=pop)


def test_noise_for_user_epsilon_round_trip_and_unreachable():
    for sampling, pop in (("poisson", None), ("fixed", 1000)):
        z = noise_for_user_epsilon(epsilon=4.0, delta=1e-6, sample_rate=0.1, rounds=200, sampling=sampling,
                                   population=pop)
        eps = user_epsilon(noise_multiplier=z, sample_rate=0.1, rounds=200, delta=1e-6, sampling=sampling,
                           population=pop)
        assert 3.99 <= eps <= 4.0
    with pytest.raises(BudgetExceededError, match="out of reach"):
        noise_for_user_epsilon(epsilon=1e-4, delta=1e-6, sample_rate=1.0, rounds=10**6, max_sigma=50.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(sampling="shuffle"), "sampling must be one of"),
        (dict(sampling="fixed"), "needs population"),
        (dict(sampling="fixed", population=1000, sample_rate=0.0105), "whole number"),
        (dict(delta=0.0), "delta"),
        (dict(rounds=0), "rounds"),
        (dict(noise_multiplier=-1.0), "noise_multiplier"),
    ],
)
def test_bad_inputs_are_refused(kwargs, match):
    args = dict(noise_multiplier=1.0, sample_rate=0.1, rounds=10, delta=1e-5)
    with pytest.raises(ConfigError, match=match):
        user_epsilon(**{**args, **kwargs})


# --- each device's noise share -----------------------------------------------------------------------------------

def test_plan_device_noise_counts_shares_and_reaches_the_multiplier():
    p = plan_device_noise(n_sampled=500, noise_multiplier=0.8, clip=1.0, dim=2000, colluders=1,
                          dropout_allowance=0.2, counting="honest-dropouts")
    assert (p.min_survivors, p.counted_shares) == (400, 399)
    assert p.effective_noise_multiplier == pytest.approx(0.8, rel=1e-12)
    assert p.encoder.required_survivors == 400
    # the counted shares alone carry sigma = z * (rounded L2 sensitivity)
    assert math.sqrt(p.counted_shares) * p.share_sigma == pytest.approx(0.8 * p.encoder.l2_sensitivity, rel=1e-12)
    assert p.expected_sigma > p.central_sigma
    q = plan_device_noise(n_sampled=500, noise_multiplier=0.8, clip=1.0, dim=2000, colluders=1,
                          dropout_allowance=0.2, counting="protocol", secagg_threshold=11)
    assert q.counted_shares == 10 and q.share_sigma > 6 * p.share_sigma


def test_planned_codes_fit_the_headroom_and_the_noise_has_the_planned_variance():
    k, dim = 50, 4000
    p = plan_device_noise(n_sampled=k, noise_multiplier=1.0, clip=1.0, dim=dim, colluders=1,
                          dropout_allowance=0.1, counting="honest-dropouts")
    limit = (1 << (16 - 1 + p.headroom_bits)) - 1
    rng = make_rng(3)
    total = np.zeros(dim, dtype=np.int64)
    for _ in range(k):
        u = rng.normal(size=dim)
        codes = p.encoder.encode(u * 0.0, rng=rng)  # zero update: the code is the noise share alone
        assert int(np.abs(codes).max()) <= limit
        total += codes
    # variance of the summed shares: K * share_sigma^2, to 5 % (dim = 4000 samples: rel. s.e. ~ 2.2 %)
    assert float(total.var()) == pytest.approx(k * p.share_sigma**2, rel=0.05)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(counting="maybe"), "counting must be one of"),
        (dict(counting="protocol"), "needs secagg_threshold"),
        (dict(dropout_allowance=1.0), "dropout_allowance"),
        (dict(colluders=-1), "colluders"),
        (dict(n_sampled=1), "n_sampled"),
        (dict(dropout_allowance=0.999, colluders=1), "no honest noise share"),
    ],
)
def test_plan_device_noise_refuses_bad_input(kwargs, match):
    args = dict(n_sampled=100, noise_multiplier=1.0, clip=1.0, dim=100, colluders=0, dropout_allowance=0.1,
                counting="honest-dropouts")
    with pytest.raises(ConfigError, match=match):
        plan_device_noise(**{**args, **kwargs})
