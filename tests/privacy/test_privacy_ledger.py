from __future__ import annotations

import csv
import hashlib
import itertools
import json
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from privspk.errors import ConfigError, LedgerError
from privspk.privacy.accounting import RoundSpend, SpendStep, rounds_epsilon
from privspk.privacy.mechanism import MECHANISM_FIELDS, Mechanism
from privspk.privacy.distributed import ClientLevelMechanism, ClientLevelRound, client_level_epsilon
from privspk.privacy.ledger import (
    EXPORT_COLUMNS,
    STATUSES,
    ClientLevelSpend,
    Ledger,
    Spend,
    digest_update,
)

SETTINGS = {"budget": {"epsilon": 8.0, "delta": 1e-5, "unit": "utterance"}, "accountant": "rdp", "clip": 1.0}


def spend(client: str = "c0", rnd: int = 1, **overrides: object) -> Spend:
    """A spend; ``overrides`` may name the mechanism's fields as well as the spend's own."""
    mech: dict[str, object] = {"unit": "utterance", "accountant": "rdp", "noise_multiplier": 1.1, "sample_rate": 0.05,
                               "steps": 20, "delta": 1e-5, "clip": 1.0}
    fields: dict[str, object] = {"client": client, "round": rnd, "epsilon_after": 0.5 * rnd, "scheme": "mask"}
    for key, value in overrides.items():
        (mech if key in MECHANISM_FIELDS else fields)[key] = value
    return Spend(mechanism=Mechanism(**mech), **fields)  # type: ignore[arg-type]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def ledger(tmp_path: Path):
    led = Ledger(tmp_path / "run" / "ledger.sqlite", run_id="r1", settings=SETTINGS)
    yield led
    led.close()


# --- creation and reopening -----------------------------------------------------------------------------------


def test_new_ledger_is_wal_and_reopens(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "ledger.sqlite"
    with Ledger(path, run_id="r1", settings=SETTINGS) as led:
        led.record_spend(spend())
        assert led.run_id == "r1" and led.settings == SETTINGS and led.path == path
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert dict(raw.execute("SELECT key, value FROM meta")) == {"format": "privspk-ledger", "schema_version": "2"}
    with Ledger(path, run_id="r1", settings=SETTINGS) as again:
        assert [r.round for r in again.rows()] == [1]
    with Ledger(path, readonly=True) as ro:  # read-only inspection needs neither run id nor settings
        assert ro.run_id == "r1" and ro.epsilon("c0") == 0.5


def test_record_spend_round_trips_every_field(ledger: Ledger) -> None:
    mech = ClientLevelMechanism(noise="dgauss", share_sigma=40.0, shares=5, l2_sensitivity=120.5,
                                l1_sensitivity=900.25, dim=64)
    cl = ClientLevelSpend(mechanism=mech, sample_rate=0.3, delta=1e-6, epsilon_after=0.75)
    s = spend(speakers=("spk2", "spk1"), client_level=cl, update_digest=digest_update(b"update"))
    row = ledger.record_spend(s)
    assert row.status == "spent" and row.run_id == "r1" and row.note is None
    assert row.created_at == row.updated_at and row.created_at.endswith("+00:00")
    stored = ledger.row("c0", 1)
    assert stored == row
    for name in ("client", "round", "unit", "accountant", "noise_multiplier", "sample_rate", "steps", "delta",
                 "epsilon_after", "clip", "scheme", "update_digest", "client_level"):
        assert getattr(stored, name) == getattr(s, name), name
    assert stored.speakers == ("spk1", "spk2")
    d = stored.to_dict()
    assert tuple(d) == EXPORT_COLUMNS
    assert d["client_noise_multiplier"] == mech.noise_multiplier and d["client_mechanism"] == mech.to_dict()


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(
    sigma=st.floats(min_value=1e-3, max_value=1e3),
    q=st.floats(min_value=1e-9, max_value=1.0),
    eps=st.floats(min_value=0.0, max_value=1e4),
    delta=st.floats(min_value=1e-15, max_value=0.5),
)
def test_floats_are_stored_exactly(tmp_path_factory: pytest.TempPathFactory, sigma: float, q: float, eps: float,
                                   delta: float) -> None:
    path = tmp_path_factory.mktemp("exact") / "l.sqlite"
    with Ledger(path, run_id="r", settings={}) as led:
        led.record_spend(spend(noise_multiplier=sigma, sample_rate=q, epsilon_after=eps, delta=delta))
    with Ledger(path, readonly=True) as led:
        row = led.rows()[0]
    assert (row.noise_multiplier, row.sample_rate, row.epsilon_after, row.delta) == (sigma, q, eps, delta)


# --- refusing to count twice or inconsistently -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("second", "needle"),
    [
        (spend(rnd=2), "already has a spend recorded (status spent); a round is never counted twice"),
        (spend(rnd=1, epsilon_after=5.0), "rounds must increase, the client's last recorded round is 2"),
        (spend(rnd=3, unit="speaker"), "unit differ from the client's earlier rounds"),
        (spend(rnd=3, accountant="prv"), "accountant differ from the client's earlier rounds"),
        (spend(rnd=3, delta=1e-6), "delta differ from the client's earlier rounds"),
        (spend(rnd=3, epsilon_after=0.1), "is below the previous"),
    ],
)
def test_refused_spends_write_nothing(ledger: Ledger, second: Spend, needle: str) -> None:
    ledger.record_spend(spend(rnd=2))
    before = ledger.rows()
    with pytest.raises(LedgerError) as info:
        ledger.record_spend(second)
    assert needle in str(info.value) and str(ledger.path) in str(info.value)
    assert ledger.rows() == before


