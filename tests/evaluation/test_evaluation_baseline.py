"""Tests of privspk.evaluation.baseline: the model-free MFCC corpus-difficulty baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchaudio

from privspk.errors import ConfigError, FeatureError
from privspk.evaluation.baseline import mfcc_baseline, mfcc_stats
from privspk.evaluation.metrics import eer
from privspk.evaluation.scoring import cosine_scores
from privspk.evaluation.trials import make_trials


def test_mfcc_stats_are_mean_and_std_of_torchaudio_mfcc():
    wav = torch.randn(8000, generator=torch.Generator().manual_seed(0)) * 0.1
    stats = mfcc_stats(wav, n_mfcc=30)
    mfcc = torchaudio.transforms.MFCC(
        sample_rate=16000, n_mfcc=30, melkwargs={"n_fft": 400, "hop_length": 160, "n_mels": 40}
    )(wav).double()
    np.testing.assert_allclose(stats[:30], mfcc.mean(dim=1).numpy(), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(stats[30:], mfcc.std(dim=1, unbiased=False).numpy(), rtol=1e-5, atol=1e-4)
    assert mfcc_stats(wav.numpy(), n_mfcc=13).shape == (26,)


def tone_corpus(make_tone, fundamentals, n_utts):
    wavs, utt2spk = {}, {}
    for s, f0 in enumerate(fundamentals):
        for u in range(n_utts):
            key = f"s{s}-u{u}"
            wavs[key] = make_tone(f0, seconds=0.4, seed=100 * s + u)
            utt2spk[key] = f"s{s}"
    return wavs, utt2spk


def test_tone_families_are_easy(make_tone):
    wavs, utt2spk = tone_corpus(make_tone, [110.0, 190.0, 330.0], 4)
    trials = make_trials(utt2spk, all_pairs=True)
    result = mfcc_baseline(wavs.__getitem__, trials)
    assert result.eer <= 0.05
    assert result.n_target == 3 * 6 and result.n_nontarget == 66 - 18


def test_labels_unrelated_to_the_audio_give_chance(make_tone):
    # Speakers whose "utterances" are interchangeable noise: nothing to find, EER near 0.5.
    gen = torch.Generator().manual_seed(1)
    wavs = {f"s{s}-u{u}": torch.randn(4000, generator=gen) * 0.1 for s in range(6) for u in range(5)}
    utt2spk = {k: k.split("-")[0] for k in wavs}
    result = mfcc_baseline(wavs.__getitem__, make_trials(utt2spk, all_pairs=True))
    assert 0.3 < result.eer < 0.7


def test_baseline_follows_the_documented_recipe(make_tone):
    # mean+std MFCC vectors, each dimension standardised over the scored utterances, cosine, EER.
    wavs, utt2spk = tone_corpus(make_tone, [110.0, 150.0, 200.0], 3)
    for i, key in enumerate(sorted(wavs)):  # random gains make the raw level useless
        wavs[key] = wavs[key] * (0.05 + 0.3 * ((7 * i) % 5) / 4)
    trials = make_trials(utt2spk, n_target_per_utt=2, n_nontarget_per_utt=3, seed=0)
    utts = sorted({u for t in trials for u in (t.enroll, t.test)})
    raw = np.stack([mfcc_stats(wavs[u]) for u in utts])
    z = (raw - raw.mean(axis=0)) / raw.std(axis=0)
    scores = cosine_scores(dict(zip(utts, z)), trials)
    labels = np.array([t.target for t in trials])
    result = mfcc_baseline(wavs.__getitem__, trials, p_targets=(0.05,))
    assert result.eer == pytest.approx(eer(scores[labels], scores[~labels]))
    assert list(result.min_dcf) == [0.05]


@pytest.mark.parametrize(
    ("wav", "fragment"),
    [
        (torch.zeros(399), "399 samples, fewer than one 400-sample frame"),
        (torch.zeros(2, 4000), "must be 1-D"),
        (torch.full((4000,), float("nan")), "NaN"),
    ],
)
def test_bad_waveforms(wav, fragment):
    with pytest.raises(FeatureError, match=fragment):
        mfcc_stats(wav)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [({"n_mfcc": 0}, "n_mfcc"), ({"n_mfcc": 81}, "n_mfcc"), ({"sample_rate": 16000.0}, "sample_rate")],
)
def test_bad_settings(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        mfcc_stats(torch.zeros(4000), **kwargs)


def test_bad_trials_and_loader_errors_pass_through():
    with pytest.raises(ConfigError, match="non-empty sequence of Trial"):
        mfcc_baseline(lambda u: torch.zeros(4000), [])
    trials = make_trials({"a1": "A", "a2": "A", "b1": "B"}, all_pairs=True)
    with pytest.raises(FeatureError, match="waveform of 'a1' has 10 samples"):
        mfcc_baseline(lambda u: torch.zeros(10), trials)
    with pytest.raises(KeyError):
        mfcc_baseline({}.__getitem__, trials)
