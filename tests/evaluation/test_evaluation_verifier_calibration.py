"""Cohort normalisation, a threshold for a stated false-accept rate from public speakers, the store
recording both, the encoder fingerprint, and bounded analysis of long recordings."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from privspk.audio.io import resample
from privspk.corpus.espeak import ESPEAK_SAMPLE_RATE, EspeakVoice, synthesize
from privspk.errors import CheckpointError, ConfigError
from privspk.evaluation.metrics import threshold_at_far
from privspk.evaluation.scoring import as_norm
from privspk.evaluation.verifier import Verifier, encoder_fingerprint
from privspk.features.config import FeatureConfig

CFG = FeatureConfig(n_mels=24, cmn=False)
TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "Please call me back when you reach the station.",
    "My voice is my password, verify me now.",
    "Seven green bottles were standing on the wall.",
)
PUBLIC = [("en-us", v) for v in ("m1", "m3", "f1", "f2", "f4", "m5", "Andy", "klatt2")]


def speech(text: str, voice: EspeakVoice) -> torch.Tensor:
    raw = torch.from_numpy(synthesize(text, voice, seed=1).astype(np.float32) / 32768.0)
    return resample(raw, orig_freq=ESPEAK_SAMPLE_RATE, new_freq=16000)


@pytest.fixture(scope="module")
def public() -> dict[str, list[torch.Tensor]]:
    return {f"{a}+{v}": [speech(t, EspeakVoice(accent=a, variant=v)) for t in TEXTS] for a, v in PUBLIC}


@pytest.fixture
def encoder(mean_std_encoder):
    return mean_std_encoder(CFG.dim, 8, seed=0)


def test_calibrate_public_sets_cohort_and_far_threshold(encoder, public):
    v = Verifier(encoder, CFG, threshold=0.0)
    info = v.calibrate_public(public, far=0.1, enroll_per_speaker=2, top_n=None, seed=0)
    assert info["rule"] == "far" and info["far"] == 0.1
    assert info["n_cohort_speakers"] == 4 and info["n_calibration_speakers"] == 4
    assert v.cohort_size == 4 * len(TEXTS)
    # 4 calibration speakers x 2 test recordings: each template sees 2 targets and 6 impostors
    assert (info["n_target"], info["n_nontarget"]) == (8, 24)
    assert info["far_reached"] <= 0.1
    assert v.calibration == info


def test_threshold_is_the_far_threshold_of_the_public_trials(encoder, public):
    """Recompute the calibration trials by hand (AS-norm against the cohort speakers) and the threshold."""
    v = Verifier(encoder, CFG, threshold=0.0)
    v.calibrate_public(public, far=0.25, enroll_per_speaker=2, top_n=6, seed=3)
    names = sorted(public)
    order = np.random.default_rng(3).permutation(len(names))
    cohort_spk = sorted(names[i] for i in order[:4])
    calib = [names[i] for i in sorted(order[4:])]
    emb = {s: [v.embed(w) for w in public[s]] for s in names}
    cohort = np.stack([e for s in cohort_spk for e in emb[s]])
    target, nontarget = [], []
    for claimed in calib:
        template = np.mean(emb[claimed][:2], axis=0)
        template /= np.linalg.norm(template)
        for actual in calib:
            for test in emb[actual][2:]:
                raw = float(template @ test)
                norm = as_norm(np.array([raw]), (cohort @ template)[None], (cohort @ test)[None], 6)[0]
                (target if claimed == actual else nontarget).append(norm)
    assert v.threshold == pytest.approx(threshold_at_far(target, nontarget, far=0.25), abs=1e-9)


def test_verify_scores_are_as_normalised_and_saved_with_the_store(encoder, public, tmp_path):
    v = Verifier(encoder, CFG, threshold=0.0)
    v.calibrate_public(public, far=0.1, top_n=8)
    alice = [speech(t, EspeakVoice(accent="en-us")) for t in TEXTS]
    v.enroll("alice", alice[:2])
    decision = v.verify("alice", alice[3])
    assert decision.score != pytest.approx(decision.raw_score)  # normalised, not the cosine
    v.save(tmp_path / "s", encoder_checkpoint="encoder.pt")
    meta = json.loads((tmp_path / "s" / "verifier.json").read_text())
    assert meta["score"] == "as-norm" and meta["top_n"] == 8 and meta["calibration"]["far"] == 0.1
    assert meta["encoder_fingerprint"] == encoder_fingerprint(encoder)
    assert meta["vad"]["min_speech_seconds"] == 0.5
    loaded = Verifier.load(tmp_path / "s", encoder)
    assert loaded.cohort_size == v.cohort_size and loaded.calibration == v.calibration
    again = loaded.verify("alice", alice[3])
    assert again.score == pytest.approx(decision.score, abs=1e-6) and again.accepted == decision.accepted


def test_set_cohort_clears_the_calibration_and_checks_shapes(encoder):
    v = Verifier(encoder, CFG, threshold=0.5)
    v.calibrate([0.9, 0.8], [0.1, 0.2], rule="far", far=0.0)
    assert v.calibration["rule"] == "far"
    v.set_cohort(np.eye(8)[:4], top_n=2)
    assert v.calibration is None and v.cohort_size == 4
    with pytest.raises(ConfigError, match="top_n"):
        v.set_cohort(np.eye(8)[:4], top_n=9)
    with pytest.raises(ConfigError, match="cohort must be"):
        v.set_cohort(np.eye(8)[:1])
    v.set_cohort(None)
    assert v.cohort_size == 0


def test_calibrate_public_refuses_too_few_speakers(encoder, public):
    v = Verifier(encoder, CFG, threshold=0.0)
    with pytest.raises(ConfigError, match="at least 4 public speakers"):
        v.calibrate_public(dict(list(public.items())[:3]))
    with pytest.raises(ConfigError, match="far must be"):
        v.calibrate_public(public, far=1.5)


def test_an_encoder_changed_after_enrolment_is_refused(encoder, public):
    v = Verifier(encoder, CFG, threshold=0.0)
    v.enroll("alice", public["en-us+m1"][:2])
    with torch.no_grad():
        encoder.proj.weight.mul_(1.01)
    with pytest.raises(CheckpointError, match="weights changed since the speakers were enrolled"):
        v.verify("alice", public["en-us+m1"][2])


def test_old_stores_are_refused_with_a_clear_error(encoder, tmp_path):
    Verifier(encoder, CFG, threshold=0.5).save(tmp_path)
    meta = json.loads((tmp_path / "verifier.json").read_text())
    (tmp_path / "verifier.json").write_text(json.dumps(dict(meta, version=1)))
    with pytest.raises(CheckpointError, match="version-1 store .* enrol the speakers again"):
        Verifier.load(tmp_path, encoder)


def test_long_recordings_are_capped_with_a_warning(encoder, public, caplog):
    v = Verifier(encoder, CFG, threshold=0.0, max_seconds=6.0)
    v.enroll("alice", public["en-us+m1"][:2])
    probe = public["en-us+m1"][3]
    head = torch.cat([probe, torch.zeros(16000 * 6 - probe.shape[0])])
    long = torch.cat([head, public["en-us+f1"][0].repeat(20)])  # another voice after the first 6 s
    with caplog.at_level(logging.WARNING, logger="privspk.evaluation.verifier"):
        capped = v.score("alice", long)
    assert "analysing its first 6.0 s only" in caplog.text
    assert capped == pytest.approx(v.score("alice", head), abs=1e-6)


def test_windows_average_to_the_whole_embedding_for_short_speech(encoder, public):
    """Speech shorter than a window is embedded in one piece; longer speech in equal windows."""
    wav = torch.cat(public["en-us+m1"])
    whole = Verifier(encoder, CFG, threshold=0.0, window_seconds=60.0).embed(wav)
    windowed = Verifier(encoder, CFG, threshold=0.0, window_seconds=1.0).embed(wav)
    assert np.linalg.norm(windowed) == pytest.approx(1.0)
    assert float(whole @ windowed) > 0.9  # the same voice, averaged over windows
