"""Ledger storage: recording spends and their status transitions, and reading rows back.

The file itself (schema, opening, checks, migration, transactions) is
:mod:`privspk.privacy.ledger.database`'s :class:`~privspk.privacy.ledger.database.LedgerFile`,
which :class:`Ledger` extends. One file per run (WAL mode, ``synchronous=FULL``); a spend is committed (fsync'ed) before its
update may leave the client, chained to the client's previous row in the same transaction.
Status transitions: ``spent`` -> ``released`` -> ``aggregated``, or -> ``abandoned``.
Checking a ledger is :mod:`privspk.privacy.ledger.audit`'s job, showing it
:mod:`privspk.privacy.ledger.report`'s; :class:`Ledger` forwards to both.

>>> led = _example_ledger()
>>> led.record_spend(_example_spend()).status
'spent'
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from privspk.errors import ConfigError, LedgerError
from privspk.privacy._checks import nonempty_str
from privspk.privacy.accounting import ClientLevelMechanism, ClientLevelRound, RoundSpend, SpendStep, speaker_epsilons
from privspk.privacy.ledger.chain import (
    _CHAIN_COLUMNS,
    _CHAIN_TABLE,
    GENESIS_HASH,
    AggregatedHeads,
    ChainFinding,
    SignedHead,
    _chain_hash,
    head_message,
)
from privspk.privacy.ledger.database import LEDGER_FORMAT, SCHEMA_VERSION, LedgerFile, _now
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

_NEXT_STATUS: dict[str, tuple[str, ...]] = {
    "spent": ("released", "aggregated", "abandoned"),
    "released": ("aggregated", "abandoned"),
    "aggregated": (),
    "abandoned": (),
}


def _example_ledger() -> Ledger:
    """A fresh ledger in a temporary folder, for the doctests of this module."""
    return Ledger(Path(tempfile.mkdtemp()) / "ledger.sqlite", run_id="demo", settings={"epsilon": 8.0})


class Ledger(LedgerFile):
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
