from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from privspk.errors import BudgetExceededError, ConfigError
from privspk.privacy.budget import PrivacyBudget
from privspk.privacy.distributed import (
    CLIENT_RDP_ORDERS,
    ClientLevelMechanism,
    ClientLevelRound,
    DistributedDP,
    client_level_epsilon,
    client_level_rdp,
    client_noise_share,
    clip_update_l2,
    conditional_round,
    discrete_gaussian_pmf,
    headroom_bits,
    make_rng,
    modulus_bits,
    noise_tail_bound,
    plan_client_noise_multiplier,
    poisson_subsampled_rdp,
    rdp_to_epsilon,
    rounded_l2_bound,
    sample_discrete_gaussian,
    sample_skellam,
)

ORDERS = np.asarray(CLIENT_RDP_ORDERS, dtype=float)

# --- samplers against their distributions ---------------------------------------------------------------------


def _chi2_p(samples: np.ndarray, pmf) -> float:
    """Chi-square goodness of fit over integer bins with >= 5 expected counts, tails merged."""
    n = samples.size
    lo, hi = int(samples.min()) - 1, int(samples.max()) + 1
    support = np.arange(lo - 200, hi + 201)
    probs = pmf(support)
    keep = probs * n >= 5
    ks = support[keep]
    observed = [np.sum(samples < ks[0])] + [np.sum(samples == k) for k in ks] + [np.sum(samples > ks[-1])]
    expected = [probs[support < ks[0]].sum()] + list(probs[keep]) + [probs[support > ks[-1]].sum()]
    expected = np.asarray(expected) * n / np.sum(expected)
    return float(stats.chisquare(np.asarray(observed, dtype=float), expected).pvalue)


@pytest.mark.parametrize("sigma", [0.6, 2.5, 12.0])
def test_discrete_gaussian_histogram_matches_pmf(sigma: float) -> None:
    x = sample_discrete_gaussian(sigma=sigma, size=40_000, rng=make_rng(11))
    assert x.dtype == np.int64
    # the reference pmf is the definition, exp(-x^2 / 2 sigma^2) normalised, written out here independently
    half = int(50 * sigma) + 50
    grid = np.arange(-half, half + 1)
    weights = np.exp(-(grid.astype(float) ** 2) / (2 * sigma**2))
    assert discrete_gaussian_pmf(grid, sigma=sigma) == pytest.approx(weights / weights.sum(), rel=1e-12, abs=1e-300)
    assert _chi2_p(x, lambda k: discrete_gaussian_pmf(k, sigma=sigma)) > 1e-4


@pytest.mark.parametrize("variance", [0.8, 9.0, 200.0])
def test_skellam_histogram_matches_scipy(variance: float) -> None:
    x = sample_skellam(variance=variance, size=40_000, rng=make_rng(12))
    ref = stats.skellam(mu1=variance / 2, mu2=variance / 2)
    assert _chi2_p(x, ref.pmf) > 1e-4


def test_samplers_shape_and_determinism() -> None:
    a = sample_discrete_gaussian(sigma=3.0, size=(4, 5), rng=make_rng(3))
    b = sample_discrete_gaussian(sigma=3.0, size=(4, 5), rng=make_rng(3))
    assert a.shape == (4, 5) and np.array_equal(a, b)
    assert sample_skellam(variance=2.0, size=0, rng=make_rng(1)).shape == (0,)
    assert not np.array_equal(make_rng().integers(0, 2**62, 4), make_rng().integers(0, 2**62, 4))  # secrets seeds
    with pytest.raises(ConfigError, match="sigma must be > 0"):
        sample_discrete_gaussian(sigma=0.0, size=3, rng=make_rng(0))
    with pytest.raises(ConfigError, match="seed must be an int"):
        make_rng(1.5)  # type: ignore[arg-type]


def _dg_variance(sigma: float) -> float:
    k = np.arange(-int(50 * sigma) - 50, int(50 * sigma) + 51)
    p = discrete_gaussian_pmf(k, sigma=sigma)
    return float(np.sum(p * k.astype(float) ** 2))


