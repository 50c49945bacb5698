"""Integer noise for distributed DP: discrete Gaussian and Skellam samplers, and each client's share.

* ``"dgauss"``: discrete Gaussian, sampled by rejection from a discrete Laplace (Canonne, Kamath,
  Steinke 2020, Algorithm 3), with float64 acceptance probabilities;
* ``"skellam"``: Poisson(mu) - Poisson(mu).

Real clients draw from :func:`make_rng` without a seed (128 bits from :mod:`secrets`).

>>> rng = make_rng(0)
>>> sample_discrete_gaussian(sigma=3.0, size=4, rng=rng).dtype
dtype('int64')
"""

from __future__ import annotations

import math
import secrets

import numpy as np

from privspk.errors import ConfigError
from privspk.privacy._checks import positive_float, positive_int

__all__ = [
    "NOISE_KINDS",
    "client_noise_share",
    "discrete_gaussian_pmf",
    "make_rng",
    "sample_discrete_gaussian",
    "sample_skellam",
]

NOISE_KINDS: tuple[str, ...] = ("dgauss", "skellam")
"""Integer noise families for distributed DP."""


def _check_noise(noise: object) -> str:
    if noise not in NOISE_KINDS:
        raise ConfigError(f"unknown noise {noise!r}; choose one of: {', '.join(NOISE_KINDS)}")
    return str(noise)


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
