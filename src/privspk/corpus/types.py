"""The corpus data model: utterances, a corpus, and a speaker split.

A :class:`Corpus` is an immutable list of :class:`Utterance` (id, speaker, file) under a
root folder; it round-trips through a TSV manifest. A :class:`SpeakerSplit` says which
speakers may be used for public (non-private) pretraining, which belong to each
federated client, and which are held out for verification only; it round-trips through
JSON and cannot be built with overlapping or empty groups.

>>> from pathlib import Path
>>> c = Corpus(Path("data"), (Utterance("a-1", "a", Path("data/a/1.wav")), Utterance("b-1", "b", Path("data/b/1.wav"))))
>>> (len(c), c.speakers, len(c.subset(["b"])))
(2, ('a', 'b'), 1)
>>> SpeakerSplit(public=("a",), clients=(("b",), ("c",)), heldout=("d",)).speakers
('a', 'b', 'c', 'd')
"""

from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from privspk.errors import CorpusError

__all__ = ["MANIFEST_HEADER", "Corpus", "SkippedFile", "SpeakerSplit", "Utterance"]

#: First line of a manifest file; the columns are tab-separated.
MANIFEST_HEADER = "utt_id\tspeaker\tpath"
_FORBIDDEN = ("\t", "\n", "\r")


def _check_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not value or value != value.strip():
        raise CorpusError(f"{what} must be a non-empty string without surrounding spaces, got {value!r}")
    if any((ch.isspace() and ch != " ") or unicodedata.category(ch) == "Cc" for ch in value):
        raise CorpusError(f"{what} {value!r} contains a tab, line break or control character; rename it")
    return value


@dataclass(frozen=True)
class Utterance:
    """One recording of one speaker.

    Attributes:
        utt_id: identifier, unique in its corpus.
        speaker: speaker identifier.
        path: the audio file.

    >>> Utterance("spk1-001", "spk1", Path("wav/spk1/spk1-001.wav")).speaker
    'spk1'
    """

    utt_id: str
    speaker: str
    path: Path

    def __post_init__(self) -> None:
        _check_name(self.utt_id, "utterance id")
        _check_name(self.speaker, f"speaker of utterance {self.utt_id!r}")
        if not isinstance(self.path, Path):
            object.__setattr__(self, "path", Path(self.path))


@dataclass(frozen=True)
class SkippedFile:
    """A file a reader left out, and why.

    >>> SkippedFile(Path("a/b.wav"), "file is empty (0 bytes)").reason
    'file is empty (0 bytes)'
    """

    path: Path
    reason: str