@settings(max_examples=20, deadline=None)
@given(
    n_clients=st.integers(min_value=2, max_value=12),
    central=st.floats(min_value=2.0, max_value=40.0),
    noise=st.sampled_from(["dgauss", "skellam"]),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_sum_of_shares_has_the_intended_variance(n_clients: int, central: float, noise: str, seed: int) -> None:
    rng = make_rng(seed)
    share = client_noise_share(central_sigma=central, n_clients=n_clients)
    assert share * math.sqrt(n_clients) == pytest.approx(central)
    n = 20_000
    if noise == "dgauss":
        total = sum(sample_discrete_gaussian(sigma=share, size=n, rng=rng) for _ in range(n_clients))
        intended = n_clients * _dg_variance(share)  # exact variance of each share, from its pmf
        assert intended == pytest.approx(central**2, rel=1e-6) or share < 1.5
    else:
        total = sum(sample_skellam(variance=share**2, size=n, rng=rng) for _ in range(n_clients))
        intended = central**2  # a sum of Skellams is a Skellam
    got = float(np.var(total.astype(float), ddof=1))
    # CLT for the sample variance: sd ~ v * sqrt((2 + excess kurtosis) / n); 6 sd, excess kurtosis <= 1
    assert abs(got - intended) <= 6 * intended * math.sqrt(3.0 / n)
    assert abs(float(total.mean())) <= 6 * math.sqrt(intended / n)


# --- modulus headroom ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variance", [0.5, 4.0, 100.0, 1e4])
@pytest.mark.parametrize("failure_prob", [1e-3, 1e-12])
@pytest.mark.parametrize("dim", [1, 1000])
def test_tail_bounds_hold_exactly(variance: float, failure_prob: float, dim: int) -> None:
    sigma = math.sqrt(variance)
    t = noise_tail_bound(noise="dgauss", sum_variance=variance, dim=dim, failure_prob=failure_prob)
    k = np.arange(int(t) + 1, int(60 * sigma) + 60)
    dg_tail = 2 * float(discrete_gaussian_pmf(k, sigma=sigma).sum())
    assert dg_tail * dim <= failure_prob
    t = noise_tail_bound(noise="skellam", sum_variance=variance, dim=dim, failure_prob=failure_prob)
    sk_tail = 2 * float(stats.skellam(mu1=variance / 2, mu2=variance / 2).sf(int(t)))
    assert sk_tail * dim <= failure_prob


@settings(max_examples=30, deadline=None)
@given(
    n_clients=st.integers(min_value=2, max_value=10),
    dim=st.integers(min_value=1, max_value=40),
    noise=st.sampled_from(["dgauss", "skellam"]),
    z=st.floats(min_value=0.3, max_value=3.0),
    scale=st.sampled_from([16.0, 100.0, 1024.0, 4096.0]),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_quantised_noisy_sum_stays_within_the_modulus(
    n_clients: int, dim: int, noise: str, z: float, scale: float, seed: int
) -> None:
    dp = DistributedDP(clip=1.0, scale=scale, noise_multiplier=z, n_clients=n_clients, dim=dim, noise=noise)
    rng = make_rng(seed)
    updates = []
    for i in range(n_clients):  # mostly the worst case: all mass on one shared coordinate, far over the clip
        u = np.zeros(dim)
        u[0] = 50.0
        updates.append(u if i % 3 else rng.normal(size=dim) * 10)
    encoded = [dp.encode(u, rng=rng) for u in updates]
    total = np.sum(encoded, axis=0)
    bits = dp.modulus_bits()
    half = 2 ** (bits - 1)
    assert np.all(total >= -half) and np.all(total < half)
    # what secure aggregation does: each value mod 2^bits, summed mod 2^bits, read back as signed
    wrapped = np.mod(np.sum([np.mod(e, 2**bits) for e in encoded], axis=0), 2**bits)
    signed = np.where(wrapped >= half, wrapped - 2**bits, wrapped)
    assert np.array_equal(signed, total)
    assert headroom_bits(max_abs=math.floor(dp.l2_sensitivity), n_clients=n_clients, noise=noise,
                         sum_variance=n_clients * dp.share_sigma**2, dim=dim) >= 0


def test_modulus_bits_is_the_fewest_signed_bits() -> None:
    # a noise-free bound B needs bit_length(B) + 1 bits: [-2^(b-1), 2^(b-1) - 1] must hold [-B, B]
    for bound in (1, 2, 3, 4, 7, 8, 1000, 2**20 - 1, 2**20):
        b = int(bound).bit_length() + 1
        assert 2 ** (b - 1) - 1 >= bound and 2 ** (b - 2) - 1 < bound
    tiny = modulus_bits(max_abs=0, n_clients=1, noise="dgauss", sum_variance=1e-6, dim=1)
    assert tiny == 1  # only 0 is possible: one bit
    assert headroom_bits(max_abs=2**20, n_clients=16, noise="dgauss", sum_variance=1.0, dim=10) == 0


# --- clipping and rounding --------------------------------------------------------------------------------------


@given(
    values=st.lists(st.floats(min_value=-1e6, max_value=1e6), min_size=1, max_size=30),
    clip=st.floats(min_value=1e-3, max_value=1e3),
)
def test_clip_bounds_the_norm_and_keeps_the_direction(values: list[float], clip: float) -> None:
    vec = np.asarray(values)
    out = clip_update_l2(vec, clip=clip)
    norm = float(np.linalg.norm(vec))
    assert float(np.linalg.norm(out)) <= clip * (1 + 1e-12)
    if norm <= clip:
        assert np.array_equal(out, vec)
    else:
        assert np.allclose(out * norm / clip, vec, rtol=1e-9, atol=1e-9 * norm)
    assert out is not vec


def test_clip_refuses_non_finite() -> None:
    with pytest.raises(ConfigError, match="non-finite"):
        clip_update_l2(np.array([1.0, np.nan]), clip=1.0)


def test_conditional_rounding_is_unbiased_and_bounded() -> None:
    vec = np.array([0.3, -1.7, 2.5, 0.0, 4.0])
    bound = rounded_l2_bound(l2_bound=float(np.linalg.norm(vec)), dim=vec.size, beta=0.0)
    rng = make_rng(5)
    draws = np.array([conditional_round(vec, l2_bound=bound, rng=rng) for _ in range(4000)])
    assert np.all(np.linalg.norm(draws.astype(float), axis=1) <= bound)
    se = np.sqrt(np.maximum(vec - np.floor(vec), 1e-9) * (1 - (vec - np.floor(vec))) / len(draws))
    assert np.all(np.abs(draws.mean(axis=0) - vec) <= 5 * se + 1e-12)
    with pytest.raises(ConfigError, match="exceeded the L2 bound"):  # 50 coin flips, at most one may come up
        conditional_round(np.full(50, 0.5), l2_bound=1.0, rng=rng, max_tries=5)


def test_rounded_bound_fails_at_most_beta_of_the_time() -> None:
    rng = make_rng(8)
    dim, c, beta = 200, 40.0, math.exp(-0.5)
    x = rng.normal(size=dim)
    x *= c / np.linalg.norm(x)
    bound = rounded_l2_bound(l2_bound=c, dim=dim, beta=beta)
    assert bound == pytest.approx(min(c + math.sqrt(dim), math.sqrt(
        c * c + dim / 4 + math.sqrt(2 * math.log(1 / beta)) * (c + math.sqrt(dim) / 2))))
    fl = np.floor(x)
    fails = 0
    for _ in range(2000):
        r = fl + (rng.random(dim) < x - fl)
        fails += float(np.linalg.norm(r)) > bound
    assert fails / 2000 <= beta + 0.03
    assert rounded_l2_bound(l2_bound=3.0, dim=16, beta=0.0) == 7.0


# --- accounting ------------------------------------------------------------------------------------------------


def _opacus_rdp(q: float, z: float, max_order: int = 256) -> np.ndarray:
    from opacus.accountants.analysis import rdp

    orders = [a for a in CLIENT_RDP_ORDERS if a <= max_order]
    return np.asarray(rdp.compute_rdp(q=q, noise_multiplier=z, steps=1, orders=orders))


@settings(max_examples=10, deadline=None)
@given(z=st.floats(min_value=0.5, max_value=5.0), q=st.floats(min_value=1e-3, max_value=0.6))
def test_subsampling_bound_is_above_the_exact_sampled_gaussian(z: float, q: float) -> None:
    gaussian = ORDERS / (2 * z * z)
    bound = poisson_subsampled_rdp(gaussian, sample_rate=q)
    exact = _opacus_rdp(q, z, max_order=64)  # Opacus: exact RDP of the sampled Gaussian at integer orders
    assert np.all(bound[: exact.size] >= exact * (1 - 1e-9) - 1e-12)
    assert np.all(bound <= gaussian + 1e-12)
    assert np.array_equal(poisson_subsampled_rdp(gaussian, sample_rate=1.0), gaussian)


def _mech(noise: str, share_sigma: float, shares: int, l2: float, dim: int = 100) -> ClientLevelMechanism:
    return ClientLevelMechanism(noise=noise, share_sigma=share_sigma, shares=shares, l2_sensitivity=l2,
                                l1_sensitivity=l2 * min(math.sqrt(dim), l2), dim=dim)


def test_one_discrete_gaussian_share_is_the_gaussian_mechanism() -> None:
    m = _mech("dgauss", share_sigma=150.0, shares=1, l2=100.0)
    assert m.rdp() == pytest.approx(_opacus_rdp(1.0, 1.5), rel=1e-12)


@pytest.mark.parametrize("noise", ["dgauss", "skellam"])
def test_large_noise_approaches_the_gaussian(noise: str) -> None:
    m = _mech(noise, share_sigma=2e4, shares=10, l2=2e4 * math.sqrt(10))
    assert m.noise_multiplier == pytest.approx(1.0)
    assert m.rdp() == pytest.approx(ORDERS / 2, rel=1e-3)


@settings(max_examples=25, deadline=None)
@given(
    noise=st.sampled_from(["dgauss", "skellam"]),
    share=st.floats(min_value=0.5, max_value=200.0),
    shares=st.integers(min_value=1, max_value=50),
    l2=st.floats(min_value=1.0, max_value=500.0),
    dim=st.integers(min_value=1, max_value=10_000),
)
def test_discrete_mechanisms_never_beat_the_gaussian(noise: str, share: float, shares: int, l2: float,
                                                     dim: int) -> None:
    m = _mech(noise, share_sigma=share, shares=shares, l2=l2, dim=dim)
    assert np.all(m.rdp() >= ORDERS / (2 * m.noise_multiplier**2) * (1 - 1e-12))


def test_client_level_epsilon_matches_the_gaussian_accounting() -> None:
    from opacus.accountants import RDPAccountant

    m = _mech("dgauss", share_sigma=120.0, shares=1, l2=100.0)  # continuous-Gaussian RDP exactly
    rounds = [ClientLevelRound(round=r, mechanism=m, sample_rate=1.0) for r in range(1, 11)]
    acc = RDPAccountant()
    acc.history = [(1.2, 1.0, 10)]
    ours, opacus = client_level_epsilon(rounds, delta=1e-5), acc.get_epsilon(delta=1e-5)
    assert ours == pytest.approx(opacus, rel=0.02)  # integer orders only vs Opacus' fractional ones
    assert ours == pytest.approx(rdp_to_epsilon(10 * ORDERS / (2 * 1.2**2), orders=CLIENT_RDP_ORDERS, delta=1e-5))


def test_sampled_rounds_count_rounds_sat_out() -> None:
    m = _mech("skellam", share_sigma=40.0, shares=8, l2=80.0)
    one = client_level_rdp([ClientLevelRound(round=1, mechanism=m, sample_rate=0.2)])
    assert client_level_rdp([ClientLevelRound(round=4, mechanism=m, sample_rate=0.2)]) == pytest.approx(4 * one)
    full = client_level_rdp([ClientLevelRound(round=4, mechanism=m, sample_rate=1.0)])
    assert full == pytest.approx(m.rdp())  # without sampling, only rounds taken part in count
    eps = [client_level_epsilon([ClientLevelRound(round=r, mechanism=m, sample_rate=0.2) for r in range(1, k + 1)],
                                delta=1e-5) for k in (1, 2, 5)]
    assert eps[0] < eps[1] < eps[2]
    assert client_level_epsilon([], delta=1e-5) == 0.0
    with pytest.raises(ConfigError, match="appears twice"):
        client_level_rdp([ClientLevelRound(round=2, mechanism=m, sample_rate=1.0)] * 2)


def test_plan_client_noise() -> None:
    template = DistributedDP(clip=1.0, scale=500.0, noise_multiplier=1.0, n_clients=20, dim=1000, noise="dgauss")
    budget = PrivacyBudget(epsilon=4.0, delta=1e-5, unit="client")
    dp = plan_client_noise_multiplier(budget=budget, rounds=30, sample_rate=0.25, template=template,
                                      counted_shares=15, tolerance=0.02)
    mech = dp.mechanism(counted_shares=15)
    eps = client_level_epsilon([ClientLevelRound(round=r, mechanism=mech, sample_rate=0.25) for r in range(1, 31)],
                               delta=1e-5)
    assert 4.0 - 0.02 <= eps <= 4.0
    with pytest.raises(BudgetExceededError, match="plan fewer rounds"):
        plan_client_noise_multiplier(budget=PrivacyBudget(epsilon=0.01, delta=1e-5, unit="client"), rounds=30,
                                     sample_rate=1.0, template=template, max_sigma=2.0)


def test_encode_decode_carries_the_central_noise() -> None:
    rng = make_rng(21)
    dp = DistributedDP(clip=2.0, scale=1000.0, noise_multiplier=0.5, n_clients=4, dim=20_000, noise="skellam")
    updates = [rng.normal(size=dp.dim) for _ in range(4)]
    clipped = sum(clip_update_l2(u, clip=2.0) for u in updates)
    noisy = dp.decode(sum(dp.encode(u, rng=rng) for u in updates))
    err = noisy - clipped
    assert float(np.std(err)) == pytest.approx(0.5 * 2.0, rel=0.03)  # central std = noise_multiplier * clip
    assert abs(float(np.mean(err))) < 0.05


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"noise": "laplace"}, "unknown noise 'laplace'"),
        ({"noise_multiplier": 1e-4}, "discrete Gaussian share would have sigma"),
        ({"clip": 0.0}, "clip must be > 0"),
        ({"n_clients": 0}, "n_clients must be >= 1"),
        ({"beta": 1.0}, "beta must be in [0, 1)"),
    ],
)
def test_bad_distributed_settings(kwargs: dict[str, object], needle: str) -> None:
    args: dict[str, object] = {"clip": 1.0, "scale": 100.0, "noise_multiplier": 1.0, "n_clients": 4, "dim": 8}
    args.update(kwargs)
    with pytest.raises(ConfigError) as info:
        DistributedDP(**args)  # type: ignore[arg-type]
    assert needle in str(info.value)


def test_mechanism_validation_and_round_trip() -> None:
    dp = DistributedDP(clip=1.0, scale=100.0, noise_multiplier=1.0, n_clients=4, dim=8)
    with pytest.raises(ConfigError, match="counted_shares=5 exceeds n_clients=4"):
        dp.mechanism(counted_shares=5)
    with pytest.raises(ConfigError, match="expects dim=8"):
        dp.encode(np.zeros(9), rng=make_rng(0))
    m = dp.mechanism(counted_shares=3)
    assert ClientLevelMechanism.from_dict(m.to_dict()) == m
    with pytest.raises(ConfigError, match="needs exactly the keys"):
        ClientLevelMechanism.from_dict({**m.to_dict(), "extra": 1})
    with pytest.raises(ConfigError, match="need sigma >= 0.5"):
        _mech("dgauss", share_sigma=0.4, shares=2, l2=3.0)
