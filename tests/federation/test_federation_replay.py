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


@pytest.mark.parametrize("scheme", ["mask", "bfv"])
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
        assert all("another sum" in job2.ledger.row(c, 1).note for c in OTHERS)
        assert open_sum(job2, 1, OTHERS) is None
    finally:
        job2.close()


@pytest.mark.parametrize("scheme", ["mask", "bfv"])
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
