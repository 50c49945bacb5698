"""Attacks on a finished run's privacy ledger: `privspk ledger --check` must flag each one (issue 17).

The attacker edits ``ledger.sqlite`` with plain SQLite, as anyone with write access to the
run directory could, to make a client's spend look smaller:

* delete one row in the middle of a client's rounds and rewrite the later epsilons to match;
* raise a noise multiplier and rewrite every later epsilon so that they recompute exactly;
* cut the tail off a client's rows (its shown spend drops to an earlier round's).

Each attack first checks that every remaining row still recomputes to its recorded epsilon
(so a recompute-only check passes), then that ``ledger --check`` exits 1 naming the client.
The run is a real 6-round DP run with pairwise masks (the train path writes the chain, the
client signatures and the server's record of aggregated heads).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import privspk
from privspk.cli import main
from privspk.privacy import Ledger, Mechanism
from test_api import shared_data_dir, tiny_config

pytestmark = [
    pytest.mark.filterwarnings("ignore:Full backward hook is firing"),
    pytest.mark.filterwarnings("ignore:Secure RNG turned off"),
]

SRC = Path(privspk.__file__).resolve().parents[1]
ROUNDS = 6


@pytest.fixture(scope="module")
def honest_run(tmp_path_factory) -> Path:
    cfg = tiny_config(shared_data_dir(tmp_path_factory), tmp_path_factory.mktemp("tamper"), name="tamper",
                      rounds=ROUNDS, epsilon=6.0)
    return privspk.train(cfg, progress=False).run_dir


def _copy(run: Path, dst: Path) -> Path:
    out = dst / "run"
    shutil.copytree(run, out, ignore=shutil.ignore_patterns("clients", "encoder.pt", "server_state.pt"))
    return out


def _sql(ledger: Path, *statements: tuple[str, tuple]) -> None:
    conn = sqlite3.connect(ledger)  # the attacker's own connection: foreign keys are off by default
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    for sql, args in statements:
        if sql.split(" FROM ")[-1].split()[0] in tables or not sql.startswith("DELETE"):
            conn.execute(sql, args)
    conn.commit()
    conn.close()


def _delete_rows(ledger: Path, client: str, rounds: list[int]) -> None:
    """Remove the rows as a careful attacker would: the spend, its speakers and its chain entry."""
    stmts = []
    for r in rounds:
        for table in ("spend_speakers", "spend_chain", "spends"):
            stmts.append((f"DELETE FROM {table} WHERE client = ? AND round = ?", (client, r)))
    _sql(ledger, *stmts)


def _fix_epsilons(ledger: Path, client: str) -> None:
    """Rewrite the client's recorded epsilons to what its remaining rows recompute to."""
    with Ledger(ledger, readonly=True) as led:
        fixed = {c.round: c.recomputed for c in led.recompute() if c.client == client}
    _sql(ledger, *[("UPDATE spends SET epsilon_after = ? WHERE client = ? AND round = ?", (e, client, r))
                   for r, e in fixed.items()])


def _all_rows_recompute(ledger: Path) -> bool:
    with Ledger(ledger, readonly=True) as led:
        return all(c.ok for c in led.recompute())


def _check(run: Path, capsys) -> tuple[int, str]:
    rc = main(["ledger", str(run), "--check"])
    return rc, capsys.readouterr().out


def test_honest_ledger_passes(honest_run, tmp_path, capsys):
    run = _copy(honest_run, tmp_path)
    rc, out = _check(run, capsys)
    assert rc == 0, out
    assert f"all {3 * ROUNDS} rows recompute" in out


def test_deleting_a_clients_round_5_row_is_flagged(honest_run, tmp_path, capsys):
    run = _copy(honest_run, tmp_path)
    with Ledger(run / "ledger.sqlite", readonly=True) as led:
        before = led.epsilon("client1")
    _delete_rows(run / "ledger.sqlite", "client1", [5])
    _fix_epsilons(run / "ledger.sqlite", "client1")
    with Ledger(run / "ledger.sqlite", readonly=True) as led:
        assert [r.round for r in led.rows("client1")] == [1, 2, 3, 4, 6]
        assert led.epsilon("client1") < before
    assert _all_rows_recompute(run / "ledger.sqlite")
    rc, out = _check(run, capsys)
    assert rc == 1, out
    assert "client client1" in out and "round 6" in out


