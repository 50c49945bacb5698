"""Client-level distributed DP: integer noise shares added before secure aggregation.

Each client clips its whole update (L2), scales it to integers with conditional
randomized rounding (so the rounded vector's norm stays bounded), and adds its
*share* of integer noise before masking / BFV encryption. The server only ever
sees the sum, and the sum carries the central noise: no trusted server holds a
noise-free update (Kairouz, Liu, Steinke 2021, "The Distributed Discrete Gaussian
Mechanism for Federated Learning with Secure Aggregation" - KLS21; Agarwal,
Kairouz, Liu 2021, "The Skellam Mechanism for Differentially Private Federated
Learning" - AKL21).

Noise
    * ``"dgauss"``: discrete Gaussian shares, sampled by rejection from a discrete
      Laplace (Canonne, Kamath, Steinke 2020, Algorithm 3), with float64
      acceptance probabilities. A sum of discrete Gaussians is *not* a discrete
      Gaussian; KLS21 Proposition 14 bounds its RDP (the ``tau`` terms).
    * ``"skellam"``: Poisson(mu) - Poisson(mu) shares; a sum of Skellams is a
      Skellam, and AKL21 (Section 3, the multi-dimensional Skellam bound) bounds its RDP.

Accounting (client level, add/remove one client's update)
    Both bounds are RDP at integer orders ``CLIENT_RDP_ORDERS``. Client sampling
    is accounted with the general Poisson-subsampling RDP upper bound of Zhu &
    Wang 2019 ("Poisson Subsampled Rényi Differential Privacy", ICML), which
    holds for any mechanism given its RDP curve at integer orders - Opacus'
    ``opacus.accountants.analysis.rdp`` is exact only for the continuous Gaussian,
    so it is used here for the (epsilon, delta) conversion (Balle et al. 2020) and
    as the reference in tests, not for the discrete mechanisms' amplification.
    Amplification assumes the client's participation is a secret Poisson draw
    with the stated rate (client self-sampling, or an honest server); with no
    such trust, record ``sample_rate = 1``. Under sampling, every round number up
    to the current one counts (rounds the client sat out included), as in
    DP-FedAvg accounting; with ``sample_rate = 1`` only rounds taken part in count.

    Only the noise of ``shares`` clients counts: the number of clients whose
    noise is guaranteed to be in the sum and honest, the secure aggregation
    threshold minus the clients that may collude (:func:`guaranteed_noise_shares`);
    each client refuses a round that cannot guarantee that many survivors
    (:attr:`DistributedDP.required_survivors`).

>>> rng = make_rng(7)
>>> dp = DistributedDP(clip=1.0, scale=256.0, noise_multiplier=1.0, n_clients=4, dim=8)
>>> updates = [rng.normal(size=8) for _ in range(4)]
>>> total = sum(dp.encode(u, rng=rng) for u in updates)
>>> dp.decode(total).shape
(8,)
>>> bits = dp.modulus_bits()
>>> bool(np.all(np.abs(total) < 2 ** (bits - 1)))
True
"""

from __future__ import annotations

import functools
import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from privspk.errors import BudgetExceededError, ConfigError
from privspk.privacy._checks import positive_float, positive_int, probability, real
from privspk.privacy.budget import PrivacyBudget
from privspk.privacy.planner import search_noise_multiplier

__all__ = [
    "CLIENT_RDP_ORDERS",
    "NOISE_KINDS",
    "ClientLevelMechanism",
    "ClientLevelRound",
    "DistributedDP",
    "client_level_epsilon",
    "client_level_rdp",
    "client_noise_share",
    "clip_update_l2",
    "conditional_round",
    "discrete_gaussian_pmf",
    "guaranteed_noise_shares",
    "headroom_bits",
    "make_rng",
    "modulus_bits",
    "noise_tail_bound",
    "plan_client_level",
    "plan_client_noise_multiplier",
    "poisson_subsampled_rdp",
    "rdp_to_epsilon",
    "rounded_l2_bound",
    "sample_discrete_gaussian",
    "sample_skellam",
]

NOISE_KINDS: tuple[str, ...] = ("dgauss", "skellam")
"""Integer noise families for distributed DP."""

CLIENT_RDP_ORDERS: tuple[int, ...] = tuple(range(2, 257))
"""Consecutive integer RDP orders (the subsampling bound needs every order from 2 up)."""

DEFAULT_BETA = math.exp(-0.5)
"""Failure probability of one conditional-rounding attempt (KLS21's default)."""


def make_rng(seed: int | None = None) -> np.random.Generator:
    """A numpy ``Generator``; seeded from :func:`secrets.randbits` (128 bits) unless ``seed`` is given.

    Pass a seed only in simulations and tests; real clients must use the default.

    >>> int(make_rng(1).integers(0, 10)) == int(make_rng(1).integers(0, 10))
    True
    """
    if seed is None:
        return np.random.Generator(np.random.PCG64(secrets.randbits(128)))
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an int or None, got {seed!r}")
    return np.random.default_rng(seed)


