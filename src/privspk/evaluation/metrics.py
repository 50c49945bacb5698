"""Verification and identification metrics: DET curve, EER, minDCF, thresholds, top-1.

Small pure numpy functions. A trial is *accepted* when its score is greater
than or equal to the threshold; higher scores mean "same speaker".

>>> import numpy as np
>>> target, nontarget = np.array([0.9, 0.8, 0.3]), np.array([0.7, 0.2, 0.1])
>>> round(eer(target, nontarget), 4), round(min_dcf(target, nontarget, p_target=0.5), 4)
(0.3333, 0.3333)
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from privspk.errors import ConfigError

__all__ = [
    "det_curve",
    "eer",
    "min_dcf",
    "threshold_at_eer",
    "threshold_at_far",
    "top1_accuracy",
]


def _scores(values: ArrayLike, name: str) -> np.ndarray:
    """Return ``values`` as a finite, non-empty 1-D float64 array or raise ConfigError naming ``name``."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} scores must be numbers: {exc}") from exc
    if arr.ndim != 1:
        raise ConfigError(f"{name} scores must be a 1-D array, got shape {arr.shape}")
    if arr.size == 0:
        raise ConfigError(f"{name} scores are empty: need at least one {name} trial")
    bad = ~np.isfinite(arr)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ConfigError(
            f"{name} scores contain {int(bad.sum())} NaN/inf value(s) (first at index {first}, "
            f"value {arr[first]}); drop or fix those trials"
        )
    return arr


