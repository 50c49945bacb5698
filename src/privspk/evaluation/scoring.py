"""Cosine scoring of trials, adaptive score normalisation, and the evaluation summaries.

>>> import numpy as np
>>> from privspk.evaluation.trials import Trial
>>> emb = {"a1": np.array([1.0, 0.0]), "a2": np.array([0.9, 0.1]), "b1": np.array([0.0, 1.0])}
>>> trials = [Trial("a1", "a2", True), Trial("a1", "b1", False), Trial("a2", "b1", False)]
>>> result = evaluate(emb, trials)
>>> result.eer, result.n_target, result.n_nontarget
(0.0, 1, 2)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from privspk.errors import ConfigError
from privspk.evaluation.embed import l2_normalise
from privspk.evaluation.metrics import eer, min_dcf, threshold_at_eer, top1_accuracy
from privspk.evaluation.trials import Trial

__all__ = [
    "EvalResult",
    "as_norm",
    "closed_set_top1",
    "cohort_scores",
    "cosine_scores",
    "evaluate",
    "evaluate_scores",
]

log = logging.getLogger(__name__)

Pair = tuple[str, str]


@dataclass(frozen=True)
class EvalResult:
    """Open-set verification results on one trial list.

    ``min_dcf`` maps each ``p_target`` to its minimum normalised DCF;
    ``threshold_eer`` is the score threshold nearest the EER (accept if ``>=``).

    >>> r = EvalResult(eer=0.05, min_dcf={0.01: 0.4}, n_target=10, n_nontarget=90, threshold_eer=0.3)
    >>> str(r)
    'EER 5.00 % | minDCF(0.01) 0.4000 | 10 target / 90 nontarget trials'
    >>> r.to_dict()["min_dcf"]
    {'0.01': 0.4}
    """

    eer: float
    min_dcf: dict[float, float]
    n_target: int
    n_nontarget: int
    threshold_eer: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``min_dcf`` keys become strings).

        >>> EvalResult(eer=0.1, min_dcf={0.05: 0.5}, n_target=2, n_nontarget=8, threshold_eer=0.4).to_dict()["eer"]
        0.1
        """
        return {
            "eer": self.eer,
            "min_dcf": {repr(p): v for p, v in self.min_dcf.items()},
            "n_target": self.n_target,
            "n_nontarget": self.n_nontarget,
            "threshold_eer": self.threshold_eer,
        }

    def __str__(self) -> str:
        dcfs = " | ".join(f"minDCF({p:g}) {v:.4f}" for p, v in self.min_dcf.items())
        return (
            f"EER {100 * self.eer:.2f} % | {dcfs} | "
            f"{self.n_target} target / {self.n_nontarget} nontarget trials"
        )


