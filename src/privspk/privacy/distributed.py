"""Client-level distributed DP: integer noise shares added before secure aggregation.

This module holds the mechanism (:class:`DistributedDP`: clip, randomised rounding, the client's
noise share, the modulus it needs) and its planning; the samplers live in
:mod:`privspk.privacy.noise` and the client-level accounting in :mod:`privspk.privacy.accounting`
(both re-exported here).

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

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from privspk.errors import BudgetExceededError, ConfigError
from privspk.privacy._checks import positive_float, positive_int, probability, real
from privspk.privacy.accounting import (  # client-level accounting; re-exported here for existing imports
    CLIENT_RDP_ORDERS,
    ClientLevelMechanism,
    ClientLevelRound,
    client_level_epsilon,
    client_level_rdp,
    poisson_subsampled_rdp,
    rdp_to_epsilon,
)
from privspk.privacy.budget import PrivacyBudget
from privspk.privacy.noise import (  # the samplers; re-exported here for existing imports
    NOISE_KINDS,
    _check_noise,
    client_noise_share,
    discrete_gaussian_pmf,
    make_rng,
    sample_discrete_gaussian,
    sample_skellam,
)
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

DEFAULT_BETA = math.exp(-0.5)
"""Failure probability of one conditional-rounding attempt (KLS21's default)."""


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
        """Each client's noise std in integer units.

        >>> DistributedDP(clip=1.0, scale=100.0, noise_multiplier=1.0, n_clients=4, dim=10).share_sigma
        50.0
        """
        return self.noise_multiplier * self.clip * self.scale / math.sqrt(self.n_clients)

    @property
    def l2_sensitivity(self) -> float:
        """L2 bound of a client's rounded integer update.

        >>> round(DistributedDP(clip=1.0, scale=100.0, noise_multiplier=1.0, n_clients=4, dim=10).l2_sensitivity, 3)
        100.519
        """
        return rounded_l2_bound(l2_bound=self.clip * self.scale, dim=self.dim, beta=self.beta)

    @property
    def l1_sensitivity(self) -> float:
        """L1 bound of a client's rounded integer update.

        >>> round(DistributedDP(clip=1.0, scale=100.0, noise_multiplier=1.0, n_clients=4, dim=10).l1_sensitivity, 3)
        317.869
        """
        l2 = self.l2_sensitivity
        return l2 * min(math.sqrt(self.dim), l2)

    @property
    def required_survivors(self) -> int:
        """Surviving clients a round must be guaranteed to open with: counted shares + colluders.

        A client refuses a round whose fewest possible survivors are below this
        (``MaskClient.submit_integers(..., min_survivors=...)``).

        >>> DistributedDP(clip=1.0, scale=100.0, noise_multiplier=1.0, n_clients=4, dim=10, counted_shares=2,
        ...               colluders=1).required_survivors
        3
        """
        counted = self.n_clients if self.counted_shares is None else self.counted_shares
        return counted + self.colluders

    def mechanism(self, *, counted_shares: int | None = None) -> ClientLevelMechanism:
        """The mechanism to account for, counting ``counted_shares`` shares (default: the encoder's
        ``counted_shares``, else all).

        >>> DistributedDP(clip=1.0, scale=100.0, noise_multiplier=1.0, n_clients=4, dim=10).mechanism().shares
        4
        """
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
        """Clip, scale, conditionally round, and add this client's noise share (int64, length ``dim``).

        >>> codes = DistributedDP(clip=1.0, scale=100.0, noise_multiplier=1.0, n_clients=4, dim=10).encode(np.full(10, 0.01), rng=make_rng(0))
        >>> codes.dtype, codes.shape
        (dtype('int64'), (10,))
        """
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
        """Float sum of clipped updates (plus the central noise) from the integer sum.

        >>> DistributedDP(clip=1.0, scale=100.0, noise_multiplier=1.0, n_clients=4, dim=10).decode(np.zeros(10, dtype=np.int64))[:2].tolist()
        [0.0, 0.0]
        """
        return np.asarray(total, dtype=np.float64) / self.scale

    def modulus_bits(self, *, failure_prob: float = 1e-12) -> int:
        """Signed modulus bits that hold the noisy sum of all ``n_clients`` w.p. >= 1 - ``failure_prob``.

        >>> DistributedDP(clip=1.0, scale=100.0, noise_multiplier=1.0, n_clients=4, dim=10).modulus_bits()
        12
        """
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
