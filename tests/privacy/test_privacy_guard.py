from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from privspk.errors import BudgetExceededError, ConfigError, LedgerError
from privspk.privacy.accounting import SpendStep, epsilon
from privspk.privacy.budget import PrivacyBudget
from privspk.privacy.distributed import ClientLevelRound, DistributedDP, client_level_epsilon
from privspk.privacy.guard import BudgetGuard
from privspk.privacy.ledger import Ledger, digest_update
from privspk.privacy.mechanism import Mechanism
from privspk.privacy.planner import plan_mechanism

SIGMA, Q, STEPS = 1.0, 0.05, 40
MECH = Mechanism(noise_multiplier=SIGMA, sample_rate=Q, steps=STEPS, clip=1.0, delta=1e-5)
SPK = dataclasses.replace(MECH, unit="speaker")
STEP = SpendStep(noise_multiplier=SIGMA, sample_rate=Q, steps=STEPS)


@pytest.fixture
def ledger(tmp_path: Path):
    led = Ledger(tmp_path / "ledger.sqlite", run_id="r", settings={"epsilon": 4.0})
    yield led
    led.close()


def test_rounds_are_authorized_recorded_and_refused_before_recording(ledger: Ledger) -> None:
    guard = BudgetGuard(ledger, "c0", PrivacyBudget(epsilon=4.0, delta=1e-5))
    fits = 0
    for rnd in range(1, 20):
        if epsilon([STEP] * rnd, delta=1e-5) > 4.0:
            break
        fits = rnd
    assert fits >= 1
    for rnd in range(1, fits + 1):
        expected = epsilon([STEP] * rnd, delta=1e-5)
        assert guard.authorize_round(rnd, MECH) == pytest.approx(expected)
        row = guard.commit_spend(rnd, MECH, scheme="mask")
        assert row.epsilon_after == pytest.approx(expected) and row.unit == "utterance" and row.status == "spent"
        assert guard.remaining() == pytest.approx(4.0 - expected)
    before = ledger.rows()
    with pytest.raises(BudgetExceededError) as info:
        guard.commit_spend(fits + 1, MECH, scheme="mask")
    msg = str(info.value)
    assert f"client c0: round {fits + 1}" in msg and "epsilon=4 (delta=1e-05) per utterance" in msg
    assert "out of budget" in msg
    assert ledger.rows() == before  # nothing recorded for the refused round


def test_planned_rounds_all_fit_and_no_more(ledger: Ledger) -> None:
    budget = PrivacyBudget(epsilon=3.0, delta=1e-5)
    plan = plan_mechanism(budget=budget, sample_rate=0.05, steps=25, clip=1.0, rounds=4)
    guard = BudgetGuard(ledger, "c0", budget)
    for rnd in range(1, 5):
        guard.commit_spend(rnd, plan, scheme="plain")
    assert guard.spent() == pytest.approx(plan.epsilon(4), rel=1e-9)
    with pytest.raises(BudgetExceededError):
        guard.authorize_round(5, plan)


def test_a_recorded_round_is_never_counted_twice_after_a_restart(ledger: Ledger, tmp_path: Path) -> None:
    budget = PrivacyBudget(epsilon=4.0, delta=1e-5)
    BudgetGuard(ledger, "c0", budget).commit_spend(1, MECH, scheme="mask",
                                                    update_digest=digest_update(b"u1"))
    ledger.close()  # the client process dies after the commit, before sending
    with Ledger(tmp_path / "ledger.sqlite", run_id="r", settings={"epsilon": 4.0}) as again:
        guard = BudgetGuard(again, "c0", budget)
        assert [r.round for r in again.pending("c0")] == [1]
        with pytest.raises(LedgerError, match="round 1 is already recorded"):
            guard.authorize_round(1, MECH)
        again.mark_released("c0", 1, update_digest=digest_update(b"u1"))  # re-send the stored update
        row = guard.commit_spend(3, MECH, scheme="mask")  # not sampled in round 2
        assert row.epsilon_after == pytest.approx(epsilon([STEP, STEP], delta=1e-5))
        with pytest.raises(LedgerError, match="round 2 is not after the last recorded round 3"):
            guard.preview(2, MECH)


@pytest.mark.parametrize(
    ("budget", "accountant", "needle"),
    [
        (PrivacyBudget(epsilon=4.0, delta=1e-6), "rdp", "delta 1e-05 -> 1e-06"),
        (PrivacyBudget(epsilon=4.0, delta=1e-5, unit="speaker"), "rdp", "unit 'utterance' -> 'speaker'"),
        (PrivacyBudget(epsilon=4.0, delta=1e-5), "prv", "accountant 'rdp' -> 'prv'"),
    ],
)
def test_resume_with_changed_privacy_settings(ledger: Ledger, budget: PrivacyBudget, accountant: str,
                                              needle: str) -> None:
    BudgetGuard(ledger, "c0", PrivacyBudget(epsilon=4.0, delta=1e-5)).commit_spend(1, MECH, scheme="mask")
    with pytest.raises(LedgerError) as info:
        BudgetGuard(ledger, "c0", budget, accountant=accountant)
    assert "resumed with changed privacy settings" in str(info.value) and needle in str(info.value)
    BudgetGuard(ledger, "c1", budget, accountant=accountant)  # another client may use its own settings


