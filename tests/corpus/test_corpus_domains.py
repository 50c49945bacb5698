"""Client domains in the corpus: config, dealing, domain ids, cached domain features, per-domain trials."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

from privspk.config import CorpusSection, RunConfig
from privspk.corpus.domains import (
    DomainFeatures,
    build_domain_caches,
    client_domains,
    domain_cache_root,
    domain_conditions,
    domain_utt,
    split_domain_utt,
)
from privspk.errors import ConfigError, FeatureError
from privspk.evaluation.trials import Trial
from privspk.prepare import prepare_data

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_api import shared_data_dir, tiny_config  # noqa: E402


def test_config_reads_writes_and_checks_domains():
    cfg = RunConfig.from_dict({"corpus": {"domains": ["callcentre", "car"]}})
    assert cfg.corpus.domains == ("callcentre", "car")
    assert RunConfig.from_toml(cfg.to_toml()) == cfg
    with pytest.raises(ConfigError, match=r"\[corpus\] domains: unknown 'radio'; known: callcentre, phone, car"):
        RunConfig.from_dict({"corpus": {"domains": ["radio"]}})
    with pytest.raises(ConfigError, match=r"\[corpus\] domains: expected a list, got str 'car'"):
        RunConfig.from_dict({"corpus": {"domains": "car"}})
    with pytest.raises(ConfigError, match=r"domains: list item: expected str"):
        RunConfig.from_dict({"corpus": {"domains": [3]}})


def test_unset_domains_leave_every_fingerprint_as_before():
    """The pretrained-encoder cache key of a config without domains is what it was before the key existed."""
    assert RunConfig().fingerprint("corpus") == RunConfig(corpus=CorpusSection(domains=())).fingerprint("corpus")
    assert RunConfig(corpus=CorpusSection(domains=("car",))).fingerprint("corpus") != RunConfig().fingerprint("corpus")


def test_dealing_and_ids():
    assert client_domains(["callcentre", "car"], n_clients=4) == ("callcentre", "car", "callcentre", "car")
    with pytest.raises(ConfigError, match="every domain needs a client"):
        client_domains(["callcentre", "car", "phone"], n_clients=2)
    with pytest.raises(ConfigError, match="unknown domain 'tv'"):
        client_domains(["tv"], n_clients=2)
    assert split_domain_utt(domain_utt("spk1-000", "phone")) == ("spk1-000", "phone")
    with pytest.raises(ConfigError, match="without '@'"):
        domain_utt("a@b", "car")


def test_domain_conditions_reuse_the_clean_pairs():
    trials = [Trial("a1", "a2", True), Trial("a1", "b1", False)]
    conds = domain_conditions(trials, ["phone", "phone", "car"])
    assert sorted(conds) == ["car", "car/cross", "phone", "phone/cross"]
    for name, ts in conds.items():
        d = name.split("/")[0]
        assert [t.target for t in ts] == [True, False]
        for t, c in zip(trials, ts):
            assert split_domain_utt(c.test) == (t.test, d)
            assert split_domain_utt(c.enroll) == ((t.enroll, None) if name.endswith("/cross") else (t.enroll, d))


def test_unprepared_domain_is_a_feature_error():
    f = DomainFeatures({}, {})
    with pytest.raises(FeatureError, match="domain 'car' was not prepared"):
        f.get("u1@car")
    assert "u1@car" not in f


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    base = tiny_config(shared_data_dir(tmp_path_factory), tmp_path_factory.mktemp("runs_dom"))
    cfg = base.replace(corpus=dataclasses.replace(base.corpus, domains=("callcentre", "car")))
    return base, cfg, prepare_data(cfg, progress=False)


def test_clients_hold_their_domain_and_public_speakers_stay_clean(prepared):
    base, cfg, data = prepared
    clean = prepare_data(base, progress=False)
    assert data.trials == clean.trials and data.split == clean.split
    dealt = ("callcentre", "car", "callcentre")
    for group, d in zip(data.split.clients, dealt):
        pairs = data.utterances_of(group)
        assert pairs and all(split_domain_utt(u)[1] == d for u, _ in pairs)
        assert [(split_domain_utt(u)[0], s) for u, s in pairs] == clean.utterances_of(group)
    assert data.utterances_of(data.split.public) == clean.utterances_of(data.split.public)
    # domain features exist and differ from the clean ones; clean ids still give the clean features
    u, _ = data.utterances_of(data.split.clients[1])[0]
    base_id = split_domain_utt(u)[0]
    assert torch.equal(data.features.get(base_id), clean.features.get(base_id))
    assert data.features.get(u).shape[1] == cfg.features.n_mels
    assert not torch.equal(data.features.get(u)[:5], clean.features.get(base_id)[:5])
    assert sorted(data.domain_trials) == ["callcentre", "callcentre/cross", "car", "car/cross"]
    for ts in data.domain_trials.values():
        for t in ts:
            assert t.test in data.features and t.enroll in data.features


def test_domain_features_are_cached_and_deterministic(prepared, tmp_path):
    _, cfg, data = prepared
    again = prepare_data(cfg, progress=False)
    assert again.seconds["domains"] < 2.0  # nothing re-derived
    # an independent build of the same domain utterances gives identical features (same path, run twice)
    utts = [u for u in data.corpus.utterances if u.speaker in set(data.split.heldout)][:2]
    caches = build_domain_caches(tmp_path, cfg.features.feature_config(), {"car": utts}, seed=cfg.corpus.seed,
                                 progress=False)
    for u in utts:
        assert torch.equal(caches["car"].get(domain_utt(u.utt_id, "car")), data.features.get(domain_utt(u.utt_id, "car")))
    other = build_domain_caches(tmp_path / "s1", cfg.features.feature_config(), {"car": utts[:1]},
                                seed=cfg.corpus.seed + 1, progress=False)
    uid = domain_utt(utts[0].utt_id, "car")
    assert not torch.equal(other["car"].get(uid), data.features.get(uid))
    assert domain_cache_root(tmp_path, domain="car", seed=1).parent == tmp_path / "domains"


def test_too_many_domains_for_the_clients_is_refused_before_any_work(prepared):
    base, _, _ = prepared
    cfg = base.replace(corpus=dataclasses.replace(base.corpus, domains=("callcentre", "car", "phone", "smarthome")))
    with pytest.raises(ConfigError, match="4 domains for 3 clients"):
        prepare_data(cfg, progress=False)


def test_the_evaluator_reports_eer_per_domain_condition(prepared):
    from privspk.api import HeldoutEvaluator
    from privspk.models import build_encoder

    _, cfg, data = prepared
    torch.manual_seed(0)
    enc = build_encoder(cfg.model.encoder, in_dim=cfg.features.n_mels)
    ev = HeldoutEvaluator(data, max_frames=cfg.eval.max_frames, enroll_per_speaker=1, seed=0).evaluate(enc)
    assert sorted(ev["domains"]) == ["callcentre", "callcentre/cross", "car", "car/cross"]
    for r in ev["domains"].values():
        assert 0.0 <= r["eer"] <= 1.0 and r["n_target"] + r["n_nontarget"] == len(data.trials)
