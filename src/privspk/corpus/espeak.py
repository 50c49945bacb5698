"""Offline speech synthesis with eSpeak NG, driven through ctypes.

The library and its voice data come from the ``espeakng-loader`` wheel (no system package,
no network). eSpeak NG keeps global state that leaks from one utterance into the next
(glottal flutter phase, filter memories, noise generator), so the same call made after a
different history gives different samples, and some Klatt voices draw breath noise from
the C library's ``rand()``. :func:`synthesize` therefore unloads and reloads the shared
library before every utterance (about 0.5 ms), seeds eSpeak's own noise generator and the C
library's ``rand()`` (process-wide state: anything else in the process that uses ``rand()``
sees a reseeded sequence): its output is a pure function of its arguments, whatever was
synthesised before and in whichever process.

>>> wav = synthesize("Hello world.", EspeakVoice(accent="en-us", variant="Alex"), seed=1)
>>> (wav.dtype.name, wav.shape[0] > ESPEAK_SAMPLE_RATE // 4)
('int16', True)
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from privspk.errors import ConfigError, CorpusError

__all__ = [
    "ENGLISH_ACCENTS",
    "ESPEAK_SAMPLE_RATE",
    "EspeakVoice",
    "espeak_version",
    "list_variants",
    "synthesize",
]

logger = logging.getLogger(__name__)

#: Rate of the samples eSpeak NG produces, in Hz.
ESPEAK_SAMPLE_RATE = 22050
#: English language voices (accents) shipped with espeak-ng-data.
ENGLISH_ACCENTS: tuple[str, ...] = (
    "en-us",
    "en",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)

# speak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE, _PARAM_WORDGAP = 1, 2, 3, 4, 7

#: Audio handed to the callback per call, in ms (fewer Python callbacks than the 60 ms default).
_BUFFER_MS = 1000

_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


def _int_in(value: object, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{name} must be in [{low}, {high}], got {value}")
    return int(value)


@dataclass(frozen=True)
class EspeakVoice:
    """A complete eSpeak NG voice setting.

    Attributes:
        accent: language voice, e.g. ``"en-us"`` or ``"en-gb-scotland"`` (:data:`ENGLISH_ACCENTS`).
        variant: voice variant file in ``espeak-ng-data/voices/!v`` (``"Alex"``, ``"f3"``,
            ``"klatt4"`` ...; :func:`list_variants`), or ``None`` for the accent's default.
        rate_wpm: speaking rate in words per minute, 80..450.
        pitch: base pitch, 0..100 (50 is the variant's normal).
        pitch_range: intonation range, 0..100 (0 monotone, 50 normal).
        word_gap: extra pause between words, in units of 10 ms, 0..50.

    >>> EspeakVoice(accent="en-gb-x-rp", variant="f2").name
    'en-gb-x-rp+f2'
    >>> EspeakVoice(accent="en", pitch=101)
    Traceback (most recent call last):
    ...
    privspk.errors.ConfigError: pitch must be in [0, 100], got 101
    """

    accent: str
    variant: str | None = None
    rate_wpm: int = 175
    pitch: int = 50
    pitch_range: int = 50
    word_gap: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.accent, str) or not self.accent or "+" in self.accent:
            raise ConfigError(f"accent must be an eSpeak language voice name such as 'en-us', got {self.accent!r}")
        if self.variant is not None and (not isinstance(self.variant, str) or not self.variant):
            raise ConfigError(f"variant must be a variant name or None, got {self.variant!r}")
        _int_in(self.rate_wpm, "rate_wpm", 80, 450)
        _int_in(self.pitch, "pitch", 0, 100)
        _int_in(self.pitch_range, "pitch_range", 0, 100)
        _int_in(self.word_gap, "word_gap", 0, 50)

    @property
    def name(self) -> str:
        """The name eSpeak is given: ``accent`` or ``accent+variant``.

        >>> EspeakVoice(accent="en-us").name
        'en-us'
        """
        return self.accent if self.variant is None else f"{self.accent}+{self.variant}"

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready).

        >>> EspeakVoice(accent="en").to_dict()["rate_wpm"]
        175
        """
        return {
            "accent": self.accent,
            "variant": self.variant,
            "rate_wpm": self.rate_wpm,
            "pitch": self.pitch,
            "pitch_range": self.pitch_range,
            "word_gap": self.word_gap,
        }


def _loader() -> Any:
    try:
        import espeakng_loader
    except ImportError as exc:  # pragma: no cover - a pinned dependency
        raise CorpusError(
            "the built-in corpus needs the espeakng-loader wheel (pip install espeakng-loader==0.2.4)"
        ) from exc
    return espeakng_loader


@functools.lru_cache(maxsize=1)
def _data_path() -> Path:
    try:
        return Path(_loader().get_data_path())
    except RuntimeError as exc:
        raise CorpusError(f"espeakng-loader has no voice data ({exc}); reinstall espeakng-loader") from exc


@functools.lru_cache(maxsize=1)
def list_variants() -> tuple[str, ...]:
    """Names of the voice variants shipped with espeak-ng-data, sorted.

    >>> v = list_variants()
    >>> ("Alex" in v, "klatt3" in v, len(v) >= 100)
    (True, True, True)
    """
    folder = _data_path() / "voices" / "!v"
    if not folder.is_dir():
        raise CorpusError(f"{folder}: espeak-ng voice variants not found; reinstall espeakng-loader")
    return tuple(sorted(p.name for p in folder.iterdir() if p.is_file()))


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None)
    libc.srand.argtypes = [ctypes.c_uint]
    libc.srand.restype = None
    return libc