def test_speaker_budgets(ledger: Ledger) -> None:
    budget = PrivacyBudget(epsilon=4.0, delta=1e-5, unit="speaker")
    guard = BudgetGuard(ledger, "c0", budget)
    one = epsilon([STEP], delta=1e-5)
    two = epsilon([STEP, STEP], delta=1e-5)
    assert two <= 4.0 < epsilon([STEP] * 3, delta=1e-5)
    guard.commit_spend(1, SPK, scheme="mask", speakers=["ann", "bob"])
    guard.commit_spend(2, SPK, scheme="mask", speakers=["ann", "cid"])
    assert guard.speaker_epsilons() == pytest.approx({"ann": two, "bob": one, "cid": one})
    assert guard.spent() == pytest.approx(two)  # the row's epsilon is the worst speaker's
    assert guard.exhausted_speakers(["ann", "bob", "cid", "dan"], SPK) == ("ann",)
    with pytest.raises(BudgetExceededError, match=r"speaker\(s\) ann would exceed"):
        guard.authorize_round(3, SPK, speakers=["ann", "bob"])
    row = guard.commit_spend(3, SPK, scheme="mask", speakers=["bob", "cid", "dan"])
    assert row.speakers == ("bob", "cid", "dan") and row.epsilon_after == pytest.approx(two)
    assert ledger.speaker_epsilons("c0") == pytest.approx({"ann": two, "bob": two, "cid": two, "dan": one})


def test_round_without_speaker_list_counts_for_every_speaker(ledger: Ledger) -> None:
    guard = BudgetGuard(ledger, "c0", PrivacyBudget(epsilon=8.0, delta=1e-5, unit="speaker"))
    guard.commit_spend(1, SPK, scheme="mask", speakers=["ann"])
    guard.commit_spend(2, SPK, scheme="mask")
    guard.commit_spend(3, SPK, scheme="mask", speakers=["bob"])
    eps = guard.speaker_epsilons()
    assert eps["ann"] == pytest.approx(epsilon([STEP] * 2, delta=1e-5))
    assert eps["bob"] == pytest.approx(epsilon([STEP] * 2, delta=1e-5))


def _dp(noise_multiplier: float = 1.0) -> DistributedDP:
    return DistributedDP(clip=1.0, scale=500.0, noise_multiplier=noise_multiplier, n_clients=8, dim=100,
                         noise="skellam")


def test_client_level_budget(ledger: Ledger) -> None:
    client_budget = PrivacyBudget(epsilon=6.0, delta=1e-5, unit="client")
    guard = BudgetGuard(ledger, "c0", PrivacyBudget(epsilon=50.0, delta=1e-5), client_budget=client_budget)
    mech = _dp().mechanism(counted_shares=6)
    with pytest.raises(ConfigError, match="every round needs client_mechanism and client_sample_rate"):
        guard.authorize_round(1, MECH)
    rounds = []
    rnd = 0
    while True:
        rnd += 1
        rounds.append(ClientLevelRound(round=rnd, mechanism=mech, sample_rate=0.5))
        expected = client_level_epsilon(rounds, delta=1e-5)
        if expected > 6.0:
            break
        row = guard.commit_spend(rnd, MECH, scheme="mask", client_mechanism=mech, client_sample_rate=0.5)
        assert row.client_level is not None and row.client_level.epsilon_after == pytest.approx(expected)
        assert guard.client_spent() == pytest.approx(expected)
    assert rnd > 1
    with pytest.raises(BudgetExceededError, match="client-level epsilon would reach"):
        guard.authorize_round(rnd, MECH, client_mechanism=mech, client_sample_rate=0.5)
    assert all(c.ok for c in ledger.recompute())


def test_guard_rejects_misuse(ledger: Ledger) -> None:
    with pytest.raises(ConfigError, match="pass a unit='client' budget as client_budget"):
        BudgetGuard(ledger, "c0", PrivacyBudget(epsilon=1.0, delta=1e-5, unit="client"))
    with pytest.raises(ConfigError, match="client_budget must be a PrivacyBudget with unit='client'"):
        BudgetGuard(ledger, "c0", PrivacyBudget(epsilon=1.0, delta=1e-5),
                    client_budget=PrivacyBudget(epsilon=1.0, delta=1e-5))
    guard = BudgetGuard(ledger, "c0", PrivacyBudget(epsilon=1.0, delta=1e-5))
    with pytest.raises(ConfigError, match="needs both client_mechanism"):
        guard.authorize_round(1, MECH, client_sample_rate=0.5)
    with pytest.raises(ConfigError, match="not one string"):
        guard.authorize_round(1, MECH, speakers="ann")
    with pytest.raises(ConfigError, match="round must be >= 1"):
        guard.authorize_round(0, MECH)
    assert ledger.rows() == []


@pytest.mark.parametrize(("change", "needle"), [
    ({"unit": "speaker"}, "unit 'speaker' (the guard's: 'utterance')"),
    ({"accountant": "prv"}, "accountant 'prv' (the guard's: 'rdp')"),
    ({"delta": 1e-6}, "delta 1e-06 (the guard's: 1e-05)"),
])
def test_a_mechanism_charged_otherwise_than_the_guard_charges_is_refused(ledger: Ledger, change: dict,
                                                                         needle: str) -> None:
    guard = BudgetGuard(ledger, "c0", PrivacyBudget(epsilon=4.0, delta=1e-5))
    with pytest.raises(ConfigError, match="the round's mechanism has another") as info:
        guard.commit_spend(1, dataclasses.replace(MECH, **change), scheme="mask")
    assert needle in str(info.value) and ledger.rows() == []
