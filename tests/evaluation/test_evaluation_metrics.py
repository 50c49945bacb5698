"""Tests of privspk.evaluation.metrics against plain brute-force references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privspk.errors import ConfigError
from privspk.evaluation.metrics import det_curve, eer, min_dcf, threshold_at_eer, threshold_at_far, top1_accuracy

# Scores on a coarse grid (many ties) or anywhere in a range.
_score = st.one_of(st.integers(-4, 4).map(float), st.floats(-10, 10, allow_nan=False, allow_infinity=False))
_scores = st.lists(_score, min_size=1, max_size=25)


def rates_at(target, nontarget, threshold):
    """Miss and false-alarm rates at one threshold, written out plainly (accept if score >= threshold)."""
    misses = sum(1 for s in target if s < threshold)
    false_alarms = sum(1 for s in nontarget if s >= threshold)
    return misses / len(target), false_alarms / len(nontarget)


def all_thresholds(target, nontarget):
    return sorted(set(target) | set(nontarget)) + [math.inf]


def brute_eer(target, nontarget):
    """Sweep every threshold, find where the miss rate first reaches the false-alarm rate, interpolate."""
    points = [rates_at(target, nontarget, t) for t in all_thresholds(target, nontarget)]
    for k in range(1, len(points)):
        fnr1, fpr1 = points[k]
        if fnr1 >= fpr1 - 1e-12:
            fnr0, fpr0 = points[k - 1]
            a = (fpr0 - fnr0) / ((fpr0 - fnr0) + (fnr1 - fpr1))
            return fnr0 + a * (fnr1 - fnr0)
    raise AssertionError("no crossing")  # pragma: no cover - rates end at (1, 0)


def brute_min_dcf(target, nontarget, p_target, c_miss=1.0, c_fa=1.0):
    best = math.inf
    for t in all_thresholds(target, nontarget):
        fnr, fpr = rates_at(target, nontarget, t)
        best = min(best, c_miss * p_target * fnr + c_fa * (1 - p_target) * fpr)
    return best / min(c_miss * p_target, c_fa * (1 - p_target))


# ---------------------------------------------------------------------------- edge cases


def test_separated_scores_give_zero_eer_and_zero_min_dcf():
    rng = np.random.default_rng(0)
    target, nontarget = rng.uniform(1, 2, 100), rng.uniform(-1, 0.99, 300)
    assert eer(target, nontarget) == 0.0
    assert min_dcf(target, nontarget) == 0.0
    assert max(nontarget) < threshold_at_eer(target, nontarget) <= min(target)


def test_inverted_scores_give_eer_one_and_min_dcf_one():
    rng = np.random.default_rng(1)
    target, nontarget = rng.uniform(-1, 0, 50), rng.uniform(0.01, 1, 70)
    assert eer(target, nontarget) == 1.0
    assert min_dcf(target, nontarget, p_target=0.05) == 1.0


def test_random_scores_give_eer_near_half():
    rng = np.random.default_rng(2)
    target, nontarget = rng.normal(size=4000), rng.normal(size=4000)
    assert abs(eer(target, nontarget) - 0.5) < 0.03


def test_gaussian_eer_matches_theory():
    # target ~ N(d, 1), nontarget ~ N(0, 1): EER = Phi(-d / 2).
    rng = np.random.default_rng(3)
    d = 2.0
    target, nontarget = rng.normal(d, 1, 40000), rng.normal(0, 1, 40000)
    expected = 0.5 * math.erfc(d / 2 / math.sqrt(2))
    assert abs(eer(target, nontarget) - expected) < 0.006


# ------------------------------------------------------------------------ hand-computed


def test_hand_computed_three_by_three():
    target, nontarget = [0.9, 0.8, 0.3], [0.7, 0.2, 0.1]
    fnr, fpr, thr = det_curve(target, nontarget)
    assert thr[:-1].tolist() == [0.1, 0.2, 0.3, 0.7, 0.8, 0.9]
    assert thr[-1] > 0.9
    np.testing.assert_allclose(fnr, [0, 0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(fpr, [1, 2 / 3, 1 / 3, 1 / 3, 0, 0, 0])
    assert eer(target, nontarget) == pytest.approx(1 / 3)
    assert min_dcf(target, nontarget, p_target=0.5) == pytest.approx(1 / 3)
    # p_target = 0.01: trivial cost 0.01; best is fpr = 0 at fnr = 1/3 -> 0.01/3 / 0.01.
    assert min_dcf(target, nontarget, p_target=0.01) == pytest.approx(1 / 3)
    assert threshold_at_eer(target, nontarget) == pytest.approx(0.25)  # midway between 0.2 and 0.3


def test_hand_computed_unequal_counts():
    # thresholds 0, 1, 1.5, 2, 3, 4: fnr 0, 0, 1/4, 1/4, 2/4, 3/4, 1 and fpr 1, 1/2, 1/2, 0, 0, 0, 0.
    target, nontarget = [1.0, 2.0, 3.0, 4.0], [0.0, 1.5]
    assert eer(target, nontarget) == pytest.approx(0.25)
    assert threshold_at_eer(target, nontarget) == 1.75  # the point at score 2, midway from 1.5
    assert min_dcf(target, nontarget, p_target=0.01) == pytest.approx(0.25)
    # p = 0.5: fnr + fpr over thresholds: 1, .5, .75, .25, ... -> 0.25.
    assert min_dcf(target, nontarget, p_target=0.5) == pytest.approx(0.25)
    assert threshold_at_far(target, nontarget, far=0.5) == 0.5  # score 1, midway from 0
    assert threshold_at_far(target, nontarget, far=0.49) == 1.75
    assert threshold_at_far(target, nontarget, far=1.0) == 0.0  # accept everything


def test_all_tied_scores():
    # One threshold accepts everything (fnr 0, fpr 1); the next rejects everything.
    assert eer([0.5, 0.5], [0.5, 0.5, 0.5]) == 0.5
    assert min_dcf([0.5], [0.5], p_target=0.3) == 1.0
    assert threshold_at_eer([0.5], [0.5]) == 0.5


def test_cost_weights_change_the_normalised_cost():
    target, nontarget = [1.0, 2.0, 3.0, 4.0], [0.0, 1.5]
    # c_miss = 10, p = 0.5: trivial = min(5, 0.5); costs 5*fnr + 0.5*fpr, best 0.25 at threshold 1 -> 0.5.
    assert min_dcf(target, nontarget, p_target=0.5, c_miss=10.0) == pytest.approx(0.5)
    expected = brute_min_dcf(target, nontarget, 0.5, c_fa=3.0)
    assert min_dcf(target, nontarget, p_target=0.5, c_fa=3.0) == pytest.approx(expected)


# ------------------------------------------------------------------ properties vs brute force


@given(_scores, _scores)
@settings(max_examples=120, deadline=None)
def test_det_curve_matches_plain_counts(target, nontarget):
    fnr, fpr, thr = det_curve(target, nontarget)
    assert len(fnr) == len(fpr) == len(thr) == len(set(target) | set(nontarget)) + 1
    assert np.all(np.diff(thr) > 0)
    for f_miss, f_fa, t in zip(fnr, fpr, thr):
        assert (f_miss, f_fa) == pytest.approx(rates_at(target, nontarget, t))
    assert (fnr[0], fpr[0], fnr[-1], fpr[-1]) == (0.0, 1.0, 1.0, 0.0)
    assert np.all(np.diff(fnr) >= 0) and np.all(np.diff(fpr) <= 0)


@given(_scores, _scores)
@settings(max_examples=120, deadline=None)
def test_eer_matches_brute_force_and_lies_between_bounds(target, nontarget):
    value = eer(target, nontarget)
    assert 0.0 <= value <= 1.0
    assert value == pytest.approx(brute_eer(target, nontarget), abs=1e-12)
    points = [rates_at(target, nontarget, t) for t in all_thresholds(target, nontarget)]
    lower = max(min(p) for p in points)  # best "smaller error" over thresholds
    upper = min(max(p) for p in points)  # best "worse error" over thresholds
    assert lower - 1e-12 <= value <= upper + 1e-12


@given(_scores, _scores)
@settings(max_examples=100, deadline=None)
def test_eer_matches_scipy_root_of_the_det_polyline(target, nontarget):
    optimize = pytest.importorskip("scipy.optimize")
    points = np.array([rates_at(target, nontarget, t) for t in all_thresholds(target, nontarget)])
    index = np.arange(len(points), dtype=float)

    def gap(s):  # fnr - fpr along the piecewise-linear DET polyline, parametrised by position
        return np.interp(s, index, points[:, 0]) - np.interp(s, index, points[:, 1])

    root = optimize.brentq(gap, 0.0, index[-1], xtol=1e-14)
    assert eer(target, nontarget) == pytest.approx(np.interp(root, index, points[:, 0]), abs=1e-9)


@given(_scores, _scores, st.floats(0.001, 0.999), st.floats(0.1, 10), st.floats(0.1, 10))
@settings(max_examples=120, deadline=None)
def test_min_dcf_matches_brute_force_and_lies_in_unit_interval(target, nontarget, p_target, c_miss, c_fa):
    value = min_dcf(target, nontarget, p_target=p_target, c_miss=c_miss, c_fa=c_fa)
    assert 0.0 <= value <= 1.0
    assert value == pytest.approx(brute_min_dcf(target, nontarget, p_target, c_miss, c_fa), rel=1e-9, abs=1e-12)


@given(_scores, _scores)
@settings(max_examples=100, deadline=None)
def test_threshold_at_eer_minimises_the_worse_error(target, nontarget):
    thr = threshold_at_eer(target, nontarget)
    assert math.isfinite(thr)
    best = min(max(rates_at(target, nontarget, t)) for t in all_thresholds(target, nontarget))
    assert max(rates_at(target, nontarget, thr)) == pytest.approx(best, abs=1e-12)


@given(_scores, _scores, st.floats(0.0, 1.0))
@settings(max_examples=100, deadline=None)
def test_threshold_at_far_is_the_lowest_meeting_the_rate(target, nontarget, far):
    thr = threshold_at_far(target, nontarget, far=far)
    assert math.isfinite(thr)
    assert rates_at(target, nontarget, thr)[1] <= far + 1e-9
    lower_scores = [s for s in set(target) | set(nontarget) if s < thr]
    if lower_scores:  # the next lower candidate threshold breaks the rate
        assert rates_at(target, nontarget, max(lower_scores))[1] > far


_grid_scores = st.lists(st.integers(-50, 50).map(float), min_size=1, max_size=25)


@given(_grid_scores, _grid_scores)
@settings(max_examples=100, deadline=None)
def test_metrics_are_invariant_to_increasing_transforms(target, nontarget):
    def warp(x):  # strictly increasing, and keeps distinct grid points distinct in floating point
        return np.arctan(np.asarray(x) / 10.0) * 5.0 + 1.0

    assert eer(warp(target), warp(nontarget)) == pytest.approx(eer(target, nontarget), abs=1e-12)
    assert min_dcf(warp(target), warp(nontarget)) == pytest.approx(min_dcf(target, nontarget), abs=1e-12)


# ------------------------------------------------------------------------------ top-1


@given(st.integers(1, 20), st.integers(1, 6), st.integers(0, 2**31 - 1))
@settings(max_examples=50, deadline=None)
def test_top1_accuracy_matches_a_loop(n_items, n_classes, seed):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n_items, n_classes))
    labels = rng.integers(0, n_classes, n_items)
    expected = sum(int(np.argmax(row)) == lab for row, lab in zip(scores.tolist(), labels.tolist())) / n_items
    assert top1_accuracy(scores, labels) == pytest.approx(expected)


# -------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("target", "nontarget", "fragment"),
    [
        ([], [0.1], "target scores are empty"),
        ([0.1], [], "nontarget scores are empty"),
        ([0.1, float("nan")], [0.2], "target scores contain 1 NaN"),
        ([0.1], [0.2, float("nan"), float("nan")], "nontarget scores contain 2 NaN"),
        ([0.1], [float("inf")], "nontarget scores contain 1 NaN/inf"),
        ([[0.1, 0.2]], [0.2], "target scores must be a 1-D array"),
        (["a"], [0.2], "target scores must be numbers"),
    ],
)
@pytest.mark.parametrize("fn", [det_curve, eer, min_dcf, threshold_at_eer])
def test_bad_scores_raise_config_error_naming_the_input(fn, target, nontarget, fragment):
    with pytest.raises(ConfigError, match=fragment):
        fn(target, nontarget)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"p_target": 0.0}, "p_target"),
        ({"p_target": 1.0}, "p_target"),
        ({"c_miss": 0.0}, "c_miss"),
        ({"c_fa": -1.0}, "c_fa"),
        ({"c_fa": float("nan")}, "c_fa"),
    ],
)
def test_bad_costs_raise(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        min_dcf([1.0], [0.0], **kwargs)


@pytest.mark.parametrize("far", [-0.1, 1.5, float("nan"), "0.1"])
def test_bad_far_raises(far):
    with pytest.raises(ConfigError, match="far must be"):
        threshold_at_far([1.0], [0.0], far=far)


@pytest.mark.parametrize(
    ("scores", "labels", "fragment"),
    [
        ([], [], "non-empty"),
        ([[0.1, 0.2]], [0.5], "integer class indices"),
        ([[0.1, 0.2]], [0, 1], "integer class indices"),
        ([[0.1, 0.2]], [2], r"labels must lie in \[0, 1\]"),
        ([[0.1, float("nan")]], [0], "NaN"),
    ],
)
def test_top1_bad_input(scores, labels, fragment):
    with pytest.raises(ConfigError, match=fragment):
        top1_accuracy(scores, labels)
