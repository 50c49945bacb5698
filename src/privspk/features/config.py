"""Feature settings: one frozen dataclass that names every knob of extraction.

The settings decide what a cached feature matrix means, so :meth:`FeatureConfig.key`
hashes them into the name of the cache directory: change one setting and the
cache moves to another directory instead of serving stale features.

>>> cfg = FeatureConfig(n_mels=40)
>>> (cfg.dim, cfg.window_samples, cfg.shift_samples)
(40, 400, 160)
>>> FeatureConfig.from_dict(cfg.to_dict()) == cfg
True
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

from privspk.errors import ConfigError

__all__ = ["FEATURE_KINDS", "FeatureConfig"]

#: The feature kinds :func:`privspk.features.extract.extract` knows.
FEATURE_KINDS: tuple[str, ...] = ("fbank", "mfcc")

# Bumped when the meaning of cached features changes for the same settings
# (for example a change in how the waveform is scaled); it is part of ``key()``.
_FEATURE_FORMAT_VERSION = 1


def _next_power_of_two(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def _is_int(value: object) -> bool:
    return type(value) is int


def _is_real(value: object) -> bool:
    return type(value) in (int, float)


@dataclass(frozen=True, kw_only=True)
class FeatureConfig:
    """Settings of Kaldi-compatible log-mel filterbank or MFCC features.

    Arguments:
        kind: ``"fbank"`` (log mel filterbank energies) or ``"mfcc"``.
        n_mels: number of mel filters (the feature width for fbank).
        n_mfcc: number of cepstra kept for mfcc (at most ``n_mels``); ignored for fbank.
        frame_length_ms: analysis window length in milliseconds.
        frame_shift_ms: hop between frames in milliseconds.
        dither: Kaldi dither amount in int16 units (0 = deterministic features).
        cmn: subtract the per-utterance mean of every feature dimension.
        sample_rate: sample rate of the audio, in Hz.

    All fields are keyword-only; every problem is reported at once as a
    :class:`~privspk.errors.ConfigError`.

    Example:
        >>> FeatureConfig(kind="mfcc", n_mels=40, n_mfcc=20).dim
        20
        >>> FeatureConfig(kind="plp")
        Traceback (most recent call last):
        ...
        privspk.errors.ConfigError: invalid FeatureConfig: kind must be one of ('fbank', 'mfcc'), got 'plp'
    """

    kind: str = "fbank"
    n_mels: int = 80
    n_mfcc: int = 30
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    dither: float = 0.0
    cmn: bool = True
    sample_rate: int = 16000

    def __post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise ConfigError("invalid FeatureConfig: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        problems: list[str] = []
        if self.kind not in FEATURE_KINDS:
            problems.append(f"kind must be one of {FEATURE_KINDS}, got {self.kind!r}")
        for name in ("n_mels", "n_mfcc", "sample_rate"):
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                problems.append(f"{name} must be a positive int, got {value!r}")
        for name in ("frame_length_ms", "frame_shift_ms"):
            value = getattr(self, name)
            if not _is_real(value) or not 0.0 < value < float("inf"):
                problems.append(f"{name} must be a positive finite number of milliseconds, got {value!r}")
        if not _is_real(self.dither) or not 0.0 <= self.dither < float("inf"):
            problems.append(f"dither must be a finite number >= 0, got {self.dither!r}")
        if type(self.cmn) is not bool:
            problems.append(f"cmn must be True or False, got {self.cmn!r}")
        if problems:
            return problems
        # Relations between valid fields.
        if self.window_samples < 2:
            problems.append(
                f"frame_length_ms={self.frame_length_ms} gives {self.window_samples} samples at "
                f"{self.sample_rate} Hz; a frame needs at least 2"
            )
        if self.shift_samples < 1:
            problems.append(
                f"frame_shift_ms={self.frame_shift_ms} gives 0 samples at {self.sample_rate} Hz; "
                "make the shift longer"
            )
        fft_bins = _next_power_of_two(max(self.window_samples, 2)) // 2
        if not 4 <= self.n_mels <= fft_bins:
            problems.append(
                f"n_mels must be in [4, {fft_bins}] for a {self.frame_length_ms} ms frame at "
                f"{self.sample_rate} Hz, got {self.n_mels}"
            )
        if self.kind == "mfcc" and self.n_mfcc > self.n_mels:
            problems.append(f"n_mfcc ({self.n_mfcc}) cannot exceed n_mels ({self.n_mels})")
        return problems

    @property
    def dim(self) -> int:
        """Width ``F`` of the feature matrices these settings produce.

        >>> FeatureConfig(n_mels=64).dim
        64
        """
        return self.n_mels if self.kind == "fbank" else self.n_mfcc

    @property
    def window_samples(self) -> int:
        """Samples in one analysis frame (computed exactly as Kaldi does).

        >>> FeatureConfig(sample_rate=8000).window_samples
        200
        """
        return int(self.sample_rate * self.frame_length_ms * 0.001)

    @property
    def shift_samples(self) -> int:
        """Samples between the starts of two frames (computed exactly as Kaldi does).

        >>> FeatureConfig().shift_samples
        160
        """
        return int(self.sample_rate * self.frame_shift_ms * 0.001)

    def n_frames(self, n_samples: int) -> int:
        """Number of frames extracted from ``n_samples`` samples (0 when shorter than a frame).

        >>> FeatureConfig().n_frames(16000)
        98
        """
        if n_samples < self.window_samples:
            return 0
        return 1 + (n_samples - self.window_samples) // self.shift_samples

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-able dict of the settings.

        >>> FeatureConfig().to_dict()["kind"]
        'fbank'
        """
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> FeatureConfig:
        """Build settings from a dict; missing keys take their defaults, unknown keys are refused.

        >>> FeatureConfig.from_dict({"n_mels": 40}).n_mels
        40
        >>> FeatureConfig.from_dict({"n_mel": 40})
        Traceback (most recent call last):
        ...
        privspk.errors.ConfigError: unknown FeatureConfig key(s) ['n_mel']; known keys: ['cmn', 'dither', 'frame_length_ms', 'frame_shift_ms', 'kind', 'n_mels', 'n_mfcc', 'sample_rate']
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"FeatureConfig.from_dict needs a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise ConfigError(f"unknown FeatureConfig key(s) {unknown}; known keys: {sorted(known)}")
        return cls(**{str(k): v for k, v in data.items()})  # type: ignore[arg-type]

    def key(self) -> str:
        """Short stable name of these settings, used as the cache directory name.

        It reads ``<kind><dim>-<10 hex digits of a SHA-256 of every setting>``; equal settings
        give equal keys in every process and on every machine (``n_mfcc`` does not count for fbank).

        >>> FeatureConfig().key() == FeatureConfig().key()
        True
        >>> FeatureConfig().key() != FeatureConfig(cmn=False).key()
        True
        >>> FeatureConfig(n_mels=40).key().startswith("fbank40-")
        True
        """
        payload = dict(self.to_dict(), format_version=_FEATURE_FORMAT_VERSION)
        if self.kind == "fbank":
            del payload["n_mfcc"]  # fbank ignores it, so it must not move the cache
        # Floats are normalised so that 25 and 25.0 give the same key.
        for name in ("frame_length_ms", "frame_shift_ms", "dither"):
            payload[name] = float(payload[name])  # type: ignore[arg-type]
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        return f"{self.kind}{self.dim}-{hashlib.sha256(blob).hexdigest()[:10]}"
