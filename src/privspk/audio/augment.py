"""Waveform augmentation: speed perturbation, additive noise, synthetic reverberation, gain.

All functions are pure: they take a 1-D float tensor and return a new one, and every
random draw comes from the ``numpy.random.Generator`` passed in, so a fixed seed gives
the same output on every machine.

>>> import numpy as np, torch
>>> rng = np.random.default_rng(0)
>>> wav = 0.1 * torch.sin(torch.arange(16000) * 0.05)
>>> out = reverberate(add_noise(wav, snr_db=20.0, rng=rng), synthetic_rir(sample_rate=16000, rt60=0.3, rng=rng))
>>> out.shape, out.dtype
(torch.Size([16000]), torch.float32)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from privspk.audio.io import resample
from privspk.errors import ConfigError

__all__ = ["NoiseKind", "add_noise", "random_gain", "reverberate", "speed_perturb", "synthetic_rir"]

NoiseKind = Literal["white", "pink", "babble-like"]
_NOISE_KINDS: tuple[str, ...] = ("white", "pink", "babble-like")
#: 60 dB of amplitude decay is a factor exp(-ln(1000)) = exp(-6.9078).
_LN_1000 = math.log(1000.0)


def _check_wav(wav: object, what: str = "wav") -> Tensor:
    if not isinstance(wav, Tensor):
        raise ConfigError(f"{what} must be a torch.Tensor, got {type(wav).__name__}")
    if wav.dim() != 1:
        raise ConfigError(f"{what} must be 1-D (mono samples), got shape {tuple(wav.shape)}")
    if not wav.is_floating_point():
        raise ConfigError(f"{what} must be a floating-point tensor, got dtype {wav.dtype}")
    if wav.numel() == 0:
        raise ConfigError(f"{what} is empty")
    return wav


def _check_rng(rng: object) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise ConfigError(
            f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng).__name__}"
        )
    return rng


def _check_finite(value: object, name: str, *, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ConfigError(f"{name} must be finite, got {v}")
    if low is not None and v < low:
        raise ConfigError(f"{name} must be >= {low}, got {v}")
    if high is not None and v > high:
        raise ConfigError(f"{name} must be <= {high}, got {v}")
    return v


def _check_rate(sample_rate: object) -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise ConfigError(f"sample_rate must be a positive integer number of Hz, got {sample_rate!r}")
    return int(sample_rate)


def speed_perturb(wav: Tensor, *, factor: float, sample_rate: int) -> Tensor:
    """Play ``wav`` ``factor`` times faster (Kaldi-style speed perturbation).

    The waveform is resampled as if it had been recorded at ``factor * sample_rate`` and is
    returned at ``sample_rate``: duration is divided by ``factor`` and every frequency (pitch
    and formants) is multiplied by it. The factor is realised as the whole number of Hz
    ``round(factor * sample_rate)`` (relative error at most ``0.5 / sample_rate``).

    Args:
        wav: 1-D float waveform.
        factor: speed factor in [0.25, 4]; 1.1 is 10 % faster and shorter.
        sample_rate: rate of ``wav`` and of the result, in Hz.

    >>> import torch
    >>> speed_perturb(torch.zeros(16000), factor=1.25, sample_rate=16000).shape
    torch.Size([12800])
    """
    x = _check_wav(wav)
    f = _check_finite(factor, "factor", low=0.25, high=4.0)
    rate = _check_rate(sample_rate)
    source = round(f * rate)
    if source == rate:
        return x.clone()
    return resample(x, orig_freq=source, new_freq=rate)


def _fast_len(n: int) -> int:
    """Smallest 2**a * 3**b * 5**c >= n (FFT sizes that pocketfft handles fast)."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def _shaped_noise(n: int, gain: Callable[[np.ndarray], np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of Gaussian noise shaped by an amplitude response ``gain(freqs)``.

    ``freqs`` are in cycles per sample (0..0.5). The noise is made at a fast FFT length and cut.
    """
    m = _fast_len(n)
    spec = np.fft.rfft(rng.standard_normal(m))
    return np.fft.irfft(spec * gain(np.fft.rfftfreq(m)), n=m)[:n]


def _babble(n: int, sample_rate: int, rng: np.random.Generator, talkers: int = 6) -> np.ndarray:
    """Babble-like noise: the sum of several noise streams with syllable-rate envelopes,
    shaped by a long-term speech spectrum."""
    # syllabic envelopes: a few random sinusoids at 2-7 Hz, half-wave rectified, made at
    # 200 Hz and interpolated (they hold nothing above 7 Hz)
    t_env = np.arange(n // (sample_rate // 200 or 1) + 2) / 200.0
    t = np.arange(n) / sample_rate
    freqs = rng.uniform(2.0, 7.0, size=(talkers, 3, 1))
    phases = rng.uniform(0.0, 2 * np.pi, size=(talkers, 3, 1))
    envs = np.maximum(np.sin(2 * np.pi * freqs * t_env + phases).sum(axis=1), 0.0)
    levels = rng.uniform(0.5, 1.0, size=talkers)
    mix = np.zeros(n)
    for k in range(talkers):
        mix += rng.standard_normal(n, dtype=np.float32) * (np.interp(t, t_env, envs[k]) * levels[k])
    m = _fast_len(n)
    spec = np.fft.rfft(mix, n=m)
    hz = np.fft.rfftfreq(m, d=1.0 / sample_rate)
    # flat to ~500 Hz, -6 dB/octave above, nothing below 80 Hz or above 0.45 fs
    shape = np.where((hz < 80.0) | (hz > 0.45 * sample_rate), 0.0, 1.0 / np.maximum(1.0, hz / 500.0))
    return np.fft.irfft(spec * shape, n=m)[:n]


def _pink_gain(freqs: np.ndarray) -> np.ndarray:
    gain = np.zeros_like(freqs)
    gain[1:] = 1.0 / np.sqrt(freqs[1:])
    return gain


def add_noise(
    wav: Tensor,
    *,
    snr_db: float,
    rng: np.random.Generator,
    kind: NoiseKind = "white",
    sample_rate: int = 16000,
) -> Tensor:
    """Add noise at a given signal-to-noise ratio.

    The noise is scaled so that ``10*log10(P_signal / P_noise) == snr_db``, powers being
    mean squares over the whole waveform. A silent waveform comes back unchanged (its SNR
    is undefined). The result is not clipped.

    Args:
        wav: 1-D float waveform.
        snr_db: wanted SNR, in dB (-20..100).
        rng: the random source.
        kind: ``"white"``, ``"pink"`` (1/f power) or ``"babble-like"`` (six speech-shaped,
            syllable-modulated noise streams).
        sample_rate: rate of ``wav`` in Hz (shapes the babble spectrum).

    >>> import numpy as np, torch
    >>> wav = torch.ones(16000) * 0.5
    >>> noisy = add_noise(wav, snr_db=10.0, rng=np.random.default_rng(1), kind="pink")
    >>> noise = noisy - wav
    >>> round(10 * float(torch.log10(wav.pow(2).mean() / noise.pow(2).mean())), 3)
    10.0
    """
    x = _check_wav(wav)
    snr = _check_finite(snr_db, "snr_db", low=-20.0, high=100.0)
    g = _check_rng(rng)
    rate = _check_rate(sample_rate)
    if kind not in _NOISE_KINDS:
        raise ConfigError(f"kind must be one of {_NOISE_KINDS}, got {kind!r}")
    n = x.shape[0]
    if kind == "white":
        noise = g.standard_normal(n)
    elif kind == "pink":
        noise = _shaped_noise(n, _pink_gain, g)
    else:
        noise = _babble(n, rate, g)
    p_signal = float(x.double().pow(2).mean())
    p_noise = float(np.mean(noise**2))
    if p_signal == 0.0 or p_noise == 0.0:
        return x.clone()
    scale = math.sqrt(p_signal / (p_noise * 10.0 ** (snr / 10.0)))
    return (x.double() + torch.from_numpy(noise * scale)).to(x.dtype)


def synthetic_rir(
    *,
    sample_rate: int,
    rt60: float,
    rng: np.random.Generator,
    drr_db: float = 0.0,
) -> Tensor:
    """A synthetic room impulse response: a direct path plus an exponentially decaying noise tail.

    The tail starts 1-5 ms after the direct path (drawn from ``rng``), decays by 60 dB in
    ``rt60`` seconds, and its energy is set so that direct / tail energy is ``drr_db``.

    Args:
        sample_rate: rate in Hz.
        rt60: reverberation time in seconds (0.05..3).
        rng: the random source.
        drr_db: direct-to-reverberant energy ratio, in dB.

    Returns:
        1-D float32 tensor of ``ceil(rt60 * sample_rate)`` taps, ``rir[0] == 1``.

    >>> import numpy as np
    >>> rir = synthetic_rir(sample_rate=16000, rt60=0.5, rng=np.random.default_rng(0))
    >>> (rir.shape[0], float(rir[0]), float(rir[1:].pow(2).sum()) > 0.99)
    (8000, 1.0, True)
    """
    rate = _check_rate(sample_rate)
    t60 = _check_finite(rt60, "rt60", low=0.05, high=3.0)
    drr = _check_finite(drr_db, "drr_db", low=-30.0, high=40.0)
    g = _check_rng(rng)
    n = max(2, math.ceil(t60 * rate))
    delay = min(n - 1, max(1, round(g.uniform(0.001, 0.005) * rate)))
    t = np.arange(n - delay) / rate
    tail = g.standard_normal(n - delay) * np.exp(-_LN_1000 * t / t60)
    tail *= math.sqrt(10.0 ** (-drr / 10.0) / float(np.sum(tail**2)))
    rir = np.zeros(n)
    rir[0] = 1.0
    rir[delay:] += tail
    return torch.from_numpy(rir.astype(np.float32))


def reverberate(wav: Tensor, rir: Tensor) -> Tensor:
    """Convolve ``wav`` with a room impulse response (FFT convolution), keeping length and peak.

    The output is aligned on the RIR's strongest tap (the direct path), cut to the input
    length, and scaled to the input's peak amplitude, so a waveform in [-1, 1] stays there.

    Args:
        wav: 1-D float waveform.
        rir: 1-D float impulse response (e.g. from :func:`synthetic_rir`).

    >>> import torch
    >>> wav = torch.tensor([0.0, 0.5, 0.0, 0.0])
    >>> [round(v, 6) + 0.0 for v in reverberate(wav, torch.tensor([1.0, 0.5])).tolist()]
    [0.0, 0.5, 0.25, 0.0]
    """
    x = _check_wav(wav)
    h = _check_wav(rir, "rir")
    if not bool(torch.isfinite(h).all()) or float(h.abs().max()) == 0.0:
        raise ConfigError("rir must be finite and not all zeros")
    peak_in = float(x.abs().max())
    if peak_in == 0.0:
        return x.clone()
    offset = int(h.abs().argmax())
    m = _fast_len(x.shape[0] + h.shape[0] - 1)
    xf, hf = x.to(torch.float32), h.to(torch.float32)
    full = torch.fft.irfft(torch.fft.rfft(xf, n=m) * torch.fft.rfft(hf, n=m), n=m)
    out = full[offset : offset + x.shape[0]]
    peak_out = float(out.abs().max())
    if peak_out > 0.0:
        out = out * (peak_in / peak_out)
    return out.to(x.dtype)


def random_gain(wav: Tensor, *, rng: np.random.Generator, min_db: float = -6.0, max_db: float = 6.0) -> Tensor:
    """Multiply ``wav`` by a gain drawn uniformly in [``min_db``, ``max_db``] dB (no clipping).

    >>> import numpy as np, torch
    >>> out = random_gain(torch.ones(4), rng=np.random.default_rng(0), min_db=-6.0, max_db=-6.0)
    >>> round(float(out[0]), 4)
    0.5012
    """
    x = _check_wav(wav)
    g = _check_rng(rng)
    lo = _check_finite(min_db, "min_db", low=-120.0, high=60.0)
    hi = _check_finite(max_db, "max_db", low=-120.0, high=60.0)
    if lo > hi:
        raise ConfigError(f"min_db ({lo}) must not exceed max_db ({hi})")
    gain_db = float(g.uniform(lo, hi))
    return x * (10.0 ** (gain_db / 20.0))