def _shape(size: int | tuple[int, ...]) -> tuple[int, ...]:
    shape = (size,) if isinstance(size, (int, np.integer)) else tuple(size)
    if any(isinstance(s, bool) or int(s) < 0 for s in shape):
        raise ConfigError(f"size must be non-negative integers, got {size!r}")
    return tuple(int(s) for s in shape)


def sample_discrete_gaussian(*, sigma: float, size: int | tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Discrete Gaussian N_Z(0, sigma^2) samples (int64), P(x) proportional to exp(-x^2 / (2 sigma^2)).

    Canonne, Kamath, Steinke 2020, Algorithm 3: draw Y from a discrete Laplace
    of scale ``t = floor(sigma) + 1`` (a difference of two geometric variables)
    and keep it with probability ``exp(-(|Y| - sigma^2/t)^2 / (2 sigma^2))``.

    >>> x = sample_discrete_gaussian(sigma=3.0, size=20000, rng=make_rng(0))
    >>> x.dtype, abs(float(x.mean())) < 0.1, abs(float(x.var()) / 9 - 1) < 0.05
    (dtype('int64'), True, True)
    """
    sigma = positive_float("sigma", sigma)
    shape = _shape(size)
    n = int(np.prod(shape, dtype=np.int64))
    out = np.empty(n, dtype=np.int64)
    t = math.floor(sigma) + 1
    p_success = -math.expm1(-1.0 / t)
    s2 = sigma * sigma
    filled = 0
    while filled < n:
        m = 2 * (n - filled) + 16
        y = rng.geometric(p_success, m).astype(np.int64) - rng.geometric(p_success, m).astype(np.int64)
        keep = rng.random(m) < np.exp(-((np.abs(y) - s2 / t) ** 2) / (2.0 * s2))
        take = y[keep][: n - filled]
        out[filled : filled + take.size] = take
        filled += take.size
    return out.reshape(shape)


def discrete_gaussian_pmf(values: np.ndarray, *, sigma: float) -> np.ndarray:
    """Probability of each integer in ``values`` under N_Z(0, sigma^2) (normalised numerically).

    >>> p = discrete_gaussian_pmf(np.arange(-60, 61), sigma=5.0)
    >>> round(float(p.sum()), 12)
    1.0
    """
    sigma = positive_float("sigma", sigma)
    half = int(math.ceil(40.0 * sigma)) + 1
    support = np.arange(-half, half + 1, dtype=float)
    norm = float(np.exp(-(support**2) / (2.0 * sigma * sigma)).sum())
    vals = np.asarray(values, dtype=float)
    return np.exp(-(vals**2) / (2.0 * sigma * sigma)) / norm


def sample_skellam(*, variance: float, size: int | tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Symmetric Skellam samples (int64): Poisson(variance/2) - Poisson(variance/2).

    >>> x = sample_skellam(variance=50.0, size=20000, rng=make_rng(0))
    >>> abs(float(x.var()) / 50 - 1) < 0.05
    True
    """
    variance = positive_float("variance", variance)
    shape = _shape(size)
    mu = variance / 2.0
    return rng.poisson(mu, shape).astype(np.int64) - rng.poisson(mu, shape).astype(np.int64)


def client_noise_share(*, central_sigma: float, n_clients: int) -> float:
    """Per-client noise std so that ``n_clients`` independent shares sum to ``central_sigma``.

    >>> client_noise_share(central_sigma=10.0, n_clients=4)
    5.0
    """
    central_sigma = positive_float("central_sigma", central_sigma)
    n_clients = positive_int("n_clients", n_clients)
    return central_sigma / math.sqrt(n_clients)


def clip_update_l2(vec: np.ndarray, *, clip: float) -> np.ndarray:
    """A float64 copy of ``vec`` scaled down (never up) so its L2 norm is at most ``clip``.

    >>> clip_update_l2(np.array([6.0, 8.0]), clip=5.0).tolist()
    [3.0, 4.0]
    >>> clip_update_l2(np.array([0.3, 0.4]), clip=1.0).tolist()
    [0.3, 0.4]
    """
    clip = positive_float("clip", clip)
    arr = np.array(vec, dtype=np.float64).ravel()
    if not np.all(np.isfinite(arr)):
        raise ConfigError("update has non-finite values (nan/inf); refuse to clip it - check the training step")
    norm = float(np.linalg.norm(arr))
    if norm > clip:
        arr *= clip / norm
    return arr


def rounded_l2_bound(*, l2_bound: float, dim: int, beta: float = DEFAULT_BETA) -> float:
    """L2 norm bound after conditional randomized rounding of a vector of norm <= ``l2_bound`` (KLS21).

    ``min(c + sqrt(d), sqrt(c^2 + d/4 + sqrt(2 ln(1/beta)) (c + sqrt(d)/2)))``, where
    ``beta`` is the chance that one unconditioned rounding exceeds it (0 gives the
    deterministic ``c + sqrt(d)`` bound).

    >>> round(rounded_l2_bound(l2_bound=100.0, dim=4, beta=0.0), 6)
    102.0
    """
    c = real("l2_bound", l2_bound)
    if c < 0:
        raise ConfigError(f"l2_bound must be >= 0, got {l2_bound!r}")
    dim = positive_int("dim", dim)
    beta = real("beta", beta)
    if not 0.0 <= beta < 1.0:
        raise ConfigError(f"beta must be in [0, 1), got {beta!r}")
    bound1 = c + math.sqrt(dim)
    if beta == 0.0:
        return bound1
    sq = c * c + dim / 4.0 + math.sqrt(2.0 * math.log(1.0 / beta)) * (c + math.sqrt(dim) / 2.0)
    return min(bound1, math.sqrt(sq))


def conditional_round(
    vec: np.ndarray, *, l2_bound: float, rng: np.random.Generator, max_tries: int = 1000
) -> np.ndarray:
    """Unbiased randomized rounding to int64, redrawn until the L2 norm is <= ``l2_bound``.

    >>> r = conditional_round(np.array([0.5, -1.25, 2.0]), l2_bound=3.0, rng=make_rng(0))
    >>> r.dtype, float(np.linalg.norm(r)) <= 3.0
    (dtype('int64'), True)
    """
    arr = np.asarray(vec, dtype=np.float64).ravel()
    l2_bound = positive_float("l2_bound", l2_bound)
    floor = np.floor(arr)
    frac = arr - floor
    for _ in range(positive_int("max_tries", max_tries)):
        out = (floor + (rng.random(arr.shape) < frac)).astype(np.int64)
        if float(np.linalg.norm(out.astype(np.float64))) <= l2_bound:
            return out
    raise ConfigError(
        f"randomized rounding exceeded the L2 bound {l2_bound:g} in {max_tries} tries; "
        "use the bound from rounded_l2_bound() with a larger beta"
    )


def noise_tail_bound(*, noise: str, sum_variance: float, dim: int, failure_prob: float = 1e-12) -> float:
    """``t`` with P(some coordinate of the summed noise has abs(x) > t) <= ``failure_prob``.

    Discrete Gaussians are sigma^2-subgaussian (CKS20), so their sum is
    ``sum_variance``-subgaussian: ``t = sqrt(2 V ln(2 d / p))``. Skellam noise
    satisfies Bernstein's inequality with variance V and scale 1:
    ``t = L/3 + sqrt(L^2/9 + 2 V L)``, ``L = ln(2 d / p)``. Union bound over ``dim``.

    >>> round(noise_tail_bound(noise="dgauss", sum_variance=100.0, dim=1, failure_prob=2 * math.exp(-8)), 6)
    40.0
    """
    _check_noise(noise)
    v = positive_float("sum_variance", sum_variance)
    dim = positive_int("dim", dim)
    p = probability("failure_prob", failure_prob)
    log_term = math.log(2.0 * dim / p)
    if noise == "dgauss":
        return math.sqrt(2.0 * v * log_term)
    return log_term / 3.0 + math.sqrt(log_term * log_term / 9.0 + 2.0 * v * log_term)


def modulus_bits(
    *, max_abs: float, n_clients: int, noise: str, sum_variance: float, dim: int, failure_prob: float = 1e-12
) -> int:
    """Bits ``b`` of a signed modular range [-2^(b-1), 2^(b-1)) holding the noisy sum w.p. >= 1 - ``failure_prob``.

    ``max_abs`` bounds each client's integer coordinate before noise (e.g. its
    rounded L2 bound); the noise term is :func:`noise_tail_bound`.

    >>> modulus_bits(max_abs=1000, n_clients=10, noise="dgauss", sum_variance=1e4, dim=1000)
    15
    """
    max_abs = real("max_abs", max_abs)
    if max_abs < 0:
        raise ConfigError(f"max_abs must be >= 0, got {max_abs!r}")
    n_clients = positive_int("n_clients", n_clients)
    bound = n_clients * max_abs + noise_tail_bound(
        noise=noise, sum_variance=sum_variance, dim=dim, failure_prob=failure_prob
    )
    return _signed_bits(bound)


def headroom_bits(
    *, max_abs: float, n_clients: int, noise: str, sum_variance: float, dim: int, failure_prob: float = 1e-12
) -> int:
    """Extra modulus bits the noise needs on top of a noise-free sum of ``n_clients`` values.

    >>> headroom_bits(max_abs=1000, n_clients=10, noise="dgauss", sum_variance=1e4, dim=1000)
    0
    >>> headroom_bits(max_abs=1000, n_clients=10, noise="dgauss", sum_variance=1e6, dim=1000)
    1
    """
    n_clients = positive_int("n_clients", n_clients)
    noisy = modulus_bits(
        max_abs=max_abs, n_clients=n_clients, noise=noise, sum_variance=sum_variance, dim=dim,
        failure_prob=failure_prob,
    )
    bound = n_clients * real("max_abs", max_abs)
    plain = _signed_bits(bound)
    return noisy - plain


def _signed_bits(bound: float) -> int:
    """Fewest bits b with every integer in [-bound, bound] inside [-2^(b-1), 2^(b-1) - 1]."""
    return int(math.floor(bound)).bit_length() + 1


def _check_noise(noise: object) -> str:
    if noise not in NOISE_KINDS:
        raise ConfigError(f"unknown noise {noise!r}; choose one of: {', '.join(NOISE_KINDS)}")
    return str(noise)


def poisson_subsampled_rdp(rdp: np.ndarray, *, sample_rate: float) -> np.ndarray:
    """RDP at orders 2, 3, ..., of a mechanism with RDP ``rdp`` (same orders) under Poisson sampling.

    ``rdp[i]`` must be the mechanism's RDP at order ``i + 2`` (consecutive integer orders).

    General upper bound of Zhu & Wang 2019, valid for any mechanism,
    capped by the unsampled RDP (sampling never hurts, by joint convexity):

    ``(1/(a-1)) log[(1-q)^(a-1) (a q - q + 1) + C(a,2) q^2 (1-q)^(a-2) e^{rdp(2)}
    + 3 sum_{l=3..a} C(a,l) (1-q)^(a-l) q^l e^{(l-1) rdp(l)}]``.

    >>> g = np.array([a / 2.0 for a in range(2, 20)])   # Gaussian, noise multiplier 1
    >>> sub = poisson_subsampled_rdp(g, sample_rate=0.01)
    >>> bool(np.all(sub <= g)) and float(sub[0]) < 1e-3
    True
    """
    from scipy.special import gammaln, logsumexp

    eps = np.asarray(rdp, dtype=float)
    if eps.ndim != 1:
        raise ConfigError(f"rdp must be a 1-D array over orders 2, 3, ..., got shape {eps.shape}")
    q = probability("sample_rate", sample_rate, allow_one=True)
    if q == 1.0:
        return eps.copy()
    out = np.empty_like(eps)
    log_q, log_1q = math.log(q), math.log1p(-q)
    for i in range(eps.size):
        a = i + 2
        ls = np.arange(3, a + 1)
        log_comb = gammaln(a + 1) - gammaln(ls + 1) - gammaln(a - ls + 1)
        terms = [
            (a - 1) * log_1q + math.log(a * q - q + 1.0),
            math.log(a * (a - 1) / 2.0) + 2 * log_q + (a - 2) * log_1q + eps[0],
        ]
        if a >= 3:
            tail = math.log(3.0) + log_comb + ls * log_q + (a - ls) * log_1q + (ls - 1) * eps[ls - 2]
            terms.extend(tail.tolist())
        out[i] = min(float(logsumexp(terms)) / (a - 1), float(eps[i]))
    return out


def rdp_to_epsilon(rdp: np.ndarray, *, orders: Sequence[float], delta: float) -> float:
    """(epsilon at ``delta``) from RDP values, via Opacus' conversion (Balle et al. 2020, Theorem 21).

    >>> orders = list(range(2, 33))
    >>> round(rdp_to_epsilon(np.array([a / 2.0 for a in orders]), orders=orders, delta=1e-5), 3)
    4.753
    """
    import warnings

    from opacus.accountants.analysis import rdp as rdp_analysis

    delta = probability("delta", delta)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        eps, _ = rdp_analysis.get_privacy_spent(orders=list(orders), rdp=np.asarray(rdp, dtype=float), delta=delta)
    return float(eps)


@dataclass(frozen=True, kw_only=True)
class ClientLevelMechanism:
    """One round's client-level mechanism: the noisy integer sum, in integer units.

    Args:
        noise: ``"dgauss"`` or ``"skellam"``.
        share_sigma: std of each client's noise share (for ``"dgauss"``, the
            discrete Gaussian's sigma parameter; >= 0.5 as KLS21 requires).
        shares: how many shares are counted in the sum (see the module notes).
        l2_sensitivity: L2 bound of one client's rounded integer update.
        l1_sensitivity: L1 bound of it (<= min(sqrt(dim), l2) * l2 for integers).
        dim: number of coordinates.

    >>> m = ClientLevelMechanism(noise="skellam", share_sigma=50.0, shares=4, l2_sensitivity=100.0,
    ...                          l1_sensitivity=1000.0, dim=100)
    >>> round(m.noise_multiplier, 3)
    1.0
    >>> ClientLevelMechanism.from_dict(m.to_dict()) == m
    True
    """

    noise: str
    share_sigma: float
    shares: int
    l2_sensitivity: float
    l1_sensitivity: float
    dim: int

    def __post_init__(self) -> None:
        _check_noise(self.noise)
        object.__setattr__(self, "share_sigma", positive_float("share_sigma", self.share_sigma))
        object.__setattr__(self, "shares", positive_int("shares", self.shares))
        object.__setattr__(self, "l2_sensitivity", positive_float("l2_sensitivity", self.l2_sensitivity))
        object.__setattr__(self, "l1_sensitivity", positive_float("l1_sensitivity", self.l1_sensitivity))
        object.__setattr__(self, "dim", positive_int("dim", self.dim))
        if self.noise == "dgauss" and self.share_sigma < 0.5:
            raise ConfigError(
                f"discrete Gaussian shares need sigma >= 0.5 for the KLS21 bound, got {self.share_sigma:g}; "
                "raise the scale or the noise multiplier"
            )

    @property
    def sum_variance(self) -> float:
        """Per-coordinate variance of the counted noise (``shares * share_sigma^2``)."""
        return self.shares * self.share_sigma**2

    @property
    def noise_multiplier(self) -> float:
        """Effective central noise multiplier: counted noise std / L2 sensitivity."""
        return math.sqrt(self.sum_variance) / self.l2_sensitivity

    def rdp(self) -> np.ndarray:
        """Unsampled RDP of one round at :data:`CLIENT_RDP_ORDERS`."""
        return _mechanism_rdp(self).copy()

    def to_dict(self) -> dict[str, float | int | str]:
        """Plain-typed dict (what the ledger stores)."""
        return {
            "noise": self.noise,
            "share_sigma": self.share_sigma,
            "shares": self.shares,
            "l2_sensitivity": self.l2_sensitivity,
            "l1_sensitivity": self.l1_sensitivity,
            "dim": self.dim,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> ClientLevelMechanism:
        """Inverse of :meth:`to_dict`; unknown or missing keys are errors."""
        keys = {"noise", "share_sigma", "shares", "l2_sensitivity", "l1_sensitivity", "dim"}
        if not isinstance(data, Mapping) or set(data) != keys:
            got = sorted(data) if isinstance(data, Mapping) else type(data).__name__
            raise ConfigError(f"client-level mechanism needs exactly the keys {sorted(keys)}, got {got}")
        return cls(**{k: data[k] for k in keys})  # type: ignore[arg-type]


@functools.lru_cache(maxsize=1024)
def _mechanism_rdp(mech: ClientLevelMechanism) -> np.ndarray:
    a = np.asarray(CLIENT_RDP_ORDERS, dtype=float)
    d2, d1, dim = mech.l2_sensitivity, mech.l1_sensitivity, mech.dim
    if mech.noise == "skellam":
        v = mech.sum_variance
        surcharge = np.minimum(((2.0 * a - 1.0) * d2 * d2 + 6.0 * d1) / (4.0 * v * v), 3.0 * d1 / (2.0 * v))
        out = a * d2 * d2 / (2.0 * v) + surcharge
    else:
        n, s = mech.shares, mech.share_sigma
        ks = np.arange(1, n)
        tau = 10.0 * float(np.sum(np.exp(-2.0 * math.pi**2 * s * s * ks / (ks + 1.0))))
        l2s = d2 / (math.sqrt(n) * s)
        l1s = d1 / (math.sqrt(n) * s)
        out = np.minimum.reduce(
            [
                a / 2.0 * l2s**2 + tau * dim,
                a / 2.0 * (l2s**2 + 2.0 * l1s * tau + tau**2 * dim),
                a / 2.0 * (l2s + math.sqrt(dim) * tau) ** 2,
            ]
        )
    out.setflags(write=False)
    return out


@functools.lru_cache(maxsize=1024)
def _subsampled(mech: ClientLevelMechanism, sample_rate: float) -> np.ndarray:
    out = poisson_subsampled_rdp(_mechanism_rdp(mech), sample_rate=sample_rate)
    out.setflags(write=False)
    return out


@dataclass(frozen=True, kw_only=True)
class ClientLevelRound:
    """A round a client took part in, with its client-level mechanism and client sampling rate.

    >>> m = ClientLevelMechanism(noise="skellam", share_sigma=50.0, shares=4, l2_sensitivity=100.0,
    ...                          l1_sensitivity=1000.0, dim=100)
    >>> ClientLevelRound(round=3, mechanism=m, sample_rate=0.1).round
    3
    """

    round: int
    mechanism: ClientLevelMechanism
    sample_rate: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "round", positive_int("round", self.round))
        if not isinstance(self.mechanism, ClientLevelMechanism):
            raise ConfigError(f"mechanism must be a ClientLevelMechanism, got {type(self.mechanism).__name__}")
        object.__setattr__(self, "sample_rate", probability("sample_rate", self.sample_rate, allow_one=True))


def client_level_rdp(rounds: Sequence[ClientLevelRound]) -> np.ndarray:
    """Composed client-level RDP at :data:`CLIENT_RDP_ORDERS` (the rules are in the module notes).

    >>> m = ClientLevelMechanism(noise="skellam", share_sigma=50.0, shares=4, l2_sensitivity=100.0,
    ...                          l1_sensitivity=1000.0, dim=100)
    >>> one = client_level_rdp([ClientLevelRound(round=1, mechanism=m, sample_rate=0.1)])
    >>> gap = client_level_rdp([ClientLevelRound(round=3, mechanism=m, sample_rate=0.1)])
    >>> bool(np.allclose(gap, 3 * one))
    True
    """
    ordered = sorted(rounds, key=lambda r: r.round)
    total = np.zeros(len(CLIENT_RDP_ORDERS))
    previous = 0
    for r in ordered:
        if r.round <= previous:
            raise ConfigError(f"client-level rounds must be distinct, round {r.round} appears twice")
        count = r.round - previous if r.sample_rate < 1.0 else 1
        total = total + count * _subsampled(r.mechanism, r.sample_rate)
        previous = r.round
    return total


def client_level_epsilon(rounds: Sequence[ClientLevelRound], *, delta: float) -> float:
    """Client-level epsilon at ``delta`` after ``rounds``; 0.0 when there are none.

    >>> m = ClientLevelMechanism(noise="dgauss", share_sigma=60.0, shares=10, l2_sensitivity=150.0,
    ...                          l1_sensitivity=1500.0, dim=100)
    >>> eps = client_level_epsilon([ClientLevelRound(round=r, mechanism=m, sample_rate=1.0) for r in (1, 2)],
    ...                            delta=1e-5)
    >>> 0 < eps < 20
    True
    """
    rounds = list(rounds)
    if not rounds:
        return 0.0
    return rdp_to_epsilon(client_level_rdp(rounds), orders=CLIENT_RDP_ORDERS, delta=delta)


@dataclass(frozen=True, kw_only=True)
class DistributedDP:
    """Client-side encoder for distributed DP: clip, scale, round, add a noise share.

    Args:
        clip: L2 clipping bound of a client's whole update (float units).
        scale: integer units per float unit (1/granularity); larger = finer, more bits.
        noise_multiplier: central noise std of the full sum / ``clip`` (float units).
        n_clients: clients whose shares make up the central noise (each adds
            1/``n_clients`` of its variance).
        dim: update length.
        noise: ``"dgauss"`` or ``"skellam"``.
        beta: conditional-rounding failure probability per attempt (KLS21).
        counted_shares: shares the accountant counts (default: all ``n_clients``); see
            :func:`guaranteed_noise_shares`.
        colluders: clients that may collude with the server (their shares are known to it).
            With ``counted_shares`` they give :attr:`required_survivors`, the fewest surviving
            clients a round must be guaranteed to open with for the count to hold.

    >>> dp = DistributedDP(clip=1.0, scale=100.0, noise_multiplier=1.0, n_clients=4, dim=10)
    >>> round(dp.share_sigma, 3)
    50.0
    >>> dp.mechanism().shares
    4
    >>> DistributedDP(clip=1.0, scale=100.0, noise_multiplier=1.0, n_clients=4, dim=10, counted_shares=2,
    ...               colluders=1).required_survivors
    3
    """

    clip: float
    scale: float
    noise_multiplier: float
    n_clients: int
    dim: int
    noise: str = "dgauss"
    beta: float = DEFAULT_BETA
    counted_shares: int | None = None
    colluders: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "clip", positive_float("clip", self.clip))
        object.__setattr__(self, "scale", positive_float("scale", self.scale))
        object.__setattr__(self, "noise_multiplier", positive_float("noise_multiplier", self.noise_multiplier))
        object.__setattr__(self, "n_clients", positive_int("n_clients", self.n_clients))
        object.__setattr__(self, "dim", positive_int("dim", self.dim))
        _check_noise(self.noise)
        beta = real("beta", self.beta)
        if not 0.0 <= beta < 1.0:
            raise ConfigError(f"beta must be in [0, 1), got {self.beta!r}")
        object.__setattr__(self, "beta", beta)
        if type(self.colluders) is not int or self.colluders < 0:
            raise ConfigError(f"colluders must be an int >= 0, got {self.colluders!r}")
        if self.counted_shares is not None:
            counted = positive_int("counted_shares", self.counted_shares)
            if counted + self.colluders > self.n_clients:
                raise ConfigError(f"counted_shares={counted} plus colluders={self.colluders} exceed "
                                  f"n_clients={self.n_clients}")
        if self.noise == "dgauss" and self.share_sigma < 0.5:
            raise ConfigError(
                f"each client's discrete Gaussian share would have sigma {self.share_sigma:.3g} < 0.5; "
                "raise scale or noise_multiplier, or use fewer clients"
            )

    @property
    def share_sigma(self) -> float:
        """Each client's noise std in integer units."""
        return self.noise_multiplier * self.clip * self.scale / math.sqrt(self.n_clients)

    @property
    def l2_sensitivity(self) -> float:
        """L2 bound of a client's rounded integer update."""
        return rounded_l2_bound(l2_bound=self.clip * self.scale, dim=self.dim, beta=self.beta)

    @property
    def l1_sensitivity(self) -> float:
        """L1 bound of a client's rounded integer update."""
        l2 = self.l2_sensitivity
        return l2 * min(math.sqrt(self.dim), l2)

    @property
    def required_survivors(self) -> int:
        """Surviving clients a round must be guaranteed to open with: counted shares + colluders.

        A client refuses a round whose fewest possible survivors are below this
        (``MaskClient.submit_integers(..., min_survivors=...)``).
        """
        counted = self.n_clients if self.counted_shares is None else self.counted_shares
        return counted + self.colluders

    def mechanism(self, *, counted_shares: int | None = None) -> ClientLevelMechanism:
        """The mechanism to account for, counting ``counted_shares`` shares (default: the encoder's
        ``counted_shares``, else all)."""
        if counted_shares is None:
            counted_shares = self.counted_shares
        shares = self.n_clients if counted_shares is None else positive_int("counted_shares", counted_shares)
        if shares > self.n_clients:
            raise ConfigError(f"counted_shares={shares} exceeds n_clients={self.n_clients}")
        return ClientLevelMechanism(
            noise=self.noise,
            share_sigma=self.share_sigma,
            shares=shares,
            l2_sensitivity=self.l2_sensitivity,
            l1_sensitivity=self.l1_sensitivity,
            dim=self.dim,
        )

    def encode(self, update: np.ndarray, *, rng: np.random.Generator) -> np.ndarray:
        """Clip, scale, conditionally round, and add this client's noise share (int64, length ``dim``)."""
        arr = np.asarray(update, dtype=np.float64).ravel()
        if arr.size != self.dim:
            raise ConfigError(f"update has {arr.size} values, this encoder expects dim={self.dim}")
        clipped = clip_update_l2(arr, clip=self.clip)
        rounded = conditional_round(clipped * self.scale, l2_bound=self.l2_sensitivity, rng=rng)
        if self.noise == "dgauss":
            share = sample_discrete_gaussian(sigma=self.share_sigma, size=self.dim, rng=rng)
        else:
            share = sample_skellam(variance=self.share_sigma**2, size=self.dim, rng=rng)
        return rounded + share

    def decode(self, total: np.ndarray) -> np.ndarray:
        """Float sum of clipped updates (plus the central noise) from the integer sum."""
        return np.asarray(total, dtype=np.float64) / self.scale

    def modulus_bits(self, *, failure_prob: float = 1e-12) -> int:
        """Signed modulus bits that hold the noisy sum of all ``n_clients`` w.p. >= 1 - ``failure_prob``."""
        return modulus_bits(
            max_abs=math.floor(self.l2_sensitivity),
            n_clients=self.n_clients,
            noise=self.noise,
            sum_variance=self.n_clients * self.share_sigma**2,
            dim=self.dim,
            failure_prob=failure_prob,
        )


