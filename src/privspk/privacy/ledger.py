"""The privacy ledger: one SQLite file (WAL mode) recording every round's spend per client.

A row per (run, client, round) holds everything needed to recompute its epsilon
later - accountant, noise multiplier, sampling rate, steps, delta, clipping
bound, scheme, the privacy unit it protects, the client-level (distributed DP)
mechanism when there is one - plus the epsilon after the round, the row's
randomness (``secret``: the round's noise and sampling came from the OS CSPRNG;
``simulation``: from the run's seed, the epsilon then assumes nothing) and the row's
status:

``spent`` -> ``released`` -> ``aggregated``, or -> ``abandoned``.

The spend is written and committed (``synchronous=FULL``: fsync'ed) *before*
the update leaves the client; every committed spend counts towards epsilon
whatever its status - a spend is never refunded. ``(run, client, round)`` is
unique, so a resumed run cannot count a round twice, and an optional digest of
the exact update bytes binds a spend to one release: a re-send after a crash must
be the same bytes.

One run per file. Opening a file of another run, with other privacy settings,
that is not a privspk ledger, or that another process keeps locked, raises
:class:`~privspk.errors.LedgerError` naming the file, and writes nothing.

>>> import tempfile, pathlib
>>> tmp = pathlib.Path(tempfile.mkdtemp())
>>> from privspk.privacy.mechanism import Mechanism
>>> mech = Mechanism(noise_multiplier=1.1, sample_rate=0.05, steps=20, clip=1.0, delta=1e-5)
>>> with Ledger(tmp / "ledger.sqlite", run_id="demo", settings={"epsilon": 8.0}) as led:
...     row = led.record_spend(Spend(client="c0", round=1, mechanism=mech, epsilon_after=0.9, scheme="mask"))
...     led.mark_released("c0", 1).status
'released'
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import re
import sqlite3
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from privspk.errors import ConfigError, LedgerError, PrivspkError
from privspk.privacy._checks import nonempty_str, positive_float, positive_int, probability, real
from privspk.privacy.accounting import (
    RoundSpend,
    SpendStep,
    check_accountant,
    rounds_epsilon,
    speaker_epsilons,
)
from privspk.privacy.mechanism import RANDOMNESS_MODES, SIMULATION_WARNING, Mechanism
from privspk.privacy.distributed import ClientLevelMechanism, ClientLevelRound, client_level_epsilon

_EXAMPLE_MECHANISM = Mechanism(noise_multiplier=1.1, sample_rate=0.05, steps=20, clip=1.0, delta=1e-5)

__all__ = [
    "LEDGER_FORMAT",
    "RANDOMNESS_MODES",
    "SIMULATION_WARNING",
    "SCHEMA_VERSION",
    "STATUSES",
    "EXPORT_COLUMNS",
    "ClientLevelSpend",
    "Ledger",
    "RecomputeCheck",
    "Spend",
    "SpendRow",
    "SignedHead",
    "AggregatedHeads",
    "ChainFinding",
    "digest_update",
    "head_message",
]

logger = logging.getLogger(__name__)

LEDGER_FORMAT = "privspk-ledger"
SCHEMA_VERSION = 2
STATUSES: tuple[str, ...] = ("spent", "released", "aggregated", "abandoned")

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

# The hash chain (tamper evidence) lives in its own table, so the spends table keeps its columns. Each row
# of a client commits to the one before it: row_hash = SHA-256(tag, prev_hash, seq, the row's recorded
# fields); ``signature`` is the client's Ed25519 signature of the chain head after that row
# (:func:`head_message`), ``public_key`` the key it was made with. A ledger without this table predates
# tamper evidence: it can be read and recomputed, but never written to again (see Ledger).
_CHAIN_TABLE = "spend_chain"
_CHAIN_DDL = """CREATE TABLE spend_chain (
        run_id TEXT NOT NULL,
        client TEXT NOT NULL,
        round INTEGER NOT NULL,
        seq INTEGER NOT NULL CHECK (seq >= 1),
        prev_hash TEXT NOT NULL,
        row_hash TEXT NOT NULL,
        public_key TEXT,
        signature TEXT,
        PRIMARY KEY (run_id, client, round),
        UNIQUE (run_id, client, seq),
        FOREIGN KEY (run_id, client, round) REFERENCES spends(run_id, client, round)
    )"""
_CHAIN_COLUMNS: tuple[str, ...] = (
    "run_id", "client", "round", "seq", "prev_hash", "row_hash", "public_key", "signature",
)
# what a row's hash covers: every exported field (so a column added later is chained too) except the
# three that change as the round goes on (the server's record covers what was aggregated)
_UNCHAINED_FIELDS: frozenset[str] = frozenset({"status", "note", "updated_at"})
GENESIS_HASH = "0" * 64
_ROW_TAG = b"privspk/ledger-row/v1\x00"
_HEAD_TAG = b"privspk/ledger-head/v1\x00"

_COLUMNS: dict[str, tuple[str, ...]] = {
    "meta": ("key", "value"),
    "runs": ("run_id", "settings", "created_at"),
    "spends": (
        "run_id", "client", "round", "unit", "accountant", "noise_multiplier", "sample_rate", "steps", "delta",
        "epsilon_after", "client_noise_multiplier", "client_sample_rate", "client_delta", "client_epsilon_after",
        "client_mechanism", "clip", "scheme", "update_digest", "status", "note", "created_at", "updated_at",
        "randomness",
    ),
    "spend_speakers": ("run_id", "client", "round", "speaker"),
}

EXPORT_COLUMNS: tuple[str, ...] = (*_COLUMNS["spends"][:18], "speakers", *_COLUMNS["spends"][18:])

_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")


def digest_update(payload: bytes | bytearray | memoryview | np.ndarray) -> str:
    """SHA-256 hex digest of the exact bytes of an update (arrays: dtype, shape and data).

    >>> digest_update(b"abc")[:16]
    'ba7816bf8f01cfea'
    >>> digest_update(np.zeros(3, dtype=np.int64)) == digest_update(np.zeros(3, dtype=np.int32))
    False
    """
    h = hashlib.sha256()
    if isinstance(payload, np.ndarray):
        arr = np.ascontiguousarray(payload)
        h.update(f"{arr.dtype.str}{arr.shape}".encode())
        h.update(arr.tobytes())
    elif isinstance(payload, (bytes, bytearray, memoryview)):
        h.update(bytes(payload))
    else:
        raise ConfigError(f"update payload must be bytes or a numpy array, got {type(payload).__name__}")
    return h.hexdigest()


def _chain_hash(row: SpendRow, *, prev_hash: str, seq: int) -> str:
    """SHA-256 of (tag, previous hash, position, the row's recorded fields as canonical JSON)."""
    fields = {k: v for k, v in row.to_dict().items() if k not in _UNCHAINED_FIELDS}
    body = json.dumps({"prev": prev_hash, "seq": seq, "row": fields}, sort_keys=True, separators=(",", ":"),
                      allow_nan=False)
    return hashlib.sha256(_ROW_TAG + body.encode("utf-8")).hexdigest()


def head_message(*, run_id: str, client: str, round: int, seq: int, head: str) -> bytes:
    """What a client signs: its chain head ``head`` after its ``seq``-th row (round ``round``) of ``run_id``.

    >>> head_message(run_id="r", client="c0", round=3, seq=2, head="ab" * 32)[:22]
    b'privspk/ledger-head/v1'
    """
    from privspk.secagg.keys import encode_ids

    return _HEAD_TAG + encode_ids(run_id, client) + int(round).to_bytes(8, "big") + int(seq).to_bytes(8, "big") + \
        bytes.fromhex(head)


def _example_spend(client: str = "c0", round: int = 1, epsilon_after: float = 0.5) -> Spend:
    """A valid spend for the doctests of this module (keeps each example to one line)."""
    return Spend(client=client, round=round, mechanism=_EXAMPLE_MECHANISM, epsilon_after=epsilon_after, scheme="mask")


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


@dataclass(frozen=True, kw_only=True)
class ClientLevelSpend:
    """The client-level (distributed DP) part of a round's spend.

    >>> m = ClientLevelMechanism(noise="skellam", share_sigma=50.0, shares=4, l2_sensitivity=100.0,
    ...                          l1_sensitivity=1000.0, dim=100)
    >>> ClientLevelSpend(mechanism=m, sample_rate=0.5, delta=1e-5, epsilon_after=1.2).noise_multiplier
    1.0
    """

    mechanism: ClientLevelMechanism
    sample_rate: float
    delta: float
    epsilon_after: float

    def __post_init__(self) -> None:
        if not isinstance(self.mechanism, ClientLevelMechanism):
            raise ConfigError(f"mechanism must be a ClientLevelMechanism, got {type(self.mechanism).__name__}")
        object.__setattr__(self, "sample_rate", probability("client sample_rate", self.sample_rate, allow_one=True))
        object.__setattr__(self, "delta", probability("client delta", self.delta))
        eps = real("client epsilon_after", self.epsilon_after)
        if eps < 0:
            raise ConfigError(f"client epsilon_after must be >= 0, got {eps}")
        object.__setattr__(self, "epsilon_after", eps)

    @property
    def noise_multiplier(self) -> float:
        """Effective central noise multiplier of the counted noise."""
        return self.mechanism.noise_multiplier


@dataclass(frozen=True, kw_only=True)
class Spend:
    """What a client records for one round, before its update leaves it: the round's mechanism and its outcome.

    Args:
        client: client id.
        round: round number, >= 1 (rounds of a client must increase).
        mechanism: the round's DP-SGD :class:`~privspk.privacy.mechanism.Mechanism` (noise multiplier > 0).
        epsilon_after: the client's epsilon after this round, at ``mechanism.delta`` (worst speaker when
            speakers are declared).
        scheme: aggregation scheme that protects the update (``"mask"``, ``"bfv"``...).
        speakers: speakers eligible in this round (empty: all of the client's).
        client_level: the distributed-DP part, if any.
        update_digest: :func:`digest_update` of the exact bytes to be released.

    The mechanism's fields read as the spend's own (``spend.noise_multiplier``...), as they are
    the row's columns.

    >>> Spend(client="c0", round=0, mechanism=_EXAMPLE_MECHANISM, epsilon_after=1.0, scheme="mask")
    Traceback (most recent call last):
    ...
    privspk.errors.ConfigError: round must be >= 1, got 0
    """

    client: str
    round: int
    mechanism: Mechanism
    epsilon_after: float
    scheme: str
    speakers: tuple[str, ...] = ()
    client_level: ClientLevelSpend | None = None
    update_digest: str | None = None

    def __post_init__(self) -> None:
        nonempty_str("client", self.client)
        object.__setattr__(self, "round", positive_int("round", self.round))
        if not isinstance(self.mechanism, Mechanism):
            raise ConfigError(f"mechanism must be a Mechanism, got {type(self.mechanism).__name__}")
        self.mechanism.step  # noqa: B018 - a recorded round must have noise (SpendStep refuses 0)
        eps = real("epsilon_after", self.epsilon_after)
        if eps < 0:
            raise ConfigError(f"epsilon_after must be >= 0, got {eps}")
        object.__setattr__(self, "epsilon_after", eps)
        nonempty_str("scheme", self.scheme)
        if isinstance(self.speakers, str):
            raise ConfigError("speakers must be a sequence of speaker ids, not one string")
        spk = tuple(sorted(set(self.speakers)))
        for s in spk:
            nonempty_str("speaker", s)
        object.__setattr__(self, "speakers", spk)
        if self.client_level is not None and not isinstance(self.client_level, ClientLevelSpend):
            raise ConfigError(f"client_level must be a ClientLevelSpend, got {type(self.client_level).__name__}")
        if self.update_digest is not None and not (
            isinstance(self.update_digest, str) and _DIGEST_RE.match(self.update_digest)
        ):
            raise ConfigError("update_digest must be a lowercase SHA-256 hex string (use digest_update())")

    @property
    def step(self) -> SpendStep:
        """The round's DP-SGD steps (the accountant's history entry)."""
        return self.mechanism.step

    # the mechanism's fields, read as the row's columns
    unit = property(lambda self: self.mechanism.unit, doc="The privacy unit.")
    accountant = property(lambda self: self.mechanism.accountant, doc="The accountant.")
    noise_multiplier = property(lambda self: self.mechanism.noise_multiplier, doc="The noise multiplier.")
    sample_rate = property(lambda self: self.mechanism.sample_rate, doc="The Poisson sample rate.")
    steps = property(lambda self: self.mechanism.steps, doc="The round's steps.")
    delta = property(lambda self: self.mechanism.delta, doc="The delta of ``epsilon_after``.")
    clip = property(lambda self: self.mechanism.clip, doc="The clipping bound.")
    randomness = property(lambda self: self.mechanism.randomness, doc="``secret`` or ``simulation``.")


@dataclass(frozen=True, kw_only=True)
class SpendRow(Spend):
    """A recorded spend: the :class:`Spend` plus run id, status, note and timestamps (UTC ISO 8601).

    >>> r = SpendRow(run_id="r", client="c0", round=1, mechanism=_EXAMPLE_MECHANISM, epsilon_after=1.0,
    ...              scheme="mask", status="spent", created_at="t", updated_at="t")
    >>> r.to_dict()["status"], r.to_dict()["client_epsilon_after"]
    ('spent', None)
    """

    run_id: str
    status: str
    created_at: str
    updated_at: str
    note: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.status not in STATUSES:
            raise ConfigError(f"status must be one of {', '.join(STATUSES)}, got {self.status!r}")

    def to_dict(self) -> dict[str, object]:
        """Flat, JSON-friendly dict with the columns of :data:`EXPORT_COLUMNS`."""
        cl = self.client_level
        out: dict[str, object] = {
            "run_id": self.run_id,
            "client": self.client,
            "round": self.round,
            "unit": self.unit,
            "accountant": self.accountant,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
            "delta": self.delta,
            "epsilon_after": self.epsilon_after,
            "client_noise_multiplier": None if cl is None else cl.noise_multiplier,
            "client_sample_rate": None if cl is None else cl.sample_rate,
            "client_delta": None if cl is None else cl.delta,
            "client_epsilon_after": None if cl is None else cl.epsilon_after,
            "client_mechanism": None if cl is None else cl.mechanism.to_dict(),
            "clip": self.clip,
            "scheme": self.scheme,
            "update_digest": self.update_digest,
            "speakers": list(self.speakers),
            "status": self.status,
            "note": self.note,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "randomness": self.randomness,
        }
        return {k: out[k] for k in EXPORT_COLUMNS}


@dataclass(frozen=True, kw_only=True)
class RecomputeCheck:
    """One recomputed epsilon: ``level`` is ``"sample"`` (the row's unit) or ``"client"`` (distributed DP).

    >>> RecomputeCheck(client="c0", round=1, level="sample", accountant="rdp", recorded=1.0,
    ...                recomputed=1.0, ok=True).ok
    True
    """

    client: str
    round: int
    level: str
    accountant: str
    recorded: float
    recomputed: float
    ok: bool


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
        """The database file."""
        return self._path

    @property
    def run_id(self) -> str:
        """The run this ledger belongs to."""
        return self._info.run_id

    @property
    def settings(self) -> dict[str, object]:
        """The run's privacy settings as stored at creation (a copy)."""
        return json.loads(json.dumps(self._info.settings))

    def close(self) -> None:
        """Close the connection (idempotent)."""
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
        """The row of ``client`` in ``round``, or ``None``."""
        with self._read("reading a row") as conn:
            found = self._select(conn, "AND client = ? AND round = ?", (client, round))
        return found[0] if found else None

    def clients(self) -> list[str]:
        """Clients with at least one row, sorted."""
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
        """The highest round recorded for ``client`` (0 when none)."""
        with self._read("reading the last round") as conn:
            rec = conn.execute(
                "SELECT max(round) FROM spends WHERE run_id = ? AND client = ?", (self.run_id, client)
            ).fetchone()
        return int(rec[0]) if rec and rec[0] is not None else 0

    def history(self, client: str) -> tuple[SpendStep, ...]:
        """The client's DP-SGD steps in round order (an accountant's state)."""
        return tuple(r.step for r in self.rows(client))

    def round_spends(self, client: str) -> list[RoundSpend]:
        """The client's rounds with their speakers, as the accountant composes them."""
        return [RoundSpend(round=r.round, step=r.step, speakers=r.speakers) for r in self.rows(client)]

    def client_level_rounds(self, client: str) -> list[ClientLevelRound]:
        """The client's rounds with a client-level mechanism."""
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
        """The client's recorded client-level epsilon, or ``None`` when it has no client-level DP."""
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
        """Check the hash chain, the round sequence and the signatures of every client (empty list: intact).

        Flags, per client: a row whose recorded fields changed since it was recorded
        (its hash no longer matches), a deleted or inserted row (a broken link, a gap
        in the chain's positions), rounds out of order, a missing or bad signature
        of a chain head, a change of identity key. With ``record`` (the server's
        :class:`AggregatedHeads`) also: every head the server aggregated must be in
        the chain, with the same hash at the same position, signed by the key the
        server registered - so a truncated tail, or a chain rewritten by someone
        holding the client's key, is caught too.

        >>> from privspk.secagg.keys import IdentityKey
        >>> led, key = _example_ledger(), IdentityKey.generate()
        >>> for r in (1, 2, 3):
        ...     _ = led.record_spend(_example_spend(round=r, epsilon_after=0.5 * r), signer=key)
        >>> led.verify_chain()
        []
        >>> with led._write("a test edit") as conn:  # a larger noise multiplier shows a smaller spend
        ...     _ = conn.execute("UPDATE spends SET noise_multiplier = 2.0 WHERE round = 2")
        >>> [str(f).split(";")[0] for f in led.verify_chain()]  # doctest: +ELLIPSIS
        ['client c0: round 2 (chain position 2): its recorded fields (noise, sampling, steps, epsilon...) changed...']
        """
        findings: list[ChainFinding] = []
        if not self._chained:
            return [ChainFinding(client=None, round=None, problem=(
                f"no hash chain: this ledger predates tamper evidence (no '{_CHAIN_TABLE}' table); its rows can be "
                "recomputed but a deleted or rewritten row cannot be detected"))]
        from privspk.secagg.keys import KeyRegistry

        with self._read("verifying the hash chain") as conn:
            rows = {(r.client, r.round): r for r in self._select(conn)}
            chain = conn.execute(
                f"SELECT {', '.join(_CHAIN_COLUMNS)} FROM {_CHAIN_TABLE} WHERE run_id = ? ORDER BY client, seq",
                (self.run_id,),
            ).fetchall()
            other = conn.execute(f"SELECT count(*) FROM {_CHAIN_TABLE} WHERE run_id != ?", (self.run_id,)).fetchone()
        if other and other[0]:
            findings.append(ChainFinding(client=None, round=None, problem=f"{other[0]} chain entries of another run"))
        links: dict[str, list[tuple]] = {}
        for rec in chain:
            links.setdefault(rec[1], []).append(rec)
        for client, rnd in sorted(rows):
            if not any(rec[2] == rnd for rec in links.get(client, ())):
                findings.append(ChainFinding(client=client, round=rnd, problem=(
                    f"round {rnd} has a spend row but no chain entry; it was added outside privspk")))
        registry = KeyRegistry()
        for client in sorted(links):
            prev_hash, prev_round, keys = GENESIS_HASH, 0, set()
            for i, (_, _, rnd, seq, prev, head, pk, sig) in enumerate(links[client], start=1):
                where = f"round {rnd} (chain position {seq})"
                if seq != i:
                    findings.append(ChainFinding(client=client, round=rnd, problem=(
                        f"{where}: the chain skips position(s) {i}..{seq - 1}; a row was deleted")))
                if rnd <= prev_round:
                    findings.append(ChainFinding(client=client, round=rnd, problem=(
                        f"{where}: comes after round {prev_round}; rounds were reordered")))
                if prev != prev_hash:
                    findings.append(ChainFinding(client=client, round=rnd, problem=(
                        f"{where}: does not link to the row before it (prev {prev[:12]}..., expected "
                        f"{prev_hash[:12]}...); a row before it was deleted, inserted or rewritten")))
                row = rows.get((client, rnd))
                if row is None:
                    findings.append(ChainFinding(client=client, round=rnd, problem=(
                        f"round {rnd} has a chain entry but no spend row; the row was deleted")))
                elif _chain_hash(row, prev_hash=prev, seq=seq) != head:
                    findings.append(ChainFinding(client=client, round=rnd, problem=(
                        f"{where}: its recorded fields (noise, sampling, steps, epsilon...) changed after it was "
                        "recorded; the row's hash does not match")))
                keys.add(pk)
                if pk is not None and sig is not None:
                    try:
                        registry.register(client, bytes.fromhex(pk))
                        registry.verify(client, bytes.fromhex(sig), head_message(
                            run_id=self.run_id, client=client, round=rnd, seq=seq, head=head))
                    except (PrivspkError, ValueError) as exc:
                        findings.append(ChainFinding(client=client, round=rnd, problem=(
                            f"{where}: chain head signature does not verify ({exc})")))
                elif (pk is None) != (sig is None):
                    findings.append(ChainFinding(client=client, round=rnd, problem=(
                        f"{where}: half a signature (key without signature or the reverse)")))
                prev_hash, prev_round = head, rnd
            if len(keys) > 1:
                findings.append(ChainFinding(client=client, round=None, problem=(
                    "rows are signed by different identity keys, or some are unsigned; a client signs all its rows "
                    "with one key")))
        if record is not None:
            findings.extend(self._check_record(record, links))
        return findings

    def _check_record(self, record: AggregatedHeads, links: dict[str, list[tuple]]) -> list[ChainFinding]:
        out: list[ChainFinding] = []
        if record.run_id != self.run_id:
            return [ChainFinding(client=None, round=None, problem=(
                f"the server record belongs to run {record.run_id!r}, not {self.run_id!r}"))]
        for client, heads in sorted(record.by_client().items()):
            mine = {rec[2]: rec for rec in links.get(client, ())}
            key = record.keys.get(client)
            for h in heads:
                rec = mine.get(h.round)
                if rec is None:
                    out.append(ChainFinding(client=client, round=h.round, problem=(
                        f"the server aggregated round {h.round} (chain position {h.seq}) of this client but the "
                        "ledger has no such row; rows were removed (a truncated tail?)")))
                    continue
                if int(rec[3]) != h.seq or rec[5] != h.head:
                    out.append(ChainFinding(client=client, round=h.round, problem=(
                        f"round {h.round}: the chain head differs from the one the server aggregated (server: "
                        f"position {h.seq}, {h.head[:12]}...; ledger: position {rec[3]}, {rec[5][:12]}...); the "
                        "chain was rewritten")))
                if key is not None and rec[6] is not None and rec[6] != key:
                    out.append(ChainFinding(client=client, round=h.round, problem=(
                        "signed with another key than the one the server registered for this client")))
        return out

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

    # -- checking ----------------------------------------------------------------------------------------------

    def speaker_epsilons(self, client: str, *, accountant: str | None = None) -> dict[str, float]:
        """Each declared speaker's epsilon for ``client`` (empty when no speakers were declared)."""
        rows = self.rows(client)
        if not rows:
            return {}
        return speaker_epsilons(
            [RoundSpend(round=r.round, step=r.step, speakers=r.speakers) for r in rows],
            delta=rows[-1].delta,
            accountant=accountant or rows[-1].accountant,
        )

    def recompute(
        self, accountant: str | None = None, *, rtol: float = 1e-6, atol: float = 1e-9
    ) -> list[RecomputeCheck]:
        """Recompute every recorded epsilon from the stored inputs.

        With ``accountant=None`` each row is recomputed with its own accountant and
        ``ok`` means the values agree (within ``rtol``/``atol``). With another
        accountant, ``ok`` means the recorded value is not an understatement
        (recomputed <= recorded + tolerance).

        >>> led = _example_ledger()
        >>> _ = led.record_spend(_example_spend(epsilon_after=0.01))  # recorded far too low
        >>> [(c.client, c.round, c.ok) for c in led.recompute()]
        [('c0', 1, False)]
        """
        if accountant is not None:
            check_accountant(accountant)
        checks: list[RecomputeCheck] = []
        for client in self.clients():
            rows = self.rows(client)
            rounds: list[RoundSpend] = []
            cl_rounds: list[ClientLevelRound] = []
            for r in rows:
                rounds.append(RoundSpend(round=r.round, step=r.step, speakers=r.speakers))
                acc = accountant or r.accountant
                value = rounds_epsilon(rounds, delta=r.delta, accountant=acc)
                checks.append(self._check(r, "sample", acc, r.epsilon_after, value, accountant, rtol, atol))
                if r.client_level is not None:
                    cl = r.client_level
                    cl_rounds.append(
                        ClientLevelRound(round=r.round, mechanism=cl.mechanism, sample_rate=cl.sample_rate)
                    )
                    value = client_level_epsilon(cl_rounds, delta=cl.delta)
                    checks.append(self._check(r, "client", "rdp", cl.epsilon_after, value, None, rtol, atol))
        return checks

    @staticmethod
    def _check(
        row: SpendRow, level: str, acc: str, recorded: float, value: float, override: str | None, rtol: float,
        atol: float,
    ) -> RecomputeCheck:
        tol = atol + rtol * abs(recorded)
        ok = value <= recorded + tol if override is not None and override != row.accountant else abs(
            value - recorded
        ) <= tol
        return RecomputeCheck(
            client=row.client, round=row.round, level=level, accountant=acc, recorded=recorded, recomputed=value,
            ok=bool(ok),
        )

    # -- exporting ---------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, object]:
        """The whole ledger as plain JSON types: format, schema version, run id, settings and rows."""
        return {
            "format": LEDGER_FORMAT,
            "schema_version": SCHEMA_VERSION,
            "run_id": self.run_id,
            "settings": self.settings,
            "rows": [r.to_dict() for r in self.rows()],
        }

    def export_json(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_dict` as JSON (atomically); returns the path.

        >>> led = _example_ledger()
        >>> _ = led.record_spend(_example_spend())
        >>> json.loads(led.export_json(led.path.with_suffix(".json")).read_text())["rows"][0]["epsilon_after"]
        0.5
        """
        return _atomic_write(Path(path), json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")

    def export_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write one CSV line per row (speakers ``;``-joined, client mechanism as JSON); returns the path.

        >>> led = _example_ledger()
        >>> _ = led.record_spend(_example_spend())
        >>> led.export_csv(led.path.with_suffix(".csv")).read_text().splitlines()[0].split(",")[:3]
        ['run_id', 'client', 'round']
        """
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(EXPORT_COLUMNS), lineterminator="\n")
        writer.writeheader()
        for r in self.rows():
            d = r.to_dict()
            d["speakers"] = ";".join(r.speakers)
            mech = d["client_mechanism"]
            d["client_mechanism"] = "" if mech is None else json.dumps(mech, sort_keys=True)
            writer.writerow({k: "" if v is None else v for k, v in d.items()})
        return _atomic_write(Path(path), buf.getvalue())

    def table(self, client: str | None = None) -> str:
        """A fixed-width text table of the rows; epsilon columns name their unit and delta.

        >>> led = _example_ledger()
        >>> _ = led.record_spend(_example_spend())
        >>> print(led.table())
        run demo: epsilon per row's unit at its delta; client_eps per client
        client  round  unit       acct  sigma  q     steps  delta  epsilon  client_eps  clip  scheme  status  randomness
        c0      1      utterance  rdp   1.1    0.05  20     1e-05  0.5000   -           1     mask    spent   secret

        Rows with ``simulation`` randomness carry :data:`SIMULATION_WARNING` beside their epsilon.
        """
        rows = self.rows(client)
        header = ("client", "round", "unit", "acct", "sigma", "q", "steps", "delta", "epsilon", "client_eps",
                  "clip", "scheme", "status", "randomness")
        lines = [header]
        for r in rows:
            cl = r.client_level
            lines.append((
                r.client, str(r.round), r.unit, r.accountant, f"{r.noise_multiplier:.4g}", f"{r.sample_rate:.4g}",
                str(r.steps), f"{r.delta:.0e}", f"{r.epsilon_after:.4f}",
                "-" if cl is None else f"{cl.epsilon_after:.4f}", f"{r.clip:g}", r.scheme, r.status,
                r.randomness if r.randomness == "secret" else f"{r.randomness} ({SIMULATION_WARNING})",
            ))
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        out = [f"run {self.run_id}: epsilon per row's unit at its delta; client_eps per client"]
        for line in lines:
            out.append("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())
        if not rows:
            out.append("(no spends recorded)")
        return "\n".join(out)

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Plot epsilon over rounds per client (client-level epsilon dashed) to an image file."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        rows = self.rows()
        fig = Figure(figsize=(7, 4))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        units = sorted({r.unit for r in rows})
        deltas = sorted({r.delta for r in rows})
        for client in sorted({r.client for r in rows}):
            mine = [r for r in rows if r.client == client]
            line = ax.plot([r.round for r in mine], [r.epsilon_after for r in mine], marker="o", label=client)[0]
            cl = [r for r in mine if r.client_level is not None]
            if cl:
                ax.plot(
                    [r.round for r in cl], [r.client_level.epsilon_after for r in cl],  # type: ignore[union-attr]
                    linestyle="--", color=line.get_color(), label=f"{client} (client level)",
                )
        unit_txt = "/".join(units) or "utterance"
        delta_txt = ", ".join(f"{d:g}" for d in deltas) or "-"
        ax.set_xlabel("round")
        ax.set_ylabel(f"epsilon (per {unit_txt}, delta={delta_txt})")
        ax.set_title(f"privacy spend, run {self.run_id}")
        if rows:
            ax.legend(fontsize="small")
        ax.grid(True, alpha=0.3)
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=100)
        return out


@dataclass(frozen=True, kw_only=True)
class SignedHead:
    """A client's chain head after one of its rows, signed with its identity key (empty bytes: unsigned).

    >>> SignedHead(client="c0", round=1, seq=1, head="00" * 32, public_key=b"", signature=b"").to_dict()["seq"]
    1
    """

    client: str
    round: int
    seq: int
    head: str
    public_key: bytes
    signature: bytes

    def to_dict(self) -> dict[str, object]:
        """JSON-friendly form (key and signature as hex)."""
        return {"round": self.round, "seq": self.seq, "head": self.head, "public_key": self.public_key.hex(),
                "signature": self.signature.hex()}


@dataclass(frozen=True, kw_only=True)
class ChainFinding:
    """One thing :meth:`Ledger.verify_chain` found wrong (``client``/``round`` ``None`` when ledger-wide).

    >>> str(ChainFinding(client="c0", round=5, problem="row deleted"))
    'client c0: row deleted'
    """

    client: str | None
    round: int | None
    problem: str

    def __str__(self) -> str:
        return f"client {self.client}: {self.problem}" if self.client is not None else self.problem


AGGREGATED_HEADS_FORMAT = "privspk-aggregated-heads"


class AggregatedHeads:
    """The server's record of the signed chain heads it aggregated, per round (one JSON file per run).

    The server adds a round's heads only after checking each signature against the
    client's identity key, registered the first time the client is seen and never
    replaced. :meth:`Ledger.verify_chain` takes it to catch a truncated or rewritten
    ledger. The file is written atomically; the record is append-only in use (a round
    re-sent after a crash must bring the same heads).

    >>> import tempfile, pathlib
    >>> from privspk.secagg.keys import IdentityKey
    >>> led, key = _example_ledger(), IdentityKey.generate()
    >>> _ = led.record_spend(_example_spend(), signer=key)
    >>> rec = AggregatedHeads(pathlib.Path(tempfile.mkdtemp()) / "heads.json", run_id="demo")
    >>> rec.add(1, [led.signed_head("c0", 1)])
    >>> led.verify_chain(AggregatedHeads.load(rec.path))
    []
    """

    def __init__(self, path: str | os.PathLike[str], *, run_id: str) -> None:
        self.path = Path(path)
        self.run_id = nonempty_str("run_id", run_id)
        self.keys: dict[str, str] = {}
        self.rounds: dict[int, dict[str, SignedHead]] = {}
        if self.path.exists():
            other = AggregatedHeads.load(self.path)
            if other.run_id != run_id:
                raise LedgerError(f"{self.path}: server record of run {other.run_id!r}, not {run_id!r}")
            self.keys, self.rounds = other.keys, other.rounds

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AggregatedHeads:
        """Read a record (read-only use is fine); LedgerError naming the file when it is not one."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != AGGREGATED_HEADS_FORMAT:
                raise ValueError(f"format {data.get('format')!r}")
            out = cls.__new__(cls)
            out.path, out.run_id = path, str(data["run_id"])
            out.keys = {str(k): str(v) for k, v in data["keys"].items()}
            out.rounds = {
                int(r): {c: SignedHead(client=c, round=int(h["round"]), seq=int(h["seq"]), head=str(h["head"]),
                                       public_key=bytes.fromhex(h["public_key"]),
                                       signature=bytes.fromhex(h["signature"]))
                         for c, h in heads.items()}
                for r, heads in data["rounds"].items()
            }
        except OSError as exc:
            raise LedgerError(f"{path}: cannot read the server's record of aggregated heads ({exc.strerror or exc})") \
                from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise LedgerError(f"{path}: not a privspk record of aggregated chain heads ({exc})") from None
        return out

    def by_client(self) -> dict[str, list[SignedHead]]:
        """Each client's recorded heads in round order."""
        out: dict[str, list[SignedHead]] = {}
        for r in sorted(self.rounds):
            for c, h in sorted(self.rounds[r].items()):
                out.setdefault(c, []).append(h)
        return out

    def add(self, round_id: int, heads: Iterable[SignedHead]) -> None:
        """Verify and record the heads aggregated in ``round_id`` (LedgerError, nothing written, if one fails)."""
        from privspk.secagg.keys import KeyRegistry

        registry = KeyRegistry()
        for c, k in self.keys.items():
            registry.register(c, bytes.fromhex(k))
        new: dict[str, SignedHead] = {}
        for h in heads:
            if h.round != round_id:
                raise LedgerError(f"client {h.client}: head of round {h.round} offered for round {round_id}")
            if not h.signature:
                raise LedgerError(f"client {h.client} round {round_id}: chain head is not signed; refused")
            try:
                registry.register(h.client, h.public_key)
                registry.verify(h.client, h.signature, head_message(
                    run_id=self.run_id, client=h.client, round=h.round, seq=h.seq, head=h.head))
            except PrivspkError as exc:
                raise LedgerError(f"round {round_id}: chain head refused: {exc}") from None
            new[h.client] = h
        old = self.rounds.get(int(round_id), {})
        clash = sorted(c for c in set(old) & set(new) if old[c] != new[c])
        if clash:
            raise LedgerError(f"round {round_id}: client(s) {clash} re-sent another chain head than the one recorded")
        self.rounds[int(round_id)] = {**old, **new}
        self.keys.update({c: h.public_key.hex() for c, h in new.items()})
        _atomic_write(self.path, json.dumps({
            "format": AGGREGATED_HEADS_FORMAT, "run_id": self.run_id, "keys": self.keys,
            "rounds": {str(r): {c: h.to_dict() for c, h in sorted(hs.items())} for r, hs in sorted(self.rounds.items())},
        }, indent=1, sort_keys=True) + "\n")


def _atomic_write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path

