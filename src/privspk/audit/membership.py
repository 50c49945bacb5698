"""Membership inference on a released speaker encoder.

What a speaker encoder memorises from training is *compactness*: the utterances of
a training speaker are pulled towards that speaker's class centre, so they sit
closer to each other than the utterances of a speaker never trained on. The score
of an utterance is its cosine with the centroid of its speaker's *other* utterances
(leave one out) under the released encoder, minus the same cosine under the public
pretrained encoder (the reference model the attacker also has; it removes how
compact a voice is anyway - the calibration of Carlini et al.'s LiRA / Watson et
al.'s difficulty calibration in its simplest form). A speaker's score is the mean
of its utterances' scores. Members: the clients' training utterances (speakers);
non-members: comparable utterances (speakers) the run never trained on.

Metrics (:mod:`privspk.audit.metrics`): AUC with a bootstrap interval, TPR at 1 % and
0.1 % FPR, and the check ``TPR <= e^eps FPR + delta`` at the run's epsilon. The check
is meaningful only for the unit the epsilon protects: at utterance level for
utterance-level DP, at speaker level for speaker-level DP (a speaker's many
utterances under utterance-level DP are protected only by group privacy, so no
claim applies there).

>>> rng = np.random.default_rng(0)
>>> emb = {f"s{s}_{u}": rng.normal(size=8) for s in range(4) for u in range(3)}
>>> utt2spk = {u: u.split("_")[0] for u in emb}
>>> scores = centroid_scores(emb, utt2spk)
>>> len(scores), -1.0 <= min(scores.values()) <= max(scores.values()) <= 1.0
(12, True)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from privspk.audit.metrics import DPCheck, auc_interval, dp_check, roc_auc, tpr_at_fpr
from privspk.errors import ConfigError

FPRS = (0.01, 0.001)


def centroid_scores(emb: Mapping[str, np.ndarray], utt2spk: Mapping[str, str]) -> dict[str, float]:
    """Cosine of each utterance's embedding with the mean of its speaker's other utterances' embeddings.

    Utterances of a speaker with a single utterance get no score.
    """
    by_spk: dict[str, list[str]] = {}
    for utt in emb:
        if utt not in utt2spk:
            raise ConfigError(f"utterance {utt!r} has no speaker")
        by_spk.setdefault(utt2spk[utt], []).append(utt)
    out: dict[str, float] = {}
    for utts in by_spk.values():
        if len(utts) < 2:
            continue
        x = np.stack([np.asarray(emb[u], dtype=float) for u in utts])
        x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-12
        total = x.sum(0)
        for i, utt in enumerate(utts):
            centre = (total - x[i]) / (len(utts) - 1)
            out[utt] = float(x[i] @ centre / (np.linalg.norm(centre) + 1e-12))
    return out


def calibrated_scores(released: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray],
                      utt2spk: Mapping[str, str]) -> dict[str, float]:
    """Centroid score under the released encoder minus under the reference (public) encoder.

    >>> emb = {"a_1": np.array([1.0, 0.0]), "a_2": np.array([0.0, 1.0])}
    >>> calibrated_scores(emb, emb, {"a_1": "a", "a_2": "a"})
    {'a_1': 0.0, 'a_2': 0.0}
    """
    rel, ref = centroid_scores(released, utt2spk), centroid_scores(reference, utt2spk)
    return {u: rel[u] - ref[u] for u in rel if u in ref}


def speaker_scores(utt_scores: Mapping[str, float], utt2spk: Mapping[str, str]) -> dict[str, float]:
    """Mean utterance score per speaker.

    >>> speaker_scores({"a_1": 1.0, "a_2": 0.0, "b_1": 2.0}, {"a_1": "a", "a_2": "a", "b_1": "b"})
    {'a': 0.5, 'b': 2.0}
    """
    acc: dict[str, list[float]] = {}
    for u, s in utt_scores.items():
        acc.setdefault(utt2spk[u], []).append(s)
    return {s: float(np.mean(v)) for s, v in acc.items()}


@dataclass(frozen=True)
class MembershipResult:
    """One attack at one level (utterance or speaker) on one encoder."""

    level: str
    members: int
    nonmembers: int
    auc: float
    auc_low: float
    auc_high: float
    tpr_at_fpr: dict[str, float]
    check: DPCheck
    member_scores: tuple[float, ...]
    nonmember_scores: tuple[float, ...]

    def to_dict(self, *, with_scores: bool = False) -> dict:
        """JSON-able summary (scores only when asked: they can be long)."""
        d = {"level": self.level, "members": self.members, "nonmembers": self.nonmembers, "auc": self.auc,
             "auc_ci95": [self.auc_low, self.auc_high], "tpr_at_fpr": self.tpr_at_fpr,
             "dp_check": self.check.to_dict()}
        if with_scores:
            d["member_scores"] = list(self.member_scores)
            d["nonmember_scores"] = list(self.nonmember_scores)
        return d


def evaluate_attack(
    member_scores: Iterable[float], nonmember_scores: Iterable[float], *, level: str,
    epsilon: float | None, delta: float, resamples: int = 1000, seed: int = 0,
) -> MembershipResult:
    """AUC (bootstrap 95 % interval), TPR at 1 % / 0.1 % FPR and the DP check of one attack.

    >>> rng = np.random.default_rng(1)
    >>> res = evaluate_attack(rng.normal(size=300), rng.normal(size=300), level="utterance",
    ...                       epsilon=8.0, delta=1e-5, resamples=200)
    >>> res.auc_low < 0.5 < res.auc_high, res.check.verdict
    (True, 'PASS')
    """
    pos = np.asarray(list(member_scores), dtype=float)
    neg = np.asarray(list(nonmember_scores), dtype=float)
    auc = roc_auc(pos, neg)
    lo, hi = auc_interval(pos, neg, resamples=resamples, seed=seed)
    tprs = {f"{f:g}": tpr_at_fpr(pos, neg, f) for f in FPRS}
    check = dp_check(pos, neg, epsilon=epsilon, delta=delta, seed=seed)
    return MembershipResult(level=level, members=int(pos.size), nonmembers=int(neg.size), auc=auc, auc_low=lo,
                            auc_high=hi, tpr_at_fpr=tprs, check=check, member_scores=tuple(pos.tolist()),
                            nonmember_scores=tuple(neg.tolist()))


def membership_attack(
    released: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], utt2spk: Mapping[str, str], *,
    members: Iterable[str], nonmembers: Iterable[str], unit: str | None, epsilon: float | None, delta: float,
    resamples: int = 1000, seed: int = 0,
) -> dict[str, MembershipResult]:
    """Utterance- and speaker-level attacks; ``members``/``nonmembers`` are utterance ids.

    ``unit`` is the privacy unit of the run's epsilon (``utterance``/``speaker``, or None
    for a non-private run): the DP check runs at that level only.
    """
    members, nonmembers = list(members), list(nonmembers)
    overlap = set(members) & set(nonmembers)
    if overlap:
        raise ConfigError(f"{len(overlap)} utterances are both members and non-members, e.g. {sorted(overlap)[:3]}")
    scores = calibrated_scores(released, reference, utt2spk)
    out = {}
    for level in ("utterance", "speaker"):
        if level == "utterance":
            pos = [scores[u] for u in members if u in scores]
            neg = [scores[u] for u in nonmembers if u in scores]
        else:
            spk = speaker_scores(scores, utt2spk)
            pos = [spk[s] for s in sorted({utt2spk[u] for u in members}) if s in spk]
            neg = [spk[s] for s in sorted({utt2spk[u] for u in nonmembers}) if s in spk]
        eps = epsilon if unit == level else None
        out[level] = evaluate_attack(pos, neg, level=level, epsilon=eps, delta=delta, resamples=resamples,
                                     seed=seed)
    return out