def guaranteed_noise_shares(*, min_survivors: int, colluders: int) -> int:
    """Honest noise shares an opened sum is guaranteed to hold.

    A round opens with at least ``min_survivors`` clients (the secure aggregation
    threshold); up to ``colluders`` of them may collude with the server, which then knows
    and subtracts their shares. ConfigError when nothing is left.

    >>> guaranteed_noise_shares(min_survivors=6, colluders=1)
    5
    >>> guaranteed_noise_shares(min_survivors=2, colluders=2)
    Traceback (most recent call last):
    ...
    privspk.errors.ConfigError: a round can open with 2 survivors of which 2 may collude with the server: no honest noise share is guaranteed in the sum; use more clients or tolerate fewer colluders
    """
    min_survivors = positive_int("min_survivors", min_survivors)
    if type(colluders) is not int or colluders < 0:
        raise ConfigError(f"colluders must be an int >= 0, got {colluders!r}")
    left = min_survivors - colluders
    if left < 1:
        raise ConfigError(f"a round can open with {min_survivors} survivors of which {colluders} may collude with "
                          "the server: no honest noise share is guaranteed in the sum; use more clients or tolerate "
                          "fewer colluders")
    return left


def plan_client_noise_multiplier(
    *,
    budget: PrivacyBudget,
    rounds: int,
    sample_rate: float,
    template: DistributedDP,
    counted_shares: int | None = None,
    tolerance: float = 0.01,
    max_sigma: float = 1e3,
) -> DistributedDP:
    """``template`` with the smallest noise multiplier keeping ``rounds`` rounds within the client-level ``budget``.

    >>> t = DistributedDP(clip=1.0, scale=1000.0, noise_multiplier=1.0, n_clients=10, dim=1000, noise="skellam")
    >>> dp = plan_client_noise_multiplier(budget=PrivacyBudget(epsilon=8, delta=1e-5, unit="client"),
    ...                                   rounds=10, sample_rate=1.0, template=t, tolerance=0.05)
    >>> eps = client_level_epsilon([ClientLevelRound(round=r, mechanism=dp.mechanism(), sample_rate=1.0)
    ...                             for r in range(1, 11)], delta=1e-5)
    >>> 7.95 <= eps <= 8
    True
    """
    if not isinstance(budget, PrivacyBudget):
        raise TypeError(f"budget must be a PrivacyBudget, got {type(budget).__name__}")
    rounds = positive_int("rounds", rounds)
    sample_rate = probability("sample_rate", sample_rate, allow_one=True)

    def eps_of(z: float) -> float:
        try:
            mech = replace(template, noise_multiplier=z).mechanism(counted_shares=counted_shares)
        except ConfigError:
            return float("inf")
        return client_level_epsilon(
            [ClientLevelRound(round=r, mechanism=mech, sample_rate=sample_rate) for r in range(1, rounds + 1)],
            delta=budget.delta,
        )

    try:
        z, _ = search_noise_multiplier(
            eps_of, target_epsilon=budget.epsilon, tolerance=tolerance, max_sigma=max_sigma
        )
    except BudgetExceededError as exc:
        raise BudgetExceededError(
            f"client-level budget {budget} cannot cover {rounds} round(s) at client sampling rate {sample_rate:g} "
            f"({exc}); plan fewer rounds, sample fewer clients per round, count more noise shares, or raise epsilon"
        ) from None
    return replace(template, noise_multiplier=z)


