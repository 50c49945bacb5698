"""Speech activity detection for the verifier: which feature frames hold speech, and is there enough.

Energy alone cannot tell speech from a loud tone or a burst of noise, so a frame counts as
speech only when three things hold:

* **energy** above an adaptive noise floor (a low percentile of the energies of the clip's
  frames that are not digital silence) by ``margin_db``, and above an absolute floor ``min_dbfs``. Stationary noise and digital
  silence never rise above their own floor;
* **voicing**: the normalised autocorrelation of the pre-emphasised signal (40 ms window)
  peaks at a pitch period between ``f0_min`` and ``f0_max`` Hz, in runs of at least
  ``min_voiced_run`` frames whose pitch stays continuous. White, pink and brown noise are
  not periodic after pre-emphasis;
* **a moving pitch**: voiced speech glides (intonation, jitter); a tone or a played note
  holds its pitch. A clip whose continuous voiced frames mostly keep their period to within
  ``flat_pitch_tolerance`` is called tonal and holds no speech.

Sounds next to voiced ones (``hangover_frames`` either side: consonants, onsets) count as
speech too when they are within ``dynamic_range_db`` of the clip's loud frames. Frames follow the Kaldi framing of :mod:`privspk.features` (window
and shift of the :class:`~privspk.features.config.FeatureConfig`, ``snip_edges``), so the mask
selects rows of the feature matrix directly.

>>> import math, torch
>>> from privspk.features.config import FeatureConfig
>>> cfg = FeatureConfig(n_mels=40)
>>> tone = 0.3 * torch.sin(2 * math.pi * 220 * torch.arange(32000) / 16000)
>>> tone[:8000] = 0.001 * torch.randn(8000)  # after a quiet pause the tone rises above the floor...
>>> act = detect_speech(tone, cfg)
>>> act.speech_seconds, act.reason  # ... but holds its pitch
(0.0, 'tonal: the pitch holds still like a tone or a played note, not speech')
>>> detect_speech(torch.zeros(16000), cfg).reason
'silent: no frame is louder than -55 dBFS'
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch

from privspk.errors import ConfigError
from privspk.features.config import FeatureConfig

__all__ = ["SpeechActivity", "VadConfig", "detect_speech"]

_PREEMPH = 0.97
_PITCH_WINDOW_S = 0.040
_CHUNK_FRAMES = 2048
#: Frames quieter than this (dBFS) are digital silence, left out of the noise floor.
_DIGITAL_SILENCE_DB = -90.0


@dataclass(frozen=True, kw_only=True)
class VadConfig:
    """Settings of :func:`detect_speech` and the verifier's minimum amounts of speech.

    Arguments:
        min_speech_seconds: a trial (and each enrolment recording) needs this much speech.
        min_enroll_seconds: an enrolment needs this much speech over all its recordings.
        margin_db: how far above the clip's noise floor a speech frame's energy must be.
        floor_percentile: the percentile of frame energies taken as the noise floor.
        min_dbfs: frames quieter than this (dB relative to full scale) are never speech.
        voicing: the least normalised autocorrelation at the pitch period of a voiced frame.
        f0_min, f0_max: the pitch range searched, in Hz.
        min_voiced_run: voiced frames count only in runs of at least this many frames.
        flat_pitch_tolerance: relative period change below which two voiced frames "hold" the pitch.
        max_flat_fraction: a clip whose continuous voiced frame pairs hold the pitch more often
            than this is tonal (no speech).
        hangover_frames: frames either side of voiced speech that count as speech when loud enough:
            within ``dynamic_range_db`` of the clip's loud frames (its 95th energy percentile).

    >>> VadConfig().min_speech_seconds
    0.5
    >>> VadConfig(min_speech_seconds=-1)
    Traceback (most recent call last):
    ...
    privspk.errors.ConfigError: invalid VadConfig: min_speech_seconds must be a finite number >= 0, got -1
    """

    min_speech_seconds: float = 0.5
    min_enroll_seconds: float = 1.5
    margin_db: float = 6.0
    floor_percentile: float = 10.0
    min_dbfs: float = -55.0
    voicing: float = 0.4
    f0_min: float = 60.0
    f0_max: float = 400.0
    min_voiced_run: int = 3
    flat_pitch_tolerance: float = 0.0005
    max_flat_fraction: float = 0.7
    hangover_frames: int = 8
    dynamic_range_db: float = 40.0

    def __post_init__(self) -> None:
        problems = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("min_voiced_run", "hangover_frames"):
                if type(value) is not int or value < 0:
                    problems.append(f"{f.name} must be an int >= 0, got {value!r}")
            elif type(value) not in (int, float) or not math.isfinite(value):
                problems.append(f"{f.name} must be a finite number, got {value!r}")
            elif f.name in ("min_speech_seconds", "min_enroll_seconds", "margin_db", "dynamic_range_db") and value < 0:
                problems.append(f"{f.name} must be a finite number >= 0, got {value!r}")
        if not problems:
            if not 0 <= self.floor_percentile <= 100:
                problems.append(f"floor_percentile must be in [0, 100], got {self.floor_percentile!r}")
            if not 0 < self.voicing < 1:
                problems.append(f"voicing must be in (0, 1), got {self.voicing!r}")
            if not 0 < self.f0_min < self.f0_max:
                problems.append(f"need 0 < f0_min < f0_max, got {self.f0_min!r} and {self.f0_max!r}")
            if not 0 <= self.max_flat_fraction <= 1 or self.flat_pitch_tolerance < 0:
                problems.append("max_flat_fraction must be in [0, 1] and flat_pitch_tolerance >= 0")
        if problems:
            raise ConfigError("invalid VadConfig: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict.

        >>> VadConfig.from_dict(VadConfig(margin_db=12.0).to_dict()).margin_db
        12.0
        """
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> VadConfig:
        """Rebuild from :meth:`to_dict` (ConfigError on unknown keys or bad values).

        >>> VadConfig.from_dict({"min_speech_seconds": 1.0}).min_speech_seconds
        1.0
        """
        if not isinstance(data, dict):
            raise ConfigError(f"VadConfig must be a dict of settings, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown VadConfig key(s) {unknown}; known keys: {sorted(known)}")
        return cls(**data)


