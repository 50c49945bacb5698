"""Ledger audit: recompute every recorded epsilon from the rows' mechanisms, and verify the hash chain.

``privspk ledger --check`` runs both. :func:`recompute` rebuilds each row's
:class:`~privspk.privacy.mechanism.Mechanism` (:meth:`~privspk.privacy.mechanism.Mechanism.from_row`)
and composes the client's rounds again with the accountant; :func:`verify_chain` checks the
hash chain, the signatures and (given the server's record) what the server aggregated.

>>> from privspk.privacy import BudgetGuard, PrivacyBudget
>>> led = _example_ledger()
>>> _ = BudgetGuard(led, "c0", PrivacyBudget(epsilon=8, delta=1e-5)).commit_spend(1, _EXAMPLE_MECHANISM, scheme="mask")
>>> [c.ok for c in recompute(led)], verify_chain(led)
([True], [])
"""

from __future__ import annotations

from dataclasses import dataclass

from privspk.errors import PrivspkError
from privspk.privacy.accounting import (
    ClientLevelRound,
    RoundSpend,
    check_accountant,
    client_level_epsilon,
    rounds_epsilon,
)
from privspk.privacy.ledger.chain import (
    _CHAIN_COLUMNS,
    _CHAIN_TABLE,
    GENESIS_HASH,
    AggregatedHeads,
    ChainFinding,
    _chain_hash,
    head_message,
)
from privspk.privacy.ledger.rows import _EXAMPLE_MECHANISM, SpendRow, _example_spend  # noqa: F401 - for the doctests
from privspk.privacy.ledger.storage import Ledger, _example_ledger  # noqa: F401
from privspk.privacy.mechanism import Mechanism

__all__ = ["RecomputeCheck", "recompute", "verify_chain"]


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


def verify_chain(ledger: Ledger, record: AggregatedHeads | None = None) -> list[ChainFinding]:
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
    if not ledger._chained:
        return [ChainFinding(client=None, round=None, problem=(
            f"no hash chain: this ledger predates tamper evidence (no '{_CHAIN_TABLE}' table); its rows can be "
            "recomputed but a deleted or rewritten row cannot be detected"))]
    from privspk.secagg.keys import KeyRegistry

    with ledger._read("verifying the hash chain") as conn:
        rows = {(r.client, r.round): r for r in ledger._select(conn)}
        chain = conn.execute(
            f"SELECT {', '.join(_CHAIN_COLUMNS)} FROM {_CHAIN_TABLE} WHERE run_id = ? ORDER BY client, seq",
            (ledger.run_id,),
        ).fetchall()
        other = conn.execute(f"SELECT count(*) FROM {_CHAIN_TABLE} WHERE run_id != ?", (ledger.run_id,)).fetchone()
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
                        run_id=ledger.run_id, client=client, round=rnd, seq=seq, head=head))
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
        findings.extend(_check_record(ledger, record, links))
    return findings


def _check_record(ledger: Ledger, record: AggregatedHeads, links: dict[str, list[tuple]]) -> list[ChainFinding]:
    out: list[ChainFinding] = []
    if record.run_id != ledger.run_id:
        return [ChainFinding(client=None, round=None, problem=(
            f"the server record belongs to run {record.run_id!r}, not {ledger.run_id!r}"))]
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


def recompute(
    ledger: Ledger, accountant: str | None = None, *, rtol: float = 1e-6, atol: float = 1e-9
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
    for client in ledger.clients():
        rows = ledger.rows(client)
        rounds: list[RoundSpend] = []
        cl_rounds: list[ClientLevelRound] = []
        for r in rows:
            rounds.append(RoundSpend(round=r.round, step=Mechanism.from_row(r).step, speakers=r.speakers))
            acc = accountant or r.accountant
            value = rounds_epsilon(rounds, delta=r.delta, accountant=acc)
            checks.append(_check(r, "sample", acc, r.epsilon_after, value, accountant, rtol, atol))
            if r.client_level is not None:
                cl = r.client_level
                cl_rounds.append(
                    ClientLevelRound(round=r.round, mechanism=cl.mechanism, sample_rate=cl.sample_rate)
                )
                value = client_level_epsilon(cl_rounds, delta=cl.delta)
                checks.append(_check(r, "client", "rdp", cl.epsilon_after, value, None, rtol, atol))
    return checks


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
