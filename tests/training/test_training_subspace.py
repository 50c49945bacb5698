"""The public-subspace prior (``[train] public_subspace``): the basis, the confined update, and what stays put."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

import privspk.training.subspace as subspace
from privspk.config import RunConfig, TrainSection
from privspk.errors import ConfigError
from privspk.models.finetune import apply_recipe
from privspk.privacy import Mechanism
from privspk.training.data import ClientData
from privspk.training.local import LocalSettings, sample_rate_for, train_local
from privspk.training.subspace import SubspaceEmbedding, principal_basis, public_subspace
from privspk.training.trunk import pooled_crops
from training_support import synthetic_features, tiny_net

pytestmark = [pytest.mark.filterwarnings("ignore:Full backward hook is firing"),
              pytest.mark.filterwarnings("ignore:Secure RNG turned off")]
MODES = ("plain", "utterance", "speaker")
K = 5


def _off_subspace(delta: torch.Tensor, basis: torch.Tensor) -> float:
    """Norm of the part of ``delta``'s rows outside span(basis), relative to ``delta``'s norm."""
    rest = delta - delta @ basis @ basis.T
    return float(rest.norm() / delta.norm())


# --------------------------------------------------------------------------- the basis
@pytest.mark.parametrize("k", [1, 3, 8])
def test_basis_is_orthonormal_spans_the_top_directions_and_is_deterministic(k):
    gen = torch.Generator().manual_seed(0)
    scales = torch.tensor([9.0, 7.0, 5.0, 4.0, 3.0, 2.5, 2.0, 1.5] + [0.05] * 8)
    rot, _ = torch.linalg.qr(torch.randn(16, 16, generator=gen))
    z = (torch.randn(4000, 16, generator=gen) * scales) @ rot.T
    p = principal_basis(z, k)
    assert p.shape == (16, k) and p.dtype == torch.float32
    assert torch.allclose(p.T @ p, torch.eye(k), atol=1e-5)
    # the top-k directions of the construction are (nearly) in the span: projection keeps their energy
    top = rot[:, :k]
    assert float((p.T @ top).norm() ** 2) > k - 0.05
    assert torch.equal(p, principal_basis(z.clone(), k))  # a pure function of its input
    # signs are fixed: each column's largest-magnitude entry is positive
    cols = torch.arange(k)
    assert bool((p[p.abs().argmax(0), cols] > 0).all())


@pytest.mark.parametrize("k", [0, 17, 2.5, True])
def test_bad_k_is_refused(k):
    with pytest.raises(ConfigError, match="public_subspace k must be"):
        principal_basis(torch.randn(20, 16), k)


def _prepared(public_feats: dict, client_feats: dict, corpus_id: str = "c1") -> SimpleNamespace:
    """The part of PreparedData that :func:`privspk.api.public_basis_for` reads."""
    feats = {**public_feats, **client_feats}
    spk = {u: u.split("_")[0] for u in feats}

    def utterances_of(speakers):
        ss = set(speakers)
        return [(u, s) for u, s in spk.items() if s in ss]

    return SimpleNamespace(features=SimpleNamespace(get=feats.__getitem__), utterances_of=utterances_of,
                           corpus_id=corpus_id,
                           split=SimpleNamespace(public=sorted({spk[u] for u in public_feats})))


def _cfg(tmp_path, k: int = K) -> RunConfig:
    return RunConfig(data_dir=str(tmp_path), train=TrainSection(recipe="embedding", trunk_crops=2, crop_frames=20,
                                                                public_subspace=k))


def test_basis_depends_on_the_public_speakers_only_and_is_cached(tmp_path, monkeypatch):
    from privspk.api import public_basis_for

    pub, _ = synthetic_features(4, 5, frames=30, seed=1)
    pub = {f"pub{u}": v for u, v in pub.items()}
    cli, _ = synthetic_features(3, 5, frames=30, seed=2)
    enc = tiny_net(3).encoder
    cfg = _cfg(tmp_path)
    monkeypatch.setattr(subspace, "_MEMO", {})
    p1 = public_basis_for(cfg, _prepared(pub, cli), enc).inputs
    assert p1.shape == (enc.embedding.linear.in_features, K)
    assert torch.allclose(p1.T @ p1, torch.eye(K), atol=1e-5)
    cached = list((tmp_path / "pretrained").glob("public_subspace_*.pt"))
    assert len(cached) == 1
    # other client data (even none of the same speakers): the same basis, bit for bit, also recomputed
    monkeypatch.setattr(subspace, "_MEMO", {})
    cached[0].unlink()
    other = {u: 3.0 * v + 1.0 for u, v in cli.items()}
    assert torch.equal(public_basis_for(cfg, _prepared(pub, other), enc).inputs, p1)
    # the cache on disk is what the next process reads
    monkeypatch.setattr(subspace, "_MEMO", {})
    monkeypatch.setattr(subspace, "public_statistics", lambda *a, **k: pytest.fail("recomputed despite the cache"))
    assert torch.equal(public_basis_for(cfg, _prepared(pub, cli), enc).inputs, p1)
    monkeypatch.undo()
    # other public data: another basis (the trunk's memo is keyed by the feature source's id, which a new
    # dict may reuse: cleared too)
    import privspk.training.trunk as trunk

    monkeypatch.setattr(subspace, "_MEMO", {})
    monkeypatch.setattr(trunk, "_MEMO", {})
    pub2 = dict(pub)
    first = sorted(pub2)[0]
    pub2[first] = pub2[first] + 5.0 * torch.randn_like(pub2[first])
    assert not torch.equal(public_basis_for(cfg, _prepared(pub2, cli, corpus_id="c2"), enc).inputs, p1)
    assert public_basis_for(_cfg(tmp_path, 0), _prepared(pub, cli), enc) is None


def test_a_damaged_cache_is_recomputed(tmp_path, monkeypatch):
    pub, pairs = synthetic_features(3, 4, frames=30, seed=1)
    enc = tiny_net(3).encoder
    args = dict(k=3, crops=1, crop_frames=20, cache_dir=tmp_path)
    monkeypatch.setattr(subspace, "_MEMO", {})
    p = public_subspace(enc, pub.__getitem__, list(pub), **args)
    (path,) = tmp_path.glob("public_subspace_*.pt")
    path.write_bytes(b"not a tensor")
    monkeypatch.setattr(subspace, "_MEMO", {})
    assert torch.equal(public_subspace(enc, pub.__getitem__, list(pub), **args), p)


# --------------------------------------------------------------------------- the confined update
def _pooled_client(seed: int = 3):
    feats, pairs = synthetic_features(4, 6, frames=30, seed=seed)
    data = ClientData.from_pairs(feats.__getitem__, pairs)
    net = tiny_net(data.n_speakers)
    apply_recipe(net.encoder, "embedding")
    pooled = pooled_crops(net.encoder, data.getter, data.utt_ids, crops=2, crop_frames=20, seed=0)
    return net, data.with_pooled(pooled)


def _basis(net, k: int = K, seed: int = 9) -> torch.Tensor:
    pub, _ = synthetic_features(5, 4, frames=30, seed=seed)
    return public_subspace(net.encoder, pub.__getitem__, list(pub), k=k, crops=2, crop_frames=20)


def _mechanism(mode, data, *, sigma=1.0, steps=3, batch_size=8, speaker_batch=2):
    if mode == "plain":
        return None
    q = sample_rate_for(data, unit=mode, batch_size=batch_size, speaker_batch=speaker_batch)
    return Mechanism(unit=mode, noise_multiplier=sigma, clip=1.0, sample_rate=q, steps=steps, delta=1e-5,
                     randomness="simulation")


def _train(net, data, *, mode, basis, optimizer="adam", lr=1e-2, steps=3, sigma=1.0, ema=0.0):
    settings = LocalSettings(batch_size=8, physical_batch=4, lr=lr, optimizer=optimizer, momentum=0.0,
                             crop_frames=20, speaker_batch=2, ema=ema, public_basis=basis)
    dp = _mechanism(mode, data, sigma=sigma, steps=steps)
    return train_local(net, data, settings, dp=dp, steps=None if dp else steps, seed=0,
                       randomness=None if dp else "simulation")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ema", [0.0, 0.5])
def test_the_linear_update_lies_in_the_public_subspace(mode, ema):
    net, data = _pooled_client()
    basis = _basis(net)
    lin = net.encoder.embedding.linear
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    w0 = lin.weight.detach().clone()
    others = {n: p.detach().clone() for n, p in net.named_parameters() if p.requires_grad}
    _train(net, data, mode=mode, basis=basis, ema=ema)
    delta = lin.weight.detach() - w0
    assert float(delta.norm()) > 1e-4, "the linear map did not move"
    assert _off_subspace(delta, basis) < 1e-4
    # the model is the same model: same trainable names, the weight trainable again, the rest trained as usual
    assert [n for n, p in net.named_parameters() if p.requires_grad] == names
    assert lin.weight.requires_grad
    now = dict(net.named_parameters())
    assert not torch.equal(now["encoder.embedding.linear.bias"].detach(), others["encoder.embedding.linear.bias"])
    assert not torch.equal(now["encoder.embedding.stats_norm.weight"].detach(),
                           others["encoder.embedding.stats_norm.weight"])


def test_without_the_prior_the_update_leaves_the_subspace():
    """The control: the same round without a basis moves W in (nearly) all input directions."""
    net, data = _pooled_client()
    basis = _basis(net)
    w0 = net.encoder.embedding.linear.weight.detach().clone()
    _train(net, data, mode="utterance", basis=None)
    assert _off_subspace(net.encoder.embedding.linear.weight.detach() - w0, basis) > 0.5


def test_a_full_basis_is_plain_sgd_again():
    """k = d with SGD: W0 + A P^T with P square orthogonal is a reparametrisation, the same trajectory."""
    net_a, data = _pooled_client()
    net_b, _ = _pooled_client()
    d = net_a.encoder.embedding.linear.in_features
    full = _basis(net_a, k=d)
    _train(net_a, data, mode="plain", basis=full, optimizer="sgd", lr=0.05)
    _train(net_b, data, mode="plain", basis=None, optimizer="sgd", lr=0.05)
    for (n, a), (_, b) in zip(net_a.named_parameters(), net_b.named_parameters()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), n


def test_the_noise_on_the_linear_map_shrinks_to_the_subspace():
    """Pure noise (huge sigma, SGD): the linear update's energy drops by about k / d with the prior."""
    energy = {}
    for basis_on in (False, True):
        net, data = _pooled_client()
        basis = _basis(net) if basis_on else None
        w0 = net.encoder.embedding.linear.weight.detach().clone()
        _train(net, data, mode="utterance", basis=basis, optimizer="sgd", lr=1e-3, sigma=1e3, steps=4)
        energy[basis_on] = float((net.encoder.embedding.linear.weight.detach() - w0).norm() ** 2)
    d = net.encoder.embedding.linear.in_features
    ratio = energy[True] / energy[False]
    assert 0.3 * K / d < ratio < 3.0 * K / d


