"""The one-run lower bound on epsilon of Steinke, Nasr & Jagielski (2023).

T. Steinke, M. Nasr, M. Jagielski, "Privacy Auditing with One (1) Training Run",
NeurIPS 2023 (arXiv:2305.08846), Theorem 3.1 / Algorithm 2 (with delta, Proposition 5.7).

``m`` canaries are each included in training independently with probability 1/2.
After training the auditor guesses "in" for the ``k_plus`` highest scores and "out"
for the ``k_minus`` lowest (abstaining on the rest): ``r = k_plus + k_minus`` guesses,
``v`` of them right. If the mechanism is (eps, delta)-DP, the number of right guesses
is stochastically dominated so that, with ``q = e^eps / (1 + e^eps)``,

    P[W >= v] <= beta + 2 m delta alpha,
    beta  = P[Binom(r, q) >= v],
    alpha = max_{i=1..v} (P[Binom(r, q) >= v - i] - beta) / i.

The lower bound is the largest eps whose p-value still does not exceed the
significance (e.g. 0.05 for 95 % confidence). Trying several ``k`` and keeping the
best inflates the confidence, so :func:`best_lower_bound` divides the significance by
the number of choices (Bonferroni).

No maintained PyPI package implements this without a heavy framework (``dp-accounting``
0.6.0 has no auditing; ``jax-privacy``'s ``auditing.py`` needs JAX), so it is
implemented here from the paper, with scipy's binomial tails.

>>> round(epsilon_lower_bound(m=100, r=100, v=100, delta=0.0, significance=0.05), 2)
3.49
>>> epsilon_lower_bound(m=100, r=100, v=50, delta=1e-5, significance=0.05)
0.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from privspk.errors import ConfigError

_BISECT_STEPS = 60


def _check_counts(m: int, r: int, v: int) -> None:
    for name, val in (("m", m), ("r", r), ("v", v)):
        if type(val) is not int and not isinstance(val, np.integer):
            raise ConfigError(f"{name} must be an int, got {type(val).__name__}")
    if not 0 <= v <= r <= m:
        raise ConfigError(f"need 0 <= v (right guesses) <= r (guesses) <= m (canaries), got v={v} r={r} m={m}")


def p_value(*, m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Probability of ``v`` or more right guesses out of ``r`` under (epsilon, delta)-DP.

    >>> round(p_value(m=10, r=10, v=10, epsilon=0.0, delta=0.0), 6)   # fair coins: 2^-10
    0.000977
    """
    from scipy.stats import binom

    _check_counts(m, r, v)
    if epsilon < 0 or not 0 <= delta < 1:
        raise ConfigError(f"need epsilon >= 0 and 0 <= delta < 1, got {epsilon}, {delta}")
    if v == 0:
        return 1.0
    q = 1.0 / (1.0 + math.exp(-epsilon))
    beta = float(binom.sf(v - 1, r, q))  # P[Binom(r, q) >= v]
    alpha = 0.0
    if delta > 0:
        # P[v - i <= Binom < v] for i = 1..v, as a cumulative sum of the pmf
        tail = np.cumsum(binom.pmf(np.arange(v - 1, -1, -1), r, q))
        alpha = float(np.max(tail / np.arange(1, v + 1)))
    return min(1.0, beta + 2.0 * m * delta * alpha)


def epsilon_lower_bound(*, m: int, r: int, v: int, delta: float, significance: float = 0.05) -> float:
    """Largest epsilon whose :func:`p_value` is at most ``significance`` (0 when none is).

    The p-value rises with epsilon (a larger epsilon explains more right guesses), so
    the epsilons the guesses refute form the interval ``[0, eps_lb)``.

    >>> round(epsilon_lower_bound(m=1000, r=1000, v=1000, delta=0.0), 1)
    5.8
    """
    if not 0 < significance < 1:
        raise ConfigError(f"significance must be in (0, 1), got {significance}")
    _check_counts(m, r, v)
    if p_value(m=m, r=r, v=v, epsilon=0.0, delta=delta) > significance:
        return 0.0
    lo, hi = 0.0, 1.0
    while p_value(m=m, r=r, v=v, epsilon=hi, delta=delta) <= significance:
        lo, hi = hi, 2 * hi
        if hi > 1e4:  # cannot happen for r >= 1 (q -> 1 makes the p-value 1)
            return lo
    for _ in range(_BISECT_STEPS):
        mid = (lo + hi) / 2
        if p_value(m=m, r=r, v=v, epsilon=mid, delta=delta) <= significance:
            lo = mid
        else:
            hi = mid
    return lo


