"""Attack metrics: AUC edge cases, TPR at low FPR, Clopper-Pearson, and the DP consistency check."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privspk.audit.metrics import auc_interval, clopper_pearson, dp_check, roc_auc, tpr_at_fpr
from privspk.errors import ConfigError


def test_auc_edges():
    assert roc_auc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
    assert roc_auc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 0.0
    assert roc_auc(np.ones(5), np.ones(7)) == 0.5


@settings(max_examples=30)
@given(st.lists(st.floats(-5, 5), min_size=1, max_size=30), st.lists(st.floats(-5, 5), min_size=1, max_size=30))
def test_auc_matches_the_pairwise_definition(pos, neg):
    p, n = np.array(pos), np.array(neg)
    slow = np.mean([(a > b) + 0.5 * (a == b) for a in p for b in n])
    assert roc_auc(p, n) == pytest.approx(slow, abs=1e-12)


def test_auc_interval_covers_the_truth_of_separated_gaussians():
    rng = np.random.default_rng(4)
    lo, hi = auc_interval(rng.normal(1, 1, 400), rng.normal(0, 1, 400), resamples=300)
    assert lo < 0.760 < hi and hi - lo < 0.1


def test_tpr_at_fpr_respects_the_fpr():
    neg = np.arange(1000, dtype=float)
    pos = np.array([995.5, 998.5, 999.5, 10.0])
    assert tpr_at_fpr(pos, neg, 0.001) == 0.5  # one non-member (999) above the threshold 998
    assert tpr_at_fpr(pos, neg, 0.01) == 0.75


def test_clopper_pearson_contains_the_estimate():
    lo, hi = clopper_pearson(30, 100, confidence=0.95)
    assert lo < 0.3 < hi
    assert clopper_pearson(100, 100, confidence=0.95)[1] == 1.0


def test_dp_check_fails_a_separating_attack_and_passes_chance():
    rng = np.random.default_rng(0)
    sep = dp_check(rng.normal(5, 1, 1000), rng.normal(0, 1, 1000), epsilon=1.0, delta=1e-5)
    assert sep.verdict == "FAIL" and sep.epsilon_lower_bound > 1.0
    chance = dp_check(rng.normal(0, 1, 1000), rng.normal(0, 1, 1000), epsilon=1.0, delta=1e-5)
    assert chance.verdict == "PASS" and chance.epsilon_lower_bound < 0.5
    assert dp_check(rng.normal(5, 1, 100), rng.normal(0, 1, 100), epsilon=None, delta=1e-5).verdict == "NO CLAIM"


def test_dp_check_sees_members_scoring_low_too():
    rng = np.random.default_rng(1)
    res = dp_check(rng.normal(-5, 1, 500), rng.normal(0, 1, 500), epsilon=1.0, delta=1e-5)
    assert res.direction in ("members below", "non-members above") and res.verdict == "FAIL"


def test_bad_scores_are_refused():
    with pytest.raises(ConfigError, match="finite"):
        roc_auc(np.array([np.nan]), np.array([0.0]))
    with pytest.raises(ConfigError, match="fpr"):
        tpr_at_fpr(np.ones(3), np.ones(3), 0.0)
