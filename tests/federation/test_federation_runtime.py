"""The in-process runtime: the global model moves by exactly the weighted mean of what was sent."""

from __future__ import annotations

import json

import numpy as np
import pytest

from privspk.secagg import build_scheme
from privspk.training.net import flatten, trainable_state
from federation_support import build_job

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")


def _record_submissions(job) -> dict[str, dict[int, np.ndarray]]:
    """Wrap each client's endpoint so the test sees the (pre-weighted) update it hands to the scheme."""
    sent: dict[str, dict[int, np.ndarray]] = {cid: {} for cid in job.clients}
    for cid, client in job.clients.items():
        real = client.endpoint.submit

        def submit(round_id, update, *, _cid=cid, _real=real):
            sent[_cid][round_id] = np.array(update, dtype=np.float64, copy=True)
            _real(round_id, update)

        client.endpoint.submit = submit
    return sent


@pytest.mark.parametrize("scheme", ["plain", "mask"])
def test_global_model_moves_by_the_weighted_mean_of_the_client_deltas(tmp_path, scheme):
    job = build_job(tmp_path, scheme=scheme, dp=False, rounds=1)
    sent = _record_submissions(job)
    before = job.server.global_vector().numpy().copy()
    rep = job.fed.run_round(1)
    after = job.server.global_vector().numpy()
    weights = job.server.weights
    assert sorted(rep.included) == sorted(job.clients) and rep.dropped == {}
    assert rep.weight_mass == pytest.approx(1.0)
    # each client sent w_k * (its new encoder - global): the mean of the deltas, weighted by data size
    for cid, client in job.clients.items():
        own = flatten(trainable_state(client.net.encoder), client.names).numpy()
        np.testing.assert_allclose(sent[cid][1], weights[cid] * (own - before), rtol=1e-12, atol=1e-12)
    expect = sum(sent[c][1] for c in job.clients) / sum(weights.values())
    bound = max(np.abs(sent[c][1]).max() for c in job.clients)
    assert bound > 1e-4, "the clients trained"
    tol = job.fed.scheme.sum_tolerance(len(job.clients), bound=bound)
    err = np.abs((after - before) - expect).max()
    assert err <= tol + 1e-7, (err, tol)
    if scheme == "mask":
        assert err > 0  # quantised: close, not bit-equal
    assert rep.bytes_up > 0 and rep.secagg_seconds > 0
    json.dumps(rep.to_dict())


def test_a_dropout_leaves_the_weighted_mean_of_the_survivors_and_its_spend_not_aggregated(tmp_path):
    job = build_job(tmp_path, scheme="plain", dp=True, rounds=1)
    sent = _record_submissions(job)
    before = job.server.global_vector().numpy().copy()
    rep = job.fed.run_round(1, silent={"client1": "collect"})
    w = job.server.weights
    assert rep.included == ("client0", "client2") and "client1" in rep.dropped
    assert rep.weight_mass == pytest.approx(w["client0"] + w["client2"])
    expect = (sent["client0"][1] + sent["client2"][1]) / (w["client0"] + w["client2"])
    np.testing.assert_allclose(job.server.global_vector().numpy() - before, expect, rtol=1e-5, atol=1e-7)
    status = {r.client: r.status for r in job.ledger.rows()}
    assert status == {"client0": "aggregated", "client1": "released", "client2": "aggregated"}
    assert job.fed.last_completed_round() == 1
    assert not list(tmp_path.glob("clients/*/update_r*.npy")), "staged updates are forgotten once aggregated"
    job.close()


def test_a_failed_aggregation_opens_nothing_and_saves_nothing(tmp_path):
    job = build_job(tmp_path, scheme="plain", dp=True, rounds=1)
    job.fed.scheme = build_scheme("plain", {"min_clients": 3})
    calls = []
    job.fed.on_aggregated = lambda r, inc: calls.append(r)
    before = job.server.global_vector().clone()
    rep = job.fed.run_round(1, silent={"client2": "collect"})
    assert rep.skipped.startswith("aggregation failed, nothing opened") and rep.included == ()
    assert (job.server.global_vector() == before).all()
    assert calls == [] and not (tmp_path / "server_state.pt").exists()
    assert {r.status for r in job.ledger.rows()} == {"released"}  # spent and counted, never aggregated
    assert len(job.ledger.rows()) == 3
    job.close()


def test_when_every_client_is_out_of_budget_the_round_is_skipped(tmp_path):
    job = build_job(tmp_path, scheme="plain", dp=True, rounds=1, epsilon=0.01)
    before = job.server.global_vector().clone()
    rep = job.fed.run_round(1)
    assert rep.skipped == "no client could take part (all out of budget)"
    assert {r.status for r in rep.clients.values()} == {"out_of_budget"}
    assert (job.server.global_vector() == before).all() and job.ledger.rows() == []
    job.close()


def test_rounds_are_saved_and_a_resumed_runtime_knows_where_it_stopped(tmp_path):
    job = build_job(tmp_path, scheme="plain", dp=True, rounds=2)
    reports = job.run()
    assert [r.round_id for r in reports] == [1, 2]
    vec = job.server.global_vector().clone()
    eps = job.epsilons()
    job.close()
    again = build_job(tmp_path, scheme="plain", dp=True, rounds=2)
    assert again.fed.last_completed_round() == 2
    assert (again.server.global_vector() == vec).all()
    assert again.run(resume=True) == []  # nothing left to do
    assert again.epsilons() == eps
    rows = again.ledger.rows()
    assert sorted((r.client, r.round, r.status) for r in rows) == [
        (c, r, "aggregated") for c in ("client0", "client1", "client2") for r in (1, 2)]
    loss = reports[0].loss
    assert np.isfinite(loss) and loss == pytest.approx(np.mean([c.loss for c in reports[0].clients.values()]))
    again.close()
