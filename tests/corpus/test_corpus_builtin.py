"""privspk.corpus.builtin: speaker profiles, utterance rendering, and building the corpus."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from privspk.corpus import builtin
from privspk.corpus.builtin import (
    BUILTIN_SAMPLE_RATE,
    MAX_UTT_SECONDS,
    MIN_UTT_SECONDS,
    SpeakerProfile,
    build_builtin_corpus,
    default_split,
    heldout_count,
    load_builtin_split,
    load_speaker_profiles,
    make_speaker_profiles,
    render_utterance,
)
from privspk.corpus.espeak import ENGLISH_ACCENTS, list_variants
from privspk.corpus.readers import load_corpus
from privspk.corpus.types import SpeakerSplit
from privspk.errors import ConfigError, CorpusError



def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "build.json"  # build.json holds the wall-clock build time
    }


# ---------------------------------------------------------------------------- profiles


def test_profiles_are_deterministic_and_within_their_ranges() -> None:
    ps = make_speaker_profiles(200, seed=0)
    assert ps == make_speaker_profiles(200, seed=0)
    assert ps != make_speaker_profiles(200, seed=1)
    assert [p.speaker for p in ps] == [f"spk{i:03d}" for i in range(200)]
    assert all(20 <= p.pitch <= 80 and 20 <= p.pitch_range <= 90 for p in ps)
    assert all(125 <= p.rate_wpm <= 210 and 0.85 <= p.warp <= 1.15 and -0.5 <= p.tilt <= 0.5 for p in ps)
    assert {p.accent for p in ps} == set(ENGLISH_ACCENTS)
    assert {p.variant for p in ps} <= set(list_variants())
    # speakers are genuinely different: no two share every generating parameter
    keys = {(p.variant, p.accent, p.pitch, p.pitch_range, p.rate_wpm, p.warp) for p in ps}
    assert len(keys) == 200


@pytest.mark.parametrize("n", [3, 7, 50, 200, 333])
def test_heldout_speakers_have_voice_variants_no_one_else_has(n: int) -> None:
    ps = make_speaker_profiles(n, seed=n)
    held = [p for p in ps if p.heldout]
    assert len(held) == heldout_count(n)
    held_variants = {p.variant for p in held}
    assert held_variants.isdisjoint(p.variant for p in ps if not p.heldout)
    # about one reserved variant per two held-out speakers, at most a quarter of all variants
    assert len(held_variants) >= min(math.ceil(len(held) / 2), len(list_variants()) // 4)


def test_heldout_roles_are_not_visible_in_the_ids() -> None:
    ps = make_speaker_profiles(200, seed=0)
    positions = [i for i, p in enumerate(ps) if p.heldout]
    assert positions != list(range(len(positions)))
    assert max(positions) - min(positions) > 100  # spread over the id range


def test_default_split_uses_the_reserved_variants_as_heldout() -> None:
    ps = make_speaker_profiles(200, seed=0)
    split = default_split(ps, seed=0)
    assert set(split.heldout) == {p.speaker for p in ps if p.heldout}
    assert (len(split.heldout), len(split.public), [len(c) for c in split.clients]) == (40, 67, [31, 31, 31])
    split.validate([p.speaker for p in ps])
    small = default_split(make_speaker_profiles(4, seed=0), seed=0)
    assert (len(small.heldout), len(small.public), small.n_clients) == (1, 1, 2)


def test_profile_round_trip_and_bad_rows() -> None:
    p = make_speaker_profiles(3, seed=2)[0]
    assert SpeakerProfile.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    with pytest.raises(CorpusError, match="malformed speaker profile"):
        SpeakerProfile.from_dict({"speaker": "x"})


@pytest.mark.parametrize(("n", "seed"), [(2, 0), (0, 0), (10, -1), (True, 0), (5.0, 0)])
def test_profile_arguments(n: object, seed: object) -> None:
    with pytest.raises(ConfigError):
        make_speaker_profiles(n, seed=seed)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- rendering


def test_rendered_utterances_are_deterministic_and_in_range() -> None:
    ps = make_speaker_profiles(40, seed=3)
    for p in ps[:6]:
        wav, text = render_utterance(p, index=2, seed=3)
        again, text_again = render_utterance(p, index=2, seed=3)
        assert torch.equal(wav, again) and text == text_again
        assert wav.dtype == torch.float32 and wav.dim() == 1
        assert MIN_UTT_SECONDS <= wav.shape[0] / BUILTIN_SAMPLE_RATE <= MAX_UTT_SECONDS
        assert 0.17 < float(wav.abs().max()) <= 0.9 + 1e-6  # peak 0.9 then -14..0 dB
    a, _ = render_utterance(ps[0], index=0, seed=3)
    b, _ = render_utterance(ps[0], index=1, seed=3)
    c, _ = render_utterance(ps[0], index=0, seed=4)
    assert not torch.equal(a, b[: a.shape[0]]) and not torch.equal(a, c[: a.shape[0]])


def test_warp_moves_the_spectrum() -> None:
    """Same everything but the warp: the spectral centroid moves in the warp's direction."""
    base = make_speaker_profiles(3, seed=0)[0]

    def centroid(warp: float) -> float:
        p = SpeakerProfile(**{**base.to_dict(), "warp": warp, "tilt": 0.0})
        wav, _ = render_utterance(p, index=0, seed=0)
        spec = np.abs(np.fft.rfft(wav.numpy())) ** 2
        f = np.fft.rfftfreq(wav.shape[0], 1 / BUILTIN_SAMPLE_RATE)
        band = f < 4000
        return float((spec[band] * f[band]).sum() / spec[band].sum())

    assert centroid(0.85) < centroid(1.0) < centroid(1.15)