def test_a_failed_round_leaves_the_weight_unfolded_and_trainable(monkeypatch):
    import privspk.training.local as local

    net, data = _pooled_client()
    w0 = net.encoder.embedding.linear.weight.detach().clone()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(local, "_train_plain", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        _train(net, data, mode="plain", basis=_basis(net))
    assert torch.equal(net.encoder.embedding.linear.weight.detach(), w0)
    assert net.encoder.embedding.linear.weight.requires_grad
    assert not any(isinstance(m, SubspaceEmbedding) for m in net.modules())


def test_the_prior_needs_cached_pooled_statistics_and_a_matching_basis():
    net, data = _pooled_client()
    raw = dataclasses.replace(data, pooled=None)
    with pytest.raises(ConfigError, match="public subspace needs the 'embedding' recipe"):
        _train(net, raw, mode="plain", basis=_basis(net))
    with pytest.raises(ConfigError, match="public basis must be"):
        _train(net, data, mode="plain", basis=torch.eye(7)[:, :2])
    with pytest.raises(ConfigError, match="public_basis must be"):
        LocalSettings(batch_size=1, physical_batch=1, lr=1e-3, public_basis=torch.zeros(3))
    assert net.encoder.embedding.linear.weight.requires_grad


# --------------------------------------------------------------------------- config
def test_config_checks_and_fingerprint():
    assert RunConfig().fingerprint() == RunConfig(train=TrainSection(public_subspace=0)).fingerprint()
    assert RunConfig().fingerprint() != RunConfig(train=TrainSection(public_subspace=16)).fingerprint()
    assert not TrainSection(public_subspace=16).check()
    assert any("public_subspace must be" in e for e in TrainSection(public_subspace=-1).check())
    assert any("needs recipe" in e for e in TrainSection(public_subspace=8, recipe="last").check())
    assert any("needs recipe" in e for e in TrainSection(public_subspace=8, trunk_crops=0).check())
    cfg = RunConfig.from_dict({"train": {"public_subspace": 32}})
    assert RunConfig.from_toml(cfg.to_toml()).train.public_subspace == 32


def test_local_settings_need_the_basis_exactly_when_the_option_is_on():
    from privspk.api import local_settings

    on = RunConfig(train=TrainSection(public_subspace=4))
    with pytest.raises(ConfigError, match="needs its public basis"):
        local_settings(on)
    with pytest.raises(ConfigError, match="needs its public basis"):
        local_settings(RunConfig(), public_basis=torch.eye(8)[:, :4])
    with pytest.raises(ConfigError, match="3 input and 0 output directions"):
        local_settings(on, public_basis=torch.eye(8)[:, :3])
    assert local_settings(on, public_basis=torch.eye(8)[:, :4]).public_basis.shape == (8, 4)
    assert local_settings(RunConfig()).public_basis is None


# --------------------------------------------------------------------------- a whole run
def test_a_run_with_the_prior_spends_exactly_what_it_would_without(tmp_path_factory):
    """Same config but public_subspace: the same noise, sample rate, steps and epsilon in report and ledger;
    the released linear map moved only inside the public subspace (plain aggregation: no quantisation)."""
    import sys
    from pathlib import Path

    import privspk
    from privspk.models.checkpoint import load_encoder
    from privspk.privacy import Ledger

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from test_api import shared_data_dir, tiny_config

    runs = tmp_path_factory.mktemp("subspace_runs")
    out = {}
    for k in (0, 4):
        cfg = tiny_config(shared_data_dir(tmp_path_factory), runs, name=f"sub{k}", scheme="plain", rounds=2)
        cfg = cfg.replace(train=dataclasses.replace(cfg.train, recipe="embedding", trunk_crops=2, public_subspace=k))
        res = privspk.train(cfg, progress=False)
        with Ledger(Path(res.run_dir) / "ledger.sqlite", readonly=True) as led:
            rows = [(r.client, r.round, r.noise_multiplier, r.sample_rate, r.steps) for r in led.rows()]
        out[k] = (res, rows, cfg)
    (off, rows_off, cfg), (on, rows_on, _) = out[0], out[4]
    for key in ("noise_multiplier", "sample_rate", "epsilon_spent"):
        assert on.report["privacy"][key] == off.report["privacy"][key], key
    assert rows_on == rows_off and rows_on
    from privspk.api import pretrained_encoder, public_basis_for
    from privspk.prepare import prepare_data

    data = prepare_data(cfg, progress=False)
    base, _ = pretrained_encoder(cfg, data, progress=False)
    basis = public_basis_for(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, public_subspace=4)),
                             data, base).inputs
    released, _ = load_encoder(Path(on.run_dir) / "encoder.pt")
    delta = released.embedding.linear.weight.detach() - base.embedding.linear.weight.detach()
    assert float(delta.norm()) > 0 and _off_subspace(delta, basis) < 1e-4
    released_off, _ = load_encoder(Path(off.run_dir) / "encoder.pt")
    delta_off = released_off.embedding.linear.weight.detach() - base.embedding.linear.weight.detach()
    assert _off_subspace(delta_off, basis) > 0.5


