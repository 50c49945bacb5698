"""The ledger's tamper evidence: a per-client SHA-256 hash chain over the rows, signed chain heads, and
the server's record of the heads it aggregated (:class:`AggregatedHeads`).

Writing the chain is part of recording a spend (:meth:`privspk.privacy.ledger.Ledger.record_spend`);
checking it is the audit's (:func:`privspk.privacy.ledger.audit.verify_chain`).

>>> len(head_message(run_id="r", client="c0", round=1, seq=1, head=GENESIS_HASH))  # tag, ids, round, seq, head
82
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from privspk.errors import LedgerError, PrivspkError
from privspk.privacy._checks import nonempty_str
from privspk.privacy.ledger.rows import SpendRow

__all__ = ["AGGREGATED_HEADS_FORMAT", "GENESIS_HASH", "AggregatedHeads", "ChainFinding", "SignedHead", "head_message"]

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
        """JSON-friendly form (key and signature as hex).

        >>> SignedHead(client="c0", round=1, seq=1, head="00" * 32, public_key=b"k", signature=b"").to_dict()["public_key"]
        '6b'
        """
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
    >>> from privspk.privacy.ledger.storage import _example_ledger, _example_spend
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
        """Read a record (read-only use is fine); LedgerError naming the file when it is not one.

        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "heads.json"; _ = p.write_text("{}")
        >>> AggregatedHeads.load(p)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        privspk.errors.LedgerError: ...heads.json: not a privspk record of aggregated chain heads (format None)
        """
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
        """Each client's recorded heads in round order.

        >>> import tempfile, pathlib
        >>> AggregatedHeads(pathlib.Path(tempfile.mkdtemp()) / "heads.json", run_id="r").by_client()
        {}
        """
        out: dict[str, list[SignedHead]] = {}
        for r in sorted(self.rounds):
            for c, h in sorted(self.rounds[r].items()):
                out.setdefault(c, []).append(h)
        return out

    def add(self, round_id: int, heads: Iterable[SignedHead]) -> None:
        """Verify and record the heads aggregated in ``round_id`` (LedgerError, nothing written, if one fails).

        >>> import tempfile, pathlib
        >>> rec = AggregatedHeads(pathlib.Path(tempfile.mkdtemp()) / "heads.json", run_id="r")
        >>> rec.add(1, [SignedHead(client="c0", round=1, seq=1, head="00" * 32, public_key=b"", signature=b"")])
        Traceback (most recent call last):
        ...
        privspk.errors.LedgerError: client c0 round 1: chain head is not signed; refused
        """
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
