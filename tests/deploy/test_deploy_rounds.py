"""Deployed rounds on real Flower processes (SuperLink + 3 SuperNodes on 127.0.0.1) equal in-process rounds.

The same config and seeds run once through ``privspk.train`` (one process) and once
through ``privspk serve`` / ``join`` / ``run``; the final global models must agree:
``plain`` bit for bit, ``mask`` to its quantisation. Each node has its own run
directory and its own ledger, which must hold exactly its two spends.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import privspk
from deploy_support import Cluster, prepared_data, tiny_config
from privspk.models.checkpoint import load_encoder
from privspk.api import AGGREGATED_HEADS
from privspk.privacy import Ledger
from privspk.privacy.ledger import AggregatedHeads

pytestmark = [
    pytest.mark.filterwarnings("ignore:Full backward hook is firing"),
    pytest.mark.filterwarnings("ignore:Secure RNG turned off"),
    pytest.mark.filterwarnings("ignore:.*--insecure"),
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return prepared_data(tmp_path_factory.mktemp("deploy_data"))


def trainable_vector(encoder, recipe: str) -> np.ndarray:
    from privspk.models.finetune import apply_recipe

    apply_recipe(encoder, recipe)
    return torch.cat([p.detach().reshape(-1).double() for p in encoder.parameters() if p.requires_grad]).numpy()


def in_process(cfg) -> tuple[np.ndarray, dict]:
    res = privspk.train(cfg, progress=False, overwrite=True)
    vec = torch.cat([p.detach().reshape(-1).double() for n, p in res.encoder.named_parameters()
                     if p.requires_grad]).numpy()
    return vec, res.epsilon


def deployed(tmp_path: Path, data_dir: Path, scheme: str, tweak=lambda cfg: cfg) -> tuple[np.ndarray, dict, Cluster]:
    """The tiny run (``tweak``-ed) through a real cluster: its final trainable vector, final event and cluster."""
    cfg = tweak(tiny_config(data_dir, tmp_path / "server_runs", scheme=scheme))
    with Cluster(tmp_path / "cluster", data_dir=data_dir) as cluster:
        try:
            done = cluster.submit(cfg, wait=900)
        except Exception:
            print(cluster.dump_logs())
            raise
    enc, _ = load_encoder(Path(cfg.out_dir) / cfg.name / "encoder.pt")
    return trainable_vector(enc, cfg.train.recipe), done, cluster


def test_mask_two_rounds_deployed_equal_in_process(tmp_path, data_dir):
    vec, done, cluster = deployed(tmp_path, data_dir, "mask")
    ref, ref_eps = in_process(tiny_config(data_dir, tmp_path / "inproc", scheme="mask"))
    from privspk.secagg import build_scheme

    tol = build_scheme("mask", {"clip": 0.5}).sum_tolerance(3, bound=0.5)
    assert vec.shape == ref.shape
    assert np.max(np.abs(vec - ref)) <= tol, f"deployed differs by {np.max(np.abs(vec - ref))} > {tol}"
    assert not np.array_equal(vec, trainable_vector(_pretrained(data_dir), "last")), "the rounds changed the model"
    assert done["epsilon_spent"] == pytest.approx(ref_eps, rel=1e-12)
    record = AggregatedHeads.load(Path(cluster_out(tmp_path)) / "deployed" / AGGREGATED_HEADS)
    assert {r: sorted(h) for r, h in record.rounds.items()} == {r: ["client0", "client1", "client2"] for r in (1, 2)}
    for i in range(3):  # each node's own ledger: its own two spends, both aggregated
        with Ledger(cluster.node_dir(i) / "deployed" / "ledger.sqlite", readonly=True) as led:
            assert sorted((r.client, r.round, r.status) for r in led.rows()) == [
                (f"client{i}", 1, "aggregated"), (f"client{i}", 2, "aggregated")]
            # the server kept the heads it aggregated, signed by the identity bound to the node
            assert led.verify_chain(_only(record, f"client{i}")) == []
            assert record.keys[f"client{i}"] == led.signed_head(f"client{i}", 2).public_key.hex()
    # the check can fail: a record naming a round client0's ledger lacks (a truncated ledger) is caught
    with Ledger(cluster.node_dir(0) / "deployed" / "ledger.sqlite", readonly=True) as led:
        assert led.verify_chain(_with_extra_round(_only(record, "client0"), led)) != []


def cluster_out(tmp_path: Path) -> Path:
    return tmp_path / "server_runs"


def _only(record, client: str):
    """The server's record restricted to one client (a node's ledger holds its own client only)."""
    import copy

    other = copy.deepcopy(record)
    other.rounds = {r: {c: h for c, h in hs.items() if c == client} for r, hs in other.rounds.items()}
    other.keys = {c: k for c, k in other.keys.items() if c == client}
    return other


def _with_extra_round(record, led):
    """The record with round 2's head of client0 moved to round 3 (the ledger has no round 3)."""
    import copy
    import dataclasses

    other = copy.deepcopy(record)
    head = other.rounds[2]["client0"]
    other.rounds[3] = {"client0": dataclasses.replace(head, round=3)}
    return other


