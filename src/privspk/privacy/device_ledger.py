"""The cross-device ledger: one SQLite file recording, per round, which devices could take part and which did.

Separate from :mod:`privspk.privacy.ledger` (the per-client spend ledger of the
cross-silo runs): a cross-device run has thousands of devices, each seen rarely,
and its accounting is per *device* (user-level), so the unit of a write is a
round: one transaction inserts a row per eligible device (``took_part`` 0/1, its
epsilon after the round) and updates every touched device's counters, then the
round's row, hash-chained to the previous round's
(``SHA-256(tag, prev_hash, round, eligible, participants, central epsilon)``).

Accountants (all say what a device has spent from two counters)
    * :class:`SampledGaussianAccountant` - DP-FedAvg with sampled devices (Gaussian
      noise, :func:`~privspk.privacy.user_level.user_epsilon`): amplification by
      sampling means every round a device was *eligible* for counts, sampled or not.
    * :class:`DistributedAccountant` - the same with the distributed discrete
      Gaussian / Skellam mechanism of :mod:`~privspk.privacy.distributed` (its own
      subsampling bound).
    * :class:`FtrlAccountant` - DP-FTRL: only participations count
      (:func:`~privspk.privacy.ftrl.ftrl_epsilon`, no amplification).

Budget: :meth:`DeviceLedger.admit` splits the population into devices that may
take part in the next round (their epsilon, were they eligible *and* sampled,
stays within ``budget``) and devices that sit out; :meth:`DeviceLedger.record_round`
refuses (writing nothing) a round in which a device over budget is eligible. A
round recorded twice with the same sets is a no-op (a resumed run counts nothing
twice); with different sets it is a :class:`~privspk.errors.LedgerError`.

The central epsilon of the model released after a round is the largest epsilon
of any device (user-level DP of the release).

>>> import tempfile, pathlib
>>> acc = FtrlAccountant(noise_multiplier=5.0, rounds=16, delta=1e-6)
>>> path = pathlib.Path(tempfile.mkdtemp()) / "devices.sqlite"
>>> with DeviceLedger(path, run_id="demo", accountant=acc, budget=4.0) as led:
...     ok = led.admit(["d0", "d1", "d2"]).admitted
...     rec = led.record_round(1, eligible=ok, participants=["d0", "d1"])
...     (rec.participants, led.participations("d0"), led.epsilon("d2"))
(('d0', 'd1'), (1,), 0.0)
"""

from __future__ import annotations

import functools
import hashlib
import json
import sqlite3
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from privspk.errors import BudgetExceededError, ConfigError, LedgerError
from privspk.privacy._checks import nonempty_str, positive_float, positive_int, probability
from privspk.privacy.distributed import ClientLevelMechanism, ClientLevelRound, client_level_epsilon
from privspk.privacy.ftrl import ftrl_epsilon
from privspk.privacy.user_level import SAMPLINGS, user_epsilon

__all__ = [
    "Admission",
    "DeviceLedger",
    "DistributedAccountant",
    "FtrlAccountant",
    "RoundRecord",
    "SampledGaussianAccountant",
    "accountant_from_dict",
]

_GENESIS = "0" * 64
_TAG = b"privspk/device-ledger/round/v1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
    device TEXT PRIMARY KEY, eligible_rounds INTEGER NOT NULL, participations INTEGER NOT NULL,
    epsilon REAL NOT NULL, last_round INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY, n_eligible INTEGER NOT NULL, n_participants INTEGER NOT NULL,
    sets_sha256 TEXT NOT NULL, central_epsilon REAL NOT NULL, prev_hash TEXT NOT NULL, row_hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    round INTEGER NOT NULL, device TEXT NOT NULL, took_part INTEGER NOT NULL, epsilon_after REAL NOT NULL,
    PRIMARY KEY (round, device));