def test_client_level_all_or_none(ledger: Ledger) -> None:
    mech = ClientLevelMechanism(noise="skellam", share_sigma=40.0, shares=5, l2_sensitivity=120.0,
                                l1_sensitivity=900.0, dim=64)
    ledger.record_spend(spend(rnd=1))
    with pytest.raises(LedgerError, match="client-level DP must be used in every round of a client or in none"):
        ledger.record_spend(spend(rnd=2, client_level=ClientLevelSpend(mechanism=mech, sample_rate=1.0,
                                                                        delta=1e-5, epsilon_after=1.0)))


def test_clients_are_independent(ledger: Ledger) -> None:
    ledger.record_spend(spend("a", 1))
    ledger.record_spend(spend("b", 1))
    ledger.record_spend(spend("a", 2))
    assert ledger.clients() == ["a", "b"]
    assert [(r.client, r.round) for r in ledger.rows()] == [("a", 1), ("a", 2), ("b", 1)]
    assert ledger.last_round("a") == 2 and ledger.last_round("b") == 1 and ledger.last_round("z") == 0
    assert ledger.epsilon("a") == 1.0 and ledger.epsilon("z") == 0.0
    assert ledger.history("a") == (spend().step, spend().step)


# --- status machine -------------------------------------------------------------------------------------------

ALLOWED = {
    ("spent", "released"), ("spent", "aggregated"), ("spent", "abandoned"),
    ("released", "aggregated"), ("released", "abandoned"),
}


def _move(led: Ledger, client: str, rnd: int, status: str) -> None:
    if status == "released":
        led.mark_released(client, rnd)
    elif status == "aggregated":
        led.mark_aggregated(rnd, [client])
    elif status == "abandoned":
        led.mark_abandoned(client, rnd, reason="server dropped the round")


# 'spent' is only ever set by record_spend, so it is never a target
@pytest.mark.parametrize(("start", "target"), list(itertools.product(STATUSES, STATUSES[1:])))
def test_every_status_transition(ledger: Ledger, start: str, target: str) -> None:
    ledger.record_spend(spend())
    path = {"spent": [], "released": ["released"], "aggregated": ["aggregated"], "abandoned": ["abandoned"]}[start]
    for step in path:
        _move(ledger, "c0", 1, step)
    assert ledger.row("c0", 1).status == start
    if (start, target) in ALLOWED or start == target:
        _move(ledger, "c0", 1, target)
        assert ledger.row("c0", 1).status == target
    else:
        with pytest.raises(LedgerError, match=f"is '{start}'; it cannot become '{target}'"):
            _move(ledger, "c0", 1, target)
        assert ledger.row("c0", 1).status == start


