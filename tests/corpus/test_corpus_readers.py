"""privspk.corpus.readers: each layout on a small tree written here, bad files, Kaldi edge cases."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from privspk.audio.io import read_audio
from privspk.corpus.readers import (
    detect_format,
    load_corpus,
    read_folder,
    read_kaldi_dir,
    read_librispeech,
    read_voxceleb,
)
from privspk.corpus.types import Corpus
from privspk.errors import AudioError, ConfigError, CorpusError


def put(path: Path, seconds: float = 1.0, rate: int = 16000, channels: int = 1, seed: int = 0) -> Path:
    """Write a short noise file with soundfile (independent of privspk's writer)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (round(seconds * rate), channels) if channels > 1 else (round(seconds * rate),)
    sf.write(path, rng.uniform(-0.3, 0.3, shape), rate)
    return path


def ids(corpus: Corpus) -> list[tuple[str, str]]:
    return [(u.utt_id, u.speaker) for u in corpus.utterances]


# ---------------------------------------------------------------------------- folder


def test_folder_layout(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    put(tmp_path / "bob" / "b1.wav")
    put(tmp_path / "alice" / "a2.flac")
    put(tmp_path / "alice" / "a1.wav")
    (tmp_path / "alice" / "notes.txt").write_text("not audio")
    put(tmp_path / "alice" / ".a3.wav")  # hidden: e.g. a half-written file
    put(tmp_path / ".cache" / "x.wav")  # hidden folder
    put(tmp_path / "stray.wav")
    with caplog.at_level(logging.WARNING):
        c = read_folder(tmp_path)
    assert ids(c) == [("alice/a1", "alice"), ("alice/a2", "alice"), ("bob/b1", "bob")]
    assert c.utterances[0].path == tmp_path / "alice" / "a1.wav"
    assert "1 audio file(s) directly in the root" in caplog.text
    assert detect_format(tmp_path) == "folder"


def test_folder_with_one_name_twice_is_refused(tmp_path: Path) -> None:
    put(tmp_path / "s" / "u.wav")
    put(tmp_path / "s" / "u.flac")
    with pytest.raises(CorpusError, match="'s/u' also used by"):
        read_folder(tmp_path)


def test_stereo_44k1_file_in_a_corpus_reads_as_16k_mono(tmp_path: Path) -> None:
    put(tmp_path / "s1" / "st.wav", seconds=0.5, rate=44100, channels=2)
    c = load_corpus(tmp_path, min_seconds=0.1)
    wav = read_audio(c.utterances[0].path)
    assert wav.dim() == 1 and wav.shape[0] == 8000


# ---------------------------------------------------------------------------- LibriSpeech / VoxCeleb


def test_librispeech_layout(tmp_path: Path) -> None:
    put(tmp_path / "19" / "198" / "19-198-0001.flac")
    put(tmp_path / "19" / "198" / "19-198-0000.flac")
    put(tmp_path / "26" / "495" / "26-495-0003.flac")
    (tmp_path / "19" / "198" / "19-198.trans.txt").write_text("19-198-0000 HELLO\n")
    c = read_librispeech(tmp_path)
    assert ids(c) == [("19-198-0000", "19"), ("19-198-0001", "19"), ("26-495-0003", "26")]
    assert detect_format(tmp_path) == "librispeech"
    assert load_corpus(tmp_path) == c


def test_librispeech_warns_about_odd_names(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    put(tmp_path / "19" / "198" / "hello.flac")
    with caplog.at_level(logging.WARNING):
        assert ids(read_librispeech(tmp_path)) == [("hello", "19")]
    assert "do not look like LibriSpeech ids" in caplog.text


def test_voxceleb_layout(tmp_path: Path) -> None:
    put(tmp_path / "id10001" / "1zcIwhmdeo4" / "00001.wav")
    put(tmp_path / "id10001" / "7gWzIy6yIIk" / "00001.wav")
    put(tmp_path / "id10002" / "C7k7C-PDvAA" / "00002.wav")
    c = read_voxceleb(tmp_path)
    assert ids(c) == [
        ("id10001/1zcIwhmdeo4/00001", "id10001"),
        ("id10001/7gWzIy6yIIk/00001", "id10001"),
        ("id10002/C7k7C-PDvAA/00002", "id10002"),
    ]
    assert detect_format(tmp_path) == "voxceleb"


def test_a_layout_read_at_the_wrong_depth_says_what_it_expected(tmp_path: Path) -> None:
    put(tmp_path / "spk" / "u.wav")
    with pytest.raises(CorpusError, match=r"LibriSpeech: root/<speaker>/<chapter>"):
        read_librispeech(tmp_path)
    with pytest.raises(CorpusError, match="VoxCeleb"):
        read_voxceleb(tmp_path)


# ---------------------------------------------------------------------------- Kaldi


def kaldi(tmp_path: Path, scp: str, utt2spk: str) -> Path:
    d = tmp_path / "data"
    d.mkdir(exist_ok=True)
    (d / "wav.scp").write_text(scp)
    (d / "utt2spk").write_text(utt2spk)
    return d


def test_kaldi_dir_relative_and_absolute_paths(tmp_path: Path) -> None:
    d = tmp_path / "data"
    rel = put(d / "audio" / "u1.wav")
    absolute = put(tmp_path / "elsewhere" / "u2.flac")
    kaldi(tmp_path, f"u2 {absolute}\nu1 audio/u1.wav\n\n", "u1 spkA\nu2 spkB\n")
    c = read_kaldi_dir(d)
    assert ids(c) == [("u1", "spkA"), ("u2", "spkB")]
    assert [u.path for u in c.utterances] == [rel, absolute]
    assert detect_format(d) == "kaldi"
    assert load_corpus(d) == c


def test_kaldi_path_with_spaces_is_kept_whole(tmp_path: Path) -> None:
    put(tmp_path / "data" / "my audio" / "u 1.wav")
    d = kaldi(tmp_path, "u1 my audio/u 1.wav\n", "u1 s\n")
    assert read_kaldi_dir(d).utterances[0].path == d / "my audio" / "u 1.wav"


@pytest.mark.parametrize(
    ("scp", "utt2spk", "match"),
    [
        ("u1 sox a.wav -t wav - |\n", "u1 s\n", r"wav.scp:1: utterance 'u1' is a piped command.*Convert it first"),
        ("u1 -\n", "u1 s\n", "reads stdin"),
        ("u1 raw.ark:1234\n", "u1 s\n", "points into a Kaldi archive"),
        ("u1 a.wav\nu1 b.wav\n", "u1 s\n", r"wav.scp:2: utterance 'u1' is listed twice"),
        ("u1 a.wav\n", "u1 s\nu2 s\n", r"1 utterance\(s\) in utt2spk have no wav.scp entry, e.g. \['u2'\]"),
        ("u1\n", "u1 s\n", r"wav.scp:1: expected '<utt-id> <value>'"),
        ("u1 a.wav\n", "u1\n", r"utt2spk:1: expected"),
        ("u1 a.wav\n", "u1 s extra\n", r"utt2spk:1: expected '<utt-id> <speaker-id>'"),
        ("u1 a.wav\n", "u1 s\nu1 t\n", r"utt2spk:2: utterance 'u1' is listed twice"),
        ("u1 a.wav\n", "\n", "utt2spk lists no utterances"),
    ],
)
def test_kaldi_dir_errors(tmp_path: Path, scp: str, utt2spk: str, match: str) -> None:
    d = kaldi(tmp_path, scp, utt2spk)
    with pytest.raises(CorpusError, match=match):
        read_kaldi_dir(d)


def test_kaldi_dir_missing_files_and_segments(tmp_path: Path) -> None:
    d = tmp_path / "data"
    d.mkdir()
    (d / "wav.scp").write_text("u1 a.wav\n")
    with pytest.raises(CorpusError, match=r"missing \['utt2spk'\]"):
        read_kaldi_dir(d)
    (d / "utt2spk").write_text("u1 s\n")
    (d / "segments").write_text("u1 rec 0.0 1.0\n")
    with pytest.raises(CorpusError, match="'segments' file.*Cut the segments into files first"):
        read_kaldi_dir(d)
    with pytest.raises(CorpusError, match="Kaldi data dir not found"):
        read_kaldi_dir(tmp_path / "nope")


def test_kaldi_wav_without_speaker_is_dropped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    d = kaldi(tmp_path, "u1 a.wav\nu9 b.wav\n", "u1 s\n")
    with caplog.at_level(logging.WARNING):
        c = read_kaldi_dir(d)
    assert ids(c) == [("u1", "s")]
    assert "1 wav.scp entries have no speaker" in caplog.text


# ---------------------------------------------------------------------------- load_corpus: bad files


def corrupt_tree(root: Path) -> dict[str, Path]:
    """Two good files and one of each kind of bad file, all in one folder corpus."""
    good = [put(root / "s1" / "good1.wav"), put(root / "s2" / "good2.flac", seed=1)]
    bad = {}
    bad["empty"] = root / "s1" / "empty.wav"
    bad["empty"].write_bytes(b"")
    bad["junk"] = root / "s1" / "junk.wav"
    bad["junk"].write_text("definitely not a RIFF file\n" * 10)
    full = put(root / "tmp" / "full.wav").read_bytes()
    bad["truncated"] = root / "s2" / "trunc.wav"
    bad["truncated"].write_bytes(full[: len(full) // 2])
    flac = put(root / "tmp" / "full.flac", seed=2).read_bytes()
    bad["truncated flac"] = root / "s2" / "trunc2.flac"
    bad["truncated flac"].write_bytes(flac[: len(flac) * 2 // 3])
    for p in (root / "tmp").iterdir():
        p.unlink()
    (root / "tmp").rmdir()
    return {"good": good, **bad}  # type: ignore[dict-item]


def test_raise_mode_names_the_first_bad_file(tmp_path: Path) -> None:
    files = corrupt_tree(tmp_path)
    with pytest.raises(AudioError) as info:
        load_corpus(tmp_path)
    assert info.value.path == str(files["empty"])  # s1/empty.wav is listed first
    assert "on_error='skip'" in str(info.value) and "'s1/empty'" in str(info.value)


def test_skip_mode_counts_and_logs_each_bad_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    files = corrupt_tree(tmp_path)
    with caplog.at_level(logging.WARNING):
        c = load_corpus(tmp_path, on_error="skip")
    assert ids(c) == [("s1/good1", "s1"), ("s2/good2", "s2")]
    assert len(c.skipped) == 4
    assert {s.path for s in c.skipped} == {files[k] for k in ("empty", "junk", "truncated", "truncated flac")}
    for key in ("empty", "junk", "truncated", "truncated flac"):
        assert f"skipping {files[key]}" in caplog.text


def test_duration_limits_leave_files_out_without_raising(tmp_path: Path) -> None:
    put(tmp_path / "s" / "short.wav", seconds=0.3)
    put(tmp_path / "s" / "mid.wav", seconds=2.0)
    put(tmp_path / "s" / "long.wav", seconds=5.0)
    c = load_corpus(tmp_path, min_seconds=1.0, max_seconds=4.0)
    assert [u.utt_id for u in c.utterances] == ["s/mid"]
    assert sorted(s.reason for s in c.skipped) == [
        "duration 0.30 s outside [1, 4] s",
        "duration 5.00 s outside [1, 4] s",
    ]


def test_nothing_usable_is_a_corpus_error(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "a.wav").write_bytes(b"")
    with pytest.raises(CorpusError, match=r"no usable utterances \(1 left out, first: .*a.wav: file is empty"):
        load_corpus(tmp_path, on_error="skip")


def test_empty_or_speakerless_folder_says_what_layout_was_expected(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="no speaker-labelled audio found; expected a folder of speaker folders"):
        load_corpus(tmp_path)
    put(tmp_path / "loose.wav")
    with pytest.raises(CorpusError, match="Kaldi data dir"):
        load_corpus(tmp_path)
    with pytest.raises(CorpusError, match="corpus not found"):
        load_corpus(tmp_path / "absent")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fmt": "timit"}, "fmt must be one of"),
        ({"on_error": "ignore"}, "on_error"),
        ({"min_seconds": -1.0}, "min_seconds"),
        ({"min_seconds": float("nan")}, "min_seconds"),
        ({"max_seconds": "4"}, "max_seconds"),
        ({"min_seconds": 3.0, "max_seconds": 2.0}, "must not be below"),
    ],
)
def test_bad_arguments_are_config_errors(tmp_path: Path, kwargs: dict[str, object], match: str) -> None:
    put(tmp_path / "s" / "a.wav")
    with pytest.raises(ConfigError, match=match):
        load_corpus(tmp_path, **kwargs)  # type: ignore[arg-type]


def test_manifest_format_from_file_or_folder(tmp_path: Path) -> None:
    put(tmp_path / "s1" / "a.wav")
    put(tmp_path / "s2" / "b.wav")
    c = read_folder(tmp_path)
    c.to_manifest(tmp_path / "manifest.tsv")
    assert detect_format(tmp_path) == "manifest"
    assert load_corpus(tmp_path) == c
    assert load_corpus(tmp_path / "manifest.tsv") == c
    assert load_corpus(tmp_path, fmt="folder") == c


def test_explicit_format_overrides_detection(tmp_path: Path) -> None:
    put(tmp_path / "19" / "198" / "19-198-0001.flac")
    assert ids(load_corpus(tmp_path, fmt="voxceleb")) == [("19/198/19-198-0001", "19")]
