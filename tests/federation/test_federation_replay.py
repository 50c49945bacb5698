"""One staged update inside two different sums (issue 19, finding 4): the attack, run end to end.

A client whose spend is committed re-sends its staged update, byte-identical, whenever the
round is asked for again (spend-before-release crash recovery). A malicious server opens a
first sum of all three clients, then - after restarting the clients (fresh objects from the
same run directory and ledger) or under a fresh run id - asks two of them for the same round
again and opens the sum of those two. The difference of the two sums is the third client's
update, individually.

Everything here is the real code path: :func:`federation_support.build_job` builds the
clients, endpoints, scheme and ledger the way ``privspk.api.train`` does; the server side is
the scheme's own :class:`~privspk.secagg.base.ServerRound` driven by
:func:`privspk.secagg.simulate.run_round`. Only the server's choices (which round, which
clients, which run id, never reporting the first round as aggregated) are the attacker's.

Success of the attack is measured, not assumed: ``s1 - s2`` is compared with the victim's
staged update (read from its store) against the scheme's own stated error bound
(:meth:`~privspk.secagg.base.Scheme.sum_tolerance` of each sum), and the victim's update must be
far larger than that bound, so "recovered" cannot mean "both are about zero".
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from privspk.errors import PrivspkError
from privspk.secagg import RoundSpec
from privspk.secagg.simulate import run_round
from federation_support import RUN_ID, build_job

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")

CLIENTS = ("client0", "client1", "client2")
VICTIM = "client2"
OTHERS = ("client0", "client1")


def open_sum(job, round_id: int, clients, *, run_id: str = RUN_ID) -> np.ndarray | None:
    """The server's move: ask ``clients`` for ``round_id`` (train or re-send) and open their sum.

    Returns ``None`` when the sum is not opened (a client refuses, or the round fails).
    """
    gv = job.server.global_vector()
    senders = []
    for cid in clients:
        try:
            rep = job.clients[cid].run_round(round_id, gv)
        except PrivspkError:
            continue
        if rep.status in ("sent", "resent"):
            senders.append(cid)
    if not senders:
        return None
    spec = RoundSpec(run_id=run_id, round_id=round_id, clients=tuple(senders), dim=job.server.dim)
    try:
        res = run_round(job.fed.scheme, spec, {c: job.clients[c].endpoint for c in senders})
    except PrivspkError:
        return None
    if set(res.included) != set(clients):
        return None  # not the sum the attacker asked for
    return res.total


def victim_update(workdir, round_id: int = 1) -> np.ndarray:
    return np.load(workdir / "clients" / VICTIM / f"update_r{round_id:04d}.npy").astype(np.float64)


def attack_outcome(scheme, s1: np.ndarray, s2: np.ndarray | None, x: np.ndarray) -> str:
    """``"recovered"`` when ``s1 - s2`` is the victim's update: every coordinate within the two sums'
    stated error bound and the relative L2 error below 0.2 (so a near-zero ``x`` cannot pass)."""
    if s2 is None:
        return "refused"
    tol = scheme.sum_tolerance(len(CLIENTS)) + scheme.sum_tolerance(len(OTHERS))
    diff = (s1 - s2) - x
    err, rel = float(np.abs(diff).max()), float(np.linalg.norm(diff) / np.linalg.norm(x))
    if err <= tol and rel < 0.2:
        return f"recovered (max error {err:.3g} <= bound {tol:.3g}, relative L2 error {rel:.3g})"
    return f"not recovered (max error {err:.3g}, bound {tol:.3g}, relative L2 error {rel:.3g})"


def ledger_status(job, client: str, round_id: int) -> str:
    return job.ledger.row(client, round_id).status


@pytest.mark.parametrize("scheme", ["mask", "bfv", "ckks"])
def test_a_restarted_client_refuses_to_put_its_update_into_a_second_sum(tmp_path, scheme):
    job = build_job(tmp_path, scheme=scheme, rounds=1)
    s1 = open_sum(job, 1, CLIENTS)  # the honest-looking first round; the server never reports it aggregated
    assert s1 is not None
    x = victim_update(tmp_path)
    job.close()

    job2 = build_job(tmp_path, scheme=scheme, rounds=1)  # the clients restart from the same run dir and ledger
    try:
        s2 = open_sum(job2, 1, OTHERS)
        assert attack_outcome(job2.fed.scheme, s1, s2, x) == "refused"
        # the refusing clients give the round up: the spend still counts, the update never leaves again
        assert [ledger_status(job2, c, 1) for c in OTHERS] == ["abandoned", "abandoned"]
        assert all("refusing to release it into another sum" in job2.ledger.row(c, 1).note for c in OTHERS)
        assert open_sum(job2, 1, OTHERS) is None
    finally:
        job2.close()


@pytest.mark.parametrize("scheme", ["mask", "bfv", "ckks"])
def test_a_client_refuses_its_staged_update_under_a_fresh_run_id(tmp_path, scheme):
    job = build_job(tmp_path, scheme=scheme, rounds=1)
    try:
        s1 = open_sum(job, 1, CLIENTS)
        assert s1 is not None
        x = victim_update(tmp_path)
        s2 = open_sum(job, 1, OTHERS, run_id=f"{RUN_ID}-again")  # same objects, same round, another run id
        assert attack_outcome(job.fed.scheme, s1, s2, x) == "refused"
    finally:
        job.close()


@pytest.mark.parametrize("scheme", ["mask", "bfv"])
def test_a_second_sum_of_the_same_round_in_the_same_process_is_not_opened(tmp_path, scheme):
    """Same objects, same run id: mask - the gate (and the closed round id); bfv - the live key holder
    opens one sum per round, so the gate lets the same context through and the key holder refuses."""
    job = build_job(tmp_path, scheme=scheme, rounds=1)
    try:
        s1 = open_sum(job, 1, CLIENTS)
        assert s1 is not None
        s2 = open_sum(job, 1, OTHERS)
        assert attack_outcome(job.fed.scheme, s1, s2, victim_update(tmp_path)) == "refused"
    finally:
        job.close()


def test_a_resend_into_the_same_sum_after_a_restart_still_opens(tmp_path):
    """Crash recovery keeps working: the same survivors, the same sum (up to fresh stochastic rounding)."""
    job = build_job(tmp_path, scheme="mask", rounds=1)
    s1 = open_sum(job, 1, CLIENTS)
    job.close()
    job2 = build_job(tmp_path, scheme="mask", rounds=1)
    try:
        s2 = open_sum(job2, 1, CLIENTS)
        assert s2 is not None, "a re-send into the same sum must be accepted"
        tol = 2 * job2.fed.scheme.sum_tolerance(len(CLIENTS))
        assert float(np.abs(s2 - s1).max()) <= tol
        assert [ledger_status(job2, c, 1) for c in CLIENTS] == ["released"] * 3
    finally:
        job2.close()


def test_a_masked_update_sent_without_a_confirmed_survivor_set_is_never_sent_again(tmp_path):
    """Its first sum may have been opened by the other clients' shares alone: the client cannot know
    which sum it went into, so a later round of the same update is refused (and abandoned)."""
    job = build_job(tmp_path, scheme="mask", rounds=1)
    gv = job.server.global_vector()
    for c in CLIENTS:
        job.clients[c].run_round(1, gv)
    spec = RoundSpec(run_id=RUN_ID, round_id=1, clients=CLIENTS, dim=job.server.dim)
    run_round(job.fed.scheme, spec, {c: job.clients[c].endpoint for c in CLIENTS}, silent={VICTIM: "confirm"})
    job.close()
    job2 = build_job(tmp_path, scheme="mask", rounds=1)
    try:
        assert open_sum(job2, 1, CLIENTS) is None
        assert ledger_status(job2, VICTIM, 1) == "abandoned"
        assert "never learnt" in job2.ledger.row(VICTIM, 1).note
        rep = job2.clients[VICTIM].run_round(1, job2.server.global_vector())
        assert rep.status == "abandoned" and "another sum" in rep.reason
    finally:
        job2.close()


def test_fsync_order_staged_update_before_spend_and_release_record_before_reply(tmp_path, monkeypatch):
    """Finding 6a and the release record: which fsyncs happen, on which files, in which order.

    ``os.fsync`` is wrapped to log the inode it syncs; the ledger commit and the endpoint's
    replies are logged beside it. What this shows: the staged update's data and then its folder
    are fsync'ed before the spend that points to it is committed, and the release record and its
    folder before the reply that releases the update exists. What it cannot show: that the disk
    honours fsync (no power is cut here); SQLite's own fsyncs (``synchronous=FULL``) are not
    ``os.fsync`` calls and are not logged.
    """
    job = build_job(tmp_path, scheme="bfv", rounds=1)
    events: list[tuple] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.fstat(fd).st_ino)), real_fsync(fd)))
    record_spend = job.ledger.record_spend
    monkeypatch.setattr(job.ledger, "record_spend", lambda spend, **kw: (events.append(("commit", spend.client)),
                                                                          record_spend(spend, **kw))[1])
    store = tmp_path / "clients" / "client0"
    endpoint = job.clients["client0"].endpoint
    handle = endpoint.handle
    monkeypatch.setattr(endpoint, "handle", lambda req: (r := handle(req), events.append(("reply",)))[0])
    try:
        gv = job.server.global_vector()
        job.clients["client0"].run_round(1, gv)
        staged, folder = (store / "update_r0001.npy").stat().st_ino, store.stat().st_ino
        assert events[:3] == [("fsync", staged), ("fsync", folder), ("commit", "client0")]
        for c in OTHERS:
            job.clients[c].run_round(1, gv)
        del events[:]
        spec = RoundSpec(run_id=RUN_ID, round_id=1, clients=CLIENTS, dim=job.server.dim)
        run_round(job.fed.scheme, spec, {c: job.clients[c].endpoint for c in CLIENTS})
        record = (store / "release_r0001.json").stat().st_ino
        mine = [e for e in events if e[0] == "reply" or e[1] in (record, folder)]
        assert mine[:3] == [("fsync", record), ("fsync", folder), ("reply",)]
        assert json.loads(json.loads((store / "release_r0001.json").read_text())["sum"])["scheme"] == "bfv"
    finally:
        job.close()
