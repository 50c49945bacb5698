"""The server's FedAvg step (weighted mean of the survivors) and its saved state."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from privspk.errors import AggregationError, CheckpointError, ConfigError
from privspk.federation.server import FederatedServer
from privspk.secagg import AggregateResult, RoundSpec


def _server(weights=None, *, run_id="run", names=("weight", "bias"), seed=0) -> FederatedServer:
    torch.manual_seed(seed)
    lin = nn.Linear(3, 2)
    weights = weights if weights is not None else {"a": 0.2, "b": 0.3, "c": 0.5}
    return FederatedServer(lin, list(names), run_id=run_id, weights=weights)


@st.composite
def rounds(draw):
    k = draw(st.integers(1, 6))
    raw = draw(st.lists(st.integers(1, 1000), min_size=k, max_size=k))
    weights = {f"c{i}": n / sum(raw) for i, n in enumerate(raw)}
    included = draw(st.lists(st.sampled_from(sorted(weights)), min_size=1, max_size=k, unique=True))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    deltas = {c: rng.normal(size=8) for c in weights}  # each client's own model change
    return weights, included, deltas


@settings(max_examples=60, deadline=None)
@given(rounds())
def test_apply_adds_the_sample_weighted_mean_of_the_included_clients(problem):
    weights, included, deltas = problem
    srv = _server(weights)
    before = srv.global_vector().clone()
    # clients pre-weight their update; the scheme opens the sum of what the included ones sent
    total = sum(weights[c] * deltas[c] for c in included)
    mass = srv.apply(AggregateResult(total=total, included=tuple(sorted(included))))
    assert mass == pytest.approx(sum(weights[c] for c in included))
    expect = sum(weights[c] * deltas[c] for c in included) / sum(weights[c] for c in included)
    np.testing.assert_allclose((srv.global_vector() - before).numpy(), expect, rtol=1e-5, atol=1e-6)
    if len(included) == len(weights):
        assert mass == pytest.approx(1.0)


def test_a_dropout_rescales_to_the_survivors():
    srv = _server()
    before = srv.global_vector().clone()
    d = np.arange(8, dtype=np.float64)
    mass = srv.apply(AggregateResult(total=0.2 * d + 0.5 * 2 * d, included=("a", "c"), dropped={"b": "silent"}))
    assert mass == pytest.approx(0.7)
    np.testing.assert_allclose((srv.global_vector() - before).numpy(), (0.2 * d + 1.0 * d) / 0.7, rtol=1e-6)


@pytest.mark.parametrize(
    ("total", "included", "match"),
    [
        (np.array([np.nan] + [0.0] * 7), ("a",), "NaN/inf"),
        (np.array([np.inf] + [0.0] * 7), ("a",), "NaN/inf"),
        (np.zeros(7), ("a",), r"sum has shape \(7,\), the model needs \(8,\)"),
        (np.zeros((2, 4)), ("a",), r"sum has shape \(2, 4\)"),
        (np.zeros(8), (), "includes no client"),
        (np.zeros(8), ("a", "mallory"), "mallory"),
    ],
)
def test_bad_sums_are_refused_and_the_model_is_unchanged(total, included, match):
    srv = _server()
    before = srv.global_vector().clone()
    with pytest.raises(AggregationError, match=match):
        srv.apply(AggregateResult(total=total, included=included))
    assert torch.equal(srv.global_vector(), before)


def test_only_the_named_parameters_travel_and_change():
    srv = _server(names=["weight"])
    assert srv.dim == 6
    bias = srv.encoder.bias.detach().clone()
    srv.apply(AggregateResult(total=np.ones(6), included=("a", "b", "c")))
    assert torch.equal(srv.encoder.bias, bias)
    np.testing.assert_allclose(srv.global_vector().numpy(), srv.initial_vector.numpy() + 1, rtol=1e-6)


def test_spec_announces_the_round():
    srv = _server()
    assert srv.spec(4, ["b", "a"]) == RoundSpec(run_id="run", round_id=4, clients=("a", "b"), dim=8)


def test_a_server_needs_parameters_to_federate():
    with pytest.raises(ConfigError, match="no trainable encoder parameters"):
        FederatedServer(nn.Linear(2, 2), [], run_id="r", weights={"a": 1.0})


def test_save_load_round_trip(tmp_path):
    srv = _server()
    srv.apply(AggregateResult(total=np.full(8, 0.5), included=("a", "b", "c")))
    srv.save(tmp_path / "state.pt", completed_round=3)
    assert not list(tmp_path.glob("*.tmp"))
    other = _server(seed=1)  # a fresh process: other initial weights
    assert not torch.equal(other.global_vector(), srv.global_vector())
    assert other.load(tmp_path / "state.pt") == 3
    assert torch.equal(other.global_vector(), srv.global_vector())


@pytest.mark.parametrize(("kwargs", "what"), [({"run_id": "another"}, "run"), ({"names": ("weight",)}, "names")])
def test_load_refuses_another_runs_or_models_state(tmp_path, kwargs, what):
    srv = _server()
    srv.save(tmp_path / "state.pt", completed_round=1)
    other = _server(seed=1, **kwargs)
    before = other.global_vector().clone()
    with pytest.raises(CheckpointError, match="belongs to another run or model; refusing to resume"):
        other.load(tmp_path / "state.pt")
    assert torch.equal(other.global_vector(), before)


@pytest.mark.parametrize("content", [b"", b"garbage", None])
def test_load_refuses_a_missing_or_corrupt_file(tmp_path, content):
    path = tmp_path / "state.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match="cannot read the server state"):
        _server().load(path)


def test_server_momentum_accumulates_the_mean_updates_and_resumes(tmp_path):
    from privspk.config import FederationSection
    from privspk.api import server_optimizer_for

    fed = FederationSection(server_optimizer="momentum", server_lr=0.5, server_momentum=0.5)

    def srv(seed=0):
        torch.manual_seed(seed)
        return FederatedServer(nn.Linear(3, 2), ["weight", "bias"], run_id="run", weights={"a": 0.25, "b": 0.75},
                               optimizer=server_optimizer_for(fed))

    s = srv()
    before = s.global_vector().clone()
    d = np.ones(8)
    s.apply(AggregateResult(total=d, included=("a", "b")))  # v = d, step 0.5 d
    s.apply(AggregateResult(total=d, included=("a", "b")))  # v = 1.5 d, step 0.75 d
    np.testing.assert_allclose((s.global_vector() - before).numpy(), 1.25 * d, rtol=1e-6, atol=1e-6)
    s.save(tmp_path / "state.pt", completed_round=2)
    other = srv(seed=1)
    assert other.load(tmp_path / "state.pt") == 2
    s.apply(AggregateResult(total=d, included=("a", "b")))  # v = 1.75 d
    other.apply(AggregateResult(total=d, included=("a", "b")))
    assert torch.equal(other.global_vector(), s.global_vector())
    plain = _server()  # a state saved without an optimiser cannot resume a run that has one
    plain.save(tmp_path / "plain.pt", completed_round=1)
    with pytest.raises(CheckpointError, match="server-optimizer state"):
        srv().load(tmp_path / "plain.pt")


def test_federation_section_checks_the_server_optimizer():
    from privspk.config import RunConfig

    with pytest.raises(ConfigError, match="server_optimizer must be none|momentum|adam"):
        RunConfig.from_dict({"federation": {"server_optimizer": "sgd"}})
    with pytest.raises(ConfigError, match="server_lr must be > 0"):
        RunConfig.from_dict({"federation": {"server_lr": 0.0}})
