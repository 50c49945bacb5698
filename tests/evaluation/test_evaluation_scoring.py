"""Tests of privspk.evaluation.scoring against plain loops."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privspk.errors import ConfigError
from privspk.evaluation.metrics import eer, min_dcf
from privspk.evaluation.scoring import (
    EvalResult,
    as_norm,
    closed_set_top1,
    cohort_scores,
    cosine_scores,
    evaluate,
    evaluate_scores,
)
from privspk.evaluation.trials import make_trials


def clustered(n_speakers, n_utts, dim, spread, seed):
    """Embeddings around one random centre per speaker."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_speakers, dim))
    emb, utt2spk = {}, {}
    for s in range(n_speakers):
        for u in range(n_utts):
            key = f"s{s}-u{u}"
            emb[key] = centres[s] + spread * rng.normal(size=dim)
            utt2spk[key] = f"s{s}"
    return emb, utt2spk


def plain_cosine(a, b):
    a, b = list(map(float, a)), list(map(float, b))
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a)) / math.sqrt(sum(y * y for y in b))


def test_cosine_scores_match_plain_formula():
    emb, utt2spk = clustered(4, 3, 6, 0.5, 0)
    trials = make_trials(utt2spk, all_pairs=True)
    scores = cosine_scores(emb, trials)
    expected = [plain_cosine(emb[t.enroll], emb[t.test]) for t in trials]
    np.testing.assert_allclose(scores, expected, atol=1e-12)
    np.testing.assert_allclose(cosine_scores(emb, [(t.enroll, t.test) for t in trials]), scores)
    assert cosine_scores(emb, []).shape == (0,)


def test_cosine_scores_missing_and_bad_embeddings():
    emb = {"a": np.ones(3), "b": np.ones(3), "c": np.ones(2), "n": np.array([1.0, np.nan, 0.0])}
    with pytest.raises(ConfigError, match=r"no embedding for 2 utterance\(s\): 'x', 'y'; embed them first"):
        cosine_scores(emb, [("a", "x"), ("y", "b")])
    with pytest.raises(ConfigError, match="one length"):
        cosine_scores(emb, [("a", "c")])
    with pytest.raises(ConfigError, match="embedding of 'n' contains NaN"):
        cosine_scores(emb, [("a", "n")])


def plain_as_norm(score, enroll_row, test_row, top_n):
    def stats(row):
        top = sorted(row, reverse=True)[:top_n]
        mean = sum(top) / len(top)
        std = math.sqrt(sum((x - mean) ** 2 for x in top) / len(top))
        return mean, max(std, 1e-8)

    me, se = stats(enroll_row)
    mt, st_ = stats(test_row)
    return 0.5 * ((score - me) / se + (score - mt) / st_)


@given(st.integers(1, 6), st.integers(1, 12), st.data())
@settings(max_examples=60, deadline=None)
def test_as_norm_matches_plain_loop(n_trials, n_cohort, data):
    top_n = data.draw(st.integers(1, n_cohort))
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    scores = rng.uniform(-1, 1, n_trials)
    enr, tst = rng.uniform(-1, 1, (n_trials, n_cohort)), rng.uniform(-1, 1, (n_trials, n_cohort))
    out = as_norm(scores, enr, tst, top_n)
    expected = [plain_as_norm(s, e, t, top_n) for s, e, t in zip(scores, enr, tst)]
    np.testing.assert_allclose(out, expected, rtol=1e-9, atol=1e-6)