@dataclass(frozen=True)
class SpeechActivity:
    """What :func:`detect_speech` found in one recording.

    Attributes:
        mask: one bool per Kaldi feature frame, True where the frame is speech.
        frame_shift_s: seconds between frames.
        voiced_frames: how many frames passed the voicing and pitch-continuity checks.
        reason: why the clip holds no speech (``None`` when some frame is speech).
        flat_fraction: share of continuous voiced frame pairs that hold the pitch (NaN without any).
        sounding: one bool per frame, True where the frame is not digital silence (None if not computed).

    >>> SpeechActivity(np.array([True, False, True]), 0.01, 2, None).speech_seconds
    0.02
    """

    mask: np.ndarray
    frame_shift_s: float
    voiced_frames: int
    reason: str | None
    flat_fraction: float = float("nan")
    sounding: np.ndarray | None = None

    @property
    def speech_seconds(self) -> float:
        """Seconds of speech: frames in the mask times the frame shift.

        >>> SpeechActivity(np.zeros(5, dtype=bool), 0.01, 0, "silent").speech_seconds
        0.0
        """
        return round(float(self.mask.sum()) * self.frame_shift_s, 6)


def _frames(x: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    return x[starts[:, None] + np.arange(length)[None, :]]


def _voicing(pitch_frames: np.ndarray, lag_min: int, lag_max: int) -> tuple[np.ndarray, np.ndarray]:
    """Best normalised cross-correlation in [lag_min, lag_max] and its (parabolically refined) lag."""
    n = pitch_frames.shape[1]
    size = 1 << (2 * n - 1).bit_length()
    spec = np.fft.rfft(pitch_frames, n=size, axis=1)
    acf = np.fft.irfft(spec * np.conj(spec), n=size, axis=1)[:, : lag_max + 2]
    sq = np.cumsum(pitch_frames**2, axis=1)
    total = sq[:, -1:]
    lags = np.arange(lag_max + 2)
    head = np.concatenate([np.zeros((sq.shape[0], 1)), sq], axis=1)
    e_first = head[:, n - lags]  # sum of x[0 : n - lag]^2
    e_last = total - head[:, lags]  # sum of x[lag : n]^2
    nccf = acf / np.sqrt(np.maximum(e_first * e_last, 1e-30))
    window = nccf[:, lag_min : lag_max + 1]
    best = np.argmax(window, axis=1) + lag_min
    rows = np.arange(nccf.shape[0])
    value = nccf[rows, best]
    # a true peak: not at the edges of the search range, higher than both neighbours
    left, right = nccf[rows, best - 1], nccf[rows, np.minimum(best + 1, lag_max + 1)]
    peak = (best > lag_min) & (best < lag_max) & (value >= left) & (value >= right)
    denom = left - 2 * value + right
    shift = np.where(np.abs(denom) > 1e-12, 0.5 * (left - right) / np.where(denom == 0, 1, denom), 0.0)
    return np.where(peak, value, 0.0), best + np.clip(shift, -0.5, 0.5)


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    padded = np.concatenate([[False], flags, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def detect_speech(wav: torch.Tensor | np.ndarray, feature_cfg: FeatureConfig,
                  cfg: VadConfig | None = None) -> SpeechActivity:
    """Find the speech frames of a 1-D waveform in [-1, 1] at ``feature_cfg.sample_rate``.

    Returns a :class:`SpeechActivity` whose ``mask`` has one entry per feature frame
    (``1 + (len(wav) - window) // shift``; none for a clip shorter than one frame).

    >>> import torch
    >>> from privspk.features.config import FeatureConfig
    >>> act = detect_speech(torch.randn(32000) * 0.1, FeatureConfig(n_mels=40))
    >>> act.speech_seconds, act.reason
    (0.0, 'no speech: no voiced sound above the noise floor')
    """
    cfg = cfg if cfg is not None else VadConfig()
    x = wav.detach().to("cpu", torch.float64).numpy() if isinstance(wav, torch.Tensor) else np.asarray(wav, np.float64)
    if x.ndim != 1:
        raise ConfigError(f"detect_speech needs a 1-D waveform, got shape {x.shape}")
    rate = feature_cfg.sample_rate
    win, shift = feature_cfg.window_samples, feature_cfg.shift_samples
    n_frames = 0 if x.size < win else 1 + (x.size - win) // shift
    if n_frames == 0:
        return SpeechActivity(np.zeros(0, dtype=bool), shift / rate, 0, "too short: shorter than one frame")
    starts = np.arange(n_frames) * shift
    half = int(round(_PITCH_WINDOW_S * rate / 2))
    emph = np.concatenate([[0.0], x[1:] - _PREEMPH * x[:-1]])
    padded = np.concatenate([np.zeros(half), emph, np.zeros(half + win)])
    lag_min = max(2, int(math.floor(rate / cfg.f0_max)))
    lag_max = int(math.ceil(rate / cfg.f0_min))
    energy_db = np.empty(n_frames)
    voiced_val = np.empty(n_frames)
    period = np.empty(n_frames)
    for lo in range(0, n_frames, _CHUNK_FRAMES):
        s = starts[lo : lo + _CHUNK_FRAMES]
        fr = _frames(x, s, win)
        fr = fr - fr.mean(axis=1, keepdims=True)
        energy_db[lo : lo + len(s)] = 10 * np.log10(np.mean(fr**2, axis=1) + 1e-12)
        centre = s + win // 2  # index into x; padded is shifted by `half`
        pf = _frames(padded, centre, 2 * half)
        pf = pf - pf.mean(axis=1, keepdims=True)
        v, p = _voicing(pf, lag_min, lag_max)
        voiced_val[lo : lo + len(s)] = v
        period[lo : lo + len(s)] = p
    if energy_db.max() < cfg.min_dbfs:
        return SpeechActivity(np.zeros(n_frames, dtype=bool), shift / rate, 0,
                              f"silent: no frame is louder than {cfg.min_dbfs:g} dBFS")
    # the floor of the sound that is there: digital silence (exact zeros) must not lower it
    sounding = energy_db[energy_db > _DIGITAL_SILENCE_DB]
    floor = float(np.percentile(sounding, cfg.floor_percentile)) if sounding.size else _DIGITAL_SILENCE_DB
    active = (energy_db >= floor + cfg.margin_db) & (energy_db >= cfg.min_dbfs)
    voiced = active & (voiced_val >= cfg.voicing)
    # keep runs of voiced frames whose pitch is continuous (period changes < 10 % frame to frame)
    keep = np.zeros(n_frames, dtype=bool)
    continuous_pairs, flat_pairs = 0, 0
    for a, b in _runs(voiced):
        if b - a < cfg.min_voiced_run:
            continue
        ratio = np.abs(np.diff(period[a:b])) / period[a : b - 1]
        smooth = ratio < 0.10
        if smooth.mean() < 0.5:
            continue  # a period that jumps about: periodic-looking noise, not a voice
        keep[a:b] = True
        continuous_pairs += int(smooth.sum())
        flat_pairs += int((ratio < cfg.flat_pitch_tolerance).sum())
    n_voiced = int(keep.sum())
    if n_voiced == 0:
        return SpeechActivity(np.zeros(n_frames, dtype=bool), shift / rate, 0,
                              "no speech: no voiced sound above the noise floor")
    flat = flat_pairs / continuous_pairs if continuous_pairs else float("nan")
    if continuous_pairs and flat > cfg.max_flat_fraction:
        return SpeechActivity(np.zeros(n_frames, dtype=bool), shift / rate, n_voiced,
                              "tonal: the pitch holds still like a tone or a played note, not speech", flat)
    near = keep.copy()
    h = cfg.hangover_frames
    if h:
        idx = np.flatnonzero(keep)
        delta = np.zeros(n_frames + 1, dtype=np.int64)
        np.add.at(delta, np.clip(idx - h, 0, n_frames), 1)
        np.add.at(delta, np.clip(idx + h + 1, 0, n_frames), -1)
        near = np.cumsum(delta[:-1]) > 0
    # the frames around the voiced ones count when they are within ``dynamic_range_db`` of the loud
    # speech: a bound set by the top of the clip, which pauses and digital silence do not move
    loud = float(np.percentile(energy_db, 95.0))
    mask = near & (energy_db >= max(cfg.min_dbfs, loud - cfg.dynamic_range_db))
    return SpeechActivity(mask, shift / rate, n_voiced, None, flat, energy_db > _DIGITAL_SILENCE_DB)
