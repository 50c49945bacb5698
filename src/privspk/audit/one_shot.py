"""The one-shot empirical epsilon estimate of Andrew et al. (2023) for client-level DP.

G. Andrew, P. Kairouz, S. Oh, A. Oprea, H. B. McMahan, V. Suriyakumar, "One-shot
Empirical Privacy Estimation for Federated Learning", ICLR 2024 (arXiv:2302.03098),
Algorithm 1; reference code ``google-research/federated/one_shot_epe``.

Canary clients send fixed random unit directions (drawn independently in a space
of dimension ``d``, so they are nearly orthogonal to each other and to the real
updates). The statistic of a canary is the cosine between its direction and the
final model delta (or the largest over the rounds' deltas). Cosines of canaries
that took part are modelled as ``N(mu, sigma^2)`` (fitted); cosines of directions
that never took part follow ``N(0, 1/d)`` (the null for a random direction in
``d`` dimensions, or fitted on unseen canaries). The estimate is the epsilon at
``delta`` of the pair of Gaussians - an *estimate*, not a bound; its bootstrap
interval (resampling the canaries) says how much the number of canaries limits it.

>>> est = two_gaussian_epsilon(mu0=0.0, sigma0=1.0, mu1=2.0, sigma1=1.0, delta=1e-5)
>>> round(est, 2)   # the Gaussian mechanism with sensitivity/noise = 2
10.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from privspk.errors import ConfigError


def _hockey_stick(mu_p: float, s_p: float, mu_q: float, s_q: float, eps: float) -> float:
    """``sup_S P(S) - e^eps Q(S)`` for P = N(mu_p, s_p^2), Q = N(mu_q, s_q^2), exactly.

    The optimal set is where ``log p(x) - log q(x) > eps``, a quadratic inequality in x.
    """
    from scipy.stats import norm

    # log p - log q - eps = a x^2 + b x + c
    a = 0.5 / s_q**2 - 0.5 / s_p**2
    b = mu_p / s_p**2 - mu_q / s_q**2
    c = mu_q**2 / (2 * s_q**2) - mu_p**2 / (2 * s_p**2) + math.log(s_q / s_p) - eps

    def mass(lo: float, hi: float) -> float:
        p = norm.cdf(hi, mu_p, s_p) - norm.cdf(lo, mu_p, s_p)
        q = norm.cdf(hi, mu_q, s_q) - norm.cdf(lo, mu_q, s_q)
        return p - math.exp(eps) * q

    if abs(a) < 1e-12 * max(1.0, abs(b)):
        if b == 0:
            return max(0.0, 1.0 - math.exp(eps)) if c > 0 else 0.0
        root = -c / b
        return max(0.0, mass(root, math.inf) if b > 0 else mass(-math.inf, root))
    disc = b * b - 4 * a * c
    if disc <= 0:  # the quadratic keeps one sign
        return max(0.0, mass(-math.inf, math.inf)) if a > 0 else 0.0
    r1, r2 = sorted(((-b - math.sqrt(disc)) / (2 * a), (-b + math.sqrt(disc)) / (2 * a)))
    if a > 0:  # positive outside the roots
        return max(0.0, mass(-math.inf, r1) + mass(r2, math.inf))
    return max(0.0, mass(r1, r2))


def two_gaussian_epsilon(*, mu0: float, sigma0: float, mu1: float, sigma1: float, delta: float) -> float:
    """Smallest epsilon with both hockey-stick divergences of N(mu0, s0^2), N(mu1, s1^2) at most ``delta``.

    >>> two_gaussian_epsilon(mu0=0.0, sigma0=1.0, mu1=0.0, sigma1=1.0, delta=1e-5)
    0.0
    """
    if sigma0 <= 0 or sigma1 <= 0 or not 0 < delta < 1:
        raise ConfigError(f"need sigma0, sigma1 > 0 and 0 < delta < 1, got {sigma0}, {sigma1}, {delta}")

    def worst(eps: float) -> float:
        return max(_hockey_stick(mu1, sigma1, mu0, sigma0, eps), _hockey_stick(mu0, sigma0, mu1, sigma1, eps))

    if worst(0.0) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while worst(hi) > delta:
        lo, hi = hi, 2 * hi
        if hi > 1e3:
            return math.inf
    for _ in range(60):
        mid = (lo + hi) / 2
        if worst(mid) > delta:
            lo = mid
        else:
            hi = mid
    return hi


@dataclass(frozen=True)
class OneShotEstimate:
    """Andrew et al.'s estimate with a bootstrap interval over the canaries."""

    epsilon: float
    low: float
    high: float
    mu: float
    sigma: float
    null_sigma: float
    canaries: int
    dim: int
    equal_variance: bool

    def to_dict(self) -> dict:
        """JSON-able fields."""
        return dict(vars(self))


