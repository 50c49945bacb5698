"""privspk.corpus.types: Utterance, Corpus (with its manifest) and SpeakerSplit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privspk.corpus.types import MANIFEST_HEADER, Corpus, SkippedFile, SpeakerSplit, Utterance
from privspk.errors import CorpusError

NAME = st.text(
    alphabet=st.characters(
        min_codepoint=33,
        max_codepoint=0x3FF,
        exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp"),
        exclude_characters="/\\",
    ),
    min_size=1,
    max_size=8,
)


def corpus_of(root: Path, pairs: list[tuple[str, str]]) -> Corpus:
    return Corpus(root, tuple(Utterance(u, s, root / s / f"{u}.wav") for u, s in pairs))


# ---------------------------------------------------------------------------- Utterance / Corpus


@pytest.mark.parametrize("bad", ["", " a", "a\tb", "a\nb", "a\x85b", "a\u2028b", "a\x00b", 3])
def test_utterance_refuses_bad_ids(bad: object) -> None:
    with pytest.raises(CorpusError, match="utterance id"):
        Utterance(bad, "spk", Path("x.wav"))  # type: ignore[arg-type]
    with pytest.raises(CorpusError, match="speaker"):
        Utterance("u", bad, Path("x.wav"))  # type: ignore[arg-type]


def test_utterance_path_becomes_a_path() -> None:
    assert Utterance("u", "s", "a/b.wav").path == Path("a/b.wav")  # type: ignore[arg-type]


def test_corpus_helpers(tmp_path: Path) -> None:
    c = corpus_of(tmp_path, [("u3", "b"), ("u1", "a"), ("u2", "b")])
    assert len(c) == 3
    assert c.speakers == ("a", "b")
    assert {s: [u.utt_id for u in us] for s, us in c.by_speaker().items()} == {"a": ["u1"], "b": ["u3", "u2"]}
    sub = c.subset(["b"])
    assert sub.speakers == ("b",) and len(sub) == 2 and sub.root == c.root
    with pytest.raises(CorpusError, match=r"not in the corpus: \['zz'\]"):
        c.subset(["b", "zz"])


def test_corpus_refuses_duplicate_ids_and_non_utterances(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="'u1' occurs twice"):
        corpus_of(tmp_path, [("u1", "a"), ("u1", "b")])
    with pytest.raises(CorpusError, match="Utterance objects"):
        Corpus(tmp_path, ("u1",))  # type: ignore[arg-type]


def test_skipped_files_do_not_change_equality(tmp_path: Path) -> None:
    a = corpus_of(tmp_path, [("u1", "a")])
    b = Corpus(a.root, a.utterances, skipped=(SkippedFile(tmp_path / "x.wav", "empty"),))
    assert a == b and len(b.skipped) == 1


@settings(max_examples=30, deadline=None)
@given(pairs=st.lists(st.tuples(NAME, NAME), min_size=1, max_size=12, unique_by=lambda p: p[0]))
def test_manifest_round_trip(tmp_path_factory: pytest.TempPathFactory, pairs: list[tuple[str, str]]) -> None:
    root = tmp_path_factory.mktemp("m")
    c = corpus_of(root, pairs)
    c.to_manifest(root / "manifest.tsv")
    lines = (root / "manifest.tsv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == MANIFEST_HEADER and len(lines) == len(pairs) + 1
    assert all(not line.split("\t")[2].startswith("/") for line in lines[1:])  # relative paths
    assert Corpus.from_manifest(root / "manifest.tsv") == c


def test_manifest_elsewhere_keeps_paths_relative_to_root(tmp_path: Path) -> None:
    c = corpus_of(tmp_path / "data", [("u1", "a")])
    c.to_manifest(tmp_path / "lists" / "m.tsv")
    back = Corpus.from_manifest(tmp_path / "lists" / "m.tsv", root=tmp_path / "data")
    assert back == c


def test_manifest_without_header_and_with_blank_lines_is_read(tmp_path: Path) -> None:
    (tmp_path / "m.tsv").write_text("u1\ts1\ta.wav\n\nu2\ts2\t/abs/b.wav\n")
    c = Corpus.from_manifest(tmp_path / "m.tsv")
    assert [(u.utt_id, u.path) for u in c.utterances] == [("u1", tmp_path / "a.wav"), ("u2", Path("/abs/b.wav"))]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("utt_id\tspeaker\tpath\nu1\ts1\n", r"m.tsv:2: expected 3 tab-separated fields"),
        ("u1 s1 a.wav\n", r"m.tsv:1: expected 3"),
        ("u1\ts1\ta.wav\nu1\ts2\tb.wav\n", "occurs twice"),
        ("u1\t\ta.wav\n", r"m.tsv:1: expected 3"),
    ],
)
def test_malformed_manifest_names_the_line(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "m.tsv").write_text(text)
    with pytest.raises(CorpusError, match=match):
        Corpus.from_manifest(tmp_path / "m.tsv")


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="manifest not found"):
        Corpus.from_manifest(tmp_path / "none.tsv")


# ---------------------------------------------------------------------------- SpeakerSplit


def test_split_round_trips_through_dict_and_file(tmp_path: Path) -> None:
    s = SpeakerSplit(public=["p1", "p2"], clients=[["a"], ["b", "c"]], heldout=["h"])  # type: ignore[arg-type]
    assert s.clients == (("a",), ("b", "c")) and s.n_clients == 2
    assert SpeakerSplit.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    s.save(tmp_path / "split.json")
    assert SpeakerSplit.load(tmp_path / "split.json") == s
    assert s.speakers == ("a", "b", "c", "h", "p1", "p2")
    assert s.trainable == ("a", "b", "c", "p1", "p2")


@pytest.mark.parametrize(
    ("public", "clients", "heldout", "match"),
    [
        ((), (("a",), ("b",)), (), "no held-out speakers"),
        ((), (), ("h",), "no clients"),
        ((), (("a",), ()), ("h",), "client 1 has no speakers"),
        (("a",), (("a",),), ("h",), "'a' is in public and client 0"),
        ((), (("a",), ("b", "a")), ("h",), "'a' is in client 0 and client 1"),
        ((), (("a",),), ("a",), "'a' is in client 0 and heldout"),
        ((), (("a", "a"),), ("h",), "'a' is in client 0 and client 0"),
        ((), "ab", ("h",), "clients must be a list"),
        ((), (("a",),), "h", "heldout must be a list"),
        ((), ((1,),), ("h",), "non-empty speaker id strings"),
    ],
)
def test_invalid_splits_cannot_be_built(public: object, clients: object, heldout: object, match: str) -> None:
    with pytest.raises(CorpusError, match=match):
        SpeakerSplit(public=public, clients=clients, heldout=heldout)  # type: ignore[arg-type]


def test_validate_reports_every_problem_at_once() -> None:
    with pytest.raises(CorpusError) as info:
        SpeakerSplit(public=("a",), clients=(("a",), ()), heldout=())
    message = str(info.value)
    assert "client 1 has no speakers" in message
    assert "no held-out" in message
    assert "'a' is in public and client 0" in message


def test_validate_against_corpus_speakers() -> None:
    s = SpeakerSplit(public=(), clients=(("a",),), heldout=("h",))
    s.validate(["a", "h", "unused"])
    with pytest.raises(CorpusError, match=r"not in the corpus: \['h'\]"):
        s.validate(["a"])


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"public": [], "clients": [["a"]]}, r"missing \['heldout'\]"),
        ({"public": [], "clients": [["a"]], "heldout": ["h"], "extra": 1}, r"unexpected \['extra'\]"),
        ([1, 2], "JSON object"),
    ],
)
def test_from_dict_refuses_bad_shapes(data: object, match: str) -> None:
    with pytest.raises(CorpusError, match=match):
        SpeakerSplit.from_dict(data)  # type: ignore[arg-type]


def test_load_names_a_corrupt_file(tmp_path: Path) -> None:
    (tmp_path / "split.json").write_text("{not json")
    with pytest.raises(CorpusError, match="split.json: not a readable JSON"):
        SpeakerSplit.load(tmp_path / "split.json")
    (tmp_path / "split.json").write_text('{"public": [], "clients": [["a"]], "heldout": ["a"]}')
    with pytest.raises(CorpusError, match="split.json: invalid speaker split"):
        SpeakerSplit.load(tmp_path / "split.json")