def plan_client_level(
    mask_options: Mapping[str, object],
    *,
    n_clients: int,
    colluders: int,
    budget: PrivacyBudget,
    rounds: int,
    clip: float,
    noise: str,
    dim: int,
    bits: int = 16,
) -> tuple[DistributedDP, dict]:
    """Distributed-DP encoder for client-level DP over the ``mask`` scheme, and the mask options that carry its noise.

    Codes use the mask quantiser's units (``bits``-bit values over ``[-clip, clip]``, asked of the
    mask scheme built from ``mask_options``); the noise multiplier is planned for ``rounds`` rounds
    at the client-level ``budget``, counting only the honest noise shares guaranteed in an opened
    sum: the fewest clients a round can open with, minus ``colluders`` (whose shares the server
    knows). Each client refuses a round that cannot guarantee that many survivors
    (:attr:`DistributedDP.required_survivors`). The returned options add ``noise_headroom_bits``.

    >>> dp, opts = plan_client_level({"colluders": 1}, n_clients=4, colluders=1, rounds=2, clip=0.05,
    ...     budget=PrivacyBudget(epsilon=8, delta=1e-5, unit="client"), noise="dgauss", dim=1000)
    >>> dp.counted_shares, opts["bits"], opts["noise_headroom_bits"] >= 0
    (2, 16, True)
    """
    from privspk.secagg import build_scheme, headroom_for

    if n_clients < 2:
        raise ConfigError("client-level DP needs at least 2 clients")
    options = {**mask_options, "bits": bits, "clip": clip}
    mask = build_scheme("mask", options)
    counted = guaranteed_noise_shares(min_survivors=mask.min_survivors(n_clients), colluders=colluders)
    template = DistributedDP(clip=clip, scale=mask.quantiser(n_clients).scale, noise_multiplier=1.0,
                             n_clients=n_clients, dim=dim, noise=noise, counted_shares=counted, colluders=colluders)
    dp = plan_client_noise_multiplier(budget=budget, rounds=rounds, sample_rate=1.0, template=template)
    options["noise_headroom_bits"] = max(0, dp.modulus_bits() - bits - headroom_for(n_clients))
    return dp, options
