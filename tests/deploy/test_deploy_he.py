"""A deployed ``bfv`` run with a key-holder SuperNode equals the in-process run; no secret key leaves that node.

SuperLink + 3 client SuperNodes + 1 key-holder SuperNode on 127.0.0.1, each its own
process. The key holder's Ed25519 verify key reaches the server and the clients bound to
its Flower node (as clients' identity keys are); the key holder makes a fresh key per
round and only it ever holds a secret key. ``deploy_audit`` (loaded into every process)
records every TenSEAL context each process makes or loads and every context that
crosses Flower through the ServerApp, each with ``has_secret_key()``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deploy_support import Cluster, prepared_data, tiny_config
from privspk.models.checkpoint import load_encoder
from privspk.privacy import Ledger
from privspk.secagg.he_params import HE_TRUST
from test_deploy_rounds import _pretrained, in_process, trainable_vector

pytestmark = [
    pytest.mark.filterwarnings("ignore:Full backward hook is firing"),
    pytest.mark.filterwarnings("ignore:Secure RNG turned off"),
    pytest.mark.filterwarnings("ignore:.*--insecure"),
]

BFV = {"he_trust": HE_TRUST}
HE = BFV  # ckks takes the same option (the operator accepts the HE trust assumption)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return prepared_data(tmp_path_factory.mktemp("deploy_he_data"))


def audit_records(audit: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(audit.glob("*.jsonl")) for line in f.read_text().splitlines()]


@pytest.mark.slow
def test_bfv_two_rounds_with_a_keyholder_node_equal_in_process_and_no_secret_key_leaves_it(tmp_path, data_dir):
    cfg = tiny_config(data_dir, tmp_path / "server_runs", scheme="bfv", options=BFV)
    audit = tmp_path / "audit"
    with Cluster(tmp_path / "cluster", data_dir=data_dir, keyholder=True, audit=audit) as cluster:
        try:
            done = cluster.submit(cfg, wait=900)
        except Exception:
            print(cluster.dump_logs())
            raise
    enc, _ = load_encoder(Path(cfg.out_dir) / cfg.name / "encoder.pt")
    vec = trainable_vector(enc, cfg.train.recipe)
    ref, ref_eps = in_process(tiny_config(data_dir, tmp_path / "inproc", scheme="bfv", options=BFV))
    from privspk.secagg import build_scheme

    tol = build_scheme("bfv", {"clip": 0.5, **BFV}).sum_tolerance(3, bound=0.5)
    assert vec.shape == ref.shape
    assert np.max(np.abs(vec - ref)) <= tol, f"deployed differs by {np.max(np.abs(vec - ref))} > {tol}"
    assert not np.array_equal(vec, trainable_vector(_pretrained(data_dir), "last")), "the rounds changed the model"
    assert done["epsilon_spent"] == pytest.approx(ref_eps, rel=1e-12)
    report = json.loads((Path(cfg.out_dir) / cfg.name / "report.json").read_text())
    assert report["keyholder"] is not None and report["keyholder"] not in report["clients"].values()
    assert [r["included"] for r in report["rounds"]] == [["client0", "client1", "client2"]] * 2
    for i in range(3):
        with Ledger(cluster.node_dir(i) / "deployed" / "ledger.sqlite", readonly=True) as led:
            assert sorted((r.client, r.round, r.status) for r in led.rows()) == [
                (f"client{i}", 1, "aggregated"), (f"client{i}", 2, "aggregated")]

    records = audit_records(audit)
    by_role = {role: [r for r in records if r["role"] == role] for role in ("server", "client", "keyholder")}
    # the audit sees secrets where they are: the key holder made a secret-key context for each round
    made = [r for r in by_role["keyholder"] if r["event"] == "make_context"]
    assert len(made) >= 2 and all(r["secret"] for r in made)
    # the server and every client process loaded public contexts only, and never made one
    for role in ("server", "client"):
        assert by_role[role], f"no audit records from the {role} processes"
        assert not [r for r in by_role[role] if r["event"] == "make_context"], f"a {role} process made a context"
        loads = [r for r in by_role[role] if r["event"] == "load_context"]
        assert loads and not any(r["secret"] for r in loads), f"a {role} process loaded a secret-key context"
    assert len({r["pid"] for r in by_role["client"] if r["event"] == "load_context"}) == 3
    # every context that crossed Flower: public, a fresh one per round from the key holder, relayed to 3 clients
    crossed = [r for r in by_role["server"] if r["event"] == "transport_context"]
    assert crossed and not any(r["secret"] for r in crossed)
    from_kh = {r["round"]: r["sha256"] for r in crossed if r["direction"] == "from_node" and r["stage"] == "setup"}
    assert sorted(from_kh) == [1, 2] and from_kh[1] != from_kh[2]
    relayed = [r for r in crossed if r["direction"] == "to_node" and r["stage"] == "pledge"]
    assert sorted((r["round"], r["sha256"]) for r in relayed) == sorted(
        (rnd, sha) for rnd, sha in from_kh.items() for _ in range(3))


def test_separate_parties_run_a_bfv_round_with_only_the_key_holders_verify_key():
    """The deployed split without Flower: one scheme object per party, as on the nodes."""
    from privspk.errors import ConfigError, KeyLeakError
    from privspk.secagg import KEYHOLDER, RoundSpec, build_scheme
    from privspk.secagg.keys import IdentityKey

    opts = {"clip": 1.0, **BFV}
    ids = {c: IdentityKey.generate() for c in ("c0", "c1", "c2")}
    kh_id = IdentityKey.generate()
    kh_scheme = build_scheme("bfv", opts, seed=1)
    keyholder = kh_scheme.keyholder(identity=kh_id)
    assert keyholder.verify_key == kh_id.public_bytes()
    server_scheme = build_scheme("bfv", opts, seed=1)
    server_scheme.use_keyholder(kh_id.public_bytes())
    clients, updates = {}, {}
    for k, (cid, key) in enumerate(sorted(ids.items())):
        kh_scheme.register(cid, key.public_bytes())
        server_scheme.register(cid, key.public_bytes())
        own = build_scheme("bfv", opts, seed=1)
        own.use_keyholder(kh_id.public_bytes())
        clients[cid] = own.client(cid, identity=key)
        updates[cid] = np.array([0.5, -0.25, 0.125 * k])
        clients[cid].submit(3, updates[cid])
        with pytest.raises(ConfigError):  # a client's scheme never makes a key holder (a secret key)
            own.keyholder()
        with pytest.raises(KeyLeakError):  # nor trusts a second key holder
            own.use_keyholder(IdentityKey.generate().public_bytes())
    with pytest.raises(ConfigError):
        server_scheme.keyholder()
    server = server_scheme.server_round(RoundSpec(run_id="r", round_id=3, clients=tuple(sorted(ids)), dim=3))
    while True:
        for dest, request in server.outbox().items():
            reply = (keyholder if dest == KEYHOLDER else clients[dest]).handle(request)
            if reply is not None:
                server.receive(dest, reply)
        if not server.advance():
            break
    res = server.result()
    assert res.included == ("c0", "c1", "c2")
    tol = server_scheme.sum_tolerance(3)
    assert np.max(np.abs(res.total - sum(updates.values()))) <= tol
    assert server_scheme._keyholder is None  # the server side never made a key holder


def test_a_server_cannot_swap_in_its_own_key_holder_for_a_client_that_trusts_another():
    """A context signed by a key holder other than the one the client was given is refused."""
    from privspk.errors import ProtocolError
    from privspk.secagg import KEYHOLDER, RoundSpec, build_scheme
    from privspk.secagg.keys import IdentityKey

    opts = {"clip": 1.0, **BFV}
    honest = IdentityKey.generate()
    rogue_scheme = build_scheme("bfv", opts)  # the server's own key holder: it would hold the secret key
    rogue = rogue_scheme.keyholder()
    client_scheme = build_scheme("bfv", opts)
    client_scheme.use_keyholder(honest.public_bytes())
    key = IdentityKey.generate()
    client = client_scheme.client("c0", identity=key)
    client.submit(1, np.array([0.5]))
    rogue_scheme.register("c0", key.public_bytes())
    server = rogue_scheme.server_round(RoundSpec(run_id="r", round_id=1, clients=("c0",), dim=1))
    server.receive(KEYHOLDER, rogue.handle(server.outbox()[KEYHOLDER]))
    assert server.advance()
    with pytest.raises(ProtocolError, match="signature"):
        client.handle(server.outbox()["c0"])


@pytest.mark.slow
def test_ckks_two_rounds_with_a_keyholder_node_match_in_process_to_ckks_precision(tmp_path, data_dir):
    """``ckks`` deployed: the opened sums carry fresh CKKS and flooding noise, so the two runs differ.

    Each round adds the opened sum (all clients in, FedAvg mass 1) to the model, and each run's
    opened sum is within ``sum_tolerance(3)`` (5.1e-7 here) of the exact sum; two runs of two
    rounds therefore differ by at most 2 x 2 x ``sum_tolerance(3)`` per coordinate, plus the float32
    rounding of the model and what round 2's training on models ~1e-7 apart adds; both were small
    in the two measured runs (max difference 2.7e-7 and 3.6e-7 against this bound of 2.0e-6).
    """
    cfg = tiny_config(data_dir, tmp_path / "server_runs", scheme="ckks", options=HE)
    audit = tmp_path / "audit"
    with Cluster(tmp_path / "cluster", data_dir=data_dir, keyholder=True, audit=audit) as cluster:
        try:
            done = cluster.submit(cfg, wait=900)
        except Exception:
            print(cluster.dump_logs())
            raise
    enc, _ = load_encoder(Path(cfg.out_dir) / cfg.name / "encoder.pt")
    vec = trainable_vector(enc, cfg.train.recipe)
    ref, ref_eps = in_process(tiny_config(data_dir, tmp_path / "inproc", scheme="ckks", options=HE))
    from privspk.secagg import build_scheme

    tol = 2 * 2 * build_scheme("ckks", {"clip": 0.5, **HE}).sum_tolerance(3, bound=0.5)
    diff = float(np.max(np.abs(vec - ref)))
    print(f"ckks deployed vs in-process: max |diff| = {diff:.3g} (bound {tol:.3g})")
    assert vec.shape == ref.shape
    assert diff <= tol, f"deployed differs by {diff} > {tol}"
    assert not np.array_equal(vec, trainable_vector(_pretrained(data_dir), "last")), "the rounds changed the model"
    assert done["epsilon_spent"] == pytest.approx(ref_eps, rel=1e-12)
    report = json.loads((Path(cfg.out_dir) / cfg.name / "report.json").read_text())
    assert report["keyholder"] is not None and report["keyholder"] not in report["clients"].values()
    assert [r["included"] for r in report["rounds"]] == [["client0", "client1", "client2"]] * 2
    for i in range(3):
        with Ledger(cluster.node_dir(i) / "deployed" / "ledger.sqlite", readonly=True) as led:
            assert sorted((r.client, r.round, r.status) for r in led.rows()) == [
                (f"client{i}", 1, "aggregated"), (f"client{i}", 2, "aggregated")]
    records = audit_records(audit)
    made = [r for r in records if r["event"] == "make_context"]
    assert len(made) >= 2 and all(r["role"] == "keyholder" and r["secret"] for r in made), \
        "only the key holder makes (secret-key) contexts"
    loads = [r for r in records if r["event"] in ("load_context", "transport_context") and r["role"] != "keyholder"]
    assert loads and not any(r["secret"] for r in loads), "a server or client process saw a secret-key context"