def test_deleting_the_round_5_spend_row_alone_is_flagged(honest_run, tmp_path, capsys):
    run = _copy(honest_run, tmp_path)
    _sql(run / "ledger.sqlite", ("DELETE FROM spend_speakers WHERE client = 'client1' AND round = 5", ()),
         ("DELETE FROM spends WHERE client = 'client1' AND round = 5", ()))
    _fix_epsilons(run / "ledger.sqlite", "client1")
    assert _all_rows_recompute(run / "ledger.sqlite")
    rc, out = _check(run, capsys)
    assert rc == 1, out
    assert "client client1" in out and "round 5" in out


def test_raising_a_noise_multiplier_with_matching_epsilons_is_flagged(honest_run, tmp_path, capsys):
    run = _copy(honest_run, tmp_path)
    ledger = run / "ledger.sqlite"
    with Ledger(ledger, readonly=True) as led:
        sigma = led.row("client0", 3).noise_multiplier
        spent = led.epsilon("client0")
    _sql(ledger, ("UPDATE spends SET noise_multiplier = ? WHERE client = 'client0' AND round = 3", (2 * sigma,)))
    _fix_epsilons(ledger, "client0")  # every epsilon recomputed from the forged inputs...
    with Ledger(ledger, readonly=True) as led:
        assert led.epsilon("client0") < spent  # ...so the shown spend drops
    assert _all_rows_recompute(ledger)
    rc, out = _check(run, capsys)
    assert rc == 1, out
    assert "client client0" in out and "round 3" in out


def test_truncating_a_clients_tail_is_flagged(honest_run, tmp_path, capsys):
    run = _copy(honest_run, tmp_path)
    with Ledger(run / "ledger.sqlite", readonly=True) as led:
        before = led.epsilon("client2")
    _delete_rows(run / "ledger.sqlite", "client2", [5, 6])
    with Ledger(run / "ledger.sqlite", readonly=True) as led:
        assert led.epsilon("client2") < before
    assert _all_rows_recompute(run / "ledger.sqlite")
    rc, out = _check(run, capsys)
    assert rc == 1, out
    assert "client client2" in out and "round 5" in out and "round 6" in out