def test_marks_need_a_recorded_spend(ledger: Ledger) -> None:
    for call in (lambda: ledger.mark_released("c0", 1), lambda: ledger.mark_aggregated(1, ["c0"]),
                 lambda: ledger.mark_abandoned("c0", 1, reason="x")):
        with pytest.raises(LedgerError, match="has no recorded spend"):
            call()


def test_mark_aggregated_is_all_or_nothing(ledger: Ledger) -> None:
    ledger.record_spend(spend("a"))
    ledger.mark_released("a", 1)
    with pytest.raises(LedgerError, match="client b round 1 has no recorded spend"):
        ledger.mark_aggregated(1, ["a", "b"])
    assert ledger.row("a", 1).status == "released"


def test_abandoned_rows_still_count_and_keep_the_reason(ledger: Ledger) -> None:
    ledger.record_spend(spend())
    row = ledger.mark_abandoned("c0", 1, reason="too few survivors")
    assert row.status == "abandoned" and row.note == "too few survivors"
    assert ledger.epsilon("c0") == 0.5  # a spend is never refunded
    with pytest.raises(LedgerError, match="abandoned; refuse its update"):
        ledger.check_update("c0", 1, update_digest=digest_update(b"x"))


def test_a_spend_covers_one_exact_update(ledger: Ledger) -> None:
    update = np.arange(5, dtype=np.int64)
    ledger.record_spend(spend(update_digest=digest_update(update)))
    with pytest.raises(LedgerError, match="re-send the recorded update, never a fresh one"):
        ledger.mark_released("c0", 1, update_digest=digest_update(update + 1))
    assert ledger.row("c0", 1).status == "spent"
    ledger.mark_released("c0", 1, update_digest=digest_update(update))
    ledger.mark_released("c0", 1, update_digest=digest_update(update))  # a re-send of the same bytes is fine
    assert ledger.check_update("c0", 1, update_digest=digest_update(update)).status == "released"
    with pytest.raises(LedgerError, match="update differs from the one its spend was recorded for"):
        ledger.check_update("c0", 1, update_digest=digest_update(update * 2))
    with pytest.raises(LedgerError, match="no spend recorded for this update"):
        ledger.check_update("c0", 2, update_digest=digest_update(update))


def test_pending_lists_spent_rows(ledger: Ledger) -> None:
    ledger.record_spend(spend("a", 1))
    ledger.record_spend(spend("b", 1))
    ledger.mark_released("a", 1)
    assert [(r.client, r.round) for r in ledger.pending()] == [("b", 1)]
    assert ledger.pending("a") == []


def test_digest_covers_dtype_and_shape() -> None:
    a = np.zeros((2, 3), dtype=np.int64)
    assert digest_update(a) == digest_update(a.copy())
    assert digest_update(a) != digest_update(a.reshape(3, 2))
    assert digest_update(a) != digest_update(a.astype(np.int32))
    assert digest_update(b"abc") == hashlib.sha256(b"abc").hexdigest()
    with pytest.raises(ConfigError, match="bytes or a numpy array"):
        digest_update("abc")  # type: ignore[arg-type]


# --- bad files and bad opens: a clear error, nothing overwritten ----------------------------------------------


