"""The ledger's SQLite file: its schema, opening it (checks, WAL mode, migration) and its transactions.

:class:`LedgerFile` holds the connection; :class:`~privspk.privacy.ledger.storage.Ledger` builds
on it with recording and status transitions. Opening checks, in order: the file is an SQLite
database, a privspk ledger (``meta`` table, format), of this schema version, with the expected
tables and columns, passing ``PRAGMA quick_check``, and of the run and settings the caller
names. Nothing is written to a file that fails a check.

>>> f = _example_ledger()
>>> f.run_id, sorted(f._tables())[:3]
('demo', ['meta', 'runs', 'spend_chain'])
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Self

from privspk.errors import ConfigError, LedgerError
from privspk.privacy._checks import nonempty_str, positive_float
from privspk.privacy.ledger.chain import _CHAIN_COLUMNS, _CHAIN_DDL, _CHAIN_TABLE
from privspk.privacy.ledger.rows import _COLUMNS

__all__ = ["LEDGER_FORMAT", "SCHEMA_VERSION", "LedgerFile"]

logger = logging.getLogger(__name__)

LEDGER_FORMAT = "privspk-ledger"
SCHEMA_VERSION = 2

_SCHEMA: dict[str, str] = {
    "meta": "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "runs": "CREATE TABLE runs (run_id TEXT PRIMARY KEY, settings TEXT NOT NULL, created_at TEXT NOT NULL)",
    "spends": """CREATE TABLE spends (
        run_id TEXT NOT NULL REFERENCES runs(run_id),
        client TEXT NOT NULL,
        round INTEGER NOT NULL CHECK (round >= 1),
        unit TEXT NOT NULL,
        accountant TEXT NOT NULL,
        noise_multiplier REAL NOT NULL,
        sample_rate REAL NOT NULL,
        steps INTEGER NOT NULL,
        delta REAL NOT NULL,
        epsilon_after REAL NOT NULL,
        client_noise_multiplier REAL,
        client_sample_rate REAL,
        client_delta REAL,
        client_epsilon_after REAL,
        client_mechanism TEXT,
        clip REAL NOT NULL,
        scheme TEXT NOT NULL,
        update_digest TEXT,
        status TEXT NOT NULL CHECK (status IN ('spent', 'released', 'aggregated', 'abandoned')),
        note TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        randomness TEXT NOT NULL CHECK (randomness IN ('secret', 'simulation')),
        UNIQUE (run_id, client, round)
    )""",
    "spend_speakers": """CREATE TABLE spend_speakers (
        run_id TEXT NOT NULL,
        client TEXT NOT NULL,
        round INTEGER NOT NULL,
        speaker TEXT NOT NULL,
        PRIMARY KEY (run_id, client, round, speaker),
        FOREIGN KEY (run_id, client, round) REFERENCES spends(run_id, client, round)
    )""",
}


def _example_ledger() -> LedgerFile:
    """A fresh ledger file in a temporary folder, for the doctests of this module."""
    return LedgerFile(Path(tempfile.mkdtemp()) / "ledger.sqlite", run_id="demo", settings={"epsilon": 8.0})


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _canonical_json(settings: Mapping[str, object]) -> str:
    if not isinstance(settings, Mapping):
        raise ConfigError(f"ledger settings must be a mapping, got {type(settings).__name__}")
    try:
        return json.dumps(settings, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"ledger settings must be plain JSON (str/int/float/bool/None/lists/dicts): {exc}") from exc


def _flatten(obj: object, prefix: str = "") -> dict[str, object]:
    if isinstance(obj, Mapping):
        out: dict[str, object] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        if not obj and prefix:
            out[prefix] = {}
        return out
    return {prefix: obj}


def _differing_keys(a: Mapping[str, object], b: Mapping[str, object]) -> list[str]:
    fa, fb = _flatten(a), _flatten(b)
    return sorted(k for k in set(fa) | set(fb) if fa.get(k, _MISSING) != fb.get(k, _MISSING))


_MISSING = object()


@dataclass
class _RunInfo:
    run_id: str
    settings: dict[str, object] = field(default_factory=dict)


class LedgerFile:
    """A privacy ledger's SQLite file, opened and checked (see the module doc); the base of ``Ledger``.

    The arguments are :class:`~privspk.privacy.ledger.storage.Ledger`'s.

    >>> _example_ledger().settings
    {'epsilon': 8.0}
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        run_id: str | None = None,
        settings: Mapping[str, object] | None = None,
        create_if_missing: bool = True,
        readonly: bool = False,
        timeout_s: float = 5.0,
    ) -> None:
        self._path = Path(path)
        self._timeout_s = positive_float("timeout_s", timeout_s)
        self._readonly = bool(readonly)
        self._lock = threading.RLock()
        self._chained = False
        if run_id is not None:
            nonempty_str("run_id", run_id)
        settings_json = None if settings is None else _canonical_json(settings)
        exists = self._path.exists()
        if not exists and (readonly or not create_if_missing):
            raise LedgerError(f"{self._path}: no ledger file here; check the path (or allow creating one)")
        if not exists and (run_id is None or settings_json is None):
            raise ConfigError(f"{self._path}: creating a new ledger needs run_id and settings")
        if exists and self._path.is_dir():
            raise LedgerError(f"{self._path}: is a folder, not a ledger file")
        if not exists:
            self._path.parent.mkdir(parents=True, exist_ok=True)
        mode = "ro" if readonly else ("rw" if exists else "rwc")
        uri = f"{self._path.resolve().as_uri()}?mode={mode}"
        try:
            self._conn = sqlite3.connect(
                uri, uri=True, timeout=self._timeout_s, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise LedgerError(f"{self._path}: cannot open the ledger ({exc})") from exc
        if readonly:
            self._conn = self._readable(self._conn, uri)
        try:
            self._info = self._open(run_id=run_id, settings_json=settings_json, create=create_if_missing)
        except BaseException:
            self._conn.close()
            raise

    # -- opening -----------------------------------------------------------------------------------------------

    def _readable(self, conn: sqlite3.Connection, uri: str) -> sqlite3.Connection:
        """A read-only connection that works in a folder nobody may write (a WAL reader needs a -shm file).

        When SQLite cannot create the -shm file beside a WAL ledger, the file is opened as
        immutable - safe only when no -wal file holds transactions not yet in the main file,
        which is refused with a clear message.
        """
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.Error as exc:
            if not isinstance(exc, sqlite3.OperationalError) or "unable to open" not in str(exc).lower():
                return conn  # _open reports it
        wal = self._path.with_name(self._path.name + "-wal")
        if wal.exists() and wal.stat().st_size > 0:
            conn.close()
            raise LedgerError(
                f"{self._path}: cannot read the ledger in a read-only folder while its -wal file holds recent "
                "transactions; copy the ledger with its -wal and -shm files to a writable folder and read it there"
            )
        conn.close()
        try:
            return sqlite3.connect(f"{uri}&immutable=1", uri=True, timeout=self._timeout_s, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as exc:
            raise LedgerError(f"{self._path}: cannot open the ledger ({exc})") from exc

    def _translate(self, exc: sqlite3.Error, doing: str) -> LedgerError:
        msg = str(exc).lower()
        if isinstance(exc, sqlite3.OperationalError) and ("locked" in msg or "busy" in msg):
            return LedgerError(
                f"{self._path}: ledger is locked - another process holds it (waited {self._timeout_s:g} s while "
                f"{doing}); let it finish or stop it, then retry"
            )
        if isinstance(exc, sqlite3.DatabaseError) and ("not a database" in msg or "malformed" in msg):
            return LedgerError(
                f"{self._path}: not a readable privspk ledger ({exc}); it is left untouched - restore it from a "
                "backup or point to the right file"
            )
        return LedgerError(f"{self._path}: ledger database error while {doing}: {exc}")

    def _tables(self) -> set[str]:
        rows = self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        return {r[0] for r in rows}

    def _check_schema(self, tables: set[str]) -> None:
        missing = [t for t in _SCHEMA if t not in tables]
        if "meta" not in tables:
            raise LedgerError(
                f"{self._path}: an SQLite file but not a privspk ledger (no 'meta' table; tables: "
                f"{', '.join(sorted(tables)) or 'none'}); it is left untouched"
            )
        meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("format") != LEDGER_FORMAT:
            raise LedgerError(f"{self._path}: not a privspk ledger (format {meta.get('format')!r}); left untouched")
        if meta.get("schema_version") == "1":
            raise LedgerError(
                f"{self._path}: ledger schema version 1 was written before each row recorded its randomness, so "
                "its rows cannot say whether their epsilon assumed secret noise and sampling (privspk's default "
                "then replayed both from the run's seed); read it with the privspk version that wrote it, and start "
                "a new run (new ledger) to train on"
            )
        if meta.get("schema_version") != str(SCHEMA_VERSION):
            raise LedgerError(
                f"{self._path}: ledger schema version {meta.get('schema_version')!r}, this privspk reads "
                f"{SCHEMA_VERSION}; use the privspk version that wrote it"
            )
        if missing:
            raise LedgerError(f"{self._path}: ledger is missing table(s) {', '.join(missing)}; the file is damaged")
        for table, cols in _COLUMNS.items():
            have = tuple(r[1] for r in self._conn.execute(f"PRAGMA table_info({table})").fetchall())
            if have != cols:
                raise LedgerError(
                    f"{self._path}: table {table} has columns {have}, expected {cols}; the file is damaged"
                )
        self._chained = _CHAIN_TABLE in tables
        if self._chained:
            have = tuple(r[1] for r in self._conn.execute(f"PRAGMA table_info({_CHAIN_TABLE})").fetchall())
            if have[: len(_CHAIN_COLUMNS)] != _CHAIN_COLUMNS:
                raise LedgerError(
                    f"{self._path}: table {_CHAIN_TABLE} has columns {have}, expected {_CHAIN_COLUMNS}; the file is "
                    "damaged"
                )
        check = self._conn.execute("PRAGMA quick_check").fetchone()
        if check is None or check[0] != "ok":
            raise LedgerError(f"{self._path}: integrity check failed ({check}); restore the ledger from a backup")

    def _open(self, *, run_id: str | None, settings_json: str | None, create: bool) -> _RunInfo:
        try:
            tables = self._tables()
            if tables:
                self._check_schema(tables)
            elif self._readonly or not create:
                raise LedgerError(f"{self._path}: an empty database, not a privspk ledger")
            elif run_id is None or settings_json is None:
                raise ConfigError(f"{self._path}: creating a new ledger needs run_id and settings")
            if not self._readonly:
                mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise LedgerError(f"{self._path}: cannot switch the ledger to WAL mode (got {mode!r})")
                self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            if not tables:
                self._create(run_id=run_id, settings_json=settings_json)  # type: ignore[arg-type]
                self._chained = True
            elif not self._chained and not self._readonly:
                self._migrate_unchained()
            return self._load_run(run_id=run_id, settings_json=settings_json)
        except sqlite3.Error as exc:
            raise self._translate(exc, "opening") from exc

    def _create(self, *, run_id: str, settings_json: str) -> None:
        with self._write("creating the ledger") as conn:
            if conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]:
                return  # another process created it first; _load_run checks it
            for ddl in _SCHEMA.values():
                conn.execute(ddl)
            conn.execute(_CHAIN_DDL)
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [("format", LEDGER_FORMAT), ("schema_version", str(SCHEMA_VERSION))],
            )
            conn.execute(
                "INSERT INTO runs (run_id, settings, created_at) VALUES (?, ?, ?)", (run_id, settings_json, _now())
            )
        logger.info("created privacy ledger %s for run %s", self._path, run_id)

    def _migrate_unchained(self) -> None:
        """A ledger from before the hash chain: an empty one gains the chain table; one with rows is refused.

        Chaining rows recorded without a chain would vouch for rows nobody can vouch for any more, so a
        ledger that already holds spends is never migrated: it stays readable (``readonly=True``) and
        ``verify_chain`` reports it as unverifiable.
        """
        with self._write("adding the hash chain") as conn:
            if conn.execute("SELECT count(*) FROM spends").fetchone()[0]:
                raise LedgerError(
                    f"{self._path}: this ledger was written by an older privspk without a hash chain (no "
                    f"'{_CHAIN_TABLE}' table), so its rows cannot be vouched for; it is left untouched - finish "
                    "that run with the privspk version that started it, or start a new run (new ledger)"
                )
            conn.execute(_CHAIN_DDL)
        self._chained = True

    def _load_run(self, *, run_id: str | None, settings_json: str | None) -> _RunInfo:
        runs = self._conn.execute("SELECT run_id, settings FROM runs").fetchall()
        if len(runs) != 1:
            raise LedgerError(f"{self._path}: ledger holds {len(runs)} runs, expected exactly one; the file is damaged")
        stored_id, stored_json = runs[0]
        if run_id is not None and stored_id != run_id:
            raise LedgerError(
                f"{self._path}: this ledger belongs to run {stored_id!r}, not {run_id!r}; use that run's id to "
                "resume it, or a new ledger file for a new run"
            )
        try:
            stored = json.loads(stored_json)
        except json.JSONDecodeError as exc:
            raise LedgerError(f"{self._path}: stored run settings are not JSON ({exc}); the file is damaged") from exc
        if settings_json is not None and settings_json != stored_json:
            keys = _differing_keys(stored, json.loads(settings_json))
            raise LedgerError(
                f"{self._path}: privacy settings differ from the ones this run was started with (keys: "
                f"{', '.join(keys)}); a resumed run must keep its privacy settings - start a new run (new ledger) "
                "to change them. Nothing was written"
            )
        return _RunInfo(run_id=stored_id, settings=stored)

    # -- plumbing ----------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _write(self, doing: str) -> Iterator[sqlite3.Connection]:
        if self._readonly:
            raise LedgerError(f"{self._path}: opened read-only; cannot write while {doing}")
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._translate(exc, doing) from exc
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise self._translate(exc, doing) from exc
                raise

    @contextlib.contextmanager
    def _read(self, doing: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise self._translate(exc, doing) from exc

    @property
    def path(self) -> Path:
        """The database file.

        >>> _example_ledger().path.name
        'ledger.sqlite'
        """
        return self._path

    @property
    def run_id(self) -> str:
        """The run this ledger belongs to.

        >>> _example_ledger().run_id
        'demo'
        """
        return self._info.run_id

    @property
    def settings(self) -> dict[str, object]:
        """The run's privacy settings as stored at creation (a copy).

        >>> _example_ledger().settings
        {'epsilon': 8.0}
        """
        return json.loads(json.dumps(self._info.settings))

    def close(self) -> None:
        """Close the connection (idempotent).

        >>> led = _example_ledger(); led.close(); led.close()
        """
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
