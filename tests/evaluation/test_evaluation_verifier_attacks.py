"""Issue 17's attacks on the verifier, run as tests: each one must fail (the verifier refuses).

"alice" is enrolled from eSpeak NG speech; the attacker then tries silence, tones, noises and
music-like sounds, a 0.1 s clip, a store scored with another encoder, and the same speech with
exact-zero runs or resampled through 48 kHz (which must not move the score). The stand-in encoder
is the evaluation tests' mean/std encoder; the demo encoder's figures are in
``benchmarks/results/verifier_impostors.md``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from privspk.audio.io import resample, write_audio
from privspk.corpus.espeak import ESPEAK_SAMPLE_RATE, EspeakVoice, synthesize
from privspk.errors import CheckpointError, PrivspkError
from privspk.evaluation.nonspeech import NONSPEECH_KINDS, nonspeech_signals
from privspk.evaluation.verifier import Verifier
from privspk.features.config import FeatureConfig

CFG = FeatureConfig(n_mels=24, cmn=False)
SENTENCES = (
    "The quick brown fox jumps over the lazy dog near the river.",
    "Please call me back when you reach the station tonight.",
    "My voice is my password, verify me now.",
    "Seven green bottles were standing on the kitchen wall.",
)


def speech(text: str, voice: EspeakVoice, *, seed: int = 1) -> torch.Tensor:
    raw = torch.from_numpy(synthesize(text, voice, seed=seed).astype(np.float32) / 32768.0)
    return resample(raw, orig_freq=ESPEAK_SAMPLE_RATE, new_freq=16000)


@pytest.fixture(scope="module")
def alice_audio() -> list[torch.Tensor]:
    return [speech(s, EspeakVoice(accent="en-us")) for s in SENTENCES]


@pytest.fixture
def encoder(mean_std_encoder):
    return mean_std_encoder(CFG.dim, 8, seed=0)


@pytest.fixture
def alice(encoder, alice_audio) -> Verifier:
    v = Verifier(encoder, CFG, threshold=0.5)
    v.enroll("alice", alice_audio[:2])
    return v


def _accepted(result) -> bool:
    return bool(tuple(result)[1])


@pytest.mark.parametrize("kind", NONSPEECH_KINDS)
def test_non_speech_is_never_accepted_whatever_the_threshold(alice, kind):
    wav = nonspeech_signals(seconds=3.0, seed=7)[kind]
    alice.threshold = -1e9  # a threshold that accepts every score: only speech detection can refuse
    assert not _accepted(alice.verify("alice", wav)), f"{kind} was accepted as alice"


@pytest.mark.parametrize("kind", ["digital_silence", "dither", "pink_noise", "tone_220", "melody_plucked"])
def test_non_speech_cannot_be_enrolled(encoder, kind):
    sigs = nonspeech_signals(seconds=3.0, seed=3)
    v = Verifier(encoder, CFG, threshold=0.5)
    with pytest.raises(PrivspkError, match="speech"):
        v.enroll("ghost", [sigs[kind], sigs[kind]])
    assert v.speakers == ()


def test_a_tenth_of_a_second_neither_enrols_nor_verifies(alice, alice_audio, encoder):
    clip = alice_audio[2][8000:9600]  # 0.1 s from the middle of a sentence
    with pytest.raises(PrivspkError, match="speech"):
        Verifier(encoder, CFG, threshold=0.5).enroll("short", [clip, clip])
    alice.threshold = -1e9
    assert not _accepted(alice.verify("alice", clip))


def test_exact_zero_runs_do_not_move_the_score(alice, alice_audio):
    probe = alice_audio[2]
    base = alice.score("alice", probe)
    # lengthen the pauses with exact zeros: 0.3 s before, 0.4 s inside the sentence's longest
    # digitally silent pause (between words), 0.3 s after
    silent = (probe == 0).numpy()
    edges = np.flatnonzero(np.diff(np.concatenate([[0], silent.astype(np.int8), [0]])))
    runs = [(a, b) for a, b in zip(edges[::2], edges[1::2]) if 0 < a and b < probe.shape[0]]
    a, b = max(runs, key=lambda r: r[1] - r[0])
    mid = (a + b) // 2
    gap = torch.zeros(int(0.3 * 16000))
    zeros = torch.cat([gap, probe[:mid], torch.zeros(int(0.4 * 16000)), probe[mid:], gap])
    assert float((zeros == 0).float().mean()) > 0.2
    assert alice.score("alice", zeros) == pytest.approx(base, abs=0.02)


def test_a_48khz_round_trip_does_not_move_the_score(alice, alice_audio, tmp_path):
    probe = alice_audio[3]
    write_audio(tmp_path / "p16.wav", probe, sample_rate=16000)
    write_audio(tmp_path / "p48.wav", resample(probe, orig_freq=16000, new_freq=48000), sample_rate=48000)
    assert alice.score("alice", tmp_path / "p48.wav") == pytest.approx(alice.score("alice", tmp_path / "p16.wav"),
                                                                       abs=0.02)


def test_a_store_is_never_scored_with_another_encoder(alice, mean_std_encoder, tmp_path):
    alice.save(tmp_path / "store")
    other = mean_std_encoder(CFG.dim, 8, seed=1)  # same architecture and size, other weights
    with pytest.raises(CheckpointError, match="encoder"):
        Verifier.load(tmp_path / "store", other)
