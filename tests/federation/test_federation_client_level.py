"""Issue 19, finding 3: a server that announces a small round opens a sum with less noise than counted.

Each client sizes its discrete-Gaussian share for the configured K clients, and its ledger counts
the shares of the fewest clients a K-client round can open with. A server that announces a
round of 2 (itself colluding with the other client, whose share it knows) would open a sum that
holds one honest share: a fraction of the accounted noise. The client must refuse such a round
before anything derived from its update leaves it.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest

from privspk.api import plan_client_level
from privspk.config import FederationSection, PrivacySection, RunConfig, SecAggSection, TrainSection
from privspk.errors import AggregationError, ConfigError, ProtocolError
from privspk.federation import ClientRelease, ClientTraining, FederatedClient
from privspk.api import open_run_ledger
from privspk.federation.guard import LedgerGuard
from privspk.models.finetune import apply_recipe
from privspk.privacy import PrivacyBudget
from privspk.secagg import RoundSpec, build_scheme
from privspk.secagg.simulate import run_round
from privspk.privacy import Mechanism
from privspk.training.local import LocalSettings, sample_rate_for
from federation_support import synthetic_clients, tiny_encoder

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")

K = 10  # the clients the victim's noise share was planned for


def _config(colluders: int = 1) -> RunConfig:
    return RunConfig(
        name="clientlevel",
        privacy=PrivacySection(enabled=True, epsilon=50.0, client_level=True, client_epsilon=8.0),
        train=TrainSection(recipe="last", local_steps=1, batch_size=4, physical_batch=4, lr=1e-2, crop_frames=20,
                           speaker_batch=2),
        secagg=SecAggSection(scheme="mask", colluders=colluders),
        federation=FederationSection(n_clients=K, rounds=2),
    )


def _victim(tmp_path, colluders: int = 1):
    """A client built as ``api.train`` builds one in a K-client client-level run, its round trained and
    handed to its mask endpoint; returns (client, scheme, ledger, update length)."""
    cfg = _config(colluders)
    encoder = tiny_encoder(0)
    dim = apply_recipe(encoder, cfg.train.recipe)
    names = [n for n, p in encoder.named_parameters() if p.requires_grad]
    client_dp, options = plan_client_level(cfg, dim=dim)
    scheme = build_scheme("mask", options, seed=0)
    ledger = open_run_ledger(tmp_path / "ledger.sqlite", cfg)
    data = synthetic_clients(0)["client0"]
    q = sample_rate_for(data, unit="utterance", batch_size=4, speaker_batch=2)
    dp = Mechanism(unit="utterance", noise_multiplier=2.0, clip=cfg.privacy.clip, sample_rate=q, steps=1, delta=1e-5)
    guard = LedgerGuard(ledger, "client0", PrivacyBudget(epsilon=50.0, delta=1e-5), accountant="rdp",
                        client_budget=PrivacyBudget(epsilon=8.0, delta=1e-5, unit="client"),
                        client_mechanism=client_dp.mechanism())
    t = cfg.train
    client = FederatedClient(
        "client0", data, copy.deepcopy(encoder), names, weight=0.1, endpoint=scheme.client("client0"), guard=guard,
        store=tmp_path / "client0", release=ClientRelease("mask", client_dp=client_dp),
        training=ClientTraining(LocalSettings(batch_size=t.batch_size, physical_batch=t.physical_batch, lr=t.lr,
                                              crop_frames=t.crop_frames, speaker_batch=t.speaker_batch),
                                seed=0, dp=dp),
    )
    report = client.run_round(1, _global(encoder, names))
    assert report.status == "sent"
    return client, scheme, ledger, dim


def _global(encoder, names):
    from privspk.training.net import flatten, trainable_state

    return flatten(trainable_state(encoder), names)


class _AttackingServer:
    """The scheme as the attacking server drives it: its own round check (which refuses a 2-client
    round when colluders are tolerated) is skipped, since the attacker is the server."""

    def __init__(self, scheme) -> None:
        self._scheme = scheme

    def server_round(self, spec):
        from privspk.secagg.mask_server import MaskServerRound

        return MaskServerRound(spec, dataclasses.replace(self._scheme.config, colluders=0), self._scheme.registry)

    def __getattr__(self, name):
        return getattr(self._scheme, name)


def _two_client_round(scheme, dim):
    """The attacking server's round 1: the victim and one colluding client, whose share is known (zero)."""
    colluder = scheme.client("client9")
    colluder.submit_integers(1, np.zeros(dim, dtype=np.int64))
    return RoundSpec(run_id="clientlevel", round_id=1, clients=("client0", "client9"), dim=dim), colluder


