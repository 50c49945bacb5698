"""Canary audit: a mechanism whose noise is off while the ledger claims epsilon = 1 is caught as a FAIL."""

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "federation"))
from federation_support import synthetic_clients, tiny_encoder  # noqa: E402

from privspk.audit.canary import GradientCanaries, canary_audit  # noqa: E402
from privspk.errors import ConfigError  # noqa: E402
from privspk.models.finetune import apply_recipe  # noqa: E402
from privspk.privacy import PrivacyBudget, plan_mechanism  # noqa: E402
from privspk.training import local  # noqa: E402
from privspk.training.local import LocalSettings  # noqa: E402

Q, STEPS, ROUNDS, M = 0.5, 10, 2, 200
LOCAL = LocalSettings(batch_size=4, physical_batch=64, lr=1e-2, optimizer="adam", momentum=0.9, crop_frames=20,
                      speaker_batch=2, margin=0.2, scale=30.0, ema=0.0)


def audit_at_epsilon_one():
    """The ledger's claim: epsilon 1 (delta 1e-5) per utterance, the noise planned for it."""
    enc = tiny_encoder()
    apply_recipe(enc, "embedding")
    names = [n for n, p in enc.named_parameters() if p.requires_grad]
    clients = synthetic_clients(0)
    mech = plan_mechanism(budget=PrivacyBudget(epsilon=1.0, delta=1e-5), sample_rate=Q, steps=STEPS, clip=1.0,
                          rounds=ROUNDS)
    claimed = _epsilon_by_round(mech.noise_multiplier)
    dp = {c: mech for c in clients}
    return canary_audit(enc, names, clients, dp=dp, clip=1.0, sample_rates={c: Q for c in clients}, claimed=claimed,
                        delta=1e-5, m=M, rounds=ROUNDS, local_steps=STEPS, local=LOCAL, trunk_crops=2, seed=1)


def _epsilon_by_round(sigma: float) -> list[float]:
    """Epsilon after each round for (sigma, Q, STEPS), from the same accountant the ledger uses."""
    from opacus.accountants import RDPAccountant

    acc, out = RDPAccountant(), []
    for _ in range(ROUNDS):
        for _ in range(STEPS):
            acc.step(noise_multiplier=sigma, sample_rate=Q)
        out.append(acc.get_epsilon(delta=1e-5))
    return out


def test_noise_switched_off_while_the_ledger_claims_epsilon_one_is_a_fail(monkeypatch):
    """The broken mechanism: DP-SGD runs with noise multiplier 0 whatever the plan says."""
    real = local._train_dp_utterance

    def broken(net, data, params, settings, *, dp, **kwargs):
        return real(net, data, params, settings, dp=dataclasses.replace(dp, noise_multiplier=0.0), **kwargs)

    monkeypatch.setattr(local, "_train_dp_utterance", broken)
    res = audit_at_epsilon_one()
    assert res.dp_run.released.claimed_epsilon == pytest.approx(1.0, abs=0.02)
    assert res.dp_run.released.bound.epsilon > 1.0
    assert res.verdict.verdict == "FAIL"


@pytest.mark.slow
def test_the_working_mechanism_at_epsilon_one_passes():
    res = audit_at_epsilon_one()
    assert res.dp_run.released.bound.epsilon <= 1.0
    assert res.control.released.bound.epsilon > 0.75 * res.control.released.bound.corrected_ceiling
    assert res.verdict.verdict == "PASS"


def test_canaries_enter_only_their_parameter():
    p, other = nn.Parameter(torch.zeros(10, 10)), nn.Parameter(torch.zeros(3))
    can = GradientCanaries(p, m=20, clip=0.5, sample_rate=1.0, seed=3)
    for t in (p, other):
        t.summed_grad = torch.zeros_like(t)
    from opacus.optimizers.optimizer import DPOptimizer

    class FakeOpt:
        params = [p, other]

    before = DPOptimizer.add_noise
    with can.active():
        assert DPOptimizer.add_noise is not before
        with pytest.raises(AttributeError):  # the real add_noise needs a real optimizer; the canaries went in first
            DPOptimizer.add_noise(FakeOpt())
    assert DPOptimizer.add_noise is before  # restored
    nz = np.flatnonzero(p.summed_grad.view(-1).numpy())
    assert sorted(nz) == sorted(can.coords[can.included])
    assert np.allclose(np.abs(p.summed_grad.view(-1).numpy()[nz]), 0.5)
    assert not other.summed_grad.any()


def test_too_many_canaries_are_refused():
    with pytest.raises(ConfigError, match="canaries"):
        GradientCanaries(nn.Parameter(torch.zeros(3)), m=4, clip=1.0, sample_rate=0.5, seed=0)
