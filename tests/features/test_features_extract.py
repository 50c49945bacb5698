from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from privspk.errors import FeatureError
from privspk.features.config import FeatureConfig
from privspk.features.extract import extract


def kaldi_fbank_reference(wav: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Log mel filterbank written from Kaldi's documented defaults, in float64 numpy.

    int16 scaling, snip_edges frames, per-frame DC removal, pre-emphasis 0.97 (first sample
    against itself), povey window, zero padding to a power of two, power spectrum, triangular
    filters equally spaced on the mel scale 1127 ln(1 + f/700) from 20 Hz to Nyquist, log with a
    float32-epsilon floor.
    """
    x = wav.astype(np.float64) * 32768.0
    win, hop = cfg.window_samples, cfg.shift_samples
    n_frames = 1 + (len(x) - win) // hop
    n_fft = 1 << (win - 1).bit_length()
    n = np.arange(win)
    window = (0.5 - 0.5 * np.cos(2 * math.pi * n / (win - 1))) ** 0.85

    def mel(f: np.ndarray | float) -> np.ndarray | float:
        return 1127.0 * np.log(1.0 + np.asarray(f) / 700.0)

    low, high = mel(20.0), mel(cfg.sample_rate / 2)
    step = (high - low) / (cfg.n_mels + 1)
    bin_mel = mel(np.arange(n_fft // 2) * cfg.sample_rate / n_fft)
    banks = np.zeros((cfg.n_mels, n_fft // 2))
    for m in range(cfg.n_mels):
        left, centre, right = low + m * step, low + (m + 1) * step, low + (m + 2) * step
        for k, value in enumerate(bin_mel):
            if left < value <= centre:
                banks[m, k] = (value - left) / (centre - left)
            elif centre < value < right:
                banks[m, k] = (right - value) / (right - centre)
    out = np.empty((n_frames, cfg.n_mels))
    for i in range(n_frames):
        frame = x[i * hop : i * hop + win].copy()
        frame -= frame.mean()
        frame = frame - 0.97 * np.concatenate([frame[:1], frame[:-1]])
        spectrum = np.abs(np.fft.rfft(frame * window, n_fft)) ** 2
        energies = banks @ spectrum[: n_fft // 2]
        out[i] = np.log(np.maximum(energies, np.finfo(np.float32).eps))
    return out


def kaldi_mfcc_reference(wav: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Orthonormal DCT-II of the reference fbank, first n_mfcc cepstra, Kaldi lifter Q=22."""
    fbank = kaldi_fbank_reference(wav, cfg)
    n = cfg.n_mels
    k = np.arange(cfg.n_mfcc)[:, None]
    j = np.arange(n)[None, :]
    dct = np.sqrt(2.0 / n) * np.cos(math.pi / n * (j + 0.5) * k)
    dct[0] = np.sqrt(1.0 / n)
    lifter = 1.0 + 11.0 * np.sin(math.pi * np.arange(cfg.n_mfcc) / 22.0)
    return (fbank @ dct.T) * lifter


def noise(n: int, seed: int, level: float = 0.1) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy((rng.standard_normal(n) * level).astype(np.float32))


@pytest.mark.parametrize(
    "cfg",
    [
        FeatureConfig(n_mels=40, cmn=False),
        FeatureConfig(n_mels=80, cmn=False),
        FeatureConfig(n_mels=24, frame_length_ms=20.0, frame_shift_ms=5.0, cmn=False),
        FeatureConfig(n_mels=23, sample_rate=8000, cmn=False),
    ],
    ids=["fbank40", "fbank80", "fbank24-20ms", "fbank23-8k"],
)
def test_fbank_matches_independent_kaldi_reference(cfg: FeatureConfig) -> None:
    wav = noise(3 * cfg.window_samples + 7 * cfg.shift_samples + 5, seed=1)
    got = extract(wav, cfg).numpy()
    want = kaldi_fbank_reference(wav.numpy(), cfg)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=2e-3, rtol=1e-4)


def test_mfcc_matches_independent_kaldi_reference() -> None:
    cfg = FeatureConfig(kind="mfcc", n_mels=40, n_mfcc=30, cmn=False)
    wav = noise(4000, seed=2)
    np.testing.assert_allclose(extract(wav, cfg).numpy(), kaldi_mfcc_reference(wav.numpy(), cfg), atol=5e-3)