def _libc_srand(seed: int) -> None:
    """Seed the C library's ``rand()``: the Klatt voices with breath noise draw from it."""
    _libc().srand(seed)


class _Engine:
    """One process's handle on libespeak-ng, reloaded before each utterance."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lib: ctypes.CDLL | None = None
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)

    def _collect(self, wav: Any, n: int, _events: Any) -> int:
        if wav and n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def _unload(self) -> bool:
        """Terminate and unload the library; False where it cannot be unloaded (no dlclose)."""
        if self._lib is None:
            return True
        import _ctypes

        dlclose = getattr(_ctypes, "dlclose", None)
        if dlclose is None:  # pragma: no cover - Windows
            return False
        self._lib.espeak_Terminate()
        handle = self._lib._handle
        self._lib = None
        dlclose(handle)
        return True

    def _fresh(self) -> ctypes.CDLL:
        """Unload and reload the library so no state survives from the last utterance."""
        current = self._lib
        if current is not None and not self._unload():  # pragma: no cover - Windows
            logger.warning("cannot unload libespeak-ng here; synthesis may depend on earlier calls")
            return current
        lib_path = _loader().get_library_path()
        try:
            lib = ctypes.CDLL(lib_path)
        except OSError as exc:
            raise CorpusError(f"{lib_path}: cannot load libespeak-ng ({exc}); reinstall espeakng-loader") from exc
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
            ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Info.argtypes = [ctypes.c_void_p]
        lib.espeak_Info.restype = ctypes.c_char_p
        rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, _BUFFER_MS, os.fsencode(_data_path()), _INITIALIZE_DONT_EXIT
        )
        if rate != ESPEAK_SAMPLE_RATE:
            raise CorpusError(
                f"espeak_Initialize returned {rate}, expected {ESPEAK_SAMPLE_RATE} Hz; "
                "the espeak-ng data may be damaged, reinstall espeakng-loader"
            )
        lib.espeak_SetSynthCallback(self._callback)
        self._lib = lib
        return lib

    def version(self) -> str:
        with self._lock:
            lib = self._fresh()
            return lib.espeak_Info(None).decode("ascii", "replace")

    def synthesize(self, text: str, voice: EspeakVoice, seed: int) -> np.ndarray:
        data = text.encode("utf-8")
        with self._lock:
            lib = self._fresh()
            status = lib.espeak_SetVoiceByName(voice.name.encode("utf-8"))
            if status != 0:
                raise ConfigError(
                    f"eSpeak has no voice {voice.accent!r} (status {status}); use a language voice such as "
                    f"{ENGLISH_ACCENTS[:3]}"
                )
            for param, value in (
                (_PARAM_RATE, voice.rate_wpm),
                (_PARAM_VOLUME, 100),
                (_PARAM_PITCH, voice.pitch),
                (_PARAM_RANGE, voice.pitch_range),
                (_PARAM_WORDGAP, voice.word_gap),
            ):
                if lib.espeak_SetParameter(param, value, 0) != 0:
                    raise CorpusError(f"espeak_SetParameter({param}, {value}) failed")
            lib.espeak_ng_SetRandSeed(seed)
            _libc_srand(seed)
            self._chunks = []
            status = lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            chunks, self._chunks = self._chunks, []
        if status != 0:
            raise CorpusError(f"espeak_Synth failed with status {status} for voice {voice.name!r}")
        if not chunks:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(chunks).astype(np.int16, copy=False)


_ENGINE = _Engine()


def espeak_version() -> str:
    """Version of the bundled libespeak-ng, e.g. ``"1.52.0"``.

    >>> espeak_version().split(".")[0]
    '1'
    """
    return _ENGINE.version().split()[0]


def synthesize(text: str, voice: EspeakVoice, *, seed: int = 0) -> np.ndarray:
    """Speak ``text`` with ``voice``; int16 samples at :data:`ESPEAK_SAMPLE_RATE`.

    Deterministic: the same (text, voice, seed) gives the same samples in any process and
    after any earlier call. ``seed`` drives eSpeak's noise source (breathy and whispered
    variants, Klatt voices). Thread-safe (calls are serialised); processes are independent.

    Args:
        text: UTF-8 text, 1..2000 characters.
        voice: accent, variant and prosody.
        seed: seed of eSpeak's internal noise generator, 0..2**31-1.

    Raises:
        ConfigError: empty text, unknown variant or accent, bad seed.
        CorpusError: the library cannot be loaded or synthesis failed.

    >>> v = EspeakVoice(accent="en-gb-scotland", variant="f3", rate_wpm=150, pitch=60)
    >>> a = synthesize("Good morning.", v, seed=7)
    >>> b = synthesize("Good morning.", v, seed=7)
    >>> bool((a == b).all())
    True
    """
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"text must be a non-empty string, got {text!r}")
    if len(text) > 2000:
        raise ConfigError(f"text is {len(text)} characters; synthesise at most 2000 at a time")
    if not isinstance(voice, EspeakVoice):
        raise ConfigError(f"voice must be an EspeakVoice, got {type(voice).__name__}")
    if voice.variant is not None and voice.variant not in list_variants():
        raise ConfigError(
            f"unknown eSpeak variant {voice.variant!r}; choose one of list_variants(), e.g. {list_variants()[:4]}"
        )
    s = _int_in(seed, "seed", 0, 2**31 - 1)
    return _ENGINE.synthesize(text, voice, s)
