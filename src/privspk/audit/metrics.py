"""Attack metrics: ROC AUC with a bootstrap interval, TPR at low FPR, and the DP consistency check.

A membership attack on an (epsilon, delta)-DP mechanism cannot beat
``TPR <= e^eps * FPR + delta`` (nor ``1 - FPR <= e^eps (1 - TPR) + delta``)
at any threshold (Kairouz, Oh & Viswanath 2015; Nasr et al. 2021). :func:`dp_check`
turns a threshold's TPR/FPR into an epsilon lower bound with Clopper-Pearson
intervals, choosing the threshold on one half of the scores and measuring it on the
other, so the bound holds at the stated confidence. Numpy and scipy only.

>>> members, others = np.array([3.0, 2.0, 1.5]), np.array([1.0, 0.5, 2.5])
>>> round(roc_auc(members, others), 4)
0.7778
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from privspk.errors import ConfigError


def _check(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pos, neg = np.asarray(pos, dtype=float).ravel(), np.asarray(neg, dtype=float).ravel()
    if pos.size < 1 or neg.size < 1:
        raise ConfigError(f"need at least one member and one non-member score, got {pos.size} and {neg.size}")
    if not (np.all(np.isfinite(pos)) and np.all(np.isfinite(neg))):
        raise ConfigError("attack scores must be finite")
    return pos, neg


def roc_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P[member score > non-member score] + half the ties (the Mann-Whitney statistic).

    >>> roc_auc(np.array([2.0, 3.0]), np.array([0.0, 1.0])), roc_auc(np.array([1.0]), np.array([1.0]))
    (1.0, 0.5)
    """
    from scipy.stats import rankdata

    pos, neg = _check(pos, neg)
    ranks = rankdata(np.concatenate([pos, neg]))
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2
    return float(u / (pos.size * neg.size))


