"""Speech activity detection: eSpeak voices (languages, variants, pitch and speed extremes) hold speech;
silence, tones, noises and music-like signals hold none; the mask lines up with the feature frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from privspk.audio.io import resample
from privspk.corpus.espeak import ESPEAK_SAMPLE_RATE, EspeakVoice, synthesize
from privspk.errors import ConfigError
from privspk.evaluation.nonspeech import NONSPEECH_KINDS, nonspeech_signals
from privspk.evaluation.vad import SpeechActivity, VadConfig, detect_speech
from privspk.features.config import FeatureConfig
from privspk.features.extract import extract

CFG = FeatureConfig(n_mels=40)
TEXT = "The quick brown fox jumps over the lazy dog near the river bank."
VOICES = [
    EspeakVoice(accent="en-us"),
    EspeakVoice(accent="de"),
    EspeakVoice(accent="fr"),
    EspeakVoice(accent="en", variant="Annie"),
    EspeakVoice(accent="en-us", variant="m7"),
    EspeakVoice(accent="en-us", variant="f3"),
    EspeakVoice(accent="en-us", variant="klatt4"),
    EspeakVoice(accent="en-us", pitch=0, rate_wpm=80),
    EspeakVoice(accent="en-us", pitch=100, rate_wpm=450),
    EspeakVoice(accent="en-us", pitch_range=0),  # monotone
]


def speech(voice: EspeakVoice, text: str = TEXT) -> torch.Tensor:
    raw = torch.from_numpy(synthesize(text, voice, seed=1).astype(np.float32) / 32768.0)
    return resample(raw, orig_freq=ESPEAK_SAMPLE_RATE, new_freq=CFG.sample_rate)


@pytest.mark.parametrize("voice", VOICES, ids=lambda v: f"{v.name}-p{v.pitch}-r{v.rate_wpm}-range{v.pitch_range}")
def test_espeak_voices_hold_speech(voice):
    wav = speech(voice)
    act = detect_speech(wav, CFG)
    assert act.reason is None
    duration = wav.shape[0] / CFG.sample_rate
    assert 0.5 <= act.speech_seconds <= duration
    assert act.mask.shape == (extract(wav, CFG).shape[0],)


@pytest.mark.parametrize("kind", NONSPEECH_KINDS)
def test_non_speech_holds_none(kind):
    act = detect_speech(nonspeech_signals(seconds=4.0, seed=11)[kind], CFG)
    assert act.speech_seconds == 0.0
    assert act.reason is not None and act.reason.split(":")[0] in ("silent", "no speech", "tonal")


@pytest.mark.parametrize("level", [0.1, 0.9])  # peak level of the speech; noise RMS 0.003
def test_speech_in_stationary_noise_is_found_and_the_noise_alone_is_not(level):
    wav = speech(VOICES[0])
    rng = np.random.default_rng(0)
    noise = torch.from_numpy((rng.standard_normal(wav.shape[0] + 16000) * 0.003).astype(np.float32))
    noisy = noise.clone()
    noisy[8000 : 8000 + wav.shape[0]] += wav * level / float(wav.abs().max())
    assert detect_speech(noisy, CFG).speech_seconds >= 0.5
    assert detect_speech(noise, CFG).speech_seconds == 0.0


def test_zero_runs_are_never_speech():
    wav = speech(VOICES[0])
    padded = torch.cat([torch.zeros(8000), wav, torch.zeros(8000)])
    act = detect_speech(padded, CFG)
    assert not act.mask[: 8000 // CFG.shift_samples - 2].any()
    assert not act.mask[-(8000 // CFG.shift_samples - 2) :].any()
    assert act.speech_seconds == pytest.approx(detect_speech(wav, CFG).speech_seconds, abs=0.05)


def test_short_and_silent_clips():
    assert detect_speech(torch.zeros(100), CFG).mask.shape == (0,)
    assert detect_speech(speech(VOICES[0])[8000:9600], CFG).speech_seconds < VadConfig().min_speech_seconds


def test_config_round_trip_and_errors():
    cfg = VadConfig(min_speech_seconds=1.0, hangover_frames=4)
    assert VadConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown VadConfig key"):
        VadConfig.from_dict({"min_speech": 1})
    with pytest.raises(ConfigError, match="f0_min < f0_max"):
        VadConfig(f0_min=300.0, f0_max=200.0)
    with pytest.raises(ConfigError, match="hangover_frames must be an int"):
        VadConfig(hangover_frames=1.5)
    with pytest.raises(ConfigError, match="1-D waveform"):
        detect_speech(torch.zeros(2, 400), CFG)
    assert SpeechActivity(np.ones(10, dtype=bool), 0.01, 10, None).speech_seconds == 0.1


@pytest.mark.parametrize("variant", ["whisper", "whisperf"])
def test_known_limit_whispered_voices_are_refused(variant):
    """Documented limit (README): whispered speech has (almost) no voicing: less than a trial's minimum of speech."""
    act = detect_speech(speech(EspeakVoice(accent="en-us", variant=variant)), CFG)
    assert act.speech_seconds < VadConfig().min_speech_seconds


@pytest.mark.parametrize("variant", ["Alex", "robosoft8"])
def test_robot_like_narrow_pitch_voices_still_hold_speech(variant):
    act = detect_speech(speech(EspeakVoice(accent="en-us", variant=variant)), CFG)
    assert act.reason is None and act.speech_seconds >= 0.5 and act.flat_fraction <= VadConfig().max_flat_fraction