@given(st.floats(-5, 5), st.floats(0.1, 10), st.integers(0, 1000))
@settings(max_examples=40, deadline=None)
def test_as_norm_is_invariant_to_shift_and_scale(shift, scale, seed):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=4)
    enr, tst = rng.normal(size=(4, 9)), rng.normal(size=(4, 9))
    base = as_norm(scores, enr, tst, 5)
    moved = as_norm(scale * scores + shift, scale * enr + shift, scale * tst + shift, 5)
    np.testing.assert_allclose(moved, base, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (([0.1], [[0.1, 0.2]], [[0.1, 0.2]], 3), r"top_n must be an int in \[1, 2\]"),
        (([0.1], [[0.1, 0.2]], [[0.1, 0.2]], 0), "top_n"),
        (([0.1], [[0.1, 0.2]], [[0.1, 0.2, 0.3]], 1), "differ in shape"),
        (([0.1, 0.2], [[0.1, 0.2]], [[0.1, 0.2]], 1), r"enroll_cohort_scores must have shape \(2, C\)"),
        (([[0.1]], [[0.1]], [[0.1]], 1), "scores must be 1-D"),
        (([np.nan], [[0.1]], [[0.1]], 1), "scores contain NaN"),
    ],
)
def test_as_norm_bad_input(args, fragment):
    with pytest.raises(ConfigError, match=fragment):
        as_norm(*args)


def test_cohort_scores_and_evaluate_with_cohort_compose():
    emb, utt2spk = clustered(6, 4, 8, 0.8, 1)
    cohort = np.random.default_rng(2).normal(size=(15, 8))
    trials = make_trials(utt2spk, n_target_per_utt=2, n_nontarget_per_utt=3, seed=0)
    enr = cohort_scores(emb, [t.enroll for t in trials], cohort)
    tst = cohort_scores(emb, [t.test for t in trials], cohort)
    assert enr.shape == (len(trials), 15)
    assert enr[0, 3] == pytest.approx(plain_cosine(emb[trials[0].enroll], cohort[3]))
    normed = as_norm(cosine_scores(emb, trials), enr, tst, 5)
    labels = np.array([t.target for t in trials])
    result = evaluate(emb, trials, cohort=cohort, top_n=5)
    assert result.eer == pytest.approx(eer(normed[labels], normed[~labels]))
    snorm = as_norm(cosine_scores(emb, trials), enr, tst, 15)
    assert evaluate(emb, trials, cohort=cohort).eer == pytest.approx(eer(snorm[labels], snorm[~labels]))


def test_cohort_scores_bad_cohort():
    emb = {"a": np.ones(3)}
    with pytest.raises(ConfigError, match="cohort must be a finite, non-empty"):
        cohort_scores(emb, ["a"], np.zeros((0, 3)))
    with pytest.raises(ConfigError, match="cohort embeddings have dimension 2 but the trials' have 3"):
        cohort_scores(emb, ["a"], np.ones((4, 2)))


def test_evaluate_matches_metrics_on_cosine_scores():
    emb, utt2spk = clustered(8, 5, 16, 1.2, 3)
    trials = make_trials(utt2spk, n_target_per_utt=3, n_nontarget_per_utt=5, seed=1)
    result = evaluate(emb, trials)
    scores = np.array([plain_cosine(emb[t.enroll], emb[t.test]) for t in trials])
    labels = np.array([t.target for t in trials])
    assert result.eer == pytest.approx(eer(scores[labels], scores[~labels]))
    assert result.min_dcf == pytest.approx(
        {p: min_dcf(scores[labels], scores[~labels], p_target=p) for p in (0.01, 0.05)}
    )
    assert (result.n_target, result.n_nontarget) == (int(labels.sum()), int((~labels).sum()))
    assert 0.0 < result.eer < 0.5  # the clusters overlap but are far from random
    json.dumps(result.to_dict())  # JSON-ready


def test_evaluate_scores_needs_both_kinds_and_valid_priors():
    with pytest.raises(ConfigError, match="got 2 target and 0 nontarget"):
        evaluate_scores([0.1, 0.2], [True, True])
    with pytest.raises(ConfigError, match="boolean array"):
        evaluate_scores([0.1, 0.2], [1, 0])
    with pytest.raises(ConfigError, match="p_targets"):
        evaluate_scores([0.1, 0.2], [True, False], p_targets=(0.0,))
    with pytest.raises(ConfigError, match="p_targets"):
        evaluate_scores([0.1, 0.2], [True, False], p_targets=())
    with pytest.raises(ConfigError, match="Trial objects"):
        evaluate({"a": np.ones(2)}, [("a", "a")])