def test_trim_cuts_silence_only() -> None:
    rate = 1000
    x = np.zeros(3000, dtype=np.float32)
    x[1000:2000] = 0.5
    out = builtin._trim(x, rate, margin_s=0.0)
    assert out.shape[0] == 1000 and np.all(out == 0.5)
    assert builtin._trim(np.zeros(100, dtype=np.float32), rate).shape[0] == 0


# ---------------------------------------------------------------------------- building


def test_tiny_build_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "builtin"
    corpus = build_builtin_corpus(out, n_speakers=4, utts_per_speaker=3, seed=5, workers=1, progress=False)
    assert len(corpus) == 12 and corpus.speakers == ("spk000", "spk001", "spk002", "spk003")
    for u in corpus.utterances:
        assert u.path == out / "wav" / u.speaker / f"{u.utt_id}.wav"
        info = sf.info(u.path)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert MIN_UTT_SECONDS <= info.duration <= MAX_UTT_SECONDS
    assert sorted(p.name for p in out.iterdir()) == ["build.json", "manifest.tsv", "speakers.json", "split.json", "wav"]
    assert load_corpus(out) == corpus
    split = load_builtin_split(out)
    split.validate(corpus.speakers)
    assert split.speakers == corpus.speakers
    profiles = load_speaker_profiles(out)
    assert profiles == make_speaker_profiles(4, seed=5)
    assert set(split.heldout) == {p.speaker for p in profiles if p.heldout}
    build = json.loads((out / "build.json").read_text())
    assert build["complete"] is True and build["params"]["seed"] == 5
    assert build["stats"]["utterances"] == 12


def test_rebuild_is_skipped_when_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = build_builtin_corpus(tmp_path, n_speakers=3, utts_per_speaker=2, seed=0, workers=1, progress=False)
    stamp = (tmp_path / "manifest.tsv").stat().st_mtime_ns

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("the corpus was rebuilt")

    monkeypatch.setattr(builtin, "render_utterance", boom)
    again = build_builtin_corpus(tmp_path, n_speakers=3, utts_per_speaker=2, seed=0, workers=1, progress=False)
    assert again == first and (tmp_path / "manifest.tsv").stat().st_mtime_ns == stamp


