"""End-to-end tests of privspk.evaluation.verifier with a stand-in encoder and synthetic speakers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from privspk.audio.io import write_audio
from privspk.errors import AudioError, CheckpointError, ConfigError
from privspk.evaluation.embed import embed_features
from privspk.evaluation.metrics import threshold_at_eer, threshold_at_far
from privspk.evaluation.verifier import Verifier
from privspk.features.config import FeatureConfig
from privspk.features.extract import extract

CFG = FeatureConfig(n_mels=24, cmn=False)
SPEAKERS = {"low": 120.0, "high": 260.0}  # two "speakers" = two harmonic tone families


@pytest.fixture
def encoder(mean_std_encoder):
    return mean_std_encoder(CFG.dim, 8, seed=0)


@pytest.fixture
def voice(make_tone):
    def make(speaker: str, index: int) -> torch.Tensor:
        return make_tone(SPEAKERS[speaker], seconds=0.5, seed=1000 * len(speaker) + index)

    return make


@pytest.fixture
def enrolled(encoder, voice):
    v = Verifier(encoder, CFG, threshold=0.0, vad=None)  # tone "speakers": no speech detection
    for name in SPEAKERS:
        v.enroll(name, [voice(name, 0), voice(name, 1)])
    return v


def test_end_to_end_enroll_calibrate_verify(enrolled, voice):
    # Held-out recordings 2..5 of each speaker, scored against both templates.
    genuine, impostor = [], []
    for claimed in SPEAKERS:
        for actual in SPEAKERS:
            for i in range(2, 6):
                score = enrolled.score(claimed, voice(actual, i))
                (genuine if claimed == actual else impostor).append(score)
    assert min(genuine) > max(impostor)
    threshold = enrolled.calibrate(genuine, impostor, rule="eer")
    assert threshold == threshold_at_eer(genuine, impostor) == enrolled.threshold
    for i in range(6, 9):  # fresh recordings
        assert enrolled.verify("low", voice("low", i))[1]
        assert not enrolled.verify("low", voice("high", i))[1]
        assert enrolled.verify("high", voice("high", i))[1]
        assert not enrolled.verify("high", voice("low", i))[1]


def test_template_is_renormalised_mean_of_unit_embeddings(encoder, voice):
    wavs = [voice("low", 0), voice("low", 1), voice("low", 2)]
    v = Verifier(encoder, CFG, threshold=0.5, vad=None)
    v.enroll("low", wavs)
    emb = embed_features(encoder, {str(i): extract(w, CFG) for i, w in enumerate(wavs)})
    mean = np.mean([emb[str(i)] for i in range(3)], axis=0)
    template = mean / np.linalg.norm(mean)
    probe = voice("low", 5)
    probe_emb = embed_features(encoder, {"p": extract(probe, CFG)})["p"]
    score, accepted = v.verify("low", probe)
    assert score == pytest.approx(float(template @ probe_emb), abs=1e-6)
    assert accepted == (score >= 0.5)
    np.testing.assert_allclose(v.embed(probe), probe_emb, atol=1e-6)


def test_file_paths_and_tensors_agree(enrolled, voice, tmp_path):
    wav = voice("high", 4)
    path = tmp_path / "probe.wav"
    write_audio(path, wav, sample_rate=16000)
    from_file = enrolled.score("high", path)
    assert from_file == pytest.approx(enrolled.score("high", wav), abs=1e-3)  # 16-bit PCM rounding
    assert enrolled.score("high", str(path)) == from_file


def test_corrupt_audio_raises_audio_error(enrolled, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x10\x00\x00\x00WAVEnot really audio")
    with pytest.raises(AudioError, match="bad.wav"):
        enrolled.verify("low", bad)
    with pytest.raises(AudioError, match="missing.wav"):
        enrolled.enroll("new", [tmp_path / "missing.wav"])
    assert "new" not in enrolled.speakers


def test_unknown_speaker_lists_enrolled_names(enrolled, voice):
    with pytest.raises(ConfigError, match=r"speaker 'mid' is not enrolled; enrolled speakers: 'high', 'low'"):
        enrolled.verify("mid", voice("low", 0))
    with pytest.raises(ConfigError, match="'mid' is not enrolled"):
        enrolled.remove("mid")


def test_remove_and_replace(enrolled, voice):
    assert enrolled.speakers == ("high", "low")
    enrolled.remove("high")
    assert enrolled.speakers == ("low",)
    with pytest.raises(ConfigError, match="'low' is already enrolled; pass replace=True"):
        enrolled.enroll("low", [voice("high", 0)])
    before = enrolled.score("low", voice("low", 3))
    enrolled.enroll("low", [voice("high", 0)], replace=True)
    assert enrolled.score("low", voice("low", 3)) < before


@pytest.mark.parametrize(
    ("name", "wavs", "fragment"),
    [
        ("", [torch.zeros(4000)], "non-empty string"),
        ("x", [], "non-empty list of recordings"),
        ("x", torch.zeros(4000), "non-empty list of recordings"),
        ("x", "a.wav", "non-empty list of recordings"),
        ("x", [3], "file path or a 1-D waveform"),
    ],
)
def test_bad_enrollment(encoder, name, wavs, fragment):
    v = Verifier(encoder, CFG, threshold=0.5)
    with pytest.raises(ConfigError, match=fragment):
        v.enroll(name, wavs)


@pytest.mark.parametrize("threshold", [float("nan"), float("inf"), "0.5", None, True])
def test_bad_threshold(encoder, threshold):
    with pytest.raises(ConfigError, match="threshold must be a finite number"):
        Verifier(encoder, CFG, threshold=threshold)


def test_bad_constructor_arguments(encoder):
    with pytest.raises(ConfigError, match="feature_cfg must be a FeatureConfig"):
        Verifier(encoder, {"n_mels": 24}, threshold=0.5)
    with pytest.raises(ConfigError, match="encoder must be a torch.nn.Module"):
        Verifier(lambda x: x, CFG, threshold=0.5)


def test_calibrate_far_rule_and_bad_rule(encoder):
    v = Verifier(encoder, CFG, threshold=0.5)
    target, nontarget = [0.9, 0.8, 0.75, 0.4], [0.7, 0.5, 0.3, 0.2, 0.1]
    # One false alarm of five allowed: the score 0.7 is the lowest usable; midway from 0.5.
    assert v.calibrate(target, nontarget, rule="far", far=0.2) == threshold_at_far(target, nontarget, far=0.2)
    assert v.threshold == pytest.approx(0.6)
    with pytest.raises(ConfigError, match=r"rule must be one of \('eer', 'far'\)"):
        v.calibrate(target, nontarget, rule="dcf")
    with pytest.raises(ConfigError, match="nontarget scores are empty"):
        v.calibrate(target, [])
    assert v.threshold == pytest.approx(0.6)  # failed calibrations leave it alone


def test_save_load_round_trip(enrolled, encoder, voice, tmp_path):
    enrolled.threshold = 0.123
    enrolled.save(tmp_path / "v", encoder_checkpoint="encoder.pt")
    meta = json.loads((tmp_path / "v" / "verifier.json").read_text())
    assert meta["encoder_checkpoint"] == "encoder.pt" and meta["speakers"] == ["high", "low"]
    loaded = Verifier.load(tmp_path / "v", encoder)
    assert loaded.speakers == enrolled.speakers
    assert loaded.threshold == 0.123
    assert loaded.feature_cfg == CFG
    probe = voice("low", 7)
    for name in SPEAKERS:
        # load re-normalises the stored templates and scores with a dot product that may take another
        # SIMD path: the same score to 1e-9, not bit-for-bit (it differed in the last bit on an AMD EPYC)
        got, want = loaded.verify(name, probe), enrolled.verify(name, probe)
        assert got.score == pytest.approx(want.score, rel=0, abs=1e-9)
        assert got.accepted == want.accepted


def test_save_load_empty_verifier(encoder, tmp_path):
    Verifier(encoder, CFG, threshold=0.5).save(tmp_path)
    assert Verifier.load(tmp_path, encoder).speakers == ()


def test_load_refuses_bad_folders(enrolled, encoder, mean_std_encoder, tmp_path):
    folder = tmp_path / "v"
    with pytest.raises(CheckpointError, match="verifier.json: missing"):
        Verifier.load(folder, encoder)
    enrolled.save(folder)
    with pytest.raises(CheckpointError, match="templates are 8-dimensional but the encoder's embed_dim is 4"):
        Verifier.load(folder, mean_std_encoder(CFG.dim, 4))

    meta_path = folder / "verifier.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps(dict(meta, speakers=["low"])))
    with pytest.raises(CheckpointError, match="do not match"):
        Verifier.load(folder, encoder)
    meta_path.write_text(json.dumps(dict(meta, threshold=None)))
    with pytest.raises(CheckpointError, match="threshold must be a finite number"):
        Verifier.load(folder, encoder)
    meta_path.write_text(json.dumps(dict(meta, feature_config={"n_mel": 24})))
    with pytest.raises(CheckpointError, match="unknown FeatureConfig key"):
        Verifier.load(folder, encoder)
    meta_path.write_text(json.dumps(dict(meta, format="something-else")))
    with pytest.raises(CheckpointError, match="not a privspk-verifier file"):
        Verifier.load(folder, encoder)
    meta_path.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        Verifier.load(folder, encoder)
    meta_path.write_text(json.dumps(meta))
    (folder / "templates.npz").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="unreadable templates"):
        Verifier.load(folder, encoder)