def test_changed_settings_name_the_keys_and_write_nothing(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    with Ledger(path, run_id="r1", settings=SETTINGS) as led:
        led.record_spend(spend())
    digest = sha(path)
    changed = {**SETTINGS, "budget": {**SETTINGS["budget"], "epsilon": 4.0}, "scheme": "bfv"}
    with pytest.raises(LedgerError) as info:
        Ledger(path, run_id="r1", settings=changed)
    assert "keys: budget.epsilon, scheme" in str(info.value) and str(path) in str(info.value)
    assert sha(path) == digest


def test_ledger_of_another_run(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    Ledger(path, run_id="r1", settings=SETTINGS).close()
    digest = sha(path)
    with pytest.raises(LedgerError, match="belongs to run 'r1', not 'r2'"):
        Ledger(path, run_id="r2", settings=SETTINGS)
    assert sha(path) == digest


def _foreign_sqlite(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        conn.execute("INSERT INTO notes (text) VALUES ('keep me')")


def _truncated_ledger(path: Path) -> None:
    with Ledger(path, run_id="r1", settings=SETTINGS) as led:
        for k in range(1, 40):
            led.record_spend(spend(rnd=k, speakers=tuple(f"s{i}" for i in range(30))))
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = path.read_bytes()
    for extra in (Path(f"{path}-wal"), Path(f"{path}-shm")):
        extra.unlink(missing_ok=True)
    path.write_bytes(data[: len(data) // 2])


def _scribbled_ledger(path: Path) -> None:
    _truncated_ledger(path)
    data = bytearray(path.read_bytes())
    data[4096 + 100 : 4096 + 3000] = b"\xff" * 2900  # garbage over the second page
    path.write_bytes(bytes(data))


def _wrong_version(path: Path) -> None:
    Ledger(path, run_id="r1", settings=SETTINGS).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")


def _wrong_columns(path: Path) -> None:
    Ledger(path, run_id="r1", settings=SETTINGS).close()
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE spends ADD COLUMN extra TEXT")


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda p: p.write_text("round,epsilon\n1,0.5\n"), "not a readable privspk ledger"),
        (lambda p: p.write_bytes(bytes(range(256)) * 64), "not a readable privspk ledger"),
        (_foreign_sqlite, "an SQLite file but not a privspk ledger (no 'meta' table; tables: notes)"),
        (_truncated_ledger, "not a readable privspk ledger (database disk image is malformed)"),
        (_scribbled_ledger, "not a readable privspk ledger (database disk image is malformed)"),
        (_wrong_version, "ledger schema version '99', this privspk reads 2"),
        (_wrong_columns, "table spends has columns"),
    ],
)
def test_bad_files_raise_naming_the_file_and_stay_untouched(tmp_path: Path, make, needle: str) -> None:
    path = tmp_path / "ledger.sqlite"
    make(path)
    digest = sha(path)
    for kwargs in ({"run_id": "r1", "settings": SETTINGS}, {"readonly": True}):
        with pytest.raises(LedgerError) as info:
            Ledger(path, **kwargs)  # type: ignore[arg-type]
        assert str(path) in str(info.value) and needle in str(info.value)
        assert sha(path) == digest


def test_foreign_database_keeps_its_journal_mode(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    _foreign_sqlite(path)
    with pytest.raises(LedgerError):
        Ledger(path, run_id="r1", settings=SETTINGS)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert conn.execute("SELECT text FROM notes").fetchall() == [("keep me",)]


def test_missing_file_and_missing_identity(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="no ledger file here"):
        Ledger(tmp_path / "nope.sqlite", run_id="r", settings={}, create_if_missing=False)
    with pytest.raises(LedgerError, match="no ledger file here"):
        Ledger(tmp_path / "nope.sqlite", readonly=True)
    with pytest.raises(ConfigError, match="needs run_id and settings"):
        Ledger(tmp_path / "new.sqlite", run_id="r")
    assert not (tmp_path / "nope.sqlite").exists() and not (tmp_path / "new.sqlite").exists()
    with pytest.raises(LedgerError, match="is a folder"):
        Ledger(tmp_path, run_id="r", settings={})
    with pytest.raises(ConfigError, match="plain JSON"):
        Ledger(tmp_path / "x.sqlite", run_id="r", settings={"sigma": float("nan")})


def test_empty_file_becomes_a_ledger(tmp_path: Path) -> None:
    path = tmp_path / "empty.sqlite"
    path.touch()  # e.g. left by a crash before the first commit
    with pytest.raises(LedgerError, match="an empty database"):
        Ledger(path, readonly=True)
    with Ledger(path, run_id="r", settings={}) as led:
        assert led.rows() == []


def test_readonly_refuses_writes(ledger: Ledger) -> None:
    ledger.record_spend(spend())
    with Ledger(ledger.path, readonly=True) as ro:
        with pytest.raises(LedgerError, match="opened read-only"):
            ro.mark_released("c0", 1)
    assert ledger.row("c0", 1).status == "spent"


HOLD_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA journal_mode=DELETE" if sys.argv[2] == "delete" else "SELECT 1")
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
conn.execute("ROLLBACK")
"""


def _hold_lock(path: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path), "wal"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_locked_ledger_says_another_process_holds_it(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    with Ledger(path, run_id="r1", settings=SETTINGS) as led:
        led.record_spend(spend())
    holder = _hold_lock(path)
    try:
        with Ledger(path, run_id="r1", settings=SETTINGS, timeout_s=0.2) as led:
            assert led.epsilon("c0") == 0.5  # WAL readers are not blocked
            with pytest.raises(LedgerError) as info:
                led.record_spend(spend(rnd=2))
            msg = str(info.value)
            assert "locked - another process holds it" in msg and str(path) in msg and "0.2 s" in msg
    finally:
        holder.communicate("")
    with Ledger(path, run_id="r1", settings=SETTINGS) as led:
        assert [r.round for r in led.rows()] == [1]
        led.record_spend(spend(rnd=2))  # works once the other process is done


def test_threads_share_one_ledger(ledger: Ledger) -> None:
    def work(client: str) -> None:
        for k in range(1, 6):
            ledger.record_spend(spend(client, k))
            ledger.mark_released(client, k)

    threads = [threading.Thread(target=work, args=(f"c{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ledger.rows()) == 20 and all(r.status == "released" for r in ledger.rows())


# --- recompute, export ----------------------------------------------------------------------------------------

STEP = SpendStep(noise_multiplier=1.2, sample_rate=0.05, steps=30)


def _honest_rows(led: Ledger) -> None:
    rounds: list[RoundSpend] = []
    for k, spk in zip(range(1, 4), [("a", "b"), ("a",), ()]):
        rounds.append(RoundSpend(round=k, step=STEP, speakers=spk))
        led.record_spend(spend("c0", k, noise_multiplier=STEP.noise_multiplier, sample_rate=STEP.sample_rate,
                               steps=STEP.steps, speakers=spk, epsilon_after=rounds_epsilon(rounds, delta=1e-5)))
    mech = ClientLevelMechanism(noise="skellam", share_sigma=30.0, shares=8, l2_sensitivity=70.0,
                                l1_sensitivity=500.0, dim=50)
    cl_rounds: list[ClientLevelRound] = []
    for k in (1, 3):
        cl_rounds.append(ClientLevelRound(round=k, mechanism=mech, sample_rate=0.5))
        cl = ClientLevelSpend(mechanism=mech, sample_rate=0.5, delta=1e-5,
                              epsilon_after=client_level_epsilon(cl_rounds, delta=1e-5))
        led.record_spend(spend("c1", k, noise_multiplier=STEP.noise_multiplier, sample_rate=STEP.sample_rate,
                               steps=STEP.steps, epsilon_after=rounds_epsilon(
                                   [RoundSpend(round=j, step=STEP) for j in range(1, k + 1) if j in (1, 3)],
                                   delta=1e-5), client_level=cl))


def test_recompute_agrees_on_honest_rows_and_flags_tampering(ledger: Ledger) -> None:
    _honest_rows(ledger)
    checks = ledger.recompute()
    assert len(checks) == 3 + 2 + 2 and all(c.ok for c in checks), [c for c in checks if not c.ok]
    assert {c.level for c in checks} == {"sample", "client"}
    with sqlite3.connect(ledger.path) as raw:
        raw.execute("UPDATE spends SET epsilon_after = epsilon_after * 0.9 WHERE client = 'c0' AND round = 2")
        raw.execute("UPDATE spends SET client_epsilon_after = 0.01 WHERE client = 'c1' AND round = 3")
    bad = [(c.client, c.round, c.level) for c in ledger.recompute() if not c.ok]
    assert bad == [("c0", 2, "sample"), ("c1", 3, "client")]


def test_recompute_with_a_tighter_accountant_confirms_no_understatement(ledger: Ledger) -> None:
    _honest_rows(ledger)
    checks = [c for c in ledger.recompute(accountant="prv") if c.level == "sample"]
    assert all(c.ok for c in checks) and all(c.recomputed <= c.recorded for c in checks)
    assert all(c.accountant == "prv" for c in checks)


def test_speaker_epsilons_from_the_ledger(ledger: Ledger) -> None:
    _honest_rows(ledger)
    eps = ledger.speaker_epsilons("c0")
    assert eps["a"] > eps["b"] and ledger.epsilon("c0") == pytest.approx(eps["a"])


def test_exports_json_csv_table_plot(ledger: Ledger, tmp_path: Path) -> None:
    _honest_rows(ledger)
    ledger.mark_released("c0", 1)
    data = json.loads(ledger.export_json(tmp_path / "out" / "ledger.json").read_text())
    assert data["run_id"] == "r1" and data["settings"] == SETTINGS and data["format"] == "privspk-ledger"
    assert len(data["rows"]) == 5 and data["rows"][0]["status"] == "released"
    assert data["rows"][0]["speakers"] == ["a", "b"] and data["rows"][3]["client_mechanism"]["noise"] == "skellam"
    with open(ledger.export_csv(tmp_path / "ledger.csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == EXPORT_COLUMNS and rows[0]["speakers"] == "a;b" and rows[0]["client_epsilon_after"] == ""
    assert float(rows[2]["epsilon_after"]) == ledger.row("c0", 3).epsilon_after  # repr round-trips exactly
    assert json.loads(rows[3]["client_mechanism"])["shares"] == 8
    table = ledger.table()
    assert table.splitlines()[0].startswith("run r1") and "utterance" in table and "released" in table
    assert len(table.splitlines()) == 2 + 5
    png = ledger.plot(tmp_path / "eps.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_empty_ledger_exports(ledger: Ledger, tmp_path: Path) -> None:
    assert "(no spends recorded)" in ledger.table()
    assert json.loads(ledger.export_json(tmp_path / "e.json").read_text())["rows"] == []
    assert ledger.plot(tmp_path / "e.png").exists()


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"client": ""}, "client must be a non-empty string"),
        ({"unit": "frame"}, "unit must be one of"),
        ({"accountant": "gdp"}, "unknown accountant"),
        ({"epsilon_after": -1.0}, "epsilon_after must be >= 0"),
        ({"epsilon_after": float("inf")}, "epsilon_after must be finite"),
        ({"clip": 0.0}, "clip must be > 0"),
        ({"scheme": ""}, "scheme must be a non-empty string"),
        ({"speakers": "ann"}, "not one string"),
        ({"update_digest": "abc"}, "SHA-256 hex"),
        ({"steps": 1.5}, "steps must be an integer"),
    ],
)
def test_bad_spend_values(overrides: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        spend(**overrides)
    assert needle in str(info.value)


# --------------------------------------------------------------------------- randomness (issue 19, finding 2)
def test_every_row_records_its_randomness_and_a_client_cannot_switch_it(ledger: Ledger, tmp_path: Path) -> None:
    from privspk.privacy.ledger import SIMULATION_WARNING

    ledger.record_spend(spend(randomness="simulation"))
    ledger.record_spend(spend("c1"))
    assert ledger.row("c0", 1).randomness == "simulation" and ledger.row("c1", 1).randomness == "secret"
    with pytest.raises(LedgerError, match="randomness differ from the client's earlier rounds"):
        ledger.record_spend(spend(rnd=2, randomness="secret"))
    with pytest.raises(ConfigError, match="randomness must be one of secret, simulation"):
        spend(randomness="run")
    with open(ledger.export_csv(tmp_path / "l.csv"), newline="") as fh:
        assert [r["randomness"] for r in csv.DictReader(fh)] == ["simulation", "secret"]
    lines = ledger.table().splitlines()
    assert SIMULATION_WARNING in lines[2] and SIMULATION_WARNING not in lines[3]


def test_a_schema_1_ledger_without_randomness_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    Ledger(path, run_id="r1", settings=SETTINGS).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    for kwargs in ({"run_id": "r1", "settings": SETTINGS}, {"readonly": True}):
        with pytest.raises(LedgerError, match="schema version 1 was written before each row recorded its randomness"):
            Ledger(path, **kwargs)