def ceiling(*, m: int, delta: float, significance: float = 0.05) -> float:
    """The most ``m`` canaries can show: every canary guessed, every guess right.

    A claimed epsilon above it cannot be refuted by an audit with ``m`` canaries.

    >>> [round(ceiling(m=m, delta=0.0), 1) for m in (100, 200, 1000)]
    [3.5, 4.2, 5.8]
    """
    return epsilon_lower_bound(m=m, r=m, v=m, delta=delta, significance=significance)


@dataclass(frozen=True)
class OneRunBound:
    """The best bound over the tried guess counts, with what it was computed from.

    ``ceiling`` is what ``m`` canaries show at best with one guess count fixed in
    advance; ``corrected_ceiling`` is the best this search over guess counts can show.
    """

    epsilon: float
    k_plus: int
    k_minus: int
    guesses: int
    correct: int
    m: int
    choices: int
    significance: float
    ceiling: float
    corrected_ceiling: float

    def to_dict(self) -> dict:
        """JSON-able fields."""
        return dict(vars(self))


def default_ks(m: int) -> list[tuple[int, int]]:
    """``(k_plus, k_minus)`` pairs tried: 1 %, 5 %, 10 %, 20 %, 30 %, 40 %, 50 % of ``m`` on each side.

    Pairs that would guess more than ``m`` canaries are left out.

    >>> len(default_ks(100)), default_ks(100)[:3]
    (49, [(1, 1), (1, 5), (1, 10)])
    """
    sizes = sorted({max(1, round(f * m)) for f in (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)})
    return [(a, b) for a in sizes for b in sizes if a + b <= m]


def best_lower_bound(
    scores: np.ndarray, included: np.ndarray, *, delta: float, significance: float = 0.05,
    ks: list[tuple[int, int]] | None = None,
) -> OneRunBound:
    """Guess "in" for the top ``k_plus`` scores and "out" for the bottom ``k_minus``; keep the best pair.

    The significance is divided by the number of pairs tried, so the returned bound
    holds at the stated confidence although the pair was chosen after seeing the
    scores; ``ceiling`` is what that corrected test shows when every guess is right.

    >>> rng = np.random.default_rng(0)
    >>> inc = rng.random(1000) < 0.5
    >>> best_lower_bound(inc.astype(float) + 0.01 * rng.random(1000), inc, delta=0.0).epsilon > 4
    True
    """
    scores = np.asarray(scores, dtype=float)
    included = np.asarray(included, dtype=bool)
    if scores.shape != included.shape or scores.ndim != 1 or scores.size < 2:
        raise ConfigError(f"scores and included must be equal-length 1-D arrays of >= 2 canaries, "
                          f"got {scores.shape} and {included.shape}")
    if not np.all(np.isfinite(scores)):
        raise ConfigError("canary scores must be finite")
    m = int(scores.size)
    ks = list(ks) if ks is not None else default_ks(m)
    if not ks or any(a < 0 or b < 0 or a + b < 1 or a + b > m for a, b in ks):
        raise ConfigError(f"each (k_plus, k_minus) needs 1 <= k_plus + k_minus <= m = {m}, got {ks}")
    alpha = significance / len(ks)
    order = np.argsort(-scores, kind="stable")  # ties broken by index: reproducible guesses
    best = None
    for k_plus, k_minus in ks:
        top, bottom = order[:k_plus], order[m - k_minus:]
        right = int(included[top].sum() + (~included[bottom]).sum())
        eps = epsilon_lower_bound(m=m, r=k_plus + k_minus, v=right, delta=delta, significance=alpha)
        if best is None or eps > best[0]:
            best = (eps, k_plus, k_minus, right)
    eps, k_plus, k_minus, right = best
    r_max = max(a + b for a, b in ks)
    return OneRunBound(epsilon=eps, k_plus=k_plus, k_minus=k_minus, guesses=k_plus + k_minus, correct=right, m=m,
                       choices=len(ks), significance=significance,
                       ceiling=ceiling(m=m, delta=delta, significance=significance),
                       corrected_ceiling=epsilon_lower_bound(m=m, r=r_max, v=r_max, delta=delta,
                                                             significance=alpha))
