"""On-disk feature cache: extract once, read many times through memory maps.

Layout under ``root/<cfg.key()>/``::

    manifest.json             settings, chunk list (file, frames, SHA-256) and the index
                              utt_id -> [chunk, first frame, frames]; written last, atomically
    chunk-<n>-<token>.npy     float16 matrices (frames, F), utterances end to end

A cache is complete exactly when ``manifest.json`` exists: the chunks are written and synced
first and the manifest is renamed into place last. Chunk files that no manifest names are
leftovers of an interrupted build; the next :meth:`FeatureCache.build` deletes them and
extracts what is missing. A manifest that does not parse, or that disagrees with the files
beside it, is corruption: :class:`~privspk.errors.FeatureError` names the directory to delete.
One process builds a given cache at a time; any number may read it.

float16 keeps about three significant digits (an absolute error below 0.01 for mean-normalised
log-mel values), ample for training, and halves the disk and page-cache footprint.

>>> import tempfile, torch
>>> from privspk.features.config import FeatureConfig
>>> items = [("u1", lambda: torch.randn(8000) * 0.1), ("u2", lambda: torch.randn(4000) * 0.1)]
>>> with tempfile.TemporaryDirectory() as root:
...     cache = FeatureCache(root, FeatureConfig(n_mels=40))
...     n_new = cache.build(items, progress=False)
...     (n_new, cache.utt_ids, tuple(cache.get("u2").shape), "u1" in cache)
(2, ('u1', 'u2'), (23, 40), True)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import secrets
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from privspk.errors import ConfigError, FeatureError, PrivspkError
from privspk.features.config import FeatureConfig
from privspk.features.extract import extract

__all__ = ["MANIFEST_NAME", "FeatureCache", "PathItem"]

logger = logging.getLogger(__name__)

#: Name of the file whose presence marks a complete cache.
MANIFEST_NAME = "manifest.json"
_FORMAT = "privspk-feature-cache"
_VERSION = 1
_CHUNK_PREFIX = "chunk-"
_TMP_MARK = ".tmp-"
_BATCH = 16  # utterances per worker task


@runtime_checkable
class PathItem(Protocol):
    """An utterance record with an id and an audio path (``privspk.corpus.Utterance`` is one).

    >>> from types import SimpleNamespace
    >>> isinstance(SimpleNamespace(utt_id="u", path="u.wav"), PathItem)
    True
    """

    utt_id: str
    path: object


@dataclass(frozen=True)
class _Job:
    utt_id: str
    loader: Callable[..., Tensor]
    path: object | None  # None: call loader(); else: call loader(path)


@dataclass(frozen=True)
class _Chunk:
    file: str
    n_frames: int
    sha256: str


@dataclass(frozen=True)
class _Entry:
    chunk: int
    offset: int
    n_frames: int


def _corrupt(directory: Path, what: str) -> FeatureError:
    return FeatureError(
        f"feature cache {directory} is corrupt ({what}); delete the directory {directory} "
        "and build the cache again"
    )


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    tmp = path.with_name(f"{path.name}{_TMP_MARK}{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _run_job(job: _Job, cfg: FeatureConfig) -> np.ndarray:
    try:
        wav = job.loader() if job.path is None else job.loader(job.path)
        feats = extract(wav, cfg)
    except PrivspkError as exc:
        raise FeatureError(f"utterance {job.utt_id!r}: {exc}") from exc
    half = feats.numpy().astype(np.float16)
    if not np.isfinite(half).all():
        raise FeatureError(
            f"utterance {job.utt_id!r}: features are NaN, infinite or beyond float16 range; check the audio"
        )
    return half


def _run_batch(jobs: list[_Job], cfg: FeatureConfig) -> list[tuple[str, np.ndarray | None, str]]:
    # Runs in a worker process: errors travel back as text (privspk errors with
    # custom constructors do not survive pickling).
    out: list[tuple[str, np.ndarray | None, str]] = []
    for job in jobs:
        try:
            out.append((job.utt_id, _run_job(job, cfg), ""))
        except PrivspkError as exc:
            out.append((job.utt_id, None, str(exc)))
    return out


def _worker_init() -> None:
    torch.set_num_threads(1)


class FeatureCache:
    """Features of many utterances for one :class:`FeatureConfig`, stored under ``root/<cfg.key()>/``.

    Opening reads and checks the manifest if there is one (cheap: file headers only);
    :meth:`build` adds what is missing; :meth:`get` reads one utterance as float32.

    Example:
        >>> import tempfile, torch
        >>> from privspk.features.config import FeatureConfig
        >>> with tempfile.TemporaryDirectory() as root:
        ...     cfg = FeatureConfig(n_mels=40)
        ...     FeatureCache(root, cfg).build([("a", lambda: torch.randn(4000))], progress=False)
        ...     again = FeatureCache(root, cfg)
        ...     (len(again), again.build([("a", lambda: torch.randn(4000))], progress=False))
        1
        (1, 0)
    """

    def __init__(self, root: str | os.PathLike[str], cfg: FeatureConfig) -> None:
        if not isinstance(cfg, FeatureConfig):
            raise ConfigError(f"cfg must be a FeatureConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.directory = Path(root) / cfg.key()
        self._chunks: list[_Chunk] = []
        self._index: dict[str, _Entry] = {}
        self._maps: dict[int, np.ndarray] = {}
        self._read_manifest()

    # -- reading ---------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        """Path of the manifest file (present only for a complete cache).

        >>> from privspk.features.config import FeatureConfig
        >>> FeatureCache("cache", FeatureConfig()).manifest_path.name
        'manifest.json'
        """
        return self.directory / MANIFEST_NAME

    @property
    def utt_ids(self) -> tuple[str, ...]:
        """Ids of the cached utterances, in the order they were added.

        >>> from privspk.features.config import FeatureConfig
        >>> FeatureCache("nowhere", FeatureConfig()).utt_ids
        ()
        """
        return tuple(self._index)

    def __len__(self) -> int:
        """Number of cached utterances."""
        return len(self._index)

    def __contains__(self, utt_id: object) -> bool:
        """Whether ``utt_id`` is cached."""
        return utt_id in self._index

    def n_frames(self, utt_id: str) -> int:
        """Number of frames cached for ``utt_id`` (without reading them).

        >>> import tempfile, torch
        >>> from privspk.features.config import FeatureConfig
        >>> with tempfile.TemporaryDirectory() as root:
        ...     cache = FeatureCache(root, FeatureConfig(n_mels=40))
        ...     _ = cache.build([("a", lambda: torch.randn(16000))], progress=False)
        ...     cache.n_frames("a")
        98
        """
        return self._entry(utt_id).n_frames

    def get(self, utt_id: str) -> Tensor:
        """Features ``(T, F)`` float32 of one cached utterance.

        Raises :class:`~privspk.errors.FeatureError` for an id that is not cached.

        >>> from privspk.features.config import FeatureConfig
        >>> FeatureCache("nowhere", FeatureConfig()).get("u9")
        Traceback (most recent call last):
        ...
        privspk.errors.FeatureError: utterance 'u9' is not in the feature cache (0 utterances); add it with FeatureCache.build()
        """
        entry = self._entry(utt_id)
        rows = self._map(entry.chunk)[entry.offset : entry.offset + entry.n_frames]
        return torch.from_numpy(np.array(rows, dtype=np.float32))

    def _entry(self, utt_id: str) -> _Entry:
        entry = self._index.get(utt_id)
        if entry is None:
            raise FeatureError(
                f"utterance {utt_id!r} is not in the feature cache ({len(self._index)} utterances); "
                "add it with FeatureCache.build()"
            )
        return entry

    def _map(self, chunk: int) -> np.ndarray:
        if chunk not in self._maps:
            path = self.directory / self._chunks[chunk].file
            try:
                self._maps[chunk] = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise _corrupt(self.directory, f"cannot map {path.name}: {exc}") from exc
        return self._maps[chunk]

    def _read_manifest(self) -> None:
        self._chunks, self._index, self._maps = [], {}, {}
        path = self.manifest_path
        if not path.exists():
            return
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _corrupt(self.directory, f"{MANIFEST_NAME} does not parse: {exc}") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
            raise _corrupt(self.directory, f"{MANIFEST_NAME} is not a {_FORMAT} manifest")
        if manifest.get("version") != _VERSION:
            raise _corrupt(self.directory, f"manifest version {manifest.get('version')!r}, expected {_VERSION}")
        try:
            stored_cfg = FeatureConfig.from_dict(manifest["config"])
        except (KeyError, ConfigError) as exc:
            raise _corrupt(self.directory, f"bad settings in the manifest: {exc}") from exc
        if stored_cfg != self.cfg:
            raise _corrupt(self.directory, f"manifest settings {stored_cfg} differ from {self.cfg}")
        try:
            chunks = [_Chunk(str(c["file"]), int(c["n_frames"]), str(c["sha256"])) for c in manifest["chunks"]]
            index = {
                str(utt): _Entry(int(e[0]), int(e[1]), int(e[2])) for utt, e in manifest["index"].items()
            }
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise _corrupt(self.directory, f"malformed chunk list or index: {exc!r}") from exc
        for number, chunk in enumerate(chunks):
            file = self.directory / chunk.file
            if not file.is_file():
                raise _corrupt(self.directory, f"chunk file {chunk.file} is missing")
            try:
                header = np.load(file, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise _corrupt(self.directory, f"chunk file {chunk.file} is unreadable: {exc}") from exc
            expected = (chunk.n_frames, self.cfg.dim)
            if header.shape != expected or header.dtype != np.float16:
                raise _corrupt(
                    self.directory,
                    f"chunk file {chunk.file} holds {header.dtype}{header.shape}, expected float16{expected}",
                )
            self._maps[number] = header
        for utt, entry in index.items():
            ok = 0 <= entry.chunk < len(chunks) and entry.n_frames > 0 and entry.offset >= 0
            if not ok or entry.offset + entry.n_frames > chunks[entry.chunk].n_frames:
                raise _corrupt(self.directory, f"index entry of {utt!r} points outside its chunk")
        self._chunks, self._index = chunks, index

    def verify(self) -> None:
        """Re-hash every chunk file and compare with the manifest (reads the whole cache).

        Raises :class:`~privspk.errors.FeatureError` naming the directory to delete on a mismatch.

        >>> import tempfile, torch
        >>> from privspk.features.config import FeatureConfig
        >>> with tempfile.TemporaryDirectory() as root:
        ...     cache = FeatureCache(root, FeatureConfig(n_mels=40))
        ...     _ = cache.build([("a", lambda: torch.randn(4000))], progress=False)
        ...     cache.verify()
        """
        for chunk in self._chunks:
            if _sha256_file(self.directory / chunk.file) != chunk.sha256:
                raise _corrupt(self.directory, f"chunk file {chunk.file} does not match its SHA-256")

    # -- building --------------------------------------------------------------------------
    def build(
        self,
        items: Iterable[object],
        *,
        load: Callable[[object], Tensor] | None = None,
        workers: int = 1,
        progress: bool = True,
        chunk_frames: int = 500_000,
    ) -> int:
        """Extract and store the features of every item not cached yet; return how many were added.

        Arguments:
            items: ``(utt_id, wav_loader)`` pairs, where ``wav_loader()`` returns a 1-D float
                waveform, or objects with ``.utt_id`` and ``.path`` (such as
                ``privspk.corpus.Utterance``) read with ``load(path)``.
            load: reads a waveform from a path; needed for items with ``.path``.
            workers: processes extracting in parallel (1 = in this process). With more than one,
                loaders must be picklable (module-level functions, not lambdas).
            progress: show a tqdm progress bar.
            chunk_frames: frames per chunk file before a new one starts.

        The manifest is re-read, leftovers of an interrupted build are deleted and every chunk is
        re-hashed first (so a damaged cache is never extended); with nothing missing the cache is
        then reused as it is. Raises
        :class:`~privspk.errors.FeatureError` for duplicate ids, a failing utterance (the message
        names it) or a corrupt cache.

        Example:
            >>> import tempfile, torch
            >>> from types import SimpleNamespace
            >>> from privspk.features.config import FeatureConfig
            >>> utts = [SimpleNamespace(utt_id=f"u{i}", path=4000 + i) for i in range(3)]
            >>> with tempfile.TemporaryDirectory() as root:
            ...     cache = FeatureCache(root, FeatureConfig(n_mels=40))
            ...     cache.build(utts, load=lambda n: torch.randn(n) * 0.1, progress=False)
            3
        """
        from tqdm.auto import tqdm

        if type(workers) is not int or workers < 1:
            raise ConfigError(f"workers must be an int >= 1, got {workers!r}")
        if type(chunk_frames) is not int or chunk_frames < 1:
            raise ConfigError(f"chunk_frames must be an int >= 1, got {chunk_frames!r}")
        jobs = list(self._jobs(items, load))
        self.directory.mkdir(parents=True, exist_ok=True)
        self._read_manifest()
        self._remove_leftovers()
        self.verify()
        missing = [job for job in jobs if job.utt_id not in self._index]
        if not missing:
            logger.info("feature cache %s: reusing %d cached utterances", self.directory, len(jobs))
            return 0
        if workers > 1:
            self._check_picklable(missing)
        logger.info(
            "feature cache %s: extracting %d of %d utterances (%d cached)",
            self.directory, len(missing), len(jobs), len(jobs) - len(missing),
        )
        chunks = list(self._chunks)
        index = dict(self._index)
        token = secrets.token_hex(4)
        pending: list[tuple[str, np.ndarray]] = []
        pending_frames = 0

        def flush() -> None:
            nonlocal pending, pending_frames
            if not pending:
                return
            number = len(chunks)
            name = f"{_CHUNK_PREFIX}{number:05d}-{token}.npy"
            offset = 0
            for utt_id, feats in pending:
                index[utt_id] = _Entry(number, offset, feats.shape[0])
                offset += feats.shape[0]
            data = np.concatenate([feats for _, feats in pending], axis=0)
            _write_atomic(self.directory / name, lambda fh: np.save(fh, data, allow_pickle=False))
            chunks.append(_Chunk(name, offset, _sha256_file(self.directory / name)))
            pending, pending_frames = [], 0

        with tqdm(total=len(missing), desc=f"features {self.cfg.key()}", unit="utt", disable=not progress) as bar:
            for utt_id, feats in self._extract(missing, workers):
                pending.append((utt_id, feats))
                pending_frames += feats.shape[0]
                if pending_frames >= chunk_frames:
                    flush()
                bar.update(1)
            flush()
        self._write_manifest(chunks, index)
        self._read_manifest()
        return len(missing)

    def _jobs(self, items: Iterable[object], load: Callable[[object], Tensor] | None) -> Iterator[_Job]:
        seen: set[str] = set()
        if isinstance(items, (str, bytes)):
            raise ConfigError("items must be an iterable of utterances, not a string")
        for position, item in enumerate(items):
            if isinstance(item, tuple) and len(item) == 2 and callable(item[1]):
                job = _Job(utt_id=item[0], loader=item[1], path=None)
            elif isinstance(item, PathItem):
                if load is None or not callable(load):
                    raise ConfigError(
                        f"item {position} ({item.utt_id!r}) has a .path; pass load=<function path -> waveform>"
                    )
                job = _Job(utt_id=item.utt_id, loader=load, path=item.path)
            else:
                raise ConfigError(
                    f"item {position} must be a (utt_id, wav_loader) pair or have .utt_id and .path, "
                    f"got {type(item).__name__}"
                )
            if not isinstance(job.utt_id, str) or not job.utt_id:
                raise ConfigError(f"item {position}: utt_id must be a non-empty str, got {job.utt_id!r}")
            if job.utt_id in seen:
                raise FeatureError(f"utterance id {job.utt_id!r} appears twice in the items; ids must be unique")
            seen.add(job.utt_id)
            yield job

    @staticmethod
    def _check_picklable(jobs: list[_Job]) -> None:
        for loader in {id(job.loader): job.loader for job in jobs}.values():
            try:
                pickle.dumps(loader)
            except (pickle.PicklingError, AttributeError, TypeError) as exc:
                raise ConfigError(
                    f"workers > 1 needs picklable loaders (module-level functions), but {loader!r} "
                    f"is not ({exc}); use workers=1 or a module-level load function"
                ) from exc

    def _extract(self, jobs: list[_Job], workers: int) -> Iterator[tuple[str, np.ndarray]]:
        if workers == 1:
            for job in jobs:
                yield job.utt_id, _run_job(job, self.cfg)
            return
        method = "fork" if "fork" in get_all_start_methods() else "spawn"
        batches = deque(jobs[i : i + _BATCH] for i in range(0, len(jobs), _BATCH))
        window = 4 * workers  # batches in flight; bounds the finished results held in memory
        pool = ProcessPoolExecutor(workers, mp_context=get_context(method), initializer=_worker_init)
        futures: deque[Future[list[tuple[str, np.ndarray | None, str]]]] = deque()
        try:
            while batches or futures:
                while batches and len(futures) < window:
                    futures.append(pool.submit(_run_batch, batches.popleft(), self.cfg))
                for utt_id, feats, error in futures.popleft().result():
                    if feats is None:
                        raise FeatureError(error)
                    yield utt_id, feats
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _remove_leftovers(self) -> None:
        listed = {chunk.file for chunk in self._chunks}
        for path in self.directory.iterdir():
            orphan_chunk = path.name.startswith(_CHUNK_PREFIX) and path.name not in listed
            if orphan_chunk or _TMP_MARK in path.name:
                logger.warning("feature cache %s: removing %s left by an interrupted build", self.directory, path.name)
                path.unlink()

    def _write_manifest(self, chunks: list[_Chunk], index: dict[str, _Entry]) -> None:
        manifest = {
            "format": _FORMAT,
            "version": _VERSION,
            "key": self.cfg.key(),
            "config": self.cfg.to_dict(),
            "chunks": [asdict(chunk) for chunk in chunks],
            "index": {utt: [e.chunk, e.offset, e.n_frames] for utt, e in index.items()},
        }
        blob = json.dumps(manifest, indent=1).encode("utf-8")
        _write_atomic(self.manifest_path, lambda fh: fh.write(blob))