"""


@dataclass(frozen=True, kw_only=True)
class SampledGaussianAccountant:
    """DP-FedAvg with Poisson or fixed-size device sampling and Gaussian noise (multiplier ``noise_multiplier``).

    >>> a = SampledGaussianAccountant(noise_multiplier=1.0, sample_rate=0.1, delta=1e-5)
    >>> a.epsilon(eligible_rounds=0, participations=0), a.epsilon(eligible_rounds=10, participations=0) > 0
    (0.0, True)
    """

    noise_multiplier: float
    sample_rate: float
    delta: float
    sampling: str = "poisson"
    population: int | None = None
    kind = "sampled-gaussian"

    def __post_init__(self) -> None:
        positive_float("noise_multiplier", self.noise_multiplier)
        probability("sample_rate", self.sample_rate, allow_one=True)
        probability("delta", self.delta)
        if self.sampling not in SAMPLINGS:
            raise ConfigError(f"sampling must be one of {'|'.join(SAMPLINGS)}, got {self.sampling!r}")

    def epsilon(self, *, eligible_rounds: int, participations: int) -> float:
        """Epsilon after ``eligible_rounds`` rounds (participations do not matter under sampling)."""
        return _sampled_eps(self, eligible_rounds) if eligible_rounds > 0 else 0.0

    def to_dict(self) -> dict:
        """Plain dict (stored in the ledger's meta table)."""
        return {"kind": self.kind, **asdict(self)}


@functools.lru_cache(maxsize=8192)
def _sampled_eps(acc: SampledGaussianAccountant, rounds: int) -> float:
    return user_epsilon(noise_multiplier=acc.noise_multiplier, sample_rate=acc.sample_rate, rounds=rounds,
                        delta=acc.delta, sampling=acc.sampling, population=acc.population)


@dataclass(frozen=True, kw_only=True)
class DistributedAccountant:
    """DP-FedAvg with Poisson device sampling and the distributed integer mechanism ``mechanism``.

    >>> m = ClientLevelMechanism(noise="dgauss", share_sigma=100.0, shares=90, l2_sensitivity=1000.0,
    ...                          l1_sensitivity=30000.0, dim=1000)
    >>> a = DistributedAccountant(mechanism=m, sample_rate=0.1, delta=1e-5)
    >>> 0 < a.epsilon(eligible_rounds=5, participations=1) < a.epsilon(eligible_rounds=50, participations=1)
    True
    """

    mechanism: ClientLevelMechanism
    sample_rate: float
    delta: float
    kind = "distributed"

    def __post_init__(self) -> None:
        if not isinstance(self.mechanism, ClientLevelMechanism):
            raise ConfigError(f"mechanism must be a ClientLevelMechanism, got {type(self.mechanism).__name__}")
        probability("sample_rate", self.sample_rate, allow_one=True)
        probability("delta", self.delta)

    def epsilon(self, *, eligible_rounds: int, participations: int) -> float:
        """Epsilon after ``eligible_rounds`` rounds (with ``sample_rate = 1``: after ``participations``)."""
        n = eligible_rounds if self.sample_rate < 1.0 else participations
        return _distributed_eps(self, n) if n > 0 else 0.0

    def to_dict(self) -> dict:
        """Plain dict (stored in the ledger's meta table)."""
        return {"kind": self.kind, "mechanism": self.mechanism.to_dict(), "sample_rate": self.sample_rate,
                "delta": self.delta}


@functools.lru_cache(maxsize=8192)
def _distributed_eps(acc: DistributedAccountant, n: int) -> float:
    if acc.sample_rate < 1.0:  # every round up to n counts (distributed.client_level_rdp's gap rule)
        rounds = [ClientLevelRound(round=n, mechanism=acc.mechanism, sample_rate=acc.sample_rate)]
    else:
        rounds = [ClientLevelRound(round=r, mechanism=acc.mechanism, sample_rate=1.0) for r in range(1, n + 1)]
    return client_level_epsilon(rounds, delta=acc.delta)


@dataclass(frozen=True, kw_only=True)
class FtrlAccountant:
    """DP-FTRL over a horizon of ``rounds`` rounds (tree restarted every ``restart_every``, if set).

    >>> a = FtrlAccountant(noise_multiplier=5.0, rounds=100, delta=1e-6)
    >>> a.epsilon(eligible_rounds=99, participations=0), a.epsilon(eligible_rounds=1, participations=1) > 0
    (0.0, True)
    """

    noise_multiplier: float
    rounds: int
    delta: float
    restart_every: int | None = None
    kind = "ftrl"

    def __post_init__(self) -> None:
        positive_float("noise_multiplier", self.noise_multiplier)
        positive_int("rounds", self.rounds)
        probability("delta", self.delta)
        if self.restart_every is not None:
            positive_int("restart_every", self.restart_every)

    def epsilon(self, *, eligible_rounds: int, participations: int) -> float:
        """Epsilon after ``participations`` participations (eligibility alone costs nothing)."""
        return _ftrl_eps(self, participations) if participations > 0 else 0.0

    def to_dict(self) -> dict:
        """Plain dict (stored in the ledger's meta table)."""
        return {"kind": self.kind, **asdict(self)}


@functools.lru_cache(maxsize=8192)
def _ftrl_eps(acc: FtrlAccountant, k: int) -> float:
    return ftrl_epsilon(noise_multiplier=acc.noise_multiplier, rounds=acc.rounds, max_participations=k,
                        delta=acc.delta, restart_every=acc.restart_every)


DeviceAccountant = SampledGaussianAccountant | DistributedAccountant | FtrlAccountant


def accountant_from_dict(data: dict) -> DeviceAccountant:
    """Inverse of ``to_dict`` of the three accountants.

    >>> a = FtrlAccountant(noise_multiplier=2.0, rounds=10, delta=1e-5)
    >>> accountant_from_dict(a.to_dict()) == a
    True
    """
    d = dict(data)
    kind = d.pop("kind", None)
    try:
        if kind == SampledGaussianAccountant.kind:
            return SampledGaussianAccountant(**d)
        if kind == FtrlAccountant.kind:
            return FtrlAccountant(**d)
        if kind == DistributedAccountant.kind:
            return DistributedAccountant(mechanism=ClientLevelMechanism.from_dict(d.pop("mechanism")), **d)
    except TypeError as exc:
        raise ConfigError(f"bad {kind} accountant {data!r}: {exc}") from None
    raise ConfigError(f"unknown device accountant kind {kind!r}")


@dataclass(frozen=True)
class Admission:
    """Outcome of :meth:`DeviceLedger.admit`: who may be sampled next round, who sits out (sorted)."""

    admitted: tuple[str, ...]
    sat_out: tuple[str, ...]


@dataclass(frozen=True)
class RoundRecord:
    """One recorded round."""

    round: int
    eligible: tuple[str, ...]
    participants: tuple[str, ...]
    central_epsilon: float
    row_hash: str


def _sets_digest(eligible: tuple[str, ...], participants: tuple[str, ...]) -> str:
    blob = json.dumps({"eligible": eligible, "participants": participants}, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _row_hash(prev: str, rnd: int, sets: str, central: float) -> str:
    body = json.dumps({"prev": prev, "round": rnd, "sets": sets, "central": repr(float(central))},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(_TAG + body.encode("utf-8")).hexdigest()


def _ids(name: str, values: Iterable[str]) -> tuple[str, ...]:
    if isinstance(values, str):
        raise ConfigError(f"{name} must be a collection of device ids, not one string")
    out = tuple(sorted(nonempty_str("device id", v) for v in values))
    if any(a == b for a, b in zip(out, out[1:])):
        raise ConfigError(f"{name} lists a device twice")
    return out


class DeviceLedger:
    """The per-device privacy ledger of one cross-device run (one run per file).

    Args:
        path: the SQLite file (created if missing).
        run_id: the run it belongs to; reopening with another run id, accountant or
            budget raises :class:`~privspk.errors.LedgerError`.
        accountant: how a device's epsilon follows from its counters.
        budget: the per-device epsilon budget.
    """

    def __init__(self, path: str | Path, *, run_id: str, accountant: DeviceAccountant, budget: float) -> None:
        self.path = Path(path)
        self.run_id = nonempty_str("run_id", run_id)
        if not isinstance(accountant, (SampledGaussianAccountant, DistributedAccountant, FtrlAccountant)):
            raise ConfigError(f"accountant must be one of the device accountants, got {type(accountant).__name__}")
        self.accountant = accountant
        self.budget = positive_float("budget", budget)
        try:
            self._conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=30.0)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(_SCHEMA)
            self._bind_meta()
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{self.path}: not a usable device ledger ({exc})") from None

    def _bind_meta(self) -> None:
        want = {"format": "privspk-device-ledger/1", "run_id": self.run_id,
                "accountant": json.dumps(self.accountant.to_dict(), sort_keys=True), "budget": repr(self.budget)}
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            have = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            if not have:
                conn.executemany("INSERT INTO meta VALUES (?, ?)", sorted(want.items()))
            elif have != want:
                diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
                raise LedgerError(f"{self.path} belongs to another run or other privacy settings (differs in "
                                  f"{diff}); use a new file or the same settings")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # -- context manager ----------------------------------------------------------------------

    def close(self) -> None:
        """Close the file."""
        self._conn.close()

    def __enter__(self) -> DeviceLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ------------------------------------------------------------------------------

    def _counters(self, device: str) -> tuple[int, int]:
        row = self._conn.execute("SELECT eligible_rounds, participations FROM devices WHERE device = ?",
                                 (device,)).fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    def epsilon(self, device: str) -> float:
        """The device's user-level epsilon so far (0.0 for a device never eligible)."""
        row = self._conn.execute("SELECT epsilon FROM devices WHERE device = ?", (device,)).fetchone()
        return float(row[0]) if row else 0.0

    def participations(self, device: str) -> tuple[int, ...]:
        """Rounds the device took part in, ascending."""
        rows = self._conn.execute("SELECT round FROM entries WHERE device = ? AND took_part = 1 ORDER BY round",
                                  (device,)).fetchall()
        return tuple(int(r[0]) for r in rows)

    def epsilon_if_sampled(self, device: str) -> float:
        """The device's epsilon were it eligible for, and sampled in, one more round."""
        e, p = self._counters(device)
        return self.accountant.epsilon(eligible_rounds=e + 1, participations=p + 1)

    def may_participate(self, device: str) -> bool:
        """Whether the device can be eligible next round without possibly exceeding its budget."""
        return self.epsilon_if_sampled(device) <= self.budget

    def admit(self, devices: Iterable[str]) -> Admission:
        """Split ``devices`` into those that may be sampled next round and those that sit out (read only)."""
        ids = _ids("devices", devices)
        counters = dict.fromkeys(ids, (0, 0))
        for dev, e, p in self._conn.execute("SELECT device, eligible_rounds, participations FROM devices"):
            if dev in counters:
                counters[dev] = (int(e), int(p))
        ok, out = [], []
        for dev in ids:
            e, p = counters[dev]
            eps = self.accountant.epsilon(eligible_rounds=e + 1, participations=p + 1)
            (ok if eps <= self.budget else out).append(dev)
        return Admission(admitted=tuple(ok), sat_out=tuple(out))

    def last_round(self) -> int:
        """The last recorded round (0 before any)."""
        row = self._conn.execute("SELECT MAX(round) FROM rounds").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def central_epsilon(self, round: int | None = None) -> float:
        """User-level epsilon of the model released after ``round`` (default: the last one); 0.0 before any."""
        rnd = self.last_round() if round is None else positive_int("round", round)
        row = self._conn.execute("SELECT central_epsilon FROM rounds WHERE round = ?", (rnd,)).fetchone()
        if row is None:
            if round is None:
                return 0.0
            raise LedgerError(f"round {rnd} is not in {self.path}")
        return float(row[0])

    def round_record(self, round: int) -> RoundRecord:
        """The recorded round ``round`` (LedgerError when absent)."""
        rnd = positive_int("round", round)
        row = self._conn.execute("SELECT central_epsilon, row_hash FROM rounds WHERE round = ?", (rnd,)).fetchone()
        if row is None:
            raise LedgerError(f"round {rnd} is not in {self.path}")
        ent = self._conn.execute("SELECT device, took_part FROM entries WHERE round = ? ORDER BY device",
                                 (rnd,)).fetchall()
        return RoundRecord(round=rnd, eligible=tuple(d for d, _ in ent), participants=tuple(d for d, t in ent if t),
                           central_epsilon=float(row[0]), row_hash=str(row[1]))

    # -- writing ------------------------------------------------------------------------------

    def record_round(self, round: int, *, eligible: Collection[str], participants: Collection[str]) -> RoundRecord:
        """Record a round atomically: who was eligible (could be sampled) and who took part.

        ``participants`` must be within ``eligible``; pass every sampled device whose update
        may be in the sum (the sampled set, to be safe: dropped devices included). Refused
        with :class:`~privspk.errors.BudgetExceededError` (nothing written) if an eligible
        device would exceed its budget; the same round again with the same sets is a no-op.
        """
        rnd = positive_int("round", round)
        elig = _ids("eligible", eligible)
        part = _ids("participants", participants)
        extra = sorted(set(part) - set(elig))
        if extra:
            raise ConfigError(f"participants {extra[:5]} are not among the eligible devices")
        sets = _sets_digest(elig, part)
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            have = conn.execute("SELECT sets_sha256 FROM rounds WHERE round = ?", (rnd,)).fetchone()
            if have is not None:
                conn.execute("ROLLBACK")
                if have[0] != sets:
                    raise LedgerError(f"round {rnd} is already recorded in {self.path} with other eligible/"
                                      "participant sets; a resumed run must replay the same round")
                return self.round_record(rnd)
            last_row = conn.execute("SELECT round, row_hash FROM rounds ORDER BY round DESC LIMIT 1").fetchone()
            last, prev = (int(last_row[0]), str(last_row[1])) if last_row else (0, _GENESIS)
            if rnd <= last:
                raise LedgerError(f"round {rnd} comes after round {last} was recorded; rounds are recorded in order")
            counters = {d: (0, 0) for d in elig}
            for dev, e, p in conn.execute("SELECT device, eligible_rounds, participations FROM devices"):
                if dev in counters:
                    counters[dev] = (int(e), int(p))
            took = set(part)
            updates, entries, over = [], [], []
            for dev in elig:
                e, p = counters[dev]
                worst = self.accountant.epsilon(eligible_rounds=e + 1, participations=p + 1)
                if worst > self.budget:
                    over.append(dev)
                e, p = e + 1, p + (dev in took)
                eps = self.accountant.epsilon(eligible_rounds=e, participations=p)
                updates.append((dev, e, p, eps, rnd))
                entries.append((rnd, dev, int(dev in took), eps))
            if over:
                raise BudgetExceededError(f"round {rnd}: {len(over)} eligible device(s) would exceed the budget "
                                          f"epsilon {self.budget:g} (e.g. {over[:3]}); nothing recorded - drop them "
                                          "with DeviceLedger.admit() before sampling")
            conn.executemany(
                "INSERT INTO devices VALUES (?, ?, ?, ?, ?) ON CONFLICT(device) DO UPDATE SET "
                "eligible_rounds = excluded.eligible_rounds, participations = excluded.participations, "
                "epsilon = excluded.epsilon, last_round = excluded.last_round", updates)
            conn.executemany("INSERT INTO entries VALUES (?, ?, ?, ?)", entries)
            central = float(conn.execute("SELECT COALESCE(MAX(epsilon), 0.0) FROM devices").fetchone()[0])
            head = _row_hash(prev, rnd, sets, central)
            conn.execute("INSERT INTO rounds VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (rnd, len(elig), len(part), sets, central, prev, head))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return RoundRecord(round=rnd, eligible=elig, participants=part, central_epsilon=central, row_hash=head)

    # -- checking -----------------------------------------------------------------------------

    def verify(self) -> int:
        """Recompute the hash chain, every device's counters and epsilon from the entries; return rounds checked.

        LedgerError naming the first round or device that does not match.
        """
        conn = self._conn
        prev = _GENESIS
        counters: dict[str, tuple[int, int]] = {}
        n = 0
        for rnd, ne, np_, sets, central, prev_hash, head in conn.execute(
                "SELECT round, n_eligible, n_participants, sets_sha256, central_epsilon, prev_hash, row_hash "
                "FROM rounds ORDER BY round").fetchall():
            ent = conn.execute("SELECT device, took_part, epsilon_after FROM entries WHERE round = ? ORDER BY device",
                               (rnd,)).fetchall()
            elig = tuple(d for d, _, _ in ent)
            part = tuple(d for d, t, _ in ent if t)
            if prev_hash != prev or _row_hash(prev, rnd, sets, central) != head:
                raise LedgerError(f"{self.path}: round {rnd} breaks the hash chain (a round was removed or rewritten)")
            if _sets_digest(elig, part) != sets or (len(elig), len(part)) != (ne, np_):
                raise LedgerError(f"{self.path}: round {rnd}'s entries do not match its recorded sets")
            for dev, took, eps_after in ent:
                e, p = counters.get(dev, (0, 0))
                e, p = e + 1, p + int(took)
                counters[dev] = (e, p)
                want = self.accountant.epsilon(eligible_rounds=e, participations=p)
                if abs(eps_after - want) > 1e-9 * max(1.0, abs(want)):  # another machine's last float bits
                    raise LedgerError(f"{self.path}: device {dev}'s epsilon after round {rnd} does not recompute")
            prev, n = head, n + 1
        stored = {d: (int(e), int(p)) for d, e, p in conn.execute(
            "SELECT device, eligible_rounds, participations FROM devices")}
        if stored != counters:
            bad = sorted(d for d in set(stored) | set(counters) if stored.get(d) != counters.get(d))
            raise LedgerError(f"{self.path}: device counters do not match the recorded rounds (e.g. {bad[:3]})")
        return n