@dataclass(frozen=True)
class Corpus:
    """Utterances of many speakers under one root folder.

    Attributes:
        root: folder that relative manifest paths are resolved against.
        utterances: the utterances, ids unique.
        skipped: files a reader left out (bad or out of the duration range) and why;
            ``len(corpus.skipped)`` is their count. Not part of equality.

    >>> c = Corpus(Path("r"), (Utterance("u1", "s2", Path("r/u1.wav")), Utterance("u2", "s1", Path("r/u2.wav"))))
    >>> [(s, [u.utt_id for u in us]) for s, us in c.by_speaker().items()]
    [('s1', ['u2']), ('s2', ['u1'])]
    """

    root: Path
    utterances: tuple[Utterance, ...]
    skipped: tuple[SkippedFile, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        utts = tuple(self.utterances)
        seen: set[str] = set()
        for u in utts:
            if not isinstance(u, Utterance):
                raise CorpusError(f"corpus entries must be Utterance objects, got {type(u).__name__}")
            if u.utt_id in seen:
                raise CorpusError(f"utterance id {u.utt_id!r} occurs twice; ids must be unique in a corpus")
            seen.add(u.utt_id)
        object.__setattr__(self, "utterances", utts)
        object.__setattr__(self, "skipped", tuple(self.skipped))

    def __len__(self) -> int:
        return len(self.utterances)

    @property
    def speakers(self) -> tuple[str, ...]:
        """Sorted tuple of the distinct speakers.

        >>> Corpus(Path("."), (Utterance("x", "b", Path("x.wav")), Utterance("y", "a", Path("y.wav")))).speakers
        ('a', 'b')
        """
        return tuple(sorted({u.speaker for u in self.utterances}))

    def by_speaker(self) -> dict[str, list[Utterance]]:
        """Utterances grouped by speaker (speakers sorted, corpus order kept within each).

        >>> c = Corpus(Path("."), (Utterance("x", "b", Path("x.wav")), Utterance("y", "b", Path("y.wav"))))
        >>> [u.utt_id for u in c.by_speaker()["b"]]
        ['x', 'y']
        """
        groups: dict[str, list[Utterance]] = {s: [] for s in self.speakers}
        for u in self.utterances:
            groups[u.speaker].append(u)
        return groups

    def subset(self, speakers: Iterable[str]) -> Corpus:
        """The corpus restricted to ``speakers``; an unknown speaker is an error.

        >>> c = Corpus(Path("."), (Utterance("x", "a", Path("x.wav")), Utterance("y", "b", Path("y.wav"))))
        >>> [u.utt_id for u in c.subset(["b"]).utterances]
        ['y']
        """
        wanted = set(speakers)
        unknown = sorted(wanted.difference(self.speakers))
        if unknown:
            raise CorpusError(
                f"{len(unknown)} speaker(s) not in the corpus: {unknown[:5]}; "
                "check that the split was made for this corpus"
            )
        return Corpus(self.root, tuple(u for u in self.utterances if u.speaker in wanted))

    def to_manifest(self, path: str | os.PathLike[str]) -> None:
        """Write a TSV manifest (``utt_id``, ``speaker``, path relative to ``root``).

        The file is written under a temporary name and renamed into place.

        >>> import tempfile, shutil
        >>> d = Path(tempfile.mkdtemp())
        >>> c = Corpus(d, (Utterance("u1", "s1", d / "s1" / "u1.wav"),))
        >>> c.to_manifest(d / "manifest.tsv")
        >>> (d / "manifest.tsv").read_text().splitlines()[1]
        'u1\\ts1\\ts1/u1.wav'
        >>> shutil.rmtree(d)
        """
        target = Path(path)
        lines = [MANIFEST_HEADER]
        for u in self.utterances:
            try:
                rel = Path(os.path.relpath(u.path, self.root)).as_posix()
            except ValueError:  # another drive on Windows
                rel = u.path.as_posix()
            if any(ch in rel for ch in _FORBIDDEN):
                raise CorpusError(f"path of utterance {u.utt_id!r} contains a tab or newline: {rel!r}")
            lines.append(f"{u.utt_id}\t{u.speaker}\t{rel}")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.part")
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        os.replace(tmp, target)

    @classmethod
    def from_manifest(cls, path: str | os.PathLike[str], *, root: str | os.PathLike[str] | None = None) -> Corpus:
        """Read a manifest written by :meth:`to_manifest`.

        Args:
            path: the TSV file.
            root: folder the relative paths are resolved against; default the manifest's folder.

        Raises:
            CorpusError: missing file, a malformed line (named by line number), duplicate ids.

        >>> import tempfile, shutil
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / "m.tsv").write_text("utt_id\\tspeaker\\tpath\\nu1\\ts1\\ts1/u1.wav\\n")
        >>> Corpus.from_manifest(d / "m.tsv").utterances[0].path == d / "s1" / "u1.wav"
        True
        >>> shutil.rmtree(d)
        """
        mpath = Path(path)
        if not mpath.is_file():
            raise CorpusError(f"{mpath}: manifest not found; expected a TSV file '{MANIFEST_HEADER!s}'")
        base = Path(root) if root is not None else mpath.parent
        try:
            text = mpath.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CorpusError(f"{mpath}: cannot read manifest ({exc})") from exc
        utts: list[Utterance] = []
        for lineno, line in enumerate(text.split("\n"), start=1):
            line = line.removesuffix("\r")
            if not line.strip() or (lineno == 1 and line == MANIFEST_HEADER):
                continue
            fields = line.split("\t")
            if len(fields) != 3 or not all(fields):
                raise CorpusError(
                    f"{mpath}:{lineno}: expected 3 tab-separated fields (utt_id, speaker, path), got {line!r}"
                )
            utt_id, speaker, rel = fields
            p = Path(rel)
            try:
                utts.append(Utterance(utt_id, speaker, p if p.is_absolute() else base / p))
            except CorpusError as exc:
                raise CorpusError(f"{mpath}:{lineno}: {exc}") from exc
        try:
            return cls(base, tuple(utts))
        except CorpusError as exc:
            raise CorpusError(f"{mpath}: {exc}") from exc


def _as_group(value: object, what: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise CorpusError(f"{what} must be a list of speaker ids, got {value!r}")
    group = tuple(value)
    for s in group:
        if not isinstance(s, str) or not s:
            raise CorpusError(f"{what} must hold non-empty speaker id strings, got {s!r}")
    return group


@dataclass(frozen=True)
class SpeakerSplit:
    """Which speakers serve which purpose.

    Attributes:
        public: speakers that may be used for non-private pretraining (may be empty).
        clients: one disjoint, non-empty speaker set per federated client.
        heldout: speakers never trained on; verification trials only (non-empty).

    Construction validates the split (:meth:`validate`), so an overlapping or empty
    split cannot exist.

    >>> s = SpeakerSplit(public=("p",), clients=(("a", "b"), ("c",)), heldout=("h",))
    >>> SpeakerSplit.from_dict(s.to_dict()) == s
    True
    >>> SpeakerSplit(public=(), clients=(("a",), ("a",)), heldout=("h",))
    Traceback (most recent call last):
    ...
    privspk.errors.CorpusError: invalid speaker split: speaker 'a' is in client 0 and client 1
    """

    public: tuple[str, ...]
    clients: tuple[tuple[str, ...], ...]
    heldout: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "public", _as_group(self.public, "public"))
        if isinstance(self.clients, str) or not isinstance(self.clients, Iterable):
            raise CorpusError(f"clients must be a list of speaker lists, got {self.clients!r}")
        object.__setattr__(
            self, "clients", tuple(_as_group(c, f"client {i}") for i, c in enumerate(self.clients))
        )
        object.__setattr__(self, "heldout", _as_group(self.heldout, "heldout"))
        self.validate()

    @property
    def n_clients(self) -> int:
        """Number of clients.

        >>> SpeakerSplit(public=(), clients=(("a",), ("b",)), heldout=("h",)).n_clients
        2
        """
        return len(self.clients)

    @property
    def speakers(self) -> tuple[str, ...]:
        """Every speaker in the split, sorted.

        >>> SpeakerSplit(public=("z",), clients=(("a",),), heldout=("h",)).speakers
        ('a', 'h', 'z')
        """
        return tuple(sorted({*self.public, *self.heldout, *(s for c in self.clients for s in c)}))

    @property
    def trainable(self) -> tuple[str, ...]:
        """Public and client speakers (everyone but the held-out ones), sorted.

        >>> SpeakerSplit(public=("z",), clients=(("a",),), heldout=("h",)).trainable
        ('a', 'z')
        """
        return tuple(sorted({*self.public, *(s for c in self.clients for s in c)}))

    def validate(self, corpus_speakers: Iterable[str] | None = None) -> None:
        """Check the split; report every problem at once.

        Checks: at least one client, no empty client, a non-empty held-out set, no speaker
        twice (within or across groups) and, when ``corpus_speakers`` is given, that every
        speaker exists in the corpus.

        Raises:
            CorpusError: listing every problem found.

        >>> s = SpeakerSplit(public=(), clients=(("a",),), heldout=("h",))
        >>> s.validate(["a", "h", "x"])
        >>> s.validate(["a"])
        Traceback (most recent call last):
        ...
        privspk.errors.CorpusError: invalid speaker split: 1 speaker(s) not in the corpus: ['h']
        """
        problems: list[str] = []
        if not self.clients:
            problems.append("no clients; give at least one client speaker set")
        for i, c in enumerate(self.clients):
            if not c:
                problems.append(f"client {i} has no speakers")
        if not self.heldout:
            problems.append("no held-out speakers; verification needs at least one")
        where: dict[str, str] = {}
        groups: list[tuple[str, Sequence[str]]] = [("public", self.public)]
        groups += [(f"client {i}", c) for i, c in enumerate(self.clients)]
        groups.append(("heldout", self.heldout))
        for name, members in groups:
            for s in members:
                if s in where:
                    problems.append(f"speaker {s!r} is in {where[s]} and {name}")
                else:
                    where[s] = name
        if corpus_speakers is not None:
            known = set(corpus_speakers)
            missing = sorted(set(where).difference(known))
            if missing:
                problems.append(f"{len(missing)} speaker(s) not in the corpus: {missing[:5]}")
        if problems:
            raise CorpusError("invalid speaker split: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict.

        >>> SpeakerSplit(public=(), clients=(("a",),), heldout=("h",)).to_dict()
        {'public': [], 'clients': [['a']], 'heldout': ['h']}
        """
        return {
            "public": list(self.public),
            "clients": [list(c) for c in self.clients],
            "heldout": list(self.heldout),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SpeakerSplit:
        """Inverse of :meth:`to_dict`; missing or extra keys are errors.

        >>> SpeakerSplit.from_dict({"public": [], "clients": [["a"]], "heldout": ["h"]}).clients
        (('a',),)
        """
        if not isinstance(data, Mapping):
            raise CorpusError(f"a speaker split must be a JSON object, got {type(data).__name__}")
        keys = {"public", "clients", "heldout"}
        missing, extra = keys.difference(data), set(data).difference(keys)
        if missing or extra:
            raise CorpusError(
                f"speaker split keys must be {sorted(keys)}; missing {sorted(missing)}, unexpected {sorted(extra)}"
            )
        return cls(public=data["public"], clients=data["clients"], heldout=data["heldout"])

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the split as JSON (atomically).

        >>> import tempfile, shutil
        >>> d = Path(tempfile.mkdtemp())
        >>> s = SpeakerSplit(public=(), clients=(("a",),), heldout=("h",))
        >>> s.save(d / "split.json")
        >>> SpeakerSplit.load(d / "split.json") == s
        True
        >>> shutil.rmtree(d)
        """
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.part")
        tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, target)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SpeakerSplit:
        """Read a split written by :meth:`save`.

        >>> SpeakerSplit.load(Path("no-such-folder") / "split.json")
        Traceback (most recent call last):
        ...
        privspk.errors.CorpusError: no-such-folder/split.json: split file not found
        """
        p = Path(path)
        if not p.is_file():
            raise CorpusError(f"{p}: split file not found")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CorpusError(f"{p}: not a readable JSON speaker split ({exc})") from exc
        try:
            return cls.from_dict(data)
        except CorpusError as exc:
            raise CorpusError(f"{p}: {exc}") from exc
