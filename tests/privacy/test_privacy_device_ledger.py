"""The cross-device ledger: budget sit-outs, no double counting on resume, atomic rounds, the hash chain."""

from __future__ import annotations

import sqlite3

import pytest

from privspk.errors import BudgetExceededError, ConfigError, LedgerError
from privspk.privacy import device_ledger as dl
from privspk.privacy.device_ledger import DeviceLedger, FtrlAccountant, SampledGaussianAccountant
from privspk.privacy.ftrl import ftrl_epsilon

FTRL = FtrlAccountant(noise_multiplier=6.0, rounds=64, delta=1e-6)
TWO = ftrl_epsilon(noise_multiplier=6.0, rounds=64, max_participations=2, delta=1e-6)
THREE = ftrl_epsilon(noise_multiplier=6.0, rounds=64, max_participations=3, delta=1e-6)
BUDGET = (TWO + THREE) / 2  # two participations fit, a third does not


def _open(tmp_path, **kw):
    args = dict(run_id="run", accountant=FTRL, budget=BUDGET)
    return DeviceLedger(tmp_path / "dev.sqlite", **{**args, **kw})


def test_a_device_at_its_budget_sits_out(tmp_path):
    with _open(tmp_path) as led:
        for rnd in (1, 2):
            adm = led.admit(["a", "b"])
            assert adm.admitted == ("a", "b")
            led.record_round(rnd, eligible=adm.admitted, participants=["a"])
        assert led.epsilon("a") == pytest.approx(TWO) and led.epsilon("b") == 0.0
        assert not led.may_participate("a") and led.may_participate("b")
        adm = led.admit(["a", "b", "c"])
        assert adm.admitted == ("b", "c") and adm.sat_out == ("a",)
        # recording a round with the over-budget device eligible is refused and writes nothing
        with pytest.raises(BudgetExceededError, match="would exceed the budget"):
            led.record_round(3, eligible=["a", "b"], participants=["b"])
        assert led.last_round() == 2 and led.participations("b") == ()
        rec = led.record_round(3, eligible=adm.admitted, participants=["b", "c"])
        assert rec.central_epsilon == pytest.approx(TWO)  # the max over devices
        assert led.verify() == 3


def test_sampled_accounting_charges_every_eligible_round(tmp_path):
    acc = SampledGaussianAccountant(noise_multiplier=1.0, sample_rate=0.1, delta=1e-5)
    e2 = acc.epsilon(eligible_rounds=2, participations=0)
    with _open(tmp_path, accountant=acc, budget=acc.epsilon(eligible_rounds=3, participations=0)) as led:
        devices = [f"d{i:04d}" for i in range(1000)]
        for rnd in (1, 2):
            led.record_round(rnd, eligible=led.admit(devices).admitted, participants=devices[rnd::10])
        assert led.epsilon("d0000") == led.epsilon("d0001") == pytest.approx(e2)  # sampled or not
        led.record_round(3, eligible=led.admit(devices).admitted, participants=devices[:100])
        assert led.admit(devices).admitted == ()  # everyone has spent the budget: all sit out
        assert led.verify() == 3


def test_resume_replays_a_round_without_double_counting(tmp_path):
    with _open(tmp_path) as led:
        led.record_round(1, eligible=["a", "b"], participants=["a"])
    with _open(tmp_path) as led:  # reopened after a crash: the driver replays round 1
        again = led.record_round(1, eligible=["b", "a"], participants=["a"])
        assert again.participants == ("a",)
        assert led.participations("a") == (1,) and led.epsilon("a") == pytest.approx(
            ftrl_epsilon(noise_multiplier=6.0, rounds=64, max_participations=1, delta=1e-6))
        with pytest.raises(LedgerError, match="already recorded"):
            led.record_round(1, eligible=["a", "b"], participants=["b"])
        led.record_round(3, eligible=["a"], participants=[])
        with pytest.raises(LedgerError, match="in order"):
            led.record_round(2, eligible=["a"], participants=[])
        assert led.verify() == 2


def test_other_settings_or_run_are_refused(tmp_path):
    with _open(tmp_path):
        pass
    with pytest.raises(LedgerError, match="another run or other privacy settings"):
        _open(tmp_path, budget=BUDGET * 2)
    with pytest.raises(LedgerError, match="another run"):
        _open(tmp_path, run_id="other")


def test_a_failure_inside_a_round_writes_nothing(tmp_path, monkeypatch):
    with _open(tmp_path) as led:
        led.record_round(1, eligible=["a", "b"], participants=["a"])

        def boom(*a, **k):
            raise RuntimeError("power cut")

        monkeypatch.setattr(dl, "_row_hash", boom)
        with pytest.raises(RuntimeError):
            led.record_round(2, eligible=["a", "b"], participants=["b"])
        monkeypatch.undo()
        assert led.last_round() == 1 and led.participations("b") == ()
        assert led.verify() == 1


def test_tampering_is_detected(tmp_path):
    with _open(tmp_path) as led:
        for rnd in (1, 2):
            led.record_round(rnd, eligible=["a", "b"], participants=["a"])
    con = sqlite3.connect(tmp_path / "dev.sqlite")
    con.execute("UPDATE entries SET took_part = 0 WHERE round = 1 AND device = 'a'")
    con.commit()
    con.close()
    with _open(tmp_path) as led, pytest.raises(LedgerError, match="round 1"):
        led.verify()


def test_bad_input(tmp_path):
    with _open(tmp_path) as led:
        with pytest.raises(ConfigError, match="not among the eligible"):
            led.record_round(1, eligible=["a"], participants=["b"])
        with pytest.raises(ConfigError, match="twice"):
            led.record_round(1, eligible=["a", "a"], participants=[])
        with pytest.raises(ConfigError, match="not one string"):
            led.admit("abc")
    with pytest.raises(ConfigError, match="accountant"):
        DeviceLedger(tmp_path / "x.sqlite", run_id="r", accountant=object(), budget=1.0)
