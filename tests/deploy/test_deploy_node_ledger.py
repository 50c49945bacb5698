"""A node checks its own ledger against the server's record: ``privspk ledger --check --server-record --client``.

In a deployed run each node's ledger holds its own client only, while the server's
``aggregated_heads.json`` holds every client's signed heads. ``--client`` cuts the
record down to that client, so an honest node passes, and a node whose tail was cut
off is still flagged. Without it, the other clients of the record count as missing
and the output says to pass ``--client``.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from privspk.cli import main
from privspk.privacy import Ledger, epsilon
from privspk.privacy.mechanism import Mechanism
from privspk.privacy.ledger import AggregatedHeads, Spend
from privspk.secagg.keys import IdentityKey

ROUNDS = 3
SIGMA, Q, STEPS = 2.0, 0.1, 4


def _spend(client: str, round_: int) -> Spend:
    return Spend(client=client, round=round_, scheme="mask",
                 mechanism=Mechanism(noise_multiplier=SIGMA, sample_rate=Q, steps=STEPS, delta=1e-5, clip=1.0,
                                     unit="utterance", accountant="rdp"),
                 epsilon_after=epsilon([(SIGMA, Q, STEPS)] * round_, delta=1e-5))


@pytest.fixture()
def deployed(tmp_path) -> tuple[Path, Path]:
    """Two nodes' own ledgers (one client each) and the server's record of both, as a deployed run leaves them."""
    record = AggregatedHeads(tmp_path / "server" / "aggregated_heads.json", run_id="dep")
    ledgers = {}
    for cid in ("client0", "client1"):
        key = IdentityKey.generate()
        path = tmp_path / cid / "dep" / "ledger.sqlite"
        ledgers[cid] = Ledger(path, run_id="dep", settings={})
        for r in range(1, ROUNDS + 1):
            ledgers[cid].record_spend(_spend(cid, r), signer=key)
    for r in range(1, ROUNDS + 1):
        record.add(r, [ledgers[c].signed_head(c, r) for c in ledgers])
    for led in ledgers.values():
        led.close()
    return tmp_path / "client0" / "dep", record.path


def test_a_node_checks_its_own_client_against_the_servers_record(deployed, capsys):
    node_run, record = deployed
    rc = main(["ledger", str(node_run), "--check", "--server-record", str(record), "--client", "client0"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert f"all {ROUNDS} rows recompute" in out
    assert f"matches the server's record of {ROUNDS} aggregated round(s) of client0" in out
    assert "TAMPERED" not in out


def test_without_the_client_filter_the_other_clients_count_as_missing_and_the_hint_says_so(deployed, capsys):
    node_run, record = deployed
    rc = main(["ledger", str(node_run), "--check", "--server-record", str(record)])
    out = capsys.readouterr().out
    assert rc == 1
    assert "TAMPERED: client client1" in out and "TAMPERED: client client0" not in out
    assert "check that client with --client ID" in out


def test_a_truncated_node_ledger_is_still_flagged_with_the_client_filter(deployed, tmp_path, capsys):
    node_run, record = deployed
    cut = tmp_path / "cut" / "dep"
    shutil.copytree(node_run, cut)
    conn = sqlite3.connect(cut / "ledger.sqlite")  # the attacker drops the last round: spend, speakers, chain
    for table in ("spend_speakers", "spend_chain", "spends"):
        conn.execute(f"DELETE FROM {table} WHERE client = ? AND round = ?", ("client0", ROUNDS))
    conn.commit()
    conn.close()
    rc = main(["ledger", str(cut), "--check", "--server-record", str(record), "--client", "client0"])
    out = capsys.readouterr().out
    assert rc == 1
    assert f"TAMPERED: client client0: the server aggregated round {ROUNDS}" in out


def test_a_client_without_rows_in_this_ledger_is_an_error(deployed, capsys):
    node_run, record = deployed
    rc = main(["ledger", str(node_run), "--check", "--server-record", str(record), "--client", "client1"])
    out = capsys.readouterr().out
    assert rc == 1 and "no row of client 'client1' in this ledger (clients: client0)" in out
