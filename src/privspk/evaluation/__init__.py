"""Evaluation: embeddings, cosine scoring, EER / minDCF / top-1, Kaldi trials, and the Verifier.

Open-set verification on speakers no client trained on (EER, minDCF at
p_target 0.01 and 0.05, optional AS-norm with a public cohort), closed-set
top-1 identification, a model-free MFCC baseline that tells how easy a
corpus is, and :class:`Verifier` for enrolling and verifying speakers.

>>> import numpy as np
>>> from privspk.evaluation import Trial, evaluate
>>> emb = {"a1": np.array([1.0, 0.0]), "a2": np.array([0.8, 0.2]), "b1": np.array([0.1, 1.0])}
>>> print(evaluate(emb, [Trial("a1", "a2", True), Trial("a1", "b1", False)], p_targets=(0.01,)))
EER 0.00 % | minDCF(0.01) 0.0000 | 1 target / 1 nontarget trials
"""

from __future__ import annotations

from privspk.evaluation.baseline import mfcc_baseline, mfcc_stats
from privspk.evaluation.embed import embed_features, l2_normalise
from privspk.evaluation.metrics import det_curve, eer, min_dcf, threshold_at_eer, threshold_at_far, top1_accuracy
from privspk.evaluation.scoring import (
    EvalResult,
    as_norm,
    closed_set_top1,
    cohort_scores,
    cosine_scores,
    evaluate,
    evaluate_scores,
)
from privspk.evaluation.trials import Score, Trial, make_trials, read_scores, read_trials, write_scores, write_trials
from privspk.evaluation.vad import SpeechActivity, VadConfig, detect_speech
from privspk.evaluation.verifier import Decision, Verifier, encoder_fingerprint

__all__ = [
    "Decision",
    "EvalResult",
    "Score",
    "SpeechActivity",
    "Trial",
    "VadConfig",
    "Verifier",
    "as_norm",
    "closed_set_top1",
    "cohort_scores",
    "cosine_scores",
    "det_curve",
    "detect_speech",
    "eer",
    "embed_features",
    "encoder_fingerprint",
    "evaluate",
    "evaluate_scores",
    "l2_normalise",
    "make_trials",
    "mfcc_baseline",
    "mfcc_stats",
    "min_dcf",
    "read_scores",
    "read_trials",
    "threshold_at_eer",
    "threshold_at_far",
    "top1_accuracy",
    "write_scores",
    "write_trials",
]