# colluders = 0: the noise check is what refuses (t(2) = 2 < the 6 counted); colluders = 1 (the
# default): the round's threshold cannot tolerate a colluder at all, which refuses it first
@pytest.mark.parametrize(("colluders", "reason"), [(0, "noise"), (1, "cannot be masked")])
def test_a_two_client_round_announced_to_a_client_planned_for_ten_is_refused(tmp_path, colluders, reason):
    """At the round's first message the victim refuses (no masked input leaves it), naming the reason."""
    victim, scheme, ledger, dim = _victim(tmp_path, colluders)
    spec, _ = _two_client_round(scheme, dim)
    advertise = _AttackingServer(scheme).server_round(spec).outbox()["client0"]
    try:
        with pytest.raises(ProtocolError, match=reason):
            victim.endpoint.handle(advertise)
    finally:
        ledger.close()


@pytest.mark.parametrize("colluders", [0, 1])
def test_a_server_announcing_a_two_client_round_opens_nothing(tmp_path, colluders):
    """Driven to the end by that server, the round opens no sum (before issue 19 it opened the victim's
    update plus the colluder's known codes: the victim's update with one noise share of the six counted)."""
    victim, scheme, ledger, dim = _victim(tmp_path, colluders)
    spec, colluder = _two_client_round(scheme, dim)
    try:
        with pytest.raises(AggregationError):
            run_round(_AttackingServer(scheme), spec, {"client0": victim.endpoint, "client9": colluder})
    finally:
        ledger.close()


@pytest.mark.parametrize("announced", [2, 5, 9, 10, 12])
def test_a_round_is_taken_exactly_when_its_threshold_guarantees_the_counted_noise(tmp_path, announced):
    """The victim takes a round iff the fewest survivors its sum can open with (the threshold of the
    announced size) reach the honest shares its ledger counts plus the tolerated colluders."""
    victim, scheme, ledger, dim = _victim(tmp_path)
    try:
        need = victim.client_dp.required_survivors
        assert need == scheme.min_survivors(K)  # counted = t(K) - colluders, plus the colluders
        clients = tuple(f"client{i}" for i in range(announced))
        advertise = _AttackingServer(scheme).server_round(RoundSpec(run_id="clientlevel", round_id=1, clients=clients,
                                                                    dim=dim)).outbox()["client0"]
        try:
            t_announced = scheme.min_survivors(announced)
        except ConfigError:  # too small to tolerate the configured colluder at all (announced = 2)
            t_announced = None
        if t_announced is None:
            with pytest.raises(ProtocolError, match="cannot be masked"):
                victim.endpoint.handle(advertise)
        elif t_announced >= need:
            assert victim.endpoint.handle(advertise)  # an advert: the round goes on
        else:
            with pytest.raises(ProtocolError, match=f"counted on {need}"):
                victim.endpoint.handle(advertise)
    finally:
        ledger.close()


@pytest.mark.parametrize("colluders", [0, 1, 2])
def test_the_ledger_counts_the_guaranteed_honest_shares(tmp_path, colluders):
    """plan_client_level counts t(K) - colluders shares; the ledger row of the round records that
    mechanism and its epsilon recomputes from it."""
    from privspk.privacy.distributed import ClientLevelRound, client_level_epsilon

    cfg = _config().replace(secagg=SecAggSection(scheme="mask", colluders=colluders))
    client_dp, options = plan_client_level(cfg, dim=300)
    t = build_scheme("mask", options).min_survivors(K)
    assert client_dp.mechanism().shares == t - colluders
    assert client_dp.required_survivors == t
    victim, victim_scheme, ledger, _ = _victim(tmp_path)
    try:
        row = ledger.row("client0", 1)
        counted = victim.client_dp.mechanism()
        # _victim: the default 1 colluder
        assert row.client_level.mechanism == counted and counted.shares == victim_scheme.min_survivors(K) - 1
        want = client_level_epsilon([ClientLevelRound(round=1, mechanism=counted, sample_rate=1.0)], delta=1e-5)
        assert row.client_level.epsilon_after == pytest.approx(want, rel=1e-9)
    finally:
        ledger.close()


def test_no_honest_share_left_is_refused_at_planning():
    from privspk.errors import ConfigError

    cfg = _config().replace(federation=FederationSection(n_clients=2, rounds=2),
                            secagg=SecAggSection(scheme="mask", colluders=2))
    # refused at planning: the mask threshold cannot tolerate 2 colluders among 2 holders
    with pytest.raises(ConfigError, match="cannot tolerate 2 colluding"):
        plan_client_level(cfg, dim=300)