def _estimate(observed: np.ndarray, *, dim: int, delta: float, equal_variance: bool) -> tuple[float, float, float]:
    mu = float(np.mean(observed))
    null = 1.0 / math.sqrt(dim)
    sigma = null if equal_variance else max(float(np.std(observed, ddof=1)), 1e-12)
    return two_gaussian_epsilon(mu0=0.0, sigma0=null, mu1=mu, sigma1=sigma, delta=delta), mu, sigma


def one_shot_epsilon(
    cosines: np.ndarray, *, dim: int, delta: float, equal_variance: bool = False, bootstrap: int = 200,
    confidence: float = 0.95, seed: int = 0,
) -> OneShotEstimate:
    """Estimate epsilon from the cosines of the canaries that took part (null ``N(0, 1/dim)``).

    ``equal_variance`` fixes the canaries' spread to the null's (the form that is stable
    with few canaries); otherwise it is fitted. The interval is a percentile bootstrap.

    >>> rng = np.random.default_rng(0)
    >>> d = 10_000
    >>> cos = rng.normal(3.0 / np.sqrt(d), 1 / np.sqrt(d), size=1000)   # Gaussian mechanism, mu = 3
    >>> est = one_shot_epsilon(cos, dim=d, delta=1e-5, equal_variance=True)
    >>> round(two_gaussian_epsilon(mu0=0, sigma0=1, mu1=3, sigma1=1, delta=1e-5), 1), est.low < 16.7 < est.high
    (16.7, True)
    """
    observed = np.asarray(cosines, dtype=float)
    if observed.ndim != 1 or observed.size < 2 or not np.all(np.isfinite(observed)):
        raise ConfigError(f"need >= 2 finite canary cosines, got shape {observed.shape}")
    if dim < 1:
        raise ConfigError(f"dim must be >= 1, got {dim}")
    eps, mu, sigma = _estimate(observed, dim=dim, delta=delta, equal_variance=equal_variance)
    rng = np.random.default_rng(seed)
    boot = [_estimate(observed[rng.integers(0, observed.size, observed.size)], dim=dim, delta=delta,
                      equal_variance=equal_variance)[0] for _ in range(bootstrap)]
    tail = (1 - confidence) / 2
    low, high = (float(np.quantile(boot, tail)), float(np.quantile(boot, 1 - tail))) if boot else (eps, eps)
    return OneShotEstimate(epsilon=eps, low=low, high=high, mu=mu, sigma=sigma, null_sigma=1 / math.sqrt(dim),
                           canaries=int(observed.size), dim=int(dim), equal_variance=equal_variance)


def fitted_epsilon(inserted: np.ndarray, absent: np.ndarray, *, delta: float, bootstrap: int = 200,
                   confidence: float = 0.95, seed: int = 0) -> OneShotEstimate:
    """The same Gaussian-fit estimate with the null fitted on canaries that were left out.

    Used for the gradient canaries of a sample-level audit, whose scores have no analytic
    null: both distributions are fitted and the estimate is the epsilon at ``delta`` between
    them, with a bootstrap interval over the canaries (an estimate, not a bound).

    >>> rng = np.random.default_rng(0)
    >>> est = fitted_epsilon(rng.normal(2, 1, 2000), rng.normal(0, 1, 2000), delta=1e-5, bootstrap=50)
    >>> est.low < 10.0 < est.high
    True
    """
    a, b = np.asarray(inserted, dtype=float), np.asarray(absent, dtype=float)
    if a.size < 2 or b.size < 2:
        raise ConfigError(f"need >= 2 inserted and >= 2 absent canaries, got {a.size} and {b.size}")

    def est(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
        mu, s1 = float(np.mean(x) - np.mean(y)), max(float(np.std(x, ddof=1)), 1e-12)
        s0 = max(float(np.std(y, ddof=1)), 1e-12)
        return two_gaussian_epsilon(mu0=0.0, sigma0=s0, mu1=mu, sigma1=s1, delta=delta), mu, s1, s0

    eps, mu, s1, s0 = est(a, b)
    rng = np.random.default_rng(seed)
    boot = [est(a[rng.integers(0, a.size, a.size)], b[rng.integers(0, b.size, b.size)])[0] for _ in range(bootstrap)]
    tail = (1 - confidence) / 2
    # "lower"/"higher" pick bootstrap values (no interpolation: an infinite estimate stays inf, not nan)
    low, high = ((float(np.quantile(boot, tail, method="lower")), float(np.quantile(boot, 1 - tail, method="higher")))
                 if boot else (eps, eps))
    return OneShotEstimate(epsilon=eps, low=low, high=high, mu=mu, sigma=s1, null_sigma=s0, canaries=int(a.size),
                           dim=0, equal_variance=False)
