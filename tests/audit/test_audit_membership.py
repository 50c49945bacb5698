"""Membership inference: chance on exchangeable members/non-members, found when members are memorised."""

import numpy as np
import pytest

from privspk.audit.membership import calibrated_scores, centroid_scores, membership_attack
from privspk.errors import ConfigError


def synthetic_embeddings(seed: int, *, n_spk: int = 60, n_utt: int = 10, dim: int = 32, pull: float = 0.0,
                         members: set | None = None):
    """Speakers with their own spread; the 'released' encoder pulls member speakers towards their centre."""
    rng = np.random.default_rng(seed)
    reference, released, utt2spk = {}, {}, {}
    for s in range(n_spk):
        spk = f"spk{s:03d}"
        centre = rng.normal(size=dim)
        spread = rng.uniform(0.5, 2.0)
        for u in range(n_utt):
            utt = f"{spk}_{u}"
            x = centre + spread * rng.normal(size=dim)
            reference[utt] = x
            shrink = pull if members is not None and spk in members else 0.0
            released[utt] = (1 - shrink) * x + shrink * centre + 0.3 * rng.normal(size=dim)
            utt2spk[utt] = spk
    return released, reference, utt2spk


def test_leave_one_out_centroid_score():
    emb = {"a_1": np.array([1.0, 0.0]), "a_2": np.array([1.0, 0.0]), "a_3": np.array([0.0, 1.0]),
           "b_1": np.array([1.0, 1.0])}
    s = centroid_scores(emb, {"a_1": "a", "a_2": "a", "a_3": "a", "b_1": "b"})
    assert s["a_3"] == pytest.approx(0.0, abs=1e-9)
    assert s["a_1"] == pytest.approx(1 / np.sqrt(2), abs=1e-9)
    assert "b_1" not in s  # a single utterance has no other utterances to compare with


def test_exchangeable_members_and_nonmembers_give_chance():
    """Nothing distinguishes members: AUC ~ 0.5 with 0.5 in its interval, and the check passes at eps = 1."""
    released, reference, utt2spk = synthetic_embeddings(0)
    speakers = sorted(set(utt2spk.values()))
    rng = np.random.default_rng(1)
    chosen = set(rng.choice(speakers, size=30, replace=False))
    mem = [u for u, s in utt2spk.items() if s in chosen]
    non = [u for u, s in utt2spk.items() if s not in chosen]
    res = membership_attack(released, reference, utt2spk, members=mem, nonmembers=non, unit="utterance",
                            epsilon=1.0, delta=1e-5, resamples=300)
    utt = res["utterance"]
    assert utt.auc == pytest.approx(0.5, abs=0.06) and utt.auc_low < 0.5 < utt.auc_high
    assert utt.check.verdict == "PASS"
    assert res["speaker"].check.verdict == "NO CLAIM"  # utterance-level epsilon says nothing per speaker


def test_memorised_members_are_found_and_a_small_epsilon_is_refuted():
    members = {f"spk{s:03d}" for s in range(0, 60, 2)}
    released, reference, utt2spk = synthetic_embeddings(2, pull=0.6, members=members)
    mem = [u for u, s in utt2spk.items() if s in members]
    non = [u for u, s in utt2spk.items() if s not in members]
    res = membership_attack(released, reference, utt2spk, members=mem, nonmembers=non, unit="speaker",
                            epsilon=0.5, delta=1e-5, resamples=300)
    assert res["utterance"].auc > 0.9 and res["speaker"].auc > 0.95
    assert res["utterance"].tpr_at_fpr["0.01"] > 0.3
    assert res["speaker"].check.verdict == "FAIL"


def test_calibration_removes_what_the_reference_already_shows():
    released, _, utt2spk = synthetic_embeddings(3)
    assert set(calibrated_scores(released, released, utt2spk).values()) == {0.0}


def test_an_utterance_cannot_be_both():
    released, reference, utt2spk = synthetic_embeddings(4, n_spk=4)
    u = next(iter(utt2spk))
    with pytest.raises(ConfigError, match="both members and non-members"):
        membership_attack(released, reference, utt2spk, members=[u], nonmembers=[u], unit=None, epsilon=None,
                          delta=1e-5)
