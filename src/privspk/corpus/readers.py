"""Corpus readers: a plain speaker folder, LibriSpeech, VoxCeleb, Kaldi data dirs, manifests.

Each ``read_*`` function lists utterances from a layout without opening the audio;
:func:`load_corpus` picks the layout (or detects it), then checks every file cheaply
with :func:`~privspk.audio.audio_info` and the duration limits.

=============  ===============================  =====================================
format         layout                           utterance id
=============  ===============================  =====================================
folder         ``root/<speaker>/<utt>.wav``     ``<speaker>/<utt>``
librispeech    ``root/<spk>/<chapter>/<utt>``   ``<utt>`` (``19-198-0001``)
voxceleb       ``root/<id>/<video>/<utt>.wav``  ``<id>/<video>/<utt>``
kaldi          ``wav.scp`` + ``utt2spk``        the Kaldi utterance id
manifest       ``manifest.tsv``                 as written by :meth:`Corpus.to_manifest`
=============  ===============================  =====================================

>>> import tempfile, pathlib, shutil, torch
>>> from privspk.audio import write_audio
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> for spk in ("alice", "bob"):
...     write_audio(root / spk / "u1.wav", 0.1 * torch.ones(16000), sample_rate=16000)
>>> corpus = load_corpus(root)
>>> (corpus.speakers, [u.utt_id for u in corpus.utterances])
(('alice', 'bob'), ['alice/u1', 'bob/u1'])
>>> shutil.rmtree(root)
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from privspk.audio.io import AUDIO_SUFFIXES, audio_info
from privspk.corpus.types import Corpus, SkippedFile, Utterance
from privspk.errors import AudioError, ConfigError, CorpusError

__all__ = [
    "CORPUS_FORMATS",
    "CorpusFormat",
    "detect_format",
    "load_corpus",
    "read_folder",
    "read_kaldi_dir",
    "read_librispeech",
    "read_voxceleb",
    "read_wav_scp",
]

logger = logging.getLogger(__name__)

CorpusFormat = Literal["auto", "manifest", "folder", "librispeech", "voxceleb", "kaldi"]
CORPUS_FORMATS: tuple[str, ...] = ("auto", "manifest", "folder", "librispeech", "voxceleb", "kaldi")
#: Name of the manifest :func:`load_corpus` looks for in a folder.
MANIFEST_NAME = "manifest.tsv"

_LAYOUTS = (
    "a folder of speaker folders (root/<speaker>/<utt>.wav), LibriSpeech (root/<spk>/<chapter>/<utt>.flac), "
    "VoxCeleb (root/<id>/<video>/<utt>.wav), a Kaldi data dir (wav.scp + utt2spk) or a privspk manifest.tsv"
)
_LIBRISPEECH_NAME = re.compile(r"^\d+-\d+-\d+$")
_ARK_OFFSET = re.compile(r"\.ark:\d+$")


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _audio_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in AUDIO_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )


def _check_root(root: str | os.PathLike[str]) -> Path:
    p = Path(root)
    if not p.exists():
        raise CorpusError(f"{p}: corpus folder not found")
    if not p.is_dir():
        raise CorpusError(f"{p}: not a folder; expected {_LAYOUTS}")
    return p


def _collect(
    root: Path,
    depth: int,
    make_id: Callable[[tuple[str, ...], Path], str],
    layout: str,
) -> Corpus:
    """Walk ``depth`` folder levels below ``root``; the first level names the speaker."""
    utts: list[Utterance] = []
    seen: dict[str, Path] = {}

    def walk(folder: Path, parts: tuple[str, ...]) -> None:
        if len(parts) == depth:
            for f in _audio_files(folder):
                utt_id = make_id(parts, f)
                if utt_id in seen:
                    raise CorpusError(
                        f"{f}: utterance id {utt_id!r} also used by {seen[utt_id]}; "
                        "ids must be unique (one file per name and speaker)"
                    )
                seen[utt_id] = f
                utts.append(Utterance(utt_id, parts[0], f))
            return
        for sub in _visible_dirs(folder):
            walk(sub, (*parts, sub.name))

    walk(root, ())
    if not utts:
        raise CorpusError(f"{root}: no audio files found; expected {layout}")
    stray = len(_audio_files(root))
    if stray:
        logger.warning("%s: ignored %d audio file(s) directly in the root (no speaker folder)", root, stray)
    return Corpus(root, tuple(utts))


def read_folder(root: str | os.PathLike[str]) -> Corpus:
    """List ``root/<speaker>/<utt>.{wav,flac,ogg}``; the id is ``<speaker>/<utt>``.

    Raises:
        CorpusError: missing root, no audio at that depth, or two files with one id
            (``u1.wav`` and ``u1.flac`` of one speaker).

    >>> import tempfile, pathlib, shutil, numpy as np, soundfile as sf
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> (root / "s1").mkdir()
    >>> sf.write(root / "s1" / "a.wav", np.zeros(160), 16000)
    >>> [(u.utt_id, u.speaker) for u in read_folder(root).utterances]
    [('s1/a', 's1')]
    >>> shutil.rmtree(root)
    """
    base = _check_root(root)
    return _collect(
        base, 1, lambda parts, f: f"{parts[0]}/{f.stem}", "speaker folders: root/<speaker>/<utt>.wav"
    )


def read_librispeech(root: str | os.PathLike[str]) -> Corpus:
    """List LibriSpeech ``root/<spk>/<chapter>/<spk>-<chapter>-<n>.flac``; ids are the file stems.

    Pass a subset folder (e.g. ``LibriSpeech/train-clean-100``). Transcripts are ignored.

    >>> import tempfile, pathlib, shutil, numpy as np, soundfile as sf
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> (root / "19" / "198").mkdir(parents=True)
    >>> sf.write(root / "19" / "198" / "19-198-0001.flac", np.zeros(160), 16000)
    >>> [(u.utt_id, u.speaker) for u in read_librispeech(root).utterances]
    [('19-198-0001', '19')]
    >>> shutil.rmtree(root)
    """
    base = _check_root(root)
    corpus = _collect(
        base, 2, lambda parts, f: f.stem, "LibriSpeech: root/<speaker>/<chapter>/<speaker>-<chapter>-<n>.flac"
    )
    odd = [u.utt_id for u in corpus.utterances if not _LIBRISPEECH_NAME.match(u.utt_id)]
    if odd:
        logger.warning("%s: %d file name(s) do not look like LibriSpeech ids, e.g. %r", base, len(odd), odd[0])
    return corpus


def read_voxceleb(root: str | os.PathLike[str]) -> Corpus:
    """List VoxCeleb ``root/<id>/<video>/<utt>.wav``; ids are ``<id>/<video>/<utt>``.

    >>> import tempfile, pathlib, shutil, numpy as np, soundfile as sf
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> (root / "id10001" / "1zcIwhmdeo4").mkdir(parents=True)
    >>> sf.write(root / "id10001" / "1zcIwhmdeo4" / "00001.wav", np.zeros(160), 16000)
    >>> [(u.utt_id, u.speaker) for u in read_voxceleb(root).utterances]
    [('id10001/1zcIwhmdeo4/00001', 'id10001')]
    >>> shutil.rmtree(root)
    """
    base = _check_root(root)
    return _collect(
        base,
        2,
        lambda parts, f: f"{parts[0]}/{parts[1]}/{f.stem}",
        "VoxCeleb: root/<speaker-id>/<video-id>/<utt>.wav",
    )


def _read_table(path: Path, fields: int) -> list[tuple[int, list[str]]]:
    """Lines of a Kaldi table as (line number, fields); ``fields == 2`` splits once."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CorpusError(f"{path}: cannot read ({exc})") from exc
    rows: list[tuple[int, list[str]]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2 or not parts[1].strip():
            raise CorpusError(f"{path}:{lineno}: expected '<utt-id> <value>', got {line!r}")
        rows.append((lineno, [parts[0], parts[1].strip()]))
    return rows


def _refuse_segments(base: Path) -> None:
    if (base / "segments").exists():
        raise CorpusError(
            f"{base}: has a 'segments' file; privspk reads one file per utterance. "
            "Cut the segments into files first (e.g. Kaldi extract-segments or sox trim) and list those in wav.scp"
        )


def _wav_table(scp: Path, base: Path) -> dict[str, Path]:
    """``wav.scp`` as utterance id -> file path (relative paths resolved against ``base``)."""
    wavs: dict[str, Path] = {}
    for lineno, (utt, rx) in _read_table(scp, 2):
        where = f"{scp}:{lineno}"
        if rx.endswith("|"):
            raise CorpusError(
                f"{where}: utterance {utt!r} is a piped command ({rx!r}); privspk reads plain audio files only. "
                "Convert it first, e.g. run the command into a .wav file (or `wav-copy scp:wav.scp ...`) "
                "and list that file's path"
            )
        if rx == "-":
            raise CorpusError(f"{where}: utterance {utt!r} reads stdin ('-'); list a file path instead")
        if _ARK_OFFSET.search(rx):
            raise CorpusError(
                f"{where}: utterance {utt!r} points into a Kaldi archive ({rx!r}); "
                "extract it to a .wav file (wav-copy) and list that path"
            )
        if utt in wavs:
            raise CorpusError(f"{where}: utterance {utt!r} is listed twice in wav.scp")
        p = Path(rx)
        wavs[utt] = p if p.is_absolute() else base / p
    return wavs


def read_wav_scp(data_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Read a Kaldi data dir's ``wav.scp``: utterance id -> audio file path.

    The same rules as :func:`read_kaldi_dir` (which reads ``wav.scp`` through this
    function), without ``utt2spk``: relative paths resolve against ``data_dir``;
    piped commands, stdin, archive offsets and ``segments`` files are refused.

    >>> import tempfile, pathlib, shutil
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "wav.scp").write_text("u1 audio/u1.wav\\nu2 sox u2.flac -t wav - |\\n")
    >>> try:
    ...     read_wav_scp(d)
    ... except CorpusError as exc:
    ...     print(str(exc).split("wav.scp:")[1][:42])
    2: utterance 'u2' is a piped command ('sox
    >>> _ = (d / "wav.scp").write_text("u1 audio/u1.wav\\n")
    >>> read_wav_scp(d) == {"u1": d / "audio" / "u1.wav"}
    True
    >>> shutil.rmtree(d)
    """
    base = Path(data_dir)
    if not base.is_dir():
        raise CorpusError(f"{base}: Kaldi data dir not found")
    scp = base / "wav.scp"
    if not scp.is_file():
        raise CorpusError(f"{base}: not a Kaldi data dir, missing wav.scp")
    _refuse_segments(base)
    return _wav_table(scp, base)


def read_kaldi_dir(data_dir: str | os.PathLike[str]) -> Corpus:
    """Read a Kaldi data dir: ``wav.scp`` (plain file paths) and ``utt2spk``.

    Relative paths in ``wav.scp`` are resolved against ``data_dir``. Piped commands
    (``sox ... |``), stdin (``-``), archive offsets (``x.ark:12``) and ``segments`` files
    are refused with a message saying how to convert them. Every utterance in ``utt2spk``
    must be in ``wav.scp``; ``wav.scp`` entries without a speaker are left out (warning).

    >>> import tempfile, pathlib, shutil
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "wav.scp").write_text("u1 audio/u1.wav\\nu2 /abs/u2.flac\\n")
    >>> _ = (d / "utt2spk").write_text("u1 spkA\\nu2 spkB\\n")
    >>> c = read_kaldi_dir(d)
    >>> [(u.utt_id, u.speaker, u.path == d / "audio" / "u1.wav") for u in c.utterances][0]
    ('u1', 'spkA', True)
    >>> shutil.rmtree(d)
    """
    base = Path(data_dir)
    if not base.is_dir():
        raise CorpusError(f"{base}: Kaldi data dir not found")
    scp, u2s = base / "wav.scp", base / "utt2spk"
    missing = [p.name for p in (scp, u2s) if not p.is_file()]
    if missing:
        raise CorpusError(f"{base}: not a Kaldi data dir, missing {missing}; expected wav.scp and utt2spk")
    _refuse_segments(base)
    wavs = _wav_table(scp, base)
    speakers: dict[str, str] = {}
    for lineno, (utt, spk) in _read_table(u2s, 2):
        if len(spk.split()) != 1:
            raise CorpusError(f"{u2s}:{lineno}: expected '<utt-id> <speaker-id>', got {utt!r} {spk!r}")
        if utt in speakers:
            raise CorpusError(f"{u2s}:{lineno}: utterance {utt!r} is listed twice in utt2spk")
        speakers[utt] = spk
    absent = sorted(set(speakers).difference(wavs))
    if absent:
        raise CorpusError(
            f"{base}: {len(absent)} utterance(s) in utt2spk have no wav.scp entry, e.g. {absent[:3]}; "
            "fix the data dir (Kaldi utils/fix_data_dir.sh)"
        )
    orphans = sorted(set(wavs).difference(speakers))
    if orphans:
        logger.warning("%s: %d wav.scp entries have no speaker in utt2spk and are left out, e.g. %r",
                       base, len(orphans), orphans[0])
    if not speakers:
        raise CorpusError(f"{base}: utt2spk lists no utterances")
    return Corpus(base, tuple(Utterance(u, speakers[u], wavs[u]) for u in sorted(speakers)))


def _read_manifest_path(path: Path) -> Corpus:
    return Corpus.from_manifest(path / MANIFEST_NAME if path.is_dir() else path)


def detect_format(path: str | os.PathLike[str]) -> str:
    """Guess a corpus layout: ``manifest``, ``kaldi``, ``librispeech``, ``voxceleb`` or ``folder``.

    A file is read as a manifest. In a folder: ``manifest.tsv`` -> manifest, ``wav.scp``
    -> kaldi; otherwise the depth of the first audio files found decides (two levels ->
    folder; three -> LibriSpeech when the names look like ``19-198-0001``, else VoxCeleb).

    >>> import tempfile, pathlib, shutil
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "wav.scp").write_text("")
    >>> detect_format(d)
    'kaldi'
    >>> shutil.rmtree(d)
    """
    p = Path(path)
    if p.is_file():
        return "manifest"
    base = _check_root(p)
    if (base / MANIFEST_NAME).is_file():
        return "manifest"
    if (base / "wav.scp").is_file():
        return "kaldi"
    for spk in _visible_dirs(base):
        if _audio_files(spk):
            return "folder"
        for sub in _visible_dirs(spk):
            files = _audio_files(sub)
            if files:
                named = sum(bool(_LIBRISPEECH_NAME.match(f.stem)) for f in files)
                return "librispeech" if named * 2 > len(files) else "voxceleb"
    raise CorpusError(f"{base}: no speaker-labelled audio found; expected {_LAYOUTS}")


_READERS: dict[str, Callable[[Path], Corpus]] = {
    "manifest": _read_manifest_path,
    "folder": read_folder,
    "librispeech": read_librispeech,
    "voxceleb": read_voxceleb,
    "kaldi": read_kaldi_dir,
}


def _check_seconds(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}")
    v = float(value)
    if not v >= 0.0 or v == float("inf"):
        raise ConfigError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    return v


def load_corpus(
    path: str | os.PathLike[str],
    *,
    fmt: CorpusFormat = "auto",
    on_error: Literal["raise", "skip"] = "raise",
    min_seconds: float = 0.5,
    max_seconds: float | None = None,
) -> Corpus:
    """Read a corpus and check every file cheaply (header, length, last frames).

    Args:
        path: corpus folder, Kaldi data dir, or manifest file.
        fmt: one of :data:`CORPUS_FORMATS`; ``"auto"`` uses :func:`detect_format`.
        on_error: ``"raise"``: the first bad file raises :class:`~privspk.errors.AudioError`
            naming it. ``"skip"``: bad files are logged (one warning each) and listed in
            ``corpus.skipped``.
        min_seconds: shorter files are left out (listed in ``corpus.skipped``, never raised).
        max_seconds: longer files are left out likewise; ``None`` for no limit.

    Returns:
        The corpus; ``len(corpus.skipped)`` files were left out.

    Raises:
        AudioError: a bad file, with ``on_error="raise"``.
        CorpusError: unknown layout, malformed listing, or no usable utterance at all.
        ConfigError: bad ``fmt``, ``on_error`` or duration limits.

    >>> import tempfile, pathlib, shutil, torch
    >>> from privspk.audio import write_audio
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> write_audio(root / "s1" / "ok.wav", torch.zeros(16000), sample_rate=16000)
    >>> _ = (root / "s1" / "bad.wav").write_bytes(b"")
    >>> c = load_corpus(root, on_error="skip")
    >>> (len(c), [s.reason for s in c.skipped])
    (1, ['file is empty (0 bytes)'])
    >>> shutil.rmtree(root)
    """
    if fmt not in CORPUS_FORMATS:
        raise ConfigError(f"fmt must be one of {CORPUS_FORMATS}, got {fmt!r}")
    if on_error not in ("raise", "skip"):
        raise ConfigError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    lo = _check_seconds(min_seconds, "min_seconds")
    hi = None if max_seconds is None else _check_seconds(max_seconds, "max_seconds")
    if hi is not None and hi < lo:
        raise ConfigError(f"max_seconds ({hi}) must not be below min_seconds ({lo})")
    p = Path(path)
    if not p.exists():
        raise CorpusError(f"{p}: corpus not found; expected {_LAYOUTS}")
    kind = detect_format(p) if fmt == "auto" else fmt
    listed = _READERS[kind](p)
    kept: list[Utterance] = []
    skipped: list[SkippedFile] = []
    for u in listed.utterances:
        try:
            info = audio_info(u.path)
        except AudioError as exc:
            if on_error == "raise":
                raise AudioError(exc.path, f"{exc.reason} (utterance {u.utt_id!r}; "
                                 "pass on_error='skip' to leave bad files out)") from exc
            logger.warning("skipping %s: %s", exc.path, exc.reason)
            skipped.append(SkippedFile(u.path, exc.reason))
            continue
        if info.duration < lo or (hi is not None and info.duration > hi):
            limits = f"[{lo:g}, {'inf' if hi is None else f'{hi:g}'}] s"
            reason = f"duration {info.duration:.2f} s outside {limits}"
            logger.info("leaving out %s: %s", u.path, reason)
            skipped.append(SkippedFile(u.path, reason))
            continue
        kept.append(u)
    if not kept:
        raise CorpusError(
            f"{p}: no usable utterances ({len(skipped)} left out"
            + (f", first: {skipped[0].path}: {skipped[0].reason}" if skipped else "")
            + ")"
        )
    if skipped:
        logger.warning("%s: left out %d of %d files", p, len(skipped), len(listed))
    return Corpus(listed.root, tuple(kept), skipped=tuple(skipped))