@pytest.mark.slow
def test_plain_two_rounds_deployed_bit_identical(tmp_path, data_dir):
    vec, _, _ = deployed(tmp_path, data_dir, "plain")
    ref, _ = in_process(tiny_config(data_dir, tmp_path / "inproc", scheme="plain"))
    assert np.array_equal(vec, ref)


def _pretrained(data_dir: Path):
    from privspk.api import pretrained_encoder
    from privspk.prepare import prepare_data

    cfg = tiny_config(data_dir, data_dir / "unused")
    enc, _ = pretrained_encoder(cfg, prepare_data(cfg, progress=False), progress=False)
    return enc


@pytest.mark.slow
def test_client_level_dp_deployed_spends_what_in_process_plans(tmp_path, data_dir):
    """Client-level distributed DP through Flower: each node clips its whole update and adds its integer
    noise share before masking; its ledger records the client-level spend the in-process run records
    (the noise shares come from OS entropy, so the models differ: only the accounting is compared)."""
    import dataclasses

    def client_level(cfg):
        return cfg.replace(privacy=dataclasses.replace(cfg.privacy, client_level=True, client_epsilon=8.0))

    vec, done, cluster = deployed(tmp_path, data_dir, "mask", client_level)
    node_ledgers = [cluster.node_dir(i) / "deployed" / "ledger.sqlite" for i in range(3)]
    ref = privspk.train(client_level(tiny_config(data_dir, tmp_path / "inproc", scheme="mask")), progress=False,
                        overwrite=True)
    ref_client_eps = ref.report["privacy"]["client_level"]["epsilon_spent"]
    assert done["client_epsilon_spent"] == pytest.approx(ref_client_eps, rel=1e-9)
    assert all(0 < e <= 8.0 for e in done["client_epsilon_spent"].values())
    assert done["epsilon_spent"] == pytest.approx(ref.epsilon, rel=1e-12)
    rows = json.loads(Path(done["report"]).read_text(encoding="utf-8"))["rounds"]
    assert [sorted(r["client_epsilon"]) for r in rows] == [["client0", "client1", "client2"]] * 2
    for i, path in enumerate(node_ledgers):
        with Ledger(path, readonly=True) as led:
            assert [(r.round, r.status) for r in led.rows()] == [(1, "aggregated"), (2, "aggregated")]
            assert all(r.client_level is not None and r.client_level.noise_multiplier > 0 for r in led.rows())
            assert led.client_epsilon(f"client{i}") == pytest.approx(ref_client_eps[f"client{i}"], rel=1e-9)
            assert all(c.ok for c in led.recompute())  # `privspk ledger --check` recomputes the same spends
    assert not np.array_equal(vec, trainable_vector(_pretrained(data_dir), "last")), "the rounds changed the model"
