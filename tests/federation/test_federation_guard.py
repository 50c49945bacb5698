"""The client's SpendGuard over the run's ledger: digests bind a spend to one update."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from privspk.config import RunConfig
from privspk.errors import BudgetExceededError, LedgerError
from privspk.api import ledger_settings, open_run_ledger
from privspk.federation.guard import LedgerGuard
from privspk.privacy import Mechanism, PrivacyBudget, epsilon
from privspk.privacy.ledger import digest_update

DP = Mechanism(unit="utterance", noise_multiplier=1.5, clip=0.7, sample_rate=0.1, steps=5, delta=1e-5)


def _mech(steps: int) -> Mechanism:
    return dataclasses.replace(DP, steps=steps)


@pytest.fixture
def ledger(tmp_path):
    led = open_run_ledger(tmp_path / "ledger.sqlite", RunConfig(name="g"))
    yield led
    led.close()


def _guard(ledger, client="c0", eps=8.0):
    return LedgerGuard(ledger, client, PrivacyBudget(epsilon=eps, delta=1e-5), accountant="rdp")


def test_commit_records_the_mechanism_and_the_digest_of_the_exact_update(ledger):
    g = _guard(ledger)
    update = np.linspace(-1, 1, 11)
    eps_preview = g.authorize(round_id=1, mechanism=_mech(5))
    assert ledger.rows() == [], "authorize writes nothing"
    eps1 = g.commit(round_id=1, mechanism=_mech(5), scheme="mask", update=update)
    assert eps1 == pytest.approx(eps_preview)
    assert eps1 == pytest.approx(epsilon([(1.5, 0.1, 5)], delta=1e-5), rel=1e-9)
    row = ledger.row("c0", 1)
    assert (row.noise_multiplier, row.sample_rate, row.steps, row.clip, row.scheme, row.status) == (
        1.5, 0.1, 5, 0.7, "mask", "spent")
    assert row.update_digest == digest_update(update)
    assert g.committed(1) and not g.committed(2)
    eps2 = g.commit(round_id=2, mechanism=_mech(5), scheme="mask", update=update * 2)
    assert eps2 == pytest.approx(epsilon([(1.5, 0.1, 5)] * 2, delta=1e-5), rel=1e-9) and eps2 > eps1
    assert g.epsilon() == eps2 == ledger.epsilon("c0")


def test_release_accepts_only_the_recorded_update(ledger):
    g = _guard(ledger)
    update = np.arange(5, dtype=np.float64)
    g.commit(round_id=1, mechanism=_mech(3), scheme="plain", update=update)
    with pytest.raises(LedgerError, match="differs from the one its spend was recorded for"):
        g.released(1, update + 1e-12)
    with pytest.raises(LedgerError, match="differs"):
        g.released(1, update.astype(np.float32))  # same values, other bytes
    assert ledger.row("c0", 1).status == "spent"
    g.released(1, update.copy())
    g.released(1, update.copy())  # a re-send of the same bytes is fine
    assert ledger.row("c0", 1).status == "released"
    with pytest.raises(LedgerError, match="no recorded spend"):
        g.released(2, update)


def test_a_round_over_budget_is_refused_before_anything_is_written(ledger):
    g = _guard(ledger, eps=1.0)
    with pytest.raises(BudgetExceededError, match="client c0: round 1 would take epsilon"):
        g.authorize(round_id=1, mechanism=_mech(500))
    with pytest.raises(BudgetExceededError):
        g.commit(round_id=1, mechanism=_mech(500), scheme="mask", update=np.zeros(3))
    assert ledger.rows() == [] and g.epsilon() == 0.0


def test_a_round_is_never_recorded_twice(ledger):
    g = _guard(ledger)
    g.commit(round_id=1, mechanism=_mech(3), scheme="mask", update=np.zeros(3))
    with pytest.raises(LedgerError, match="round 1 is already recorded.*never counted twice"):
        g.commit(round_id=1, mechanism=_mech(3), scheme="mask", update=np.ones(3))
    assert len(ledger.rows("c0")) == 1


def test_clients_are_accounted_separately(ledger):
    a, b = _guard(ledger, "a"), _guard(ledger, "b")
    a.commit(round_id=1, mechanism=_mech(3), scheme="mask", update=np.zeros(3))
    assert a.epsilon() > 0 and b.epsilon() == 0.0 and not b.committed(1)


def test_ledger_settings_name_what_a_resume_must_keep():
    cfg = RunConfig()
    s = ledger_settings(cfg)
    assert s["epsilon"] == cfg.privacy.epsilon and s["unit"] == cfg.privacy.unit
    assert s["rounds"] == cfg.federation.rounds and s["scheme"] == cfg.secagg.scheme
    assert set(s) >= {"epsilon", "delta", "unit", "clip", "accountant", "rounds", "local_steps", "batch_size",
                      "speaker_batch", "scheme", "recipe", "randomness", "colluders"}
    assert s["randomness"] == "secret" and s["colluders"] == 1
    assert ledger_settings(cfg.replace(name="other", threads=1, seed=5)) == s  # not privacy settings


def test_reopening_the_run_ledger_with_other_privacy_settings_is_refused(tmp_path):
    cfg = RunConfig(name="r1")
    open_run_ledger(tmp_path / "l.sqlite", cfg).close()
    open_run_ledger(tmp_path / "l.sqlite", cfg.replace(threads=1)).close()  # not a privacy setting
    other = cfg.replace(privacy=dataclasses.replace(cfg.privacy, epsilon=2.0, clip=0.5))
    with pytest.raises(LedgerError, match=r"privacy settings differ .*keys: clip, epsilon"):
        open_run_ledger(tmp_path / "l.sqlite", other)
    with pytest.raises(LedgerError, match="belongs to run 'r1', not 'r2'"):
        open_run_ledger(tmp_path / "l.sqlite", cfg.replace(name="r2"))
