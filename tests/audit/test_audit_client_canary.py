"""Client-level canary audit: canary clients with random directions through the DistributedDP path."""

import numpy as np
import pytest

from privspk.audit.client_canary import client_canary_audit, client_canary_run
from privspk.errors import ConfigError
from privspk.privacy import Mechanism, PrivacyBudget
from privspk.privacy.distributed import (ClientLevelRound, DistributedDP, client_level_epsilon,
                                         plan_client_noise_multiplier)

DELTA = 1e-5
TEMPLATE = DistributedDP(clip=1.0, scale=1000.0, noise_multiplier=1.0, n_clients=5, dim=4000)


def _claimed(dp: DistributedDP, rounds: int) -> list[float]:
    return [client_level_epsilon([ClientLevelRound(round=r, mechanism=dp.mechanism(), sample_rate=1.0)
                                  for r in range(1, k + 1)], delta=DELTA) for k in range(1, rounds + 1)]


def test_noise_off_while_ledger_claims_client_eps_1_is_a_fail():
    # broken mechanism: honest clients submit without their noise shares, the ledger still says eps = 1
    audit = client_canary_audit(TEMPLATE, m=300, rounds=1, claimed=[1.0], delta=DELTA, noise=False, bootstrap=50)
    assert audit.verdict.verdict == "FAIL"
    assert audit.dp_run.run.released.bound.epsilon > 2.0
    assert audit.dp_run.estimate.low > 1.0  # Andrew et al.'s estimate sees it too


def test_noise_free_control_reaches_near_the_ceiling():
    res = client_canary_run(TEMPLATE, m=300, rounds=1, claimed=None, delta=DELTA, noise=False, bootstrap=50)
    b = res.run.released.bound
    assert b.epsilon >= 0.75 * b.corrected_ceiling
    assert res.run.best_round.bound.epsilon >= 0.75 * res.run.best_round.bound.corrected_ceiling


def test_real_noise_at_client_eps_1_keeps_the_bound_below_the_claim():
    dp = plan_client_noise_multiplier(budget=PrivacyBudget(epsilon=1.0, delta=DELTA, unit="client"), rounds=2,
                                      sample_rate=1.0, template=TEMPLATE)
    claimed = _claimed(dp, 2)
    assert claimed[-1] <= 1.0
    audit = client_canary_audit(dp, m=300, rounds=2, claimed=claimed, delta=DELTA, bootstrap=50)
    assert audit.verdict.verdict == "PASS", audit.verdict.reason  # the control reaches near its ceiling too
    for view in audit.dp_run.run.views:
        assert view.bound.epsilon <= view.claimed_epsilon
    assert audit.dp_run.estimate.epsilon < audit.control.estimate.epsilon


def test_canary_directions_and_inclusion_are_fixed_by_the_seed():
    a = client_canary_run(TEMPLATE, m=20, rounds=1, claimed=None, delta=DELTA, noise=False, seed=3, bootstrap=5)
    b = client_canary_run(TEMPLATE, m=20, rounds=1, claimed=None, delta=DELTA, noise=False, seed=3, bootstrap=5)
    assert np.array_equal(a.run.included, b.run.included)
    assert 0 < a.run.included.sum() < 20


def test_bad_sizes_are_config_errors():
    with pytest.raises(ConfigError, match="m >= 2"):
        client_canary_run(TEMPLATE, m=1, rounds=1, claimed=None, delta=DELTA)
    with pytest.raises(ConfigError, match="each of the 2 rounds"):
        client_canary_run(TEMPLATE, m=10, rounds=2, claimed=[1.0], delta=DELTA)


def _client_level_run(tmp_path, *, claimed_scale: float = 1.0):
    """A client-level DP configuration and a ledger recording its planned mechanism (no training needed)."""
    from privspk.api import plan_client_level
    from privspk.config import FederationSection, PrivacySection, RunConfig, SecAggSection
    from privspk.privacy.ledger import ClientLevelSpend, Ledger, Spend

    cfg = RunConfig(name="cl", privacy=PrivacySection(enabled=True, client_level=True, client_epsilon=1.0),
                    secagg=SecAggSection(scheme="mask"), federation=FederationSection(n_clients=3, rounds=2))
    dp, _ = plan_client_level(cfg, dim=3000)
    eps = _claimed(dp, 2)
    path = tmp_path / "ledger.sqlite"
    settings = {"budget": {"epsilon": 8.0, "delta": 1e-5, "unit": "utterance"}, "accountant": "rdp", "clip": 1.0}
    with Ledger(path, run_id="cl", settings=settings) as led:
        for c in ("client0", "client1", "client2"):
            for r in (1, 2):
                cl = ClientLevelSpend(mechanism=dp.mechanism(), sample_rate=1.0, delta=DELTA,
                                      epsilon_after=claimed_scale * eps[r - 1])
                mech = Mechanism(noise_multiplier=1.1, sample_rate=0.05, steps=20, delta=DELTA, clip=1.0)
                led.record_spend(Spend(client=c, round=r, mechanism=mech, epsilon_after=0.5 * r, scheme="mask",
                                       client_level=cl))
    return cfg, path, eps


def test_runner_audits_a_client_level_run_against_its_ledger_and_reports_it(tmp_path):
    from privspk.audit import report
    from privspk.audit.runner import AuditReport, AuditSettings, _client_canary

    cfg, path, eps = _client_level_run(tmp_path)
    st = AuditSettings(canaries=300, bootstrap=50)
    skipped = {}
    audit = _client_canary(path, cfg, st, 2, skipped)
    assert skipped == {} and audit.claimed == eps
    assert audit.verdict.verdict == "PASS", audit.verdict.reason
    assert audit.dp_run.run.released.bound.epsilon <= eps[-1]
    rep = AuditReport(run="cl", settings=st, ledger=None, client_canary=audit)
    text = "\n".join(report.lines(rep))
    assert "## 2b. Client-level canary clients" in text and "— PASS" in text and "Andrew et al." in text
    assert report.summary(rep)["verdicts"]["client_canary"] == "PASS"


def test_report_says_the_client_level_section_does_not_apply_to_an_utterance_level_run():
    from privspk.audit import report
    from privspk.audit.runner import AuditReport, AuditSettings

    rep = AuditReport(run="demo", settings=AuditSettings(), ledger=None,
                      skipped={"client_canary": "does not apply: the run has no client-level DP"})
    text = "\n".join(report.lines(rep))
    assert "2b. Client-level canary clients" in text and "Skipped: does not apply" in text
    assert "client_canary" not in report.summary(rep)["verdicts"]