@pytest.mark.parametrize("kind", ["fbank", "mfcc"])
def test_cmn_subtracts_the_utterance_mean(kind: str) -> None:
    wav = noise(8000, seed=3)
    raw = extract(wav, FeatureConfig(kind=kind, n_mels=40, n_mfcc=20, cmn=False))
    normed = extract(wav, FeatureConfig(kind=kind, n_mels=40, n_mfcc=20, cmn=True))
    torch.testing.assert_close(normed, raw - raw.mean(0), atol=1e-4, rtol=0)
    assert normed.mean(0).abs().max() < 1e-4


def test_a_tone_peaks_in_the_mel_band_of_its_frequency() -> None:
    cfg = FeatureConfig(n_mels=40, cmn=False)
    t = torch.arange(16000, dtype=torch.float64) / 16000
    wav = (0.3 * torch.sin(2 * math.pi * 1000.0 * t)).float()
    peak = int(extract(wav, cfg).mean(0).argmax())
    mel = lambda f: 1127.0 * math.log(1 + f / 700.0)  # noqa: E731
    step = (mel(8000) - mel(20)) / 41
    centres = [mel(20) + (m + 1) * step for m in range(40)]
    nearest = min(range(40), key=lambda m: abs(centres[m] - mel(1000.0)))
    assert abs(peak - nearest) <= 1


@settings(max_examples=25, deadline=None)
@given(gain=st.floats(0.05, 8.0), seed=st.integers(0, 2**16))
def test_mean_normalised_fbank_ignores_gain(gain: float, seed: int) -> None:
    # log(g^2 E) = log E + 2 log g in every bin, which CMN removes.
    cfg = FeatureConfig(n_mels=40)
    wav = noise(3200, seed=seed, level=0.05)
    torch.testing.assert_close(extract(wav * gain, cfg), extract(wav, cfg), atol=2e-3, rtol=0)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(400, 6000), kind=st.sampled_from(["fbank", "mfcc"]))
def test_shape_follows_the_frame_count(n: int, kind: str) -> None:
    cfg = FeatureConfig(kind=kind, n_mels=40, n_mfcc=13)
    feats = extract(noise(n, seed=n), cfg)
    assert feats.shape == (cfg.n_frames(n), cfg.dim)
    assert feats.dtype == torch.float32 and bool(torch.isfinite(feats).all())


def test_float64_input_gives_float32_features_without_grad() -> None:
    wav = noise(4000, seed=4).double().requires_grad_(True)
    feats = extract(wav, FeatureConfig(n_mels=40))
    assert feats.dtype == torch.float32 and not feats.requires_grad


def test_digital_silence_is_finite_and_dither_changes_it() -> None:
    silent = torch.zeros(4000)
    plain = extract(silent, FeatureConfig(n_mels=40, cmn=False))
    assert bool(torch.isfinite(plain).all())
    torch.manual_seed(0)
    dithered = extract(silent, FeatureConfig(n_mels=40, cmn=False, dither=1.0))
    assert bool(torch.isfinite(dithered).all()) and not torch.equal(plain, dithered)


@pytest.mark.parametrize(
    ("wav", "match"),
    [
        (torch.zeros(399), "399 samples, fewer than one 25.0 ms frame"),
        (torch.zeros(0), "0 samples"),
        (torch.zeros(2, 1000), r"1-D .* shape \(2, 1000\)"),
        (torch.zeros(1000, dtype=torch.int16), "floating point"),
        (torch.tensor([0.0, float("nan")] * 300), "NaN"),
        (np.zeros(1000, dtype=np.float32), "torch.Tensor"),
    ],
    ids=["short", "empty", "2d", "int16", "nan", "numpy"],
)
def test_bad_waveforms_raise_feature_error(wav: object, match: str) -> None:
    with pytest.raises(FeatureError, match=match):
        extract(wav, FeatureConfig())  # type: ignore[arg-type]


def test_exactly_one_frame_is_enough() -> None:
    assert extract(noise(400, seed=5), FeatureConfig()).shape == (1, 80)


def test_config_of_wrong_type_is_refused() -> None:
    with pytest.raises(FeatureError, match="FeatureConfig"):
        extract(noise(1000, seed=6), {"n_mels": 40})  # type: ignore[arg-type]