def test_half_written_or_changed_builds_are_redone(tmp_path: Path) -> None:
    build_builtin_corpus(tmp_path, n_speakers=3, utts_per_speaker=2, seed=0, workers=1, progress=False)
    reference = digest(tmp_path)
    # a crash mid-build: marker says incomplete and a file is missing
    build = json.loads((tmp_path / "build.json").read_text())
    (tmp_path / "build.json").write_text(json.dumps({"complete": False, "params": build["params"]}))
    (tmp_path / "wav" / "spk001" / "spk001-001.wav").unlink()
    build_builtin_corpus(tmp_path, n_speakers=3, utts_per_speaker=2, seed=0, workers=1, progress=False)
    assert digest(tmp_path) == reference
    # a file deleted after a complete build
    (tmp_path / "wav" / "spk002" / "spk002-000.wav").unlink()
    build_builtin_corpus(tmp_path, n_speakers=3, utts_per_speaker=2, seed=0, workers=1, progress=False)
    assert digest(tmp_path) == reference
    # other parameters: rebuilt with them, old files gone
    c = build_builtin_corpus(tmp_path, n_speakers=3, utts_per_speaker=1, seed=0, workers=1, progress=False)
    assert len(c) == 3 and len(list((tmp_path / "wav").rglob("*.wav"))) == 3


def test_parallel_build_is_identical_to_serial(tmp_path: Path) -> None:
    """Worker processes (each with its own eSpeak) write the same bytes as this process."""
    build_builtin_corpus(tmp_path / "serial", n_speakers=3, utts_per_speaker=2, seed=11, workers=1, progress=False)
    build_builtin_corpus(tmp_path / "parallel", n_speakers=3, utts_per_speaker=2, seed=11, workers=2, progress=False)
    assert digest(tmp_path / "serial") == digest(tmp_path / "parallel")


def test_foreign_folder_is_not_touched(tmp_path: Path) -> None:
    (tmp_path / "wav").mkdir()
    (tmp_path / "wav" / "mine.wav").write_bytes(b"precious")
    with pytest.raises(CorpusError, match="not a privspk built-in corpus"):
        build_builtin_corpus(tmp_path, n_speakers=3, utts_per_speaker=1, workers=1, progress=False)
    assert (tmp_path / "wav" / "mine.wav").read_bytes() == b"precious"
    (tmp_path / "file").write_text("x")
    with pytest.raises(CorpusError, match="not a folder"):
        build_builtin_corpus(tmp_path / "file", n_speakers=3, utts_per_speaker=1, workers=1, progress=False)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_speakers": 2}, "n_speakers"),
        ({"utts_per_speaker": 0}, "utts_per_speaker"),
        ({"workers": 0}, "workers"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_build_arguments(tmp_path: Path, kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"n_speakers": 3, "utts_per_speaker": 1, "workers": 1, "progress": False}
    args.update(kwargs)
    with pytest.raises(ConfigError, match=match):
        build_builtin_corpus(tmp_path, **args)  # type: ignore[arg-type]


@pytest.mark.slow
def test_default_corpus_full_build(tmp_path: Path) -> None:
    """The documented default: 200 speakers x 40 utterances, 2 workers (minutes on 2 cores)."""
    corpus = build_builtin_corpus(tmp_path, progress=False)
    assert len(corpus) == 200 * 40 and len(corpus.speakers) == 200
    split = SpeakerSplit.load(tmp_path / "split.json")
    split.validate(corpus.speakers)
    assert (len(split.heldout), len(split.public), [len(c) for c in split.clients]) == (40, 67, [31, 31, 31])
    profiles = {p.speaker: p for p in load_speaker_profiles(tmp_path)}
    assert {p.variant for s, p in profiles.items() if s in split.heldout}.isdisjoint(
        p.variant for s, p in profiles.items() if s in split.trainable
    )
    stats = json.loads((tmp_path / "build.json").read_text())["stats"]
    assert MIN_UTT_SECONDS <= stats["seconds_min"] and stats["seconds_max"] <= MAX_UTT_SECONDS
    assert 2.5 <= stats["seconds_mean"] <= 4.5
    assert load_corpus(tmp_path) == corpus