def auc_interval(pos: np.ndarray, neg: np.ndarray, *, confidence: float = 0.95, resamples: int = 1000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of :func:`roc_auc` (members and non-members resampled separately).

    >>> rng = np.random.default_rng(0)
    >>> lo, hi = auc_interval(rng.normal(1, 1, 200), rng.normal(0, 1, 200), resamples=200)
    >>> lo < 0.76 < hi   # the true AUC of N(1,1) vs N(0,1) is Phi(1/sqrt 2) = 0.760
    True
    """
    pos, neg = _check(pos, neg)
    rng = np.random.default_rng(seed)
    aucs = [roc_auc(pos[rng.integers(0, pos.size, pos.size)], neg[rng.integers(0, neg.size, neg.size)])
            for _ in range(resamples)]
    tail = (1 - confidence) / 2
    return float(np.quantile(aucs, tail)), float(np.quantile(aucs, 1 - tail))


def tpr_at_fpr(pos: np.ndarray, neg: np.ndarray, fpr: float) -> float:
    """TPR at the threshold whose FPR is at most ``fpr`` (threshold: the non-members' upper quantile).

    With fewer than ``1 / fpr`` non-members the threshold is above every non-member (FPR 0).

    >>> tpr_at_fpr(np.array([5.0, 4.0, 0.5]), np.arange(100) / 100, 0.01)
    0.6666666666666666
    """
    pos, neg = _check(pos, neg)
    if not 0 < fpr < 1:
        raise ConfigError(f"fpr must be in (0, 1), got {fpr}")
    allowed = int(math.floor(fpr * neg.size))  # non-members allowed above the threshold
    threshold = np.sort(neg)[::-1][allowed] if allowed < neg.size else -np.inf
    return float(np.mean(pos > threshold))


def clopper_pearson(k: int, n: int, *, confidence: float) -> tuple[float, float]:
    """Exact two-sided binomial interval for ``k`` successes in ``n`` trials.

    >>> [round(v, 4) for v in clopper_pearson(0, 10, confidence=0.95)]
    [0.0, 0.3085]
    """
    from scipy.stats import beta

    a = 1 - confidence
    lo = 0.0 if k == 0 else float(beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi


@dataclass(frozen=True)
class DPCheck:
    """The best threshold's epsilon lower bound and whether it contradicts the claimed epsilon.

    ``verdict`` is ``PASS`` (no contradiction), ``FAIL`` (the attack provably beats the
    claimed (epsilon, delta) at the stated confidence), ``NO CLAIM`` (no epsilon applies)
    or ``TOO FEW`` (fewer than 4 scores on a side: nothing can be shown).
    """

    epsilon_lower_bound: float
    claimed_epsilon: float | None
    delta: float
    tpr: float
    fpr: float
    threshold: float
    direction: str
    confidence: float
    verdict: str

    def to_dict(self) -> dict:
        """JSON-able fields."""
        return dict(vars(self))


def _eps_from_rates(tp_lo: float, fp_hi: float, delta: float) -> float:
    if tp_lo - delta <= 0:
        return 0.0
    if fp_hi <= 0:
        return math.inf
    return max(0.0, math.log((tp_lo - delta) / fp_hi))


def dp_check(pos: np.ndarray, neg: np.ndarray, *, epsilon: float | None, delta: float,
             confidence: float = 0.95, seed: int = 0) -> DPCheck:
    """Check ``TPR <= e^eps FPR + delta`` (all four ways round) with a threshold chosen on held-apart scores.

    Half the members and non-members (at random) choose the threshold and direction
    with the largest empirical epsilon; the other half measure it, with Clopper-Pearson
    bounds (TPR from below, FPR from above) at ``confidence``. ``epsilon=None``: no
    claim applies (reported, never FAIL).

    >>> rng = np.random.default_rng(0)
    >>> dp_check(rng.normal(0, 1, 500), rng.normal(0, 1, 500), epsilon=1.0, delta=1e-5).verdict
    'PASS'
    >>> dp_check(np.full(500, 2.0), np.zeros(500), epsilon=1.0, delta=1e-5).verdict
    'FAIL'
    """
    pos, neg = _check(pos, neg)
    if pos.size < 4 or neg.size < 4:  # half of each side must choose, the other half measure
        return DPCheck(epsilon_lower_bound=0.0, claimed_epsilon=epsilon, delta=delta, tpr=float("nan"),
                       fpr=float("nan"), threshold=float("nan"), direction="", confidence=confidence,
                       verdict="TOO FEW")
    rng = np.random.default_rng(seed)
    pp, pn = rng.permutation(pos.size), rng.permutation(neg.size)
    pos_a, pos_b = pos[pp[: pos.size // 2]], pos[pp[pos.size // 2:]]
    neg_a, neg_b = neg[pn[: neg.size // 2]], neg[pn[neg.size // 2:]]
    # DP bounds every event both ways round: "member" may be guessed above or below the
    # threshold, and members and non-members may swap roles
    views = {"members above": (pos_a, neg_a, 1), "members below": (pos_a, neg_a, -1),
             "non-members above": (neg_a, pos_a, 1), "non-members below": (neg_a, pos_a, -1)}
    best = (-1.0, 0.0, "members above")
    for t in np.unique(np.concatenate([pos_a, neg_a])):
        for direction, (p, n, sign) in views.items():
            tp = np.mean(sign * p >= sign * t)
            fp = np.mean(sign * n >= sign * t)
            # a pseudo-count keeps FPR = 0 from looking infinitely good on half the data
            score = math.log((tp + 1 / p.size) / (fp + 1 / n.size))
            if score > best[0]:
                best = (score, float(t), direction)
    _, t, direction = best
    p_b, n_b = (pos_b, neg_b) if direction.startswith("members") else (neg_b, pos_b)
    sign = 1 if direction.endswith("above") else -1
    k_tp, n_tp = int(np.sum(sign * p_b >= sign * t)), p_b.size
    k_fp, n_fp = int(np.sum(sign * n_b >= sign * t)), n_b.size
    # each one-sided bound errs with probability (1 - confidence) / 2 (one tail of a two-sided
    # interval): both hold together with probability >= confidence
    tp_lo, _ = clopper_pearson(k_tp, n_tp, confidence=confidence)
    _, fp_hi = clopper_pearson(k_fp, n_fp, confidence=confidence)
    eps_lb = _eps_from_rates(tp_lo, fp_hi, delta)
    if epsilon is None:
        verdict = "NO CLAIM"
    else:
        verdict = "FAIL" if eps_lb > epsilon else "PASS"
    return DPCheck(epsilon_lower_bound=eps_lb, claimed_epsilon=epsilon, delta=delta, tpr=k_tp / n_tp,
                   fpr=k_fp / n_fp, threshold=t, direction=direction, confidence=confidence, verdict=verdict)
