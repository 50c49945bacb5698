"""Faults on real Flower processes: a node SIGKILLed mid-round, a node restarted, a SuperLink
restarted, a node whose stage replies are corrupted in transit.

Every case checks what the scheme promises (``mask`` with 3 clients tolerates 1 dropout:
the round completes with the 2 others) and what each node's own ledger holds afterwards
(a spend is never counted twice; a round that was not aggregated stays unaggregated).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from deploy_support import Cluster, prepared_data, tiny_config
from privspk.privacy import Ledger

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:.*--insecure"),
]

FAST = {"stage-timeout": 30.0, "train-timeout": 120.0}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return prepared_data(tmp_path_factory.mktemp("deploy_data"))


def rounds_of(cfg) -> list[dict]:
    path = Path(cfg.out_dir) / cfg.name / "progress.jsonl"
    return [e["row"] for e in map(json.loads, path.read_text().splitlines()) if e["event"] == "round"]


def ledger_rows(cluster: Cluster, i: int, run: str) -> list[tuple]:
    with Ledger(cluster.node_dir(i) / run / "ledger.sqlite", readonly=True) as led:
        return sorted((r.round, r.status) for r in led.rows())


def test_sigkill_of_one_client_mid_round_the_round_completes_without_it(tmp_path, data_dir):
    cfg = tiny_config(data_dir, tmp_path / "runs", scheme="mask")
    with Cluster(tmp_path / "c", data_dir=data_dir, node_env={2: {"PRIVSPK_DEPLOY_KILL": "collect:1"}}) as cl:
        try:
            cl.submit(cfg, timeouts=FAST, wait=900)
        except Exception:
            print(cl.dump_logs())
            raise
        assert cl.procs["node2"].poll() is not None, "node2 was killed by SIGKILL"
        r1, r2 = rounds_of(cfg)
        assert r1["included"] == ["client0", "client1"] and "client2" in r1["dropped"] and not r1["skipped"]
        assert r2["included"] == ["client0", "client1"] and not r2["skipped"]
        for i in (0, 1):
            assert ledger_rows(cl, i, cfg.name) == [(1, "aggregated"), (2, "aggregated")]
        # node2 spent round 1 (recorded before it masked) but nothing of it was aggregated
        assert [s for r, s in ledger_rows(cl, 2, cfg.name)] == ["released"]


def test_two_clients_killed_the_round_fails_cleanly_nothing_opened(tmp_path, data_dir):
    cfg = tiny_config(data_dir, tmp_path / "runs", scheme="mask", rounds=1)
    kill = {"PRIVSPK_DEPLOY_KILL": "collect:1"}
    with Cluster(tmp_path / "c", data_dir=data_dir, node_env={1: kill, 2: kill}) as cl:
        cl.submit(cfg, timeouts=FAST, wait=900)
        (r1,) = rounds_of(cfg)
        assert r1["included"] == [] and r1["skipped"].startswith("aggregation failed, nothing opened")
        assert [s for r, s in ledger_rows(cl, 0, cfg.name)] == ["released"], "no row is marked aggregated"


def test_malformed_stage_replies_are_rejected_and_the_round_stays_intact(tmp_path, data_dir):
    cfg = tiny_config(data_dir, tmp_path / "runs", scheme="mask", rounds=1)
    with Cluster(tmp_path / "c", data_dir=data_dir, node_env={1: {"PRIVSPK_DEPLOY_TAMPER": "collect"}}) as cl:
        cl.submit(cfg, timeouts=FAST, wait=900)
        (r1,) = rounds_of(cfg)
        assert r1["included"] == ["client0", "client2"] and "client1" in r1["dropped"] and not r1["skipped"]
        assert ledger_rows(cl, 0, cfg.name) == [(1, "aggregated")]
        assert ledger_rows(cl, 1, cfg.name) == [(1, "released")]


def test_a_restarted_client_node_rejoins_from_its_ledger_and_never_counts_a_round_twice(tmp_path, data_dir):
    cfg = tiny_config(data_dir, tmp_path / "runs", scheme="mask", rounds=3)
    with Cluster(tmp_path / "c", data_dir=data_dir, node_env={2: {"PRIVSPK_DEPLOY_KILL": "collect:1"}}) as cl:
        cl.submit(cfg, timeouts=FAST, follow=False)
        deadline = time.monotonic() + 600
        while cl.procs["node2"].poll() is None:  # wait for the injected SIGKILL
            assert time.monotonic() < deadline
            time.sleep(0.5)
        cl.node_env[2] = {}
        cl.start_node(2)  # same run directory, same ledger and identity key
        from privspk.runtimes.flower.launch import follow_progress

        done = follow_progress(Path(cfg.out_dir) / cfg.name / "progress.jsonl", on_line=lambda _: None, wait=900)
        rows = rounds_of(cfg)
        assert rows[0]["included"] == ["client0", "client1"]
        assert "client2" in rows[-1]["included"], "the restarted node takes part again"
        statuses = ledger_rows(cl, 2, cfg.name)
        assert [r for r, _ in statuses] == sorted({r for r, _ in statuses}), "one row per round"
        assert statuses[0] == (1, "released") and statuses[-1][1] == "aggregated"
        assert done["epsilon_spent"]["client2"] == pytest.approx(done["epsilon_spent"]["client0"]) or \
            len(statuses) < 3


def test_a_restarted_superlink_resumes_the_run_from_the_saved_server_state(tmp_path, data_dir):
    cfg = tiny_config(data_dir, tmp_path / "runs", scheme="mask", rounds=3)
    progress = Path(cfg.out_dir) / cfg.name / "progress.jsonl"
    with Cluster(tmp_path / "c", data_dir=data_dir) as cl:
        cl.submit(cfg, timeouts=FAST, follow=False)
        deadline = time.monotonic() + 600
        while not (progress.exists() and '"round": 1' in progress.read_text()):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        cl.kill("superlink")  # the SuperLink, its SuperExec and the ServerApp
        cl.start_superlink()  # same port: the nodes reconnect
        done = cl.submit(cfg, resume=True, timeouts=FAST, wait=900)
        rows = rounds_of(cfg)
        assert rows[-1]["round"] == 3 and not rows[-1]["skipped"]
        for i in range(3):
            statuses = ledger_rows(cl, i, cfg.name)
            assert [r for r, _ in statuses] == [1, 2, 3][: len(statuses)], "no round recorded twice"
            assert statuses[0] == (1, "aggregated") and statuses[-1] == (3, "aggregated")
        assert len(set(done["epsilon_spent"].values())) == 1