# --------------------------------------------------------------------------- both sides
def test_an_output_basis_confines_the_update_on_both_sides(tmp_path, monkeypatch):
    from privspk.api import public_basis_for
    from privspk.training.subspace import PublicBasis

    net, data = _pooled_client()
    pub, _ = synthetic_features(5, 4, frames=30, seed=9)
    cfg = RunConfig(data_dir=str(tmp_path), train=TrainSection(recipe="embedding", trunk_crops=2, crop_frames=20,
                                                               public_subspace=K, public_subspace_out=3))
    monkeypatch.setattr(subspace, "_MEMO", {})
    both = public_basis_for(cfg, _prepared({f"pub{u}": v for u, v in pub.items()}, {}), net.encoder)
    assert isinstance(both, PublicBasis) and both.inputs.shape[1] == K and both.outputs.shape == (16, 3)
    assert torch.allclose(both.outputs.T @ both.outputs, torch.eye(3), atol=1e-5)
    lin = net.encoder.embedding.linear
    w0 = lin.weight.detach().clone()
    _train(net, data, mode="speaker", basis=both)
    delta = lin.weight.detach() - w0
    assert float(delta.norm()) > 1e-5
    assert _off_subspace(delta, both.inputs) < 1e-4          # rows in span(P)
    assert _off_subspace(delta.T, both.outputs) < 1e-4       # columns in span(Q)
    assert lin.weight.requires_grad


def test_output_side_settings_are_checked():
    from privspk.api import local_settings
    from privspk.training.subspace import PublicBasis

    assert any("needs public_subspace > 0" in e for e in TrainSection(public_subspace_out=4).check())
    assert any("public_subspace_out must be" in e for e in TrainSection(public_subspace=4, public_subspace_out=-1).check())
    on = RunConfig(train=TrainSection(public_subspace=4, public_subspace_out=2))
    with pytest.raises(ConfigError, match="4 input and 0 output directions"):
        local_settings(on, public_basis=PublicBasis(torch.eye(8)[:, :4]))
    assert local_settings(on, public_basis=PublicBasis(torch.eye(8)[:, :4], torch.eye(6)[:, :2])).public_basis
    layer = tiny_net(2).encoder.embedding
    with pytest.raises(ConfigError, match="public output basis must be"):
        SubspaceEmbedding(layer, PublicBasis(torch.eye(layer.linear.in_features)[:, :2], torch.eye(5)[:, :2]))
    assert layer.linear.weight.requires_grad
