"""A federated client's round: the spend is recorded before anything reaches the scheme.

A recording guard and a recording endpoint write every call into one shared event log, so
the order of authorize -> commit -> release -> submit can be read back.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from privspk.errors import BudgetExceededError, CheckpointError, ConfigError
from privspk.federation.client import ClientRelease, ClientRoundReport, ClientTraining, FederatedClient
from privspk.models.finetune import apply_recipe
from privspk.privacy.ledger import digest_update
from privspk.secagg import ClientEndpoint
from privspk.privacy import Mechanism
from privspk.training.local import LocalSettings
from privspk.training.net import flatten, trainable_state
from federation_support import synthetic_clients, tiny_encoder

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")

DP = Mechanism(unit="utterance", noise_multiplier=1.0, clip=1.0, sample_rate=0.5, steps=2, delta=1e-5)  # client0: 6 utts
LOCAL = LocalSettings(batch_size=4, physical_batch=4, lr=1e-2, crop_frames=20, speaker_batch=2)


class RecordingEndpoint(ClientEndpoint):
    def __init__(self, events: list) -> None:
        self.client_id = "c"
        self.events = events
        self.sent: dict[int, np.ndarray] = {}

    def submit(self, round_id: int, update: np.ndarray) -> None:
        self.events.append(("submit", round_id, digest_update(np.ascontiguousarray(update))))
        self.sent[round_id] = np.array(update, copy=True)

    def handle(self, request: bytes) -> bytes | None:  # pragma: no cover - not used here
        return None


class RecordingGuard:
    """A SpendGuard that records calls; ``budget_rounds`` rounds fit the budget."""

    def __init__(self, events: list, *, budget_rounds: int = 99, fail_commit: bool = False) -> None:
        self.events = events
        self.budget_rounds = budget_rounds
        self.fail_commit = fail_commit
        self.spends: dict[int, str] = {}

    def authorize(self, *, round_id, mechanism):
        self.events.append(("authorize", round_id))
        if len(self.spends) >= self.budget_rounds:
            raise BudgetExceededError(f"client c: round {round_id} is over budget")
        return 0.5 * (len(self.spends) + 1)

    def commit(self, *, round_id, mechanism, scheme, update):
        if self.fail_commit:
            raise OSError("disk full while writing the ledger")
        self.spends[round_id] = digest_update(np.ascontiguousarray(update))
        self.events.append(("commit", round_id, self.spends[round_id], mechanism.steps, scheme, mechanism))
        return 0.5 * len(self.spends)

    def committed(self, round_id):
        return round_id in self.spends

    def released(self, round_id, update):
        d = digest_update(np.ascontiguousarray(update))
        if self.spends.get(round_id) != d:
            raise AssertionError("released an update with no matching spend")
        self.events.append(("released", round_id, d))

    def epsilon(self):
        return 0.5 * len(self.spends)


def make_client(tmp_path, events, *, guard=None, dp=DP, weight=0.25, store="store", seed=3, randomness=None):
    data = synthetic_clients()["client0"]
    enc = tiny_encoder()
    apply_recipe(enc, "last")
    names = [n for n, p in enc.named_parameters() if p.requires_grad]
    endpoint = RecordingEndpoint(events)
    dp = dp if dp is None or randomness is None else dataclasses.replace(dp, randomness=randomness)
    training = ClientTraining(LOCAL, seed=seed, dp=dp, local_steps=None if dp is not None else 2,
                              randomness=None if dp is not None else randomness)
    client = FederatedClient("c", data, copy.deepcopy(enc), names, weight=weight, endpoint=endpoint, guard=guard,
                             store=tmp_path / store, training=training, release=ClientRelease("mask"))
    return client, endpoint, flatten(trainable_state(enc), names)


def test_spend_is_committed_before_the_update_reaches_the_endpoint(tmp_path):
    events: list = []
    guard = RecordingGuard(events)
    client, endpoint, g = make_client(tmp_path, events, guard=guard)
    rep = client.run_round(1, g)
    kinds = [e[0] for e in events]
    assert kinds == ["authorize", "commit", "released", "submit"]
    _, _, digest, steps, scheme, dp = events[1]
    assert (steps, scheme, dp) == (2, "mask", DP)
    assert events[2][2] == digest and events[3][2] == digest, "the sent update is the one the spend covers"
    assert isinstance(rep, ClientRoundReport)
    assert (rep.client_id, rep.round_id, rep.status, rep.steps, rep.epsilon) == ("c", 1, "sent", 2, 0.5)
    assert rep.train_seconds > 0 and np.isfinite(rep.loss)
    # the update is the weighted change of the shared encoder part
    new = flatten(trainable_state(client.net.encoder), client.names)
    np.testing.assert_allclose(endpoint.sent[1], ((new - g) * 0.25).numpy(), rtol=0, atol=0)
    assert np.abs(endpoint.sent[1]).max() > 0


def test_out_of_budget_sends_nothing_trains_nothing_and_records_nothing(tmp_path):
    events: list = []
    guard = RecordingGuard(events, budget_rounds=1)
    client, endpoint, g = make_client(tmp_path, events, guard=guard)
    client.run_round(1, g)
    client.forget_staged(1)
    head_before = copy.deepcopy(client.net.head.state_dict())
    enc_before = flatten(trainable_state(client.net.encoder), client.names)
    events.clear()
    rep = client.run_round(2, g)
    assert rep.status == "out_of_budget" and "over budget" in rep.reason
    assert rep.epsilon == 0.5 and rep.steps == 0
    assert events == [("authorize", 2)]
    assert 2 not in endpoint.sent and 2 not in guard.spends
    assert not (tmp_path / "store" / "update_r0002.npy").exists()
    assert all(torch.equal(v, client.net.head.state_dict()[k]) for k, v in head_before.items())
    # the global vector was loaded (step 1), but nothing was trained on top of it
    assert torch.equal(flatten(trainable_state(client.net.encoder), client.names), g)
    assert not torch.equal(enc_before, g)


def test_a_staged_update_without_a_committed_spend_is_never_sent(tmp_path):
    events: list = []
    guard = RecordingGuard(events)
    client, endpoint, g = make_client(tmp_path, events, guard=guard)
    poison = np.full(g.numel(), 123.0)
    np.save(tmp_path / "store" / "update_r0001.npy", poison)  # left by a crash before the spend
    rep = client.run_round(1, g)
    assert rep.status == "sent"
    assert not np.array_equal(endpoint.sent[1], poison) and np.abs(endpoint.sent[1]).max() < 1
    assert [e[0] for e in events] == ["authorize", "commit", "released", "submit"]


def test_a_committed_round_is_resent_from_the_store_without_a_second_spend(tmp_path):
    events: list = []
    guard = RecordingGuard(events)
    client, endpoint, g = make_client(tmp_path, events, guard=guard)
    client.run_round(1, g)
    first = endpoint.sent.pop(1)
    # a new process: same store, same ledger (guard); the round is committed but was maybe not sent
    events.clear()
    again, endpoint2, _ = make_client(tmp_path, events, guard=guard)
    rep = again.run_round(1, g)
    assert rep.status == "resent"
    assert [e[0] for e in events] == ["released", "submit"]
    np.testing.assert_array_equal(endpoint2.sent[1], first)
    assert list(guard.spends) == [1]


def test_a_committed_round_whose_staged_update_is_lost_is_refused(tmp_path):
    events: list = []
    guard = RecordingGuard(events)
    client, endpoint, g = make_client(tmp_path, events, guard=guard)
    client.run_round(1, g)
    client.forget_staged(1)
    assert not (tmp_path / "store" / "update_r0001.npy").exists()
    endpoint.sent.clear()
    with pytest.raises(CheckpointError, match="round 1 has a recorded spend but its staged update"):
        client.run_round(1, g)
    assert endpoint.sent == {}


def test_a_failed_commit_releases_nothing_and_keeps_no_trained_state(tmp_path):
    events: list = []
    client, endpoint, g = make_client(tmp_path, events, guard=RecordingGuard(events))
    client.run_round(1, g)  # round 1 completes: its head is kept
    head_after_1 = torch.load(tmp_path / "store" / "head.pt", weights_only=True)
    failing = RecordingGuard(events, fail_commit=True)
    failing.spends = {1: "x"}
    client.guard = failing
    with pytest.raises(OSError, match="disk full"):
        client.run_round(2, g)
    assert 2 not in endpoint.sent
    # the head trained in round 2 (no spend recorded) must not persist into later rounds
    head_on_disk = torch.load(tmp_path / "store" / "head.pt", weights_only=True)
    assert all(torch.equal(head_on_disk[k], v) for k, v in head_after_1.items())


def test_non_private_client_sends_without_a_ledger(tmp_path):
    events: list = []
    client, endpoint, g = make_client(tmp_path, events, guard=None, dp=None)
    rep = client.run_round(1, g)
    assert rep.status == "sent" and rep.epsilon == 0.0 and client.epsilon() == 0.0
    assert [e[0] for e in events] == ["submit"]


def test_head_persists_in_the_store_and_a_corrupt_one_is_refused(tmp_path):
    events: list = []
    client, _, g = make_client(tmp_path, events, guard=RecordingGuard(events))
    client.run_round(1, g)
    reopened, _, _ = make_client(tmp_path, [], guard=None, seed=99)  # another seed: a different fresh head
    for k, v in client.net.head.state_dict().items():
        assert torch.equal(reopened.net.head.state_dict()[k], v)
    fresh, _, _ = make_client(tmp_path, [], guard=None, store="other", seed=99)
    assert not torch.equal(fresh.net.head.weight, client.net.head.weight)
    (tmp_path / "store" / "head.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot load this client's head"):
        make_client(tmp_path, [], guard=None)


def test_rounds_are_deterministic_for_a_seed(tmp_path):
    """With simulation randomness a seed fixes the round; by default (secret) it does not."""
    a, ea, g = make_client(tmp_path, [], guard=None, dp=DP, store="a", randomness="simulation")
    b, eb, _ = make_client(tmp_path, [], guard=None, dp=DP, store="b", randomness="simulation")
    a.run_round(1, g)
    b.run_round(1, g)
    np.testing.assert_array_equal(ea.sent[1], eb.sent[1])
    c, ec, _ = make_client(tmp_path, [], guard=None, dp=DP, store="c")
    c.run_round(1, g)
    assert not np.array_equal(ec.sent[1], ea.sent[1])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(dp=DP, local_steps=DP.steps + 1), "differs from the mechanism's"),
        (dict(dp=DP, randomness="simulation" if DP.randomness == "secret" else "secret"), "differs from the mechanism's"),
        (dict(dp=None), "a non-private client needs local_steps"),
        (dict(dp=None, local_steps=1, trunk_crops=-1), "trunk_crops must be >= 0"),
    ],
)
def test_client_training_refuses_settings_that_contradict_its_mechanism(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ClientTraining(LOCAL, seed=0, **kwargs)


def test_client_training_takes_steps_and_randomness_from_the_mechanism_when_private():
    dp = dataclasses.replace(DP, randomness="simulation")
    assert (ClientTraining(LOCAL, seed=0, dp=dp).steps, ClientTraining(LOCAL, seed=0, dp=dp).mode) == (dp.steps,
                                                                                                     "simulation")
    assert ClientTraining(LOCAL, seed=0, local_steps=4).mode == "secret"