def _det_counts(target: ArrayLike, nontarget: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Integer miss and false-alarm counts at every threshold of :func:`det_curve`."""
    tgt = _scores(target, "target")
    non = _scores(nontarget, "nontarget")
    values, inverse = np.unique(np.concatenate([tgt, non]), return_inverse=True)
    n_values = values.size
    tgt_counts = np.bincount(inverse[: tgt.size], minlength=n_values)
    non_counts = np.bincount(inverse[tgt.size :], minlength=n_values)
    # Entry i counts the scores strictly below values[i]; the last entry counts all of them.
    misses = np.concatenate([[0], np.cumsum(tgt_counts)])
    false_alarms = non.size - np.concatenate([[0], np.cumsum(non_counts)])
    thresholds = np.concatenate([values, [np.nextafter(values[-1], np.inf)]])
    return misses, false_alarms, thresholds, tgt.size, non.size


def det_curve(target: ArrayLike, nontarget: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact miss and false-alarm rates at every distinct threshold.

    ``thresholds`` are the distinct scores in ascending order followed by one
    value just above the largest score (which rejects every trial). At
    ``thresholds[i]`` the miss rate is ``fnr[i] = #(target < t) / n_target``
    and the false-alarm rate is ``fpr[i] = #(nontarget >= t) / n_nontarget``,
    so tied scores are counted together, never split. ``fnr`` rises from 0
    to 1 and ``fpr`` falls from 1 to 0.

    Args:
        target: scores of same-speaker trials (1-D, finite, non-empty).
        nontarget: scores of different-speaker trials (1-D, finite, non-empty).

    Returns:
        ``(fnr, fpr, thresholds)``, three float64 arrays of equal length.

    >>> fnr, fpr, thr = det_curve([0.9, 0.5], [0.5, 0.1])
    >>> fnr.tolist(), fpr.tolist(), thr[:3].tolist()
    ([0.0, 0.0, 0.5, 1.0], [1.0, 0.5, 0.0, 0.0], [0.1, 0.5, 0.9])
    """
    misses, false_alarms, thresholds, n_target, n_nontarget = _det_counts(target, nontarget)
    return misses / n_target, false_alarms / n_nontarget, thresholds


def _crossing(misses: np.ndarray, false_alarms: np.ndarray, n_target: int, n_nontarget: int) -> int:
    """Index of the first DET point where the miss rate reaches the false-alarm rate (always >= 1).

    Compared on integers (``misses / n_target >= false_alarms / n_nontarget``) so that
    equal rates are equal, whatever floating-point division would round them to.
    """
    return int(np.argmax(misses * n_nontarget >= false_alarms * n_target))


def eer(target: ArrayLike, nontarget: ArrayLike) -> float:
    """Equal error rate: where the miss rate equals the false-alarm rate.

    The DET points just before and at the crossing are joined by a straight
    line and the EER is read where that line meets ``fnr == fpr``. Perfectly
    separated scores give 0, perfectly inverted scores give 1.

    >>> round(eer([0.9, 0.8, 0.3], [0.7, 0.2, 0.1]), 4)
    0.3333
    >>> eer([2.0, 3.0], [0.0, 1.0]), eer([0.0, 1.0], [2.0, 3.0])
    (0.0, 1.0)
    """
    misses, false_alarms, _, n_target, n_nontarget = _det_counts(target, nontarget)
    i = _crossing(misses, false_alarms, n_target, n_nontarget)
    fnr0, fnr1 = misses[i - 1] / n_target, misses[i] / n_target
    fpr0, fpr1 = false_alarms[i - 1] / n_nontarget, false_alarms[i] / n_nontarget
    gap_before = fpr0 - fnr0  # > 0
    gap_after = fnr1 - fpr1  # >= 0
    frac = gap_before / (gap_before + gap_after)
    return float(fnr0 + frac * (fnr1 - fnr0))


def _check_dcf_costs(p_target: float, c_miss: float, c_fa: float) -> None:
    if not 0.0 < p_target < 1.0:
        raise ConfigError(f"p_target must lie strictly between 0 and 1, got {p_target!r}")
    for name, cost in (("c_miss", c_miss), ("c_fa", c_fa)):
        if not (np.isfinite(cost) and cost > 0):
            raise ConfigError(f"{name} must be a positive finite cost, got {cost!r}")


def min_dcf(
    target: ArrayLike,
    nontarget: ArrayLike,
    *,
    p_target: float = 0.01,
    c_miss: float = 1.0,
    c_fa: float = 1.0,
) -> float:
    """Minimum normalised detection cost over all thresholds (NIST SRE style).

    ``DCF(t) = c_miss * p_target * fnr(t) + c_fa * (1 - p_target) * fpr(t)``,
    divided by the cost of the best system that ignores the scores
    (``min(c_miss * p_target, c_fa * (1 - p_target))``). Accept-all and
    reject-all are among the thresholds, so the result lies in ``[0, 1]``.

    >>> round(min_dcf([0.9, 0.8, 0.3], [0.7, 0.2, 0.1], p_target=0.5), 4)
    0.3333
    >>> min_dcf([0.0, 1.0], [2.0, 3.0], p_target=0.01)
    1.0
    """
    _check_dcf_costs(p_target, c_miss, c_fa)
    fnr, fpr, _ = det_curve(target, nontarget)
    cost = c_miss * p_target * fnr + c_fa * (1.0 - p_target) * fpr
    trivial = min(c_miss * p_target, c_fa * (1.0 - p_target))
    return float(min(cost.min() / trivial, 1.0))


def _gap_below(thresholds: np.ndarray, j: int) -> float:
    """A threshold deciding every score like ``thresholds[j]``, in the middle of the gap below it.

    Scores lie only at ``thresholds[:-1]``, so any value in ``(thresholds[j-1], thresholds[j]]``
    accepts and rejects the same trials; the middle leaves equal room on both sides for new scores.
    The first threshold (accept all) and the last (reject all, just above the top score) are kept.
    """
    if j == 0 or j == thresholds.size - 1:
        return float(thresholds[j])
    lower, upper = float(thresholds[j - 1]), float(thresholds[j])
    middle = lower / 2 + upper / 2
    return middle if lower < middle <= upper else upper


def threshold_at_eer(target: ArrayLike, nontarget: ArrayLike) -> float:
    """Threshold of the operating point closest to the EER.

    Of the two DET points that bracket the crossing, picks the one whose worse
    error rate, ``max(fnr, fpr)``, is smaller (the lower threshold on a tie);
    no threshold has a smaller ``max(fnr, fpr)`` on these scores. The value
    returned lies midway between that point's score and the next lower score,
    so it makes the same decisions on these scores with the widest margin.

    >>> threshold_at_eer([0.9, 0.8, 0.3], [0.7, 0.2, 0.1])  # between 0.2 and 0.3
    0.25
    >>> threshold_at_eer([2.0, 3.0], [0.0, 1.0])
    1.5
    """
    misses, false_alarms, thresholds, n_target, n_nontarget = _det_counts(target, nontarget)
    i = _crossing(misses, false_alarms, n_target, n_nontarget)
    # max(fnr, fpr) compared exactly, as fractions over the common denominator n_target * n_nontarget.
    worse_before = max(misses[i - 1] * n_nontarget, false_alarms[i - 1] * n_target)
    worse_after = max(misses[i] * n_nontarget, false_alarms[i] * n_target)
    return _gap_below(thresholds, i if worse_after < worse_before else i - 1)


def threshold_at_far(target: ArrayLike, nontarget: ArrayLike, *, far: float) -> float:
    """Lowest threshold whose false-alarm rate is at most ``far``.

    The lowest such threshold also has the lowest miss rate among them. Like
    :func:`threshold_at_eer` the value lies midway in the gap below the score
    that first meets the rate; with ``far=0`` it lies above the highest
    nontarget score.

    Args:
        target: same-speaker scores (they refine where the gaps between scores are).
        nontarget: different-speaker scores.
        far: the largest acceptable false-alarm rate, in ``[0, 1]``.

    >>> threshold_at_far([0.9, 0.8, 0.3], [0.7, 0.2, 0.1], far=1 / 3)  # one false alarm: 0.7
    0.25
    >>> threshold_at_far([0.9, 0.8, 0.3], [0.7, 0.2, 0.1], far=0.0)
    0.75
    """
    if isinstance(far, bool) or not (isinstance(far, (int, float)) and 0.0 <= far <= 1.0):
        raise ConfigError(f"far must be a false-alarm rate in [0, 1], got {far!r}")
    _, false_alarms, thresholds, _, n_nontarget = _det_counts(target, nontarget)
    # Counts fall to 0, so some index qualifies; the slack keeps far=1/3 with 3 nontargets at 1 alarm.
    j = int(np.argmax(false_alarms <= far * n_nontarget * (1.0 + 1e-9)))
    return _gap_below(thresholds, j)


def top1_accuracy(scores: ArrayLike, labels: ArrayLike) -> float:
    """Fraction of rows whose highest-scoring column is the true class.

    Args:
        scores: ``(n_items, n_classes)`` similarity of each item to each class.
        labels: ``(n_items,)`` integer index of each item's true class.

    >>> top1_accuracy([[0.9, 0.1], [0.2, 0.7], [0.6, 0.4]], [0, 1, 1])
    0.6666666666666666
    """
    try:
        mat = np.asarray(scores, dtype=np.float64)
        lab = np.asarray(labels)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"scores must be a numeric matrix: {exc}") from exc
    if mat.ndim != 2 or mat.shape[0] == 0 or mat.shape[1] == 0:
        raise ConfigError(f"scores must be a non-empty (n_items, n_classes) matrix, got shape {mat.shape}")
    if np.isnan(mat).any():
        raise ConfigError(f"scores contain {int(np.isnan(mat).sum())} NaN value(s); fix the embeddings first")
    if lab.shape != (mat.shape[0],) or not np.issubdtype(lab.dtype, np.integer):
        raise ConfigError(
            f"labels must be {mat.shape[0]} integer class indices (one per row of scores), "
            f"got shape {lab.shape} dtype {lab.dtype}"
        )
    if lab.min() < 0 or lab.max() >= mat.shape[1]:
        raise ConfigError(f"labels must lie in [0, {mat.shape[1] - 1}], got range [{lab.min()}, {lab.max()}]")
    return float(np.mean(np.argmax(mat, axis=1) == lab))
