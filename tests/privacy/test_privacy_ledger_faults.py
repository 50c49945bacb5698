"""Fault injection at the ledger level: kill a client or server process at each point and resume.

Invariants checked after every crash (before resuming) and after the resume:

* every update that left a client (a file in the outbox) has a committed spend
  whose digest is that update's - no release without a recorded spend, and no
  second, different release under one spend;
* no (client, round) is recorded twice, and the resumed run ends with exactly one
  row per (client, round), all aggregated, with the epsilons of exactly R rounds.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import privspk.privacy
from privspk.privacy.ledger import Ledger, digest_update

WORKER = Path(__file__).with_name("privacy_ledger_worker.py")
SRC = Path(privspk.privacy.__file__).resolve().parents[2]
RUN = "run-faults"
ROUNDS = 3


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _worker(tmp: Path, role: str, *extra: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable, str(WORKER), role, "--db", str(tmp / "ledger.sqlite"), "--run", RUN,
        "--outbox", str(tmp / "outbox"), "--store", str(tmp / "store"), "--rounds", str(ROUNDS), *extra,
    ]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"worker {role} {extra} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc


def _raw_rows(db: Path) -> list[tuple[str, int, str, str | None]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT client, round, status, update_digest FROM spends ORDER BY client, round").fetchall()


def _check_invariants(tmp: Path) -> None:
    db = tmp / "ledger.sqlite"
    rows = _raw_rows(db) if db.exists() else []
    keys = [(c, r) for c, r, _, _ in rows]
    assert len(keys) == len(set(keys)), f"a (client, round) was recorded twice: {keys}"
    spends = {(c, r): d for c, r, _, d in rows}
    outbox = tmp / "outbox"
    for f in sorted(outbox.glob("c*-*.bin")) if outbox.exists() else []:
        client, rnd = f.stem.rsplit("-", 1)
        key = (client, int(rnd))
        assert key in spends, f"update {f.name} left the client without a committed spend"
        assert spends[key] == digest_update(f.read_bytes()), f"update {f.name} is not the one its spend covers"


def _check_complete(tmp: Path, clients: list[str]) -> None:
    with Ledger(tmp / "ledger.sqlite", run_id=RUN, readonly=True) as led:
        rows = led.rows()
        assert [(r.client, r.round) for r in rows] == [(c, k) for c in clients for k in range(1, ROUNDS + 1)]
        assert all(r.status == "aggregated" for r in rows), [r.status for r in rows]
        for c in clients:
            assert led.epsilon(c) == pytest.approx(0.25 * ROUNDS)
            assert [r.epsilon_after for r in led.rows(c)] == pytest.approx([0.25 * k for k in range(1, ROUNDS + 1)])
    sums = [json.loads((tmp / "outbox" / f"sum-{k}.json").read_text())["round"] for k in range(1, ROUNDS + 1)]
    assert sums == list(range(1, ROUNDS + 1))


CLIENT_POINTS = ["before_spend", "after_spend", "after_send", "after_release"]
# SIGKILL at every point; os._exit (no cleanup either, but from inside Python) at the riskiest one
CASES = [(p, "sigkill") for p in CLIENT_POINTS] + [("after_spend", "exit")]


@pytest.mark.parametrize(("point", "kill"), CASES)
def test_client_killed_at_each_point_resumes_without_double_count(tmp_path: Path, point: str, kill: str) -> None:
    crashed = _worker(tmp_path, "client", "--client", "c0", "--crash", f"2:{point}", "--kill", kill, check=False)
    assert crashed.returncode != 0, "the worker was supposed to die"
    _check_invariants(tmp_path)
    before = {(c, r): (s, d) for c, r, s, d in _raw_rows(tmp_path / "ledger.sqlite")}
    if point == "before_spend":
        assert ("c0", 2) not in before  # nothing recorded, nothing sent
        assert not (tmp_path / "outbox" / "c0-2.bin").exists()
    else:
        assert before[("c0", 2)][0] == ("released" if point == "after_release" else "spent")

    _worker(tmp_path, "client", "--client", "c0")  # resume
    _check_invariants(tmp_path)
    after = {(c, r): (s, d) for c, r, s, d in _raw_rows(tmp_path / "ledger.sqlite")}
    if point != "before_spend":
        # the spend recorded before the crash is the one that was (re-)released: same digest, one row
        assert after[("c0", 2)][1] == before[("c0", 2)][1]
    _worker(tmp_path, "server", "--clients", "c0")
    _check_complete(tmp_path, ["c0"])


@pytest.mark.parametrize("kill", ["sigkill"])
def test_server_killed_during_aggregation_resumes(tmp_path: Path, kill: str) -> None:
    for c in ("c0", "c1"):
        _worker(tmp_path, "client", "--client", c)
    crashed = _worker(tmp_path, "server", "--clients", "c0,c1", "--crash", "2:during_aggregation", "--kill", kill,
                      check=False)
    assert crashed.returncode != 0
    _check_invariants(tmp_path)
    statuses = {(c, r): s for c, r, s, _ in _raw_rows(tmp_path / "ledger.sqlite")}
    assert statuses[("c0", 1)] == statuses[("c1", 1)] == "aggregated"
    assert statuses[("c0", 2)] == statuses[("c1", 2)] == "released"  # all or none of a round
    first_sum = (tmp_path / "outbox" / "sum-2.json").read_bytes()
    _worker(tmp_path, "server", "--clients", "c0,c1")
    assert (tmp_path / "outbox" / "sum-2.json").read_bytes() == first_sum  # same updates, same sum
    _check_complete(tmp_path, ["c0", "c1"])


def test_server_refuses_update_without_spend(tmp_path: Path) -> None:
    _worker(tmp_path, "client", "--client", "c0")
    # a forged update for round 2 appears in the outbox: the server must refuse it
    (tmp_path / "outbox" / "c0-2.bin").write_bytes(b"forged")
    proc = _worker(tmp_path, "server", "--clients", "c0", check=False)
    assert proc.returncode != 0
    assert "differs from the one its spend was recorded for" in proc.stderr
    with Ledger(tmp_path / "ledger.sqlite", run_id=RUN, readonly=True) as led:
        assert led.row("c0", 2).status == "released"  # not aggregated


@pytest.mark.parametrize("kill", ["sigkill"])
def test_kill_inside_an_uncommitted_transaction_leaves_no_spend(tmp_path: Path, kill: str) -> None:
    _worker(tmp_path, "client", "--client", "c0")
    crashed = _worker(tmp_path, "torn", "--client", "c0", "--kill", kill, check=False)
    assert crashed.returncode != 0
    with Ledger(tmp_path / "ledger.sqlite", run_id=RUN, settings=None) as led:
        assert [r.round for r in led.rows("c0")] == [1, 2, 3]  # the torn round 99 is gone
        assert led.epsilon("c0") == pytest.approx(0.75)


def test_random_sigkills_from_outside(tmp_path: Path) -> None:
    """SIGKILL the client from the parent at random moments of the protocol until it completes."""
    rng = random.Random(20261125)
    rounds = 8
    cmd = [
        sys.executable, str(WORKER), "client", "--db", str(tmp_path / "ledger.sqlite"), "--run", RUN,
        "--outbox", str(tmp_path / "outbox"), "--store", str(tmp_path / "store"), "--rounds", str(rounds),
        "--client", "c0", "--pause", "0.02",
    ]
    kills = 0
    for _attempt in range(60):
        proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        ready = proc.stdout.readline().strip() == "ready"  # imports done, ledger open: the protocol starts
        if ready:
            try:
                proc.wait(timeout=rng.uniform(0.02, 0.3))
            except subprocess.TimeoutExpired:
                proc.kill()
                kills += 1
        _, err = proc.communicate()
        _check_invariants(tmp_path)
        if proc.returncode == 0:
            break
        assert proc.returncode < 0, err[-2000:]  # only our kills may stop it
    else:
        pytest.fail("the client never completed")
    rows = _raw_rows(tmp_path / "ledger.sqlite")
    assert [(c, r) for c, r, _, _ in rows] == [("c0", k) for k in range(1, rounds + 1)]
    assert all(s == "released" for _, _, s, _ in rows)
    assert kills >= 2, f"only {kills} kill(s) landed; the test did not test much"
