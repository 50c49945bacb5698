"""Non-speech test signals a verifier must never accept: silence, tones, noises, music-like sounds.

Deterministic in ``seed``; every signal is a 1-D float32 tensor in [-1, 1]. Used by the
verifier's tests and by ``benchmarks/verifier_impostors.py``.

>>> sigs = nonspeech_signals(seconds=1.0, sample_rate=16000, seed=0)
>>> sorted(sigs)[:4]
['am_noise_4hz', 'brown_noise', 'chord', 'digital_silence']
>>> all(s.shape == (16000,) and float(s.abs().max()) <= 1.0 for s in sigs.values())
True
"""

from __future__ import annotations


import numpy as np
import torch

from privspk.errors import ConfigError

__all__ = ["NONSPEECH_KINDS", "colored_noise", "nonspeech_signals"]

#: Names of the signals :func:`nonspeech_signals` returns.
NONSPEECH_KINDS: tuple[str, ...] = (
    "digital_silence",
    "dither",
    "tone_220",
    "tone_1k",
    "harmonic_tone",
    "dtmf",
    "chord",
    "white_noise",
    "pink_noise",
    "brown_noise",
    "silence_then_pink",
    "am_noise_4hz",
    "melody_plucked",
    "melody_organ_drums",
)


def colored_noise(n: int, *, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise with power spectrum ``1 / f**exponent`` (0 white, 1 pink, 2 brown), unit peak.

    >>> x = colored_noise(1000, exponent=1.0, rng=np.random.default_rng(0))
    >>> x.shape, float(np.abs(x).max())
    ((1000,), 1.0)
    """
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spec.size, dtype=np.float64)
    f[0] = 1.0
    spec = spec / f ** (exponent / 2.0)
    spec[0] = 0.0
    x = np.fft.irfft(spec, n=n)
    return x / np.abs(x).max()


def _note(freq: float, n: int, rate: int, *, harmonics: int, decay: float) -> np.ndarray:
    t = np.arange(n) / rate
    wave = sum(np.sin(2 * np.pi * k * freq * t) / k for k in range(1, harmonics + 1) if k * freq < rate / 2)
    attack = np.minimum(1.0, t / 0.01)
    return np.asarray(wave) * attack * np.exp(-t / decay)


def _melody(n: int, rate: int, rng: np.random.Generator, *, notes_per_s: float, harmonics: int,
            decay: float) -> np.ndarray:
    out = np.zeros(n)
    step = int(rate / notes_per_s)
    scale = [0, 2, 4, 5, 7, 9, 11, 12]
    for start in range(0, n, step):
        semitone = scale[int(rng.integers(len(scale)))] + 12 * int(rng.integers(-1, 2))
        freq = 261.63 * 2 ** (semitone / 12)
        length = min(step, n - start)
        out[start : start + length] += _note(freq, length, rate, harmonics=harmonics, decay=decay)
    return out


def nonspeech_signals(*, seconds: float, sample_rate: int = 16000, seed: int = 0) -> dict[str, torch.Tensor]:
    """One signal of each kind in :data:`NONSPEECH_KINDS`, ``seconds`` long.

    Levels are those of ordinary recordings (peaks 0.3-0.8), far above any energy floor.

    >>> s = nonspeech_signals(seconds=0.5, seed=1)
    >>> float(s["digital_silence"].abs().max()), round(float(s["tone_1k"].abs().max()), 2)
    (0.0, 0.5)
    """
    if not (isinstance(seconds, (int, float)) and 0 < seconds < 24 * 3600):
        raise ConfigError(f"seconds must be a positive duration, got {seconds!r}")
    rate = int(sample_rate)
    n = int(round(seconds * rate))
    rng = np.random.default_rng(seed)
    t = np.arange(n) / rate
    out: dict[str, np.ndarray] = {
        "digital_silence": np.zeros(n),
        "dither": rng.standard_normal(n) * 2.0 ** -15,
        "tone_220": 0.5 * np.sin(2 * np.pi * 220 * t),
        "tone_1k": 0.5 * np.sin(2 * np.pi * 1000 * t),
        "harmonic_tone": 0.5 * _note(150.0, n, rate, harmonics=12, decay=1e9) / 3.1,
        "dtmf": 0.25 * (np.sin(2 * np.pi * 770 * t) + np.sin(2 * np.pi * 1336 * t))
        * (np.floor(t / 0.1) % 2 == 0),
        "chord": 0.5 * sum(_note(f, n, rate, harmonics=6, decay=1e9) for f in (261.63, 329.63, 392.0)) / 7.5,
        "white_noise": 0.3 * rng.standard_normal(n) / 3.0,
        "pink_noise": 0.5 * colored_noise(n, exponent=1.0, rng=rng),
        "brown_noise": 0.5 * colored_noise(n, exponent=2.0, rng=rng),
    }
    pink = 0.5 * colored_noise(n, exponent=1.0, rng=rng)
    pink[: n // 3] = 0.0
    out["silence_then_pink"] = pink
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4.0 * t)) ** 2 / 4
    out["am_noise_4hz"] = 0.8 * envelope * colored_noise(n, exponent=1.0, rng=rng)
    plucked = _melody(n, rate, rng, notes_per_s=4.0, harmonics=8, decay=0.12)
    out["melody_plucked"] = 0.6 * plucked / max(np.abs(plucked).max(), 1e-9)
    organ = _melody(n, rate, rng, notes_per_s=2.5, harmonics=6, decay=1e9)
    beat = np.zeros(n)
    for start in range(0, n, rate // 2):
        length = min(rate // 20, n - start)
        beat[start : start + length] = rng.standard_normal(length) * np.exp(-np.arange(length) / (0.01 * rate))
    drums = organ / max(np.abs(organ).max(), 1e-9) + 0.8 * beat
    out["melody_organ_drums"] = 0.6 * drums / max(np.abs(drums).max(), 1e-9)
    assert set(out) == set(NONSPEECH_KINDS)  # noqa: S101 - an internal invariant, not validation
    return {k: torch.from_numpy(np.clip(out[k], -1, 1).astype(np.float32)) for k in NONSPEECH_KINDS}