def test_eval_result_string():
    r = EvalResult(eer=0.0123, min_dcf={0.01: 0.25, 0.05: 0.125}, n_target=3, n_nontarget=4, threshold_eer=0.5)
    assert str(r) == "EER 1.23 % | minDCF(0.01) 0.2500 | minDCF(0.05) 0.1250 | 3 target / 4 nontarget trials"


# ------------------------------------------------------------------------ closed-set top-1


def plain_top1(emb, utt2spk, k, seed):
    """The same procedure written with loops (same rng draws: one permutation per sorted speaker)."""
    rng = np.random.default_rng(seed)
    speakers = sorted(set(utt2spk.values()))
    centroids, tests = {}, []
    for spk in speakers:
        utts = sorted(u for u in utt2spk if utt2spk[u] == spk)
        order = rng.permutation(len(utts))
        enroll = [utts[i] for i in order[:k]]
        tests += [(utts[i], spk) for i in order[k:]]
        mean = sum(np.asarray(emb[u]) / np.linalg.norm(emb[u]) for u in enroll) / k
        centroids[spk] = mean
    correct = 0
    for utt, spk in tests:
        best = max(speakers, key=lambda s: plain_cosine(emb[utt], centroids[s]))
        correct += best == spk
    return correct / len(tests)


@given(st.integers(2, 6), st.integers(2, 5), st.integers(1, 2), st.floats(0.2, 3.0), st.integers(0, 10**6))
@settings(max_examples=40, deadline=None)
def test_closed_set_top1_matches_plain_loop(n_speakers, n_utts, k, spread, seed):
    emb, utt2spk = clustered(n_speakers, max(n_utts, k + 1), 6, spread, seed)
    value = closed_set_top1(emb, utt2spk, enroll_per_speaker=k, seed=seed)
    assert value == pytest.approx(plain_top1(emb, utt2spk, k, seed))
    assert 0.0 <= value <= 1.0


def test_closed_set_top1_separated_and_random():
    emb, utt2spk = clustered(10, 6, 32, 0.05, 4)
    assert closed_set_top1(emb, utt2spk, enroll_per_speaker=2, seed=0) == 1.0
    rng = np.random.default_rng(5)
    noise = {u: rng.normal(size=32) for u in emb}
    assert closed_set_top1(noise, utt2spk, enroll_per_speaker=2, seed=0) < 0.4  # chance is 0.1


def test_closed_set_top1_speaker_with_exactly_k_is_a_distractor():
    emb = {"a1": [1.0, 0.0], "a2": [1.0, 0.1], "b1": [0.0, 1.0]}
    # b has one utterance: enrolled, never tested; a2 is nearer a's centroid.
    assert closed_set_top1(emb, {"a1": "A", "a2": "A", "b1": "B"}, enroll_per_speaker=1) == 1.0


@pytest.mark.parametrize(
    ("utt2spk", "kwargs", "fragment"),
    [
        ({"a1": "A", "b1": "B"}, {"enroll_per_speaker": 2}, "fewer than 2 utterances"),
        ({"a1": "A", "b1": "B"}, {"enroll_per_speaker": 1}, "no test utterances left"),
        ({"a1": "A", "a2": "A"}, {"enroll_per_speaker": 0}, "enroll_per_speaker must be a positive int"),
        ({"a1": "A", "a2": "A"}, {"enroll_per_speaker": 1, "seed": 1.0}, "seed must be an int"),
        ({}, {"enroll_per_speaker": 1}, "utt2spk is empty"),
        ({"a1": "A", "zz": "A"}, {"enroll_per_speaker": 1}, "no embedding for 1 utterance"),
    ],
)
def test_closed_set_top1_bad_input(utt2spk, kwargs, fragment):
    emb = {"a1": [1.0, 0.0], "a2": [0.9, 0.1], "b1": [0.0, 1.0]}
    with pytest.raises(ConfigError, match=fragment):
        closed_set_top1(emb, utt2spk, **kwargs)
