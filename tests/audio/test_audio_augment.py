"""privspk.audio.augment: each transform against an independent numpy reference or a measured property."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from privspk.audio.augment import add_noise, random_gain, reverberate, speed_perturb, synthetic_rir
from privspk.errors import ConfigError

RATE = 16000



def tone(freq: float, seconds: float = 1.0, amp: float = 0.5) -> torch.Tensor:
    t = torch.arange(round(RATE * seconds), dtype=torch.float64) / RATE
    return (amp * torch.sin(2 * math.pi * freq * t)).float()


def peak_frequency(x: torch.Tensor) -> float:
    spec = np.abs(np.fft.rfft(x.numpy() * np.hanning(x.shape[0])))
    return float(np.fft.rfftfreq(x.shape[0], 1 / RATE)[spec.argmax()])


def band_power(x: np.ndarray, lo: float, hi: float) -> float:
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(x.shape[0], 1 / RATE)
    return float(spec[(f >= lo) & (f < hi)].sum())


# ---------------------------------------------------------------------------- speed


@settings(max_examples=15, deadline=None)
@given(factor=st.floats(0.8, 1.25))
def test_speed_perturb_scales_duration_and_frequency(factor: float) -> None:
    out = speed_perturb(tone(500.0), factor=factor, sample_rate=RATE)
    assert abs(out.shape[0] - RATE / factor) <= 2
    assert abs(peak_frequency(out) - 500.0 * factor) <= 2.5  # within the FFT bin width


def test_speed_perturb_identity_and_bad_factors() -> None:
    x = tone(300.0, 0.1)
    assert torch.equal(speed_perturb(x, factor=1.0, sample_rate=RATE), x)
    for bad in (0.0, -1.0, float("nan"), 10.0):
        with pytest.raises(ConfigError, match="factor"):
            speed_perturb(x, factor=bad, sample_rate=RATE)
    with pytest.raises(ConfigError, match="sample_rate"):
        speed_perturb(x, factor=1.1, sample_rate=0)


# ---------------------------------------------------------------------------- noise


@settings(max_examples=30, deadline=None)
@given(
    snr=st.floats(-10.0, 60.0),
    kind=st.sampled_from(["white", "pink", "babble-like"]),
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(200, 8000),
)
def test_add_noise_hits_the_requested_snr(snr: float, kind: str, seed: int, n: int) -> None:
    x = torch.from_numpy(np.random.default_rng(seed ^ 1).uniform(-0.5, 0.5, n)).float()
    noisy = add_noise(x, snr_db=snr, rng=np.random.default_rng(seed), kind=kind)  # type: ignore[arg-type]
    noise = noisy.double() - x.double()
    measured = 10 * math.log10(float(x.double().pow(2).mean()) / float(noise.pow(2).mean()))
    assert measured == pytest.approx(snr, abs=1e-3)


def test_add_noise_is_seeded() -> None:
    x = tone(200.0, 0.2)
    a = add_noise(x, snr_db=10.0, rng=np.random.default_rng(3), kind="babble-like")
    b = add_noise(x, snr_db=10.0, rng=np.random.default_rng(3), kind="babble-like")
    c = add_noise(x, snr_db=10.0, rng=np.random.default_rng(4), kind="babble-like")
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_noise_colours_have_their_spectra() -> None:
    x = torch.full((RATE * 2,), 0.1)
    rng = np.random.default_rng(0)
    white = (add_noise(x, snr_db=0.0, rng=rng, kind="white") - x).numpy()
    pink = (add_noise(x, snr_db=0.0, rng=rng, kind="pink") - x).numpy()
    babble = (add_noise(x, snr_db=0.0, rng=rng, kind="babble-like") - x).numpy()
    # white: equal power in equal bandwidths; pink: equal power per octave (1/f)
    assert band_power(white, 500, 1000) / band_power(white, 4000, 4500) == pytest.approx(1.0, rel=0.3)
    assert band_power(pink, 500, 1000) / band_power(pink, 4000, 8000) == pytest.approx(1.0, rel=0.3)
    assert band_power(pink, 500, 1000) / band_power(pink, 4000, 4500) > 5.0
    # babble: speech band, nothing below 80 Hz, and a syllable-rate envelope (frame energy varies)
    assert band_power(babble, 0, 60) < 1e-6 * band_power(babble, 100, 4000)
    frames = lambda s: (s[: len(s) // 320 * 320].reshape(-1, 320) ** 2).mean(axis=1)  # noqa: E731
    cv = lambda e: float(e.std() / e.mean())  # noqa: E731
    assert cv(frames(babble)) > 2 * cv(frames(white))


def test_add_noise_leaves_silence_alone_and_checks_arguments() -> None:
    silent = torch.zeros(100)
    assert torch.equal(add_noise(silent, snr_db=10.0, rng=np.random.default_rng(0)), silent)
    x = tone(100.0, 0.05)
    with pytest.raises(ConfigError, match="kind"):
        add_noise(x, snr_db=10.0, rng=np.random.default_rng(0), kind="brown")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="rng"):
        add_noise(x, snr_db=10.0, rng=0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="snr_db"):
        add_noise(x, snr_db=float("inf"), rng=np.random.default_rng(0))
    with pytest.raises(ConfigError, match="1-D"):
        add_noise(torch.zeros(2, 10), snr_db=10.0, rng=np.random.default_rng(0))
    with pytest.raises(ConfigError, match="empty"):
        add_noise(torch.zeros(0), snr_db=10.0, rng=np.random.default_rng(0))


# ---------------------------------------------------------------------------- rir


@settings(max_examples=15, deadline=None)
@given(rt60=st.floats(0.1, 1.5), drr=st.floats(-10.0, 20.0), seed=st.integers(0, 1000))
def test_synthetic_rir_decay_and_direct_to_reverberant_ratio(rt60: float, drr: float, seed: int) -> None:
    rir = synthetic_rir(sample_rate=RATE, rt60=rt60, rng=np.random.default_rng(seed), drr_db=drr).double().numpy()
    assert rir.shape[0] == math.ceil(rt60 * RATE) and rir[0] == 1.0
    tail = rir[1:]
    assert 10 * math.log10(1.0 / float((tail**2).sum())) == pytest.approx(drr, abs=1e-3)
    # energy decay: fit the log energy of 10 ms blocks; 60 dB per rt60
    start = int(np.flatnonzero(tail)[0])
    body = tail[start:]
    hop = RATE // 100
    blocks = (body[: len(body) // hop * hop].reshape(-1, hop) ** 2).mean(axis=1)
    times = (np.arange(len(blocks)) + 0.5) * hop / RATE
    slope = np.polyfit(times, 10 * np.log10(blocks), 1)[0]
    assert slope == pytest.approx(-60.0 / rt60, rel=0.2)


def test_synthetic_rir_is_seeded_and_checks_arguments() -> None:
    a = synthetic_rir(sample_rate=RATE, rt60=0.3, rng=np.random.default_rng(5))
    b = synthetic_rir(sample_rate=RATE, rt60=0.3, rng=np.random.default_rng(5))
    assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="rt60"):
        synthetic_rir(sample_rate=RATE, rt60=0.0, rng=np.random.default_rng(0))
    with pytest.raises(ConfigError, match="sample_rate"):
        synthetic_rir(sample_rate=-1, rt60=0.3, rng=np.random.default_rng(0))


# ---------------------------------------------------------------------------- reverberate


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 3000), taps=st.integers(1, 400), offset=st.integers(0, 20), seed=st.integers(0, 1000))
def test_reverberate_matches_numpy_convolution(n: int, taps: int, offset: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-0.8, 0.8, n)
    h = rng.uniform(-0.2, 0.2, taps + offset)
    h[offset] = 1.0  # the direct path is the strongest tap
    ref = np.convolve(x, h)[offset : offset + n]
    ref *= np.abs(x).max() / np.abs(ref).max()
    out = reverberate(torch.from_numpy(x).float(), torch.from_numpy(h).float())
    assert out.shape == (n,) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-4)
    assert float(out.abs().max()) == pytest.approx(float(np.abs(x).max()), rel=1e-5)


def test_reverberate_with_a_delta_is_identity_and_checks_the_rir() -> None:
    x = tone(300.0, 0.05)
    np.testing.assert_allclose(reverberate(x, torch.tensor([0.0, 0.0, 1.0])).numpy(), x.numpy(), atol=1e-6)
    with pytest.raises(ConfigError, match="rir"):
        reverberate(x, torch.zeros(5))
    with pytest.raises(ConfigError, match="rir"):
        reverberate(x, torch.zeros(5, 2))


# ---------------------------------------------------------------------------- gain


@settings(max_examples=30, deadline=None)
@given(lo=st.floats(-40.0, 10.0), width=st.floats(0.0, 20.0), seed=st.integers(0, 10_000))
def test_random_gain_stays_in_range(lo: float, width: float, seed: int) -> None:
    x = torch.full((8,), 0.25)
    out = random_gain(x, rng=np.random.default_rng(seed), min_db=lo, max_db=lo + width)
    gain_db = 20 * math.log10(float(out[0]) / 0.25)
    assert lo - 1e-4 <= gain_db <= lo + width + 1e-4
    assert torch.allclose(out, out[0].expand(8))


def test_random_gain_checks_its_range() -> None:
    with pytest.raises(ConfigError, match="min_db"):
        random_gain(torch.ones(3), rng=np.random.default_rng(0), min_db=3.0, max_db=-3.0)