# --------------------------------------------------------------------------- a read-only copy
def _digest_tree(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _check_read_only(folder: Path) -> subprocess.CompletedProcess:
    """Run `privspk ledger FOLDER --check` where FOLDER cannot be written.

    Not root: chmod a-w on the files and the folder. Root ignores permission bits, so there the
    command runs in a private mount namespace where FOLDER is bind-mounted read-only.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, "-m", "privspk.cli", "ledger", str(folder), "--check"]
    for p in folder.iterdir():
        p.chmod(0o444)
    folder.chmod(0o555)
    try:
        if os.geteuid() != 0:
            return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        unshare = shutil.which("unshare")
        probe = unshare and subprocess.run(
            [unshare, "-m", "sh", "-c", f"mount --bind '{folder}' '{folder}' && mount -o remount,bind,ro '{folder}'"
             f" && ! touch '{folder}/probe' 2>/dev/null"], capture_output=True, timeout=60)
        if not probe or probe.returncode != 0:
            pytest.skip("running as root without a way to mount a read-only folder (unshare -m)")
        script = (f"mount --bind '{folder}' '{folder}' && mount -o remount,bind,ro '{folder}' && exec "
                  + " ".join(f"'{c}'" for c in cmd))
        return subprocess.run([unshare, "-m", "sh", "-c", script], env=env, capture_output=True, text=True,
                              timeout=300)
    finally:
        folder.chmod(0o755)


@pytest.mark.parametrize("tampered", [False, True])
def test_check_works_on_a_read_only_copy(honest_run, tampered):
    folder = Path(tempfile.mkdtemp(prefix="privspk_ro_"))
    try:
        for p in honest_run.iterdir():
            if p.is_file() and (p.name.startswith("ledger.sqlite") or p.suffix == ".json"):
                shutil.copy2(p, folder / p.name)
        if tampered:
            _delete_rows(folder / "ledger.sqlite", "client2", [6])
        before = _digest_tree(folder)
        proc = _check_read_only(folder)
        assert proc.returncode == (1 if tampered else 0), proc.stdout[-2000:] + proc.stderr[-2000:]
        assert "error" not in proc.stderr
        assert _digest_tree(folder) == before, "the check must not write anything"
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder, ignore_errors=True)


# --------------------------------------------------------------------------- old format, forged heads (fast)
def _spend(round_: int, eps: float):
    from privspk.privacy.ledger import Spend

    mech = Mechanism(noise_multiplier=1.0, sample_rate=0.1, steps=5, delta=1e-5, clip=1.0)
    return Spend(client="c0", round=round_, mechanism=mech, epsilon_after=eps, scheme="mask")


def test_old_format_ledger_is_readable_but_never_written_and_never_verified(tmp_path, capsys):
    from privspk.errors import LedgerError

    path = tmp_path / "run" / "ledger.sqlite"
    with Ledger(path, run_id="old", settings={}) as led:
        led.record_spend(_spend(1, 0.5))
    _sql(path, ("DROP TABLE spend_chain", ()))  # what a ledger written before the hash chain looks like
    with pytest.raises(LedgerError, match="older privspk without a hash chain.*left untouched"):
        Ledger(path, run_id="old", settings={})
    with Ledger(path, readonly=True) as led:
        assert [r.round for r in led.rows()] == [1]
        assert "predates tamper evidence" in str(led.verify_chain()[0])
    rc, out = _check(path.parent, capsys)
    assert rc == 1 and "no hash chain" in out


def test_an_empty_old_format_ledger_gains_the_chain(tmp_path):
    path = tmp_path / "ledger.sqlite"
    Ledger(path, run_id="old", settings={}).close()
    _sql(path, ("DROP TABLE spend_chain", ()))
    with Ledger(path, run_id="old", settings={}) as led:
        led.record_spend(_spend(1, 0.5))
        assert led.verify_chain() == [] and led.signed_head("c0", 1).seq == 1


def test_server_record_refuses_a_head_signed_with_another_key(tmp_path):
    from privspk.errors import LedgerError
    from privspk.privacy.ledger import AggregatedHeads
    from privspk.secagg.keys import IdentityKey

    key = IdentityKey.generate()
    with Ledger(tmp_path / "l.sqlite", run_id="r", settings={}) as led:
        led.record_spend(_spend(1, 0.5), signer=key)
        led.record_spend(_spend(2, 0.7), signer=key)
        rec = AggregatedHeads(tmp_path / "heads.json", run_id="r")
        rec.add(1, [led.signed_head("c0", 1)])
        forged = dataclasses.replace(led.signed_head("c0", 2), public_key=IdentityKey.generate().public_bytes())
        with pytest.raises(LedgerError, match="chain head refused"):
            rec.add(2, [forged])
        assert AggregatedHeads.load(rec.path).rounds.keys() == {1}, "nothing written for the refused round"


def test_a_client_signs_all_its_rows_or_none(tmp_path):
    from privspk.errors import LedgerError
    from privspk.secagg.keys import IdentityKey

    with Ledger(tmp_path / "l.sqlite", run_id="r", settings={}) as led:
        led.record_spend(_spend(1, 0.5), signer=IdentityKey.generate())
        with pytest.raises(LedgerError, match="signs all its chain heads or none"):
            led.record_spend(_spend(2, 0.7))
        with pytest.raises(LedgerError, match="another identity key"):
            led.record_spend(_spend(2, 0.7), signer=IdentityKey.generate())
        assert [r.round for r in led.rows()] == [1]
