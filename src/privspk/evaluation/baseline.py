"""A model-free baseline that measures how easy a corpus is, not how good a model is.

Each utterance becomes the per-coefficient mean and standard deviation of its
30 MFCCs over time (no training, no speaker labels). Every dimension is then
standardised across the utterances being scored, and trials are scored by
cosine similarity. If this crude "long-term spectrum" already reaches a low
EER, the corpus separates speakers by channel, level or synthesiser settings
that any model will pick up, and a trained encoder's EER should be read
against it: a model is only interesting where it beats this baseline.

>>> import math, torch
>>> from privspk.evaluation.trials import Trial
>>> t = torch.arange(8000) / 16000
>>> wavs = {f"{f}_{k}": torch.sin(2 * math.pi * (f + 7 * k) * t) * 0.3 for f in (200, 1500) for k in range(3)}
>>> trials = [Trial("200_0", "200_1", True), Trial("1500_0", "1500_2", True),
...           Trial("200_0", "1500_1", False), Trial("200_2", "1500_0", False)]
>>> mfcc_baseline(wavs.__getitem__, trials).eer
0.0
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch

from privspk.errors import ConfigError, FeatureError
from privspk.evaluation.scoring import EvalResult, cosine_scores, evaluate_scores
from privspk.evaluation.trials import Trial

__all__ = ["WavLoader", "mfcc_baseline", "mfcc_stats"]

log = logging.getLogger(__name__)

WavLoader = Callable[[str], "torch.Tensor | np.ndarray"]
"""Returns the 1-D waveform of an utterance id (for example ``lambda u: read_audio(paths[u])``)."""


def _frame_samples(sample_rate: int) -> int:
    return round(0.025 * sample_rate)


def _mfcc_transform(*, sample_rate: int, n_mfcc: int) -> torch.nn.Module:
    import torchaudio

    return torchaudio.transforms.MFCC(
        sample_rate=sample_rate,
        n_mfcc=n_mfcc,
        melkwargs={
            "n_fft": _frame_samples(sample_rate),
            "hop_length": round(0.010 * sample_rate),
            "n_mels": max(40, n_mfcc),
        },
    )


def _stats(transform: torch.nn.Module, wav: torch.Tensor | np.ndarray, name: str, *, n_fft: int) -> np.ndarray:
    signal = torch.as_tensor(wav, dtype=torch.float32)
    if signal.ndim != 1:
        raise FeatureError(f"waveform of {name} must be 1-D (mono samples), got shape {tuple(signal.shape)}")
    if signal.numel() < n_fft:
        raise FeatureError(f"waveform of {name} has {signal.numel()} samples, fewer than one {n_fft}-sample frame")
    if not torch.isfinite(signal).all():
        raise FeatureError(f"waveform of {name} contains NaN/inf")
    with torch.no_grad():
        mfcc = transform(signal).to(torch.float64)  # (n_mfcc, frames)
    return torch.cat([mfcc.mean(dim=1), mfcc.std(dim=1, unbiased=False)]).numpy()


def _check_rate_and_count(sample_rate: int, n_mfcc: int) -> None:
    if type(sample_rate) is not int or sample_rate < 1000:
        raise ConfigError(f"sample_rate must be an int in Hz (>= 1000), got {sample_rate!r}")
    if type(n_mfcc) is not int or not 1 <= n_mfcc <= 80:
        raise ConfigError(f"n_mfcc must be an int in [1, 80], got {n_mfcc!r}")


def mfcc_stats(wav: torch.Tensor | np.ndarray, *, sample_rate: int = 16000, n_mfcc: int = 30) -> np.ndarray:
    """Per-coefficient mean and standard deviation of an utterance's MFCCs: ``(2 * n_mfcc,)``.

    25 ms frames every 10 ms (``torchaudio.transforms.MFCC``, 40 mel bands).

    >>> mfcc_stats(torch.randn(16000) * 0.1).shape
    (60,)
    """
    _check_rate_and_count(sample_rate, n_mfcc)
    return _stats(
        _mfcc_transform(sample_rate=sample_rate, n_mfcc=n_mfcc), wav, "the utterance", n_fft=_frame_samples(sample_rate)
    )


def mfcc_baseline(
    wav_loader: WavLoader,
    trials: Sequence[Trial],
    *,
    sample_rate: int = 16000,
    n_mfcc: int = 30,
    p_targets: Sequence[float] = (0.01, 0.05),
) -> EvalResult:
    """Score ``trials`` with standardised MFCC mean+std vectors; a measure of corpus difficulty.

    Args:
        wav_loader: returns the waveform of an utterance id, at ``sample_rate``.
        trials: the same trials the model is evaluated on.
        sample_rate: the rate of the waveforms, in Hz.
        n_mfcc: number of cepstral coefficients (30 by default).
        p_targets: target priors for minDCF.

    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> wavs = {u: torch.randn(4000, generator=g) * 0.1 for u in ("a", "b", "c")}
    >>> r = mfcc_baseline(wavs.__getitem__, [Trial("a", "b", True), Trial("a", "c", False)])
    >>> r.n_target, r.n_nontarget
    (1, 1)
    """
    _check_rate_and_count(sample_rate, n_mfcc)
    if not trials or not all(isinstance(t, Trial) for t in trials):
        raise ConfigError("trials must be a non-empty sequence of Trial objects")
    transform = _mfcc_transform(sample_rate=sample_rate, n_mfcc=n_mfcc)
    utts = sorted({u for t in trials for u in (t.enroll, t.test)})
    raw = np.stack([_stats(transform, wav_loader(u), repr(u), n_fft=_frame_samples(sample_rate)) for u in utts])
    # Standardise each dimension over the scored utterances, else c0 (level) dominates the cosine.
    spread = raw.std(axis=0)
    z = (raw - raw.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
    scores = cosine_scores(dict(zip(utts, z)), trials)
    result = evaluate_scores(scores, np.array([t.target for t in trials], dtype=bool), p_targets=p_targets)
    log.info("MFCC baseline on %d utterances: %s", len(utts), result)
    return result
