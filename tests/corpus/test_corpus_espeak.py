"""privspk.corpus.espeak: synthesis through ctypes, determinism, and argument checks."""

from __future__ import annotations

import numpy as np
import pytest

from privspk.corpus.espeak import (
    ENGLISH_ACCENTS,
    ESPEAK_SAMPLE_RATE,
    EspeakVoice,
    espeak_version,
    list_variants,
    synthesize,
)
from privspk.errors import ConfigError

TEXT = "The quick brown fox jumps over the lazy dog."


def f0(x: np.ndarray, rate: int = ESPEAK_SAMPLE_RATE) -> float:
    """Median autocorrelation pitch of the loud 40 ms frames, in Hz (independent of eSpeak).

    The signal is low-passed at 500 Hz first so formants do not win over the fundamental.
    """
    x = x.astype(np.float64) / 32768.0
    spec = np.fft.rfft(x)
    spec[np.fft.rfftfreq(len(x), 1 / rate) > 500] = 0
    x = np.fft.irfft(spec, n=len(x))
    hop, size = rate // 100, int(0.04 * rate)
    lo, hi = rate // 400, rate // 40  # 40..400 Hz
    starts = list(range(0, len(x) - size, hop))
    energy = np.array([np.mean(x[i : i + size] ** 2) for i in starts])
    pitches = []
    for e, i in zip(energy, starts):
        if e < 0.1 * energy.max():
            continue
        frame = x[i : i + size] - x[i : i + size].mean()
        ac = np.correlate(frame, frame, mode="full")[size - 1 :]
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.3 * ac[0]:
            pitches.append(rate / lag)
    return float(np.median(pitches))


def test_synthesis_produces_speech_length_int16() -> None:
    wav = synthesize(TEXT, EspeakVoice(accent="en-us", variant="m3"), seed=0)
    assert wav.dtype == np.int16 and wav.ndim == 1
    assert 1.0 < wav.shape[0] / ESPEAK_SAMPLE_RATE < 5.0
    assert np.abs(wav.astype(np.int32)).max() > 1000


@pytest.mark.parametrize("variant", ["klatt3", "caleb", "Reed", "whisper", "m3"])  # caleb, Reed: libc rand()
def test_same_arguments_give_identical_samples_whatever_came_before(variant: str) -> None:
    voice = EspeakVoice(accent="en-gb-x-rp", variant=variant, pitch=35, rate_wpm=160)
    first = synthesize(TEXT, voice, seed=9)
    synthesize("Something else entirely, to disturb the state.", EspeakVoice(accent="en", variant="whisper"), seed=1)
    again = synthesize(TEXT, voice, seed=9)
    assert np.array_equal(first, again)


def test_seed_drives_the_noise_source_of_breathy_voices() -> None:
    voice = EspeakVoice(accent="en-us", variant="whisper")
    assert not np.array_equal(synthesize(TEXT, voice, seed=1), synthesize(TEXT, voice, seed=2))


def test_pitch_parameter_moves_the_measured_f0() -> None:
    measured = [
        f0(synthesize(TEXT, EspeakVoice(accent="en-us", variant=v, pitch=p, pitch_range=0), seed=0))
        for v in ("m3", "f1")
        for p in (20, 50, 80)
    ]
    m3, f1 = measured[:3], measured[3:]
    assert m3[0] * 1.2 < m3[1] and m3[1] * 1.2 < m3[2]
    assert f1[0] * 1.2 < f1[1] and f1[1] * 1.2 < f1[2]
    assert all(a < b for a, b in zip(m3, f1))  # the female variant is higher at every setting


def test_variants_and_accents_change_the_voice() -> None:
    base = synthesize(TEXT, EspeakVoice(accent="en-us", variant="f2"), seed=0)
    other_variant = synthesize(TEXT, EspeakVoice(accent="en-us", variant="m2"), seed=0)
    other_accent = synthesize(TEXT, EspeakVoice(accent="en-gb-scotland", variant="f2"), seed=0)
    assert not np.array_equal(base, other_variant)
    assert not np.array_equal(base, other_accent)


def test_every_listed_accent_is_known_to_espeak() -> None:
    for accent in ENGLISH_ACCENTS:
        assert synthesize("Yes.", EspeakVoice(accent=accent), seed=0).shape[0] > 0


def test_variant_list_and_version() -> None:
    variants = list_variants()
    assert len(variants) >= 100 and list(variants) == sorted(variants)
    assert {"Alex", "f1", "m1", "klatt", "whisper"} <= set(variants)
    assert espeak_version().startswith("1.")


@pytest.mark.parametrize(
    ("text", "voice", "seed", "match"),
    [
        ("", EspeakVoice(accent="en"), 0, "non-empty"),
        ("   ", EspeakVoice(accent="en"), 0, "non-empty"),
        ("x" * 2001, EspeakVoice(accent="en"), 0, "at most 2000"),
        ("Hi.", EspeakVoice(accent="en", variant="NoSuchVariant"), 0, "unknown eSpeak variant 'NoSuchVariant'"),
        ("Hi.", EspeakVoice(accent="xx-nowhere"), 0, "no voice 'xx-nowhere'"),
        ("Hi.", EspeakVoice(accent="en"), -1, "seed"),
        ("Hi.", "en-us", 0, "EspeakVoice"),
    ],
)
def test_bad_synthesis_arguments(text: str, voice: object, seed: int, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        synthesize(text, voice, seed=seed)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"accent": "en+Alex"}, "accent"),
        ({"accent": ""}, "accent"),
        ({"accent": "en", "variant": ""}, "variant"),
        ({"accent": "en", "rate_wpm": 79}, r"rate_wpm must be in \[80, 450\]"),
        ({"accent": "en", "pitch": -1}, "pitch"),
        ({"accent": "en", "pitch_range": 101}, "pitch_range"),
        ({"accent": "en", "word_gap": 51}, "word_gap"),
        ({"accent": "en", "pitch": 50.0}, "integer"),
    ],
)
def test_bad_voices_cannot_be_built(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        EspeakVoice(**kwargs)  # type: ignore[arg-type]