def _matrix(embeddings: Mapping[str, ArrayLike], names: Sequence[str]) -> np.ndarray:
    """Unit-length rows of ``embeddings`` for ``names`` (ConfigError naming the missing ids)."""
    missing = sorted({n for n in names if n not in embeddings})
    if missing:
        shown = ", ".join(repr(m) for m in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ConfigError(f"no embedding for {len(missing)} utterance(s): {shown}{more}; embed them first")
    if not names:
        return np.zeros((0, 0))
    rows = [np.asarray(embeddings[n], dtype=np.float64) for n in names]
    dims = {r.shape for r in rows}
    if len(dims) != 1 or rows[0].ndim != 1:
        raise ConfigError(f"embeddings must all be 1-D vectors of one length, got shapes {sorted(dims)}")
    mat = np.stack(rows)
    if not np.isfinite(mat).all():
        bad = names[int(np.flatnonzero(~np.isfinite(mat).all(axis=1))[0])]
        raise ConfigError(f"embedding of {bad!r} contains NaN/inf")
    return l2_normalise(mat)


def _pairs(trials: Sequence[Trial] | Sequence[Pair]) -> list[Pair]:
    return [(t.enroll, t.test) if isinstance(t, Trial) else (t[0], t[1]) for t in trials]


def cosine_scores(
    embeddings: Mapping[str, ArrayLike], trials: Sequence[Trial] | Sequence[Pair]
) -> np.ndarray:
    """Cosine similarity of each trial's enrollment and test embeddings.

    >>> emb = {"a": np.array([1.0, 0.0]), "b": np.array([1.0, 1.0])}
    >>> cosine_scores(emb, [("a", "b"), ("a", "a")]).round(4).tolist()
    [0.7071, 1.0]
    """
    pairs = _pairs(trials)
    names = sorted({n for pair in pairs for n in pair})
    mat = _matrix(embeddings, names)
    row = {n: i for i, n in enumerate(names)}
    if not pairs:
        return np.zeros(0)
    enroll = mat[[row[e] for e, _ in pairs]]
    test = mat[[row[t] for _, t in pairs]]
    return np.einsum("ij,ij->i", enroll, test)


def cohort_scores(
    embeddings: Mapping[str, ArrayLike], names: Sequence[str], cohort: ArrayLike
) -> np.ndarray:
    """Cosine scores of each named embedding against every cohort embedding: ``(len(names), C)``.

    The cohort is a public set of embeddings ``(C, D)`` from speakers in no trial.

    >>> emb = {"a": np.array([1.0, 0.0])}
    >>> cohort_scores(emb, ["a"], np.array([[1.0, 0.0], [0.0, 2.0]])).tolist()
    [[1.0, 0.0]]
    """
    coh = np.asarray(cohort, dtype=np.float64)
    if coh.ndim != 2 or coh.shape[0] == 0 or not np.isfinite(coh).all():
        raise ConfigError(f"cohort must be a finite, non-empty (C, D) matrix, got shape {coh.shape}")
    mat = _matrix(embeddings, list(names))
    if mat.size and mat.shape[1] != coh.shape[1]:
        raise ConfigError(f"cohort embeddings have dimension {coh.shape[1]} but the trials' have {mat.shape[1]}")
    return mat @ l2_normalise(coh).T


def as_norm(
    scores: ArrayLike,
    enroll_cohort_scores: ArrayLike,
    test_cohort_scores: ArrayLike,
    top_n: int,
) -> np.ndarray:
    """Adaptive symmetric score normalisation (AS-norm).

    For trial ``i``, the enrollment side is standardised by the mean and
    standard deviation of its ``top_n`` highest cohort scores, the test side
    likewise, and the two are averaged:
    ``0.5 * ((s - mu_e) / sd_e + (s - mu_t) / sd_t)``. With ``top_n`` equal to
    the cohort size this is plain S-norm.

    Args:
        scores: ``(N,)`` raw trial scores.
        enroll_cohort_scores: ``(N, C)`` scores of each trial's enrollment embedding against the cohort.
        test_cohort_scores: ``(N, C)`` the same for each trial's test embedding.
        top_n: how many of the highest cohort scores to use, ``1 <= top_n <= C``.

    >>> as_norm([0.5], [[0.1, 0.3, 0.2]], [[0.0, 0.2, 0.4]], 2).round(4).tolist()
    [3.5]
    """
    raw = np.asarray(scores, dtype=np.float64)
    enr = np.asarray(enroll_cohort_scores, dtype=np.float64)
    tst = np.asarray(test_cohort_scores, dtype=np.float64)
    if raw.ndim != 1:
        raise ConfigError(f"scores must be 1-D, got shape {raw.shape}")
    for name, mat in (("enroll_cohort_scores", enr), ("test_cohort_scores", tst)):
        if mat.ndim != 2 or mat.shape[0] != raw.shape[0] or mat.shape[1] == 0:
            raise ConfigError(f"{name} must have shape ({raw.shape[0]}, C) with C >= 1, got {mat.shape}")
    if enr.shape != tst.shape:
        raise ConfigError(f"enroll and test cohort scores differ in shape: {enr.shape} vs {tst.shape}")
    n_cohort = enr.shape[1]
    if type(top_n) is not int or not 1 <= top_n <= n_cohort:
        raise ConfigError(f"top_n must be an int in [1, {n_cohort}] (the cohort size), got {top_n!r}")
    for name, mat in (("scores", raw), ("enroll_cohort_scores", enr), ("test_cohort_scores", tst)):
        if not np.isfinite(mat).all():
            raise ConfigError(f"{name} contain NaN/inf")

    def stats(mat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        top = np.partition(mat, n_cohort - top_n, axis=1)[:, n_cohort - top_n :]
        return top.mean(axis=1), np.maximum(top.std(axis=1), 1e-8)

    mu_e, sd_e = stats(enr)
    mu_t, sd_t = stats(tst)
    return 0.5 * ((raw - mu_e) / sd_e + (raw - mu_t) / sd_t)


def _check_p_targets(p_targets: Sequence[float]) -> tuple[float, ...]:
    values = tuple(p_targets)
    if not values or not all(isinstance(p, (int, float)) and 0.0 < p < 1.0 for p in values):
        raise ConfigError(f"p_targets must be a non-empty sequence of probabilities in (0, 1), got {p_targets!r}")
    return tuple(float(p) for p in values)


def evaluate_scores(
    scores: ArrayLike, targets: ArrayLike, *, p_targets: Sequence[float] = (0.01, 0.05)
) -> EvalResult:
    """EER, minDCF at each ``p_target`` and the EER threshold from scores and target flags.

    >>> r = evaluate_scores([0.9, 0.8, 0.3, 0.7, 0.2, 0.1], [True, True, True, False, False, False])
    >>> round(r.eer, 4), round(r.threshold_eer, 4)
    (0.3333, 0.25)
    """
    values = np.asarray(scores, dtype=np.float64)
    flags = np.asarray(targets)
    if flags.dtype != np.bool_ or flags.shape != values.shape or values.ndim != 1:
        raise ConfigError(
            f"targets must be a boolean array shaped like scores {values.shape}, "
            f"got {flags.dtype} of shape {flags.shape}"
        )
    p_values = _check_p_targets(p_targets)
    tgt, non = values[flags], values[~flags]
    if tgt.size == 0 or non.size == 0:
        raise ConfigError(
            f"need both target and nontarget trials, got {tgt.size} target and {non.size} nontarget"
        )
    return EvalResult(
        eer=eer(tgt, non),
        min_dcf={p: min_dcf(tgt, non, p_target=p) for p in p_values},
        n_target=int(tgt.size),
        n_nontarget=int(non.size),
        threshold_eer=threshold_at_eer(tgt, non),
    )


def evaluate(
    embeddings: Mapping[str, ArrayLike],
    trials: Sequence[Trial],
    *,
    p_targets: Sequence[float] = (0.01, 0.05),
    cohort: ArrayLike | None = None,
    top_n: int | None = None,
) -> EvalResult:
    """Score ``trials`` by cosine similarity (AS-normalised if a ``cohort`` is given) and summarise.

    Args:
        embeddings: embedding vector by utterance id (need not be normalised).
        trials: the verification trials; both kinds must be present.
        p_targets: the target priors at which minDCF is reported.
        cohort: optional public ``(C, D)`` embeddings for AS-norm.
        top_n: AS-norm's top-N; ``None`` uses the whole cohort (S-norm).

    >>> emb = {"a": np.array([1.0, 0.1]), "b": np.array([0.9, 0.0]), "c": np.array([0.0, 1.0])}
    >>> trials = [Trial("a", "b", True), Trial("b", "c", False), Trial("a", "c", False)]
    >>> evaluate(emb, trials, p_targets=(0.05,)).min_dcf
    {0.05: 0.0}
    """
    if not trials or not all(isinstance(t, Trial) for t in trials):
        raise ConfigError("trials must be a non-empty sequence of Trial objects")
    scores = cosine_scores(embeddings, trials)
    if cohort is not None:
        enroll = cohort_scores(embeddings, [t.enroll for t in trials], cohort)
        test = cohort_scores(embeddings, [t.test for t in trials], cohort)
        scores = as_norm(scores, enroll, test, enroll.shape[1] if top_n is None else top_n)
    return evaluate_scores(scores, np.array([t.target for t in trials], dtype=bool), p_targets=p_targets)


def closed_set_top1(
    embeddings: Mapping[str, ArrayLike],
    utt2spk: Mapping[str, str],
    *,
    enroll_per_speaker: int,
    seed: int = 0,
) -> float:
    """Closed-set identification accuracy by nearest speaker centroid (cosine).

    Each speaker is enrolled by the re-normalised mean of ``enroll_per_speaker``
    of its unit-length embeddings, chosen at random (``seed``); every other
    utterance is assigned to the speaker with the most similar centroid.
    Speakers with exactly ``enroll_per_speaker`` utterances are enrolled but
    contribute no test utterance.

    >>> emb = {"a1": [1.0, 0.0], "a2": [0.9, 0.2], "b1": [0.0, 1.0], "b2": [0.3, 0.9]}
    >>> closed_set_top1(emb, {"a1": "A", "a2": "A", "b1": "B", "b2": "B"}, enroll_per_speaker=1)
    1.0
    """
    if type(enroll_per_speaker) is not int or enroll_per_speaker < 1:
        raise ConfigError(f"enroll_per_speaker must be a positive int, got {enroll_per_speaker!r}")
    if type(seed) is not int:
        raise ConfigError(f"seed must be an int, got {seed!r}")
    if not utt2spk:
        raise ConfigError("utt2spk is empty")
    by_speaker: dict[str, list[str]] = {}
    for utt in sorted(utt2spk):
        by_speaker.setdefault(utt2spk[utt], []).append(utt)
    speakers = sorted(by_speaker)
    short = [s for s in speakers if len(by_speaker[s]) < enroll_per_speaker]
    if short:
        raise ConfigError(
            f"{len(short)} speaker(s) have fewer than {enroll_per_speaker} utterances (e.g. {short[0]!r}); "
            f"drop them from utt2spk or lower enroll_per_speaker"
        )
    rng = np.random.default_rng(seed)
    centroids = []
    test_utts: list[str] = []
    test_labels: list[int] = []
    for label, spk in enumerate(speakers):
        utts = by_speaker[spk]
        order = rng.permutation(len(utts))
        enroll = [utts[i] for i in order[:enroll_per_speaker]]
        rest = [utts[i] for i in order[enroll_per_speaker:]]
        centroids.append(l2_normalise(_matrix(embeddings, enroll).mean(axis=0)))
        test_utts.extend(rest)
        test_labels.extend([label] * len(rest))
    if not test_utts:
        raise ConfigError(
            f"no test utterances left: every speaker has exactly {enroll_per_speaker} utterances; "
            f"lower enroll_per_speaker"
        )
    scores = _matrix(embeddings, test_utts) @ np.stack(centroids).T
    accuracy = top1_accuracy(scores, np.array(test_labels))
    log.info("closed-set top-1 %.4f over %d test utterances of %d speakers", accuracy, len(test_utts), len(speakers))
    return accuracy
