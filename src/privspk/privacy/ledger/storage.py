"""Ledger storage: the SQLite schema, opening and migrating a file, recording spends and status transitions.

One file per run (WAL mode, ``synchronous=FULL``); a spend is committed (fsync'ed) before its
update may leave the client, chained to the client's previous row in the same transaction.
Status transitions: ``spent`` -> ``released`` -> ``aggregated``, or -> ``abandoned``.
Checking a ledger is :mod:`privspk.privacy.ledger.audit`'s job, showing it
:mod:`privspk.privacy.ledger.report`'s; :class:`Ledger` forwards to both.

>>> led = _example_ledger()
>>> led.record_spend(_example_spend()).status
'spent'
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from privspk.errors import ConfigError, LedgerError
from privspk.privacy._checks import nonempty_str, positive_float
from privspk.privacy.accounting import ClientLevelMechanism, ClientLevelRound, RoundSpend, SpendStep, speaker_epsilons
from privspk.privacy.ledger.chain import (
    _CHAIN_COLUMNS,
    _CHAIN_DDL,
    _CHAIN_TABLE,
    GENESIS_HASH,
    AggregatedHeads,
    ChainFinding,
    SignedHead,
    _chain_hash,
    head_message,
)
from privspk.privacy.ledger.rows import (  # noqa: F401 - _example_spend: the doctests' example
    _COLUMNS,
    ClientLevelSpend,
    Spend,
    SpendRow,
    _example_spend,
    digest_update,
)
from privspk.privacy.mechanism import Mechanism

if TYPE_CHECKING:
    from privspk.privacy.ledger.audit import RecomputeCheck

__all__ = ["LEDGER_FORMAT", "SCHEMA_VERSION", "Ledger"]

logger = logging.getLogger(__name__)

LEDGER_FORMAT = "privspk-ledger"
SCHEMA_VERSION = 2
_NEXT_STATUS: dict[str, tuple[str, ...]] = {
    "spent": ("released", "aggregated", "abandoned"),
    "released": ("aggregated", "abandoned"),
    "aggregated": (),
    "abandoned": (),
}

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

def _example_ledger() -> Ledger:
    """A fresh ledger in a temporary folder, for the doctests of this module."""
    return Ledger(Path(tempfile.mkdtemp()) / "ledger.sqlite", run_id="demo", settings={"epsilon": 8.0})


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


class Ledger:
    """A per-run privacy ledger over SQLite (WAL mode, ``synchronous=FULL``, busy timeout).

    Args:
        path: the database file (created with its parent folder when missing and allowed).
        run_id: the run this ledger belongs to; required to create, checked on open.
        settings: the run's privacy settings (JSON types); stored on creation as
            canonical JSON and compared on every reopen - a difference raises
            LedgerError naming the differing keys. ``None`` skips the check
            (read-only inspection).
        create_if_missing: create the file when it does not exist.
        readonly: open for reading only (``privspk ledger``, audits).
        timeout_s: how long to wait for another process's lock before giving up.

    Thread-safe: one lock serialises access to the connection.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "l.sqlite"
    >>> Ledger(p, run_id="a", settings={"eps": 8}).close()
    >>> Ledger(p, run_id="a", settings={"eps": 4})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    privspk.errors.LedgerError: ...l.sqlite: privacy settings differ from the ones ... (keys: eps)...
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

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading rows ------------------------------------------------------------------------------------------

    def _row_from_db(self, rec: sqlite3.Row | tuple, speakers: tuple[str, ...]) -> SpendRow:
        d = dict(zip(_COLUMNS["spends"], rec))
        client_level = None
        if d["client_mechanism"] is not None:
            try:
                mech = ClientLevelMechanism.from_dict(json.loads(d["client_mechanism"]))
                client_level = ClientLevelSpend(
                    mechanism=mech,
                    sample_rate=d["client_sample_rate"],
                    delta=d["client_delta"],
                    epsilon_after=d["client_epsilon_after"],
                )
            except (json.JSONDecodeError, ConfigError, TypeError) as exc:
                raise LedgerError(
                    f"{self._path}: client {d['client']} round {d['round']} has an unreadable client-level "
                    f"record ({exc}); the file is damaged"
                ) from exc
        try:
            return SpendRow(
                run_id=d["run_id"],
                client=d["client"],
                round=d["round"],
                mechanism=Mechanism.from_row(d),
                epsilon_after=d["epsilon_after"],
                scheme=d["scheme"],
                speakers=speakers,
                client_level=client_level,
                update_digest=d["update_digest"],
                status=d["status"],
                note=d["note"],
                created_at=d["created_at"],
                updated_at=d["updated_at"],
            )
        except ConfigError as exc:
            raise LedgerError(
                f"{self._path}: client {d['client']} round {d['round']} holds invalid values ({exc}); "
                "the file is damaged"
            ) from exc

    def _select(self, conn: sqlite3.Connection, where: str = "", args: Sequence[object] = ()) -> list[SpendRow]:
        cols = ", ".join(_COLUMNS["spends"])
        recs = conn.execute(
            f"SELECT {cols} FROM spends WHERE run_id = ? {where} ORDER BY client, round", (self.run_id, *args)
        ).fetchall()
        spk: dict[tuple[str, int], list[str]] = {}
        for client, rnd, speaker in conn.execute(
            f"SELECT client, round, speaker FROM spend_speakers WHERE run_id = ? {where} ORDER BY speaker",
            (self.run_id, *args),
        ):
            spk.setdefault((client, rnd), []).append(speaker)
        return [self._row_from_db(r, tuple(spk.get((r[1], r[2]), ()))) for r in recs]

    def rows(self, client: str | None = None) -> list[SpendRow]:
        """All rows (or one client's), ordered by client then round.

        >>> led = _example_ledger()
        >>> _ = led.record_spend(_example_spend("b")); _ = led.record_spend(_example_spend("a"))
        >>> [r.client for r in led.rows()], len(led.rows("a"))
        (['a', 'b'], 1)
        """
        with self._read("reading rows") as conn:
            if client is None:
                return self._select(conn)
            return self._select(conn, "AND client = ?", (client,))

    def row(self, client: str, round: int) -> SpendRow | None:
        """The row of ``client`` in ``round``, or ``None``.

        >>> led = _example_ledger(); _ = led.record_spend(_example_spend())
        >>> led.row("c0", 1).status, led.row("c0", 2)
        ('spent', None)
        """
        with self._read("reading a row") as conn:
            found = self._select(conn, "AND client = ? AND round = ?", (client, round))
        return found[0] if found else None

    def clients(self) -> list[str]:
        """Clients with at least one row, sorted.

        >>> led = _example_ledger(); _ = led.record_spend(_example_spend("b")); _ = led.record_spend(_example_spend("a"))
        >>> led.clients()
        ['a', 'b']
        """
        with self._read("listing clients") as conn:
            recs = conn.execute(
                "SELECT DISTINCT client FROM spends WHERE run_id = ? ORDER BY client", (self.run_id,)
            ).fetchall()
        return [r[0] for r in recs]

    def pending(self, client: str | None = None) -> list[SpendRow]:
        """Rows still ``spent``: committed, not known to be released (what a resumed client must settle).

        >>> led = _example_ledger()
        >>> _ = led.record_spend(_example_spend())
        >>> [(r.client, r.round) for r in led.pending()]
        [('c0', 1)]
        """
        return [r for r in self.rows(client) if r.status == "spent"]

    def last_round(self, client: str) -> int:
        """The highest round recorded for ``client`` (0 when none).

        >>> led = _example_ledger(); _ = led.record_spend(_example_spend(round=3))
        >>> led.last_round("c0"), led.last_round("c9")
        (3, 0)
        """
        with self._read("reading the last round") as conn:
            rec = conn.execute(
                "SELECT max(round) FROM spends WHERE run_id = ? AND client = ?", (self.run_id, client)
            ).fetchone()
        return int(rec[0]) if rec and rec[0] is not None else 0

    def history(self, client: str) -> tuple[SpendStep, ...]:
        """The client's DP-SGD steps in round order (an accountant's state).

        >>> led = _example_ledger(); _ = led.record_spend(_example_spend())
        >>> led.history("c0")[0].steps
        20
        """
        return tuple(r.step for r in self.rows(client))

    def round_spends(self, client: str) -> list[RoundSpend]:
        """The client's rounds with their speakers, as the accountant composes them.

        >>> led = _example_ledger(); _ = led.record_spend(_example_spend())
        >>> [(r.round, r.speakers) for r in led.round_spends("c0")]
        [(1, ())]
        """
        return [RoundSpend(round=r.round, step=r.step, speakers=r.speakers) for r in self.rows(client)]

    def client_level_rounds(self, client: str) -> list[ClientLevelRound]:
        """The client's rounds with a client-level mechanism.

        >>> led = _example_ledger(); _ = led.record_spend(_example_spend())
        >>> led.client_level_rounds("c0")  # no client-level DP here
        []
        """
        return [
            ClientLevelRound(round=r.round, mechanism=cl.mechanism, sample_rate=cl.sample_rate)
            for r in self.rows(client)
            if (cl := r.client_level) is not None
        ]

    def epsilon(self, client: str) -> float:
        """The client's recorded epsilon (its last row's ``epsilon_after``; 0.0 before any spend).

        >>> led = _example_ledger()
        >>> _ = led.record_spend(_example_spend(round=1, epsilon_after=0.5))
        >>> _ = led.record_spend(_example_spend(round=3, epsilon_after=0.8))
        >>> led.epsilon("c0"), led.epsilon("nobody")
        (0.8, 0.0)
        """
        rows = self.rows(client)
        return rows[-1].epsilon_after if rows else 0.0

    def client_epsilon(self, client: str) -> float | None:
        """The client's recorded client-level epsilon, or ``None`` when it has no client-level DP.

        >>> led = _example_ledger(); _ = led.record_spend(_example_spend())
        >>> led.client_epsilon("c0") is None
        True
        """
        rows = self.rows(client)
        if not rows or rows[-1].client_level is None:
            return None
        return rows[-1].client_level.epsilon_after

    # -- writing -----------------------------------------------------------------------------------------------

    def record_spend(self, spend: Spend, *, signer: object | None = None) -> SpendRow:
        """Record ``spend`` as ``spent`` in one committed (fsync'ed) transaction.

        The row is chained to the client's previous row (SHA-256 hash chain) in the
        same transaction; with ``signer`` (an object with ``sign(bytes)`` and
        ``public_bytes()``, e.g. :class:`privspk.secagg.keys.IdentityKey`) the new
        chain head is signed too (:func:`head_message`). A client signs all its rows
        or none.

        Refuses (LedgerError, nothing written) a (client, round) already recorded,
        a round not above the client's last one, a unit/accountant/delta different
        from the client's earlier rows, a decreasing epsilon, and mixing rows with
        and without client-level DP.

        >>> led = _example_ledger()
        >>> led.record_spend(_example_spend()).status
        'spent'
        >>> led.record_spend(_example_spend())  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        privspk.errors.LedgerError: ...client c0 round 1 already has a spend recorded (status spent)...
        """
        if not isinstance(spend, Spend):
            raise ConfigError(f"record_spend takes a Spend, got {type(spend).__name__}")
        with self._write(f"recording client {spend.client} round {spend.round}") as conn:
            prev = self._select(conn, "AND client = ?", (spend.client,))
            self._check_new_spend(spend, prev)
            now = _now()
            cl = spend.client_level
            values = {
                **spend.mechanism.to_dict(),
                "run_id": self.run_id, "client": spend.client, "round": spend.round,
                "epsilon_after": spend.epsilon_after, "scheme": spend.scheme, "update_digest": spend.update_digest,
                "client_noise_multiplier": None if cl is None else cl.noise_multiplier,
                "client_sample_rate": None if cl is None else cl.sample_rate,
                "client_delta": None if cl is None else cl.delta,
                "client_epsilon_after": None if cl is None else cl.epsilon_after,
                "client_mechanism": None if cl is None else json.dumps(cl.mechanism.to_dict(), sort_keys=True),
                "status": "spent", "note": None, "created_at": now, "updated_at": now,
            }
            cols = _COLUMNS["spends"]
            if set(values) != set(cols):  # pragma: no cover - a column added to the schema but not here
                raise LedgerError(f"spend columns out of step with the schema: {sorted(set(values) ^ set(cols))}")
            conn.execute(
                f"INSERT INTO spends ({', '.join(cols)}) VALUES ({', '.join(':' + c for c in cols)})", values
            )
            conn.executemany(
                "INSERT INTO spend_speakers (run_id, client, round, speaker) VALUES (?, ?, ?, ?)",
                [(self.run_id, spend.client, spend.round, s) for s in spend.speakers],
            )
            row = self._select(conn, "AND client = ? AND round = ?", (spend.client, spend.round))[0]
            self._chain_row(conn, row, signer)
        logger.info(
            "ledger %s: client %s round %d spent, epsilon %.4f per %s", self._path.name, spend.client, spend.round,
            spend.epsilon_after, spend.unit,
        )
        return row

    def _chain_row(self, conn: sqlite3.Connection, row: SpendRow, signer: object | None) -> None:
        last = conn.execute(
            f"SELECT seq, row_hash, public_key FROM {_CHAIN_TABLE} WHERE run_id = ? AND client = ? "
            "ORDER BY seq DESC LIMIT 1",
            (self.run_id, row.client),
        ).fetchone()
        seq, prev = (1, GENESIS_HASH) if last is None else (int(last[0]) + 1, str(last[1]))
        if last is not None and (last[2] is None) != (signer is None):
            raise LedgerError(
                f"{self._path}: client {row.client} round {row.round}: a client signs all its chain heads or none "
                f"(earlier rows are {'un' if last[2] is None else ''}signed); nothing was written"
            )
        head = _chain_hash(row, prev_hash=prev, seq=seq)
        public_key = signature = None
        if signer is not None:
            pk = signer.public_bytes()  # type: ignore[attr-defined]
            if last is not None and last[2] != pk.hex():
                raise LedgerError(
                    f"{self._path}: client {row.client} round {row.round}: signed with another identity key than "
                    "its earlier rows; a client keeps one key for a run - nothing was written"
                )
            public_key = pk.hex()
            signature = signer.sign(  # type: ignore[attr-defined]
                head_message(run_id=self.run_id, client=row.client, round=row.round, seq=seq, head=head)
            ).hex()
        conn.execute(
            f"INSERT INTO {_CHAIN_TABLE} ({', '.join(_CHAIN_COLUMNS)}) VALUES ({', '.join('?' * len(_CHAIN_COLUMNS))})",
            (self.run_id, row.client, row.round, seq, prev, head, public_key, signature),
        )

    def signed_head(self, client: str, round: int) -> SignedHead | None:
        """The client's chain head after its row of ``round`` (with its signature), or ``None``.

        >>> from privspk.secagg.keys import IdentityKey
        >>> led = _example_ledger()
        >>> _ = led.record_spend(_example_spend(), signer=IdentityKey.generate())
        >>> h = led.signed_head("c0", 1)
        >>> (h.seq, len(h.head), len(h.signature))
        (1, 64, 64)
        """
        with self._read("reading a chain head") as conn:
            if not self._chained:
                return None
            rec = conn.execute(
                f"SELECT seq, row_hash, public_key, signature FROM {_CHAIN_TABLE} WHERE run_id = ? AND client = ? "
                "AND round = ?",
                (self.run_id, client, round),
            ).fetchone()
        if rec is None:
            return None
        return SignedHead(
            client=client, round=int(round), seq=int(rec[0]), head=str(rec[1]),
            public_key=b"" if rec[2] is None else bytes.fromhex(rec[2]),
            signature=b"" if rec[3] is None else bytes.fromhex(rec[3]),
        )

    def verify_chain(self, record: AggregatedHeads | None = None) -> list[ChainFinding]:
        """Check the hash chain, round order and signatures (empty list: intact); see :func:`.audit.verify_chain`.

        >>> led = _example_ledger(); _ = led.record_spend(_example_spend())
        >>> led.verify_chain()
        []
        """
        from privspk.privacy.ledger.audit import verify_chain

        return verify_chain(self, record)
    def _check_new_spend(self, spend: Spend, prev: list[SpendRow]) -> None:
        where = f"{self._path}: client {spend.client} round {spend.round}"
        same = [r for r in prev if r.round == spend.round]
        if same:
            raise LedgerError(
                f"{where} already has a spend recorded (status {same[0].status}); a round is never counted twice - "
                "resume it (see pending()) instead of recording it again"
            )
        if not prev:
            return
        last = prev[-1]
        if spend.round < last.round:
            raise LedgerError(f"{where}: rounds must increase, the client's last recorded round is {last.round}")
        changed = [
            name
            for name in ("unit", "accountant", "delta", "randomness")
            if getattr(spend, name) != getattr(last, name)
        ]
        if changed:
            raise LedgerError(
                f"{where}: {', '.join(changed)} differ from the client's earlier rounds; privacy settings cannot "
                "change within a run"
            )
        if (spend.client_level is None) != (last.client_level is None):
            raise LedgerError(f"{where}: client-level DP must be used in every round of a client or in none")
        if spend.epsilon_after < last.epsilon_after * (1 - 1e-12):
            raise LedgerError(
                f"{where}: epsilon_after {spend.epsilon_after:.6g} is below the previous {last.epsilon_after:.6g}; "
                "epsilon never decreases - recompute it from the ledger's history"
            )

    def _transition(
        self, conn: sqlite3.Connection, client: str, round: int, status: str, *, note: str | None = None
    ) -> SpendRow:
        found = self._select(conn, "AND client = ? AND round = ?", (client, round))
        if not found:
            raise LedgerError(
                f"{self._path}: client {client} round {round} has no recorded spend; an update without a "
                "committed spend must never be released or aggregated"
            )
        row = found[0]
        if row.status == status:
            return row
        if status not in _NEXT_STATUS[row.status]:
            raise LedgerError(
                f"{self._path}: client {client} round {round} is {row.status!r}; it cannot become {status!r}"
            )
        conn.execute(
            "UPDATE spends SET status = ?, note = coalesce(?, note), updated_at = ? "
            "WHERE run_id = ? AND client = ? AND round = ?",
            (status, note, _now(), self.run_id, client, round),
        )
        return self._select(conn, "AND client = ? AND round = ?", (client, round))[0]

    def check_update(self, client: str, round: int, *, update_digest: str) -> SpendRow:
        """Raise LedgerError unless a spend is recorded for this update (and, if it has a digest, the same one).

        The server (or an auditor) calls this before summing a client's update.

        >>> led = _example_ledger()
        >>> _ = led.record_spend(Spend(**{**vars(_example_spend()), "update_digest": digest_update(b"u")}))
        >>> led.check_update("c0", 1, update_digest=digest_update(b"u")).round
        1
        >>> led.check_update("c0", 1, update_digest=digest_update(b"v"))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        privspk.errors.LedgerError: ...update differs from the one its spend was recorded for...
        """
        row = self.row(client, round)
        if row is None:
            raise LedgerError(
                f"{self._path}: client {client} round {round}: no spend recorded for this update; refuse it"
            )
        if row.status == "abandoned":
            raise LedgerError(f"{self._path}: client {client} round {round} was abandoned; refuse its update")
        if row.update_digest is not None and row.update_digest != update_digest:
            raise LedgerError(
                f"{self._path}: client {client} round {round}: update differs from the one its spend was recorded "
                "for; refuse it (a second release under one spend)"
            )
        return row

    def mark_released(self, client: str, round: int, *, update_digest: str | None = None) -> SpendRow:
        """Mark the round's update as sent; idempotent for a re-send of the same update.

        If the spend was recorded with a digest, ``update_digest`` (when given)
        must match it: only the exact bytes the spend covers may be (re-)released.

        >>> led = _example_ledger()
        >>> _ = led.record_spend(_example_spend())
        >>> led.mark_released("c0", 1).status, led.mark_released("c0", 1).status
        ('released', 'released')
        """
        with self._write(f"marking client {client} round {round} released") as conn:
            found = self._select(conn, "AND client = ? AND round = ?", (client, round))
            if found and found[0].update_digest is not None and update_digest is not None:
                if found[0].update_digest != update_digest:
                    raise LedgerError(
                        f"{self._path}: client {client} round {round}: the update differs from the one its spend "
                        "was recorded for; re-send the recorded update, never a fresh one"
                    )
            return self._transition(conn, client, round, "released")

    def mark_aggregated(self, round: int, clients: Iterable[str]) -> list[SpendRow]:
        """Mark the listed clients' rows of ``round`` aggregated, all or none (one transaction).

        >>> led = _example_ledger()
        >>> _ = led.record_spend(_example_spend("a")); _ = led.record_spend(_example_spend("b"))
        >>> [r.status for r in led.mark_aggregated(1, ["a", "b"])]
        ['aggregated', 'aggregated']
        """
        clients = list(clients)
        with self._write(f"marking round {round} aggregated") as conn:
            return [self._transition(conn, c, round, "aggregated") for c in clients]

    def mark_abandoned(self, client: str, round: int, *, reason: str) -> SpendRow:
        """Give up on a round (the spend still counts); ``reason`` is kept in the row's note.

        >>> led = _example_ledger()
        >>> _ = led.record_spend(_example_spend())
        >>> row = led.mark_abandoned("c0", 1, reason="server timed out")
        >>> row.status, row.note, led.epsilon("c0")
        ('abandoned', 'server timed out', 0.5)
        """
        nonempty_str("reason", reason)
        with self._write(f"abandoning client {client} round {round}") as conn:
            return self._transition(conn, client, round, "abandoned", note=reason)

    # -- audit and report (privspk.privacy.ledger.audit / .report) ----------------------------------------------------------------------------------------------

    def speaker_epsilons(self, client: str, *, accountant: str | None = None) -> dict[str, float]:
        """Each declared speaker's epsilon for ``client`` (empty when no speakers were declared).

        >>> led = _example_ledger(); _ = led.record_spend(_example_spend())
        >>> led.speaker_epsilons("c0")
        {}
        """
        rows = self.rows(client)
        if not rows:
            return {}
        return speaker_epsilons(
            [RoundSpend(round=r.round, step=r.step, speakers=r.speakers) for r in rows],
            delta=rows[-1].delta,
            accountant=accountant or rows[-1].accountant,
        )

    def recompute(self, accountant: str | None = None, *, rtol: float = 1e-6, atol: float = 1e-9) -> list[RecomputeCheck]:
        """Recompute every recorded epsilon from the rows' mechanisms; see :func:`.audit.recompute`.

        >>> led = _example_ledger(); _ = led.record_spend(_example_spend(epsilon_after=0.01))  # recorded too low
        >>> [c.ok for c in led.recompute()]
        [False]
        """
        from privspk.privacy.ledger.audit import recompute

        return recompute(self, accountant, rtol=rtol, atol=atol)

    def to_dict(self) -> dict[str, object]:
        """The whole ledger as plain JSON types; see :func:`.report.ledger_dict`.

        >>> _example_ledger().to_dict()["format"]
        'privspk-ledger'
        """
        from privspk.privacy.ledger.report import ledger_dict

        return ledger_dict(self)
    def export_json(self, path: str | os.PathLike[str]) -> Path:
        """Write the ledger as JSON (atomically); see :func:`.report.export_json`.

        >>> led = _example_ledger()
        >>> led.export_json(led.path.with_suffix(".json")).suffix
        '.json'
        """
        from privspk.privacy.ledger.report import export_json

        return export_json(self, path)
    def export_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write one CSV line per row; see :func:`.report.export_csv`.

        >>> led = _example_ledger()
        >>> led.export_csv(led.path.with_suffix(".csv")).read_text().startswith("run_id,client,round")
        True
        """
        from privspk.privacy.ledger.report import export_csv

        return export_csv(self, path)
    def table(self, client: str | None = None) -> str:
        """A fixed-width text table of the rows; see :func:`.report.table`.

        >>> print(_example_ledger().table())
        run demo: epsilon per row's unit at its delta; client_eps per client
        client  round  unit  acct  sigma  q  steps  delta  epsilon  client_eps  clip  scheme  status  randomness
        (no spends recorded)
        """
        from privspk.privacy.ledger.report import table

        return table(self, client)
    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Plot epsilon over rounds per client to an image file; see :func:`.report.plot`.

        >>> led = _example_ledger(); _ = led.record_spend(_example_spend())
        >>> led.plot(led.path.with_suffix(".png")).exists()
        True
        """
        from privspk.privacy.ledger.report import plot

        return plot(self, path)
