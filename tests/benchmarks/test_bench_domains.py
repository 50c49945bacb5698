"""Tests of benchmarks/domains.py's bookkeeping (the benchmark itself trains for tens of minutes)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from privspk.config import RunConfig

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "domains.py"
_spec = importlib.util.spec_from_file_location("bench_domains", _PATH)
bd = importlib.util.module_from_spec(_spec)
sys.modules["bench_domains"] = bd
_spec.loader.exec_module(bd)


@pytest.fixture
def base(tmp_path):
    return bd.base_config(SimpleNamespace(runs=tmp_path / "runs", data=tmp_path / "data", threads=1,
                                          domains="callcentre"))


def test_the_demo_federation_in_the_call_centre_and_configs_round_trip(base):
    assert base.corpus.domains == ("callcentre",) and base.federation.n_clients == 3
    assert base.privacy.randomness == "simulation" and base.secagg.scheme == "plain"
    for eps, unit, ov in ((None, "utterance", {"lr": 3e-3}), (8.0, "utterance", {"lr": 3e-2, "clip": 1.0}),
                          (2.0, "speaker", {"lr": 1e-2, "clip": 0.3})):
        cfg, tag = bd.run_config(base, seed=1, epsilon=eps, unit=unit, overrides=ov)
        assert cfg.privacy.enabled == (eps is not None) and cfg.seed == 1 and cfg.train.lr == ov["lr"]
        assert RunConfig.from_toml(cfg.to_toml()) == cfg
        if eps is None:
            assert tag == "utterance_np_s1"
        else:
            assert cfg.privacy.clip == ov["clip"] and cfg.privacy.epsilon == eps
        if unit == "speaker":
            assert cfg.train.speaker_batch == bd.SPEAKER_UNIT["speaker_batch"] and cfg.privacy.unit == "speaker"


@pytest.mark.parametrize("lever", sorted(bd.LEVERS))
def test_each_lever_is_a_valid_config_that_changes_one_thing(base, lever):
    tuned = {"lr": 3e-2, "clip": 1.0}
    ref, _ = bd.run_config(base, seed=0, epsilon=8.0, unit="utterance", overrides=tuned)
    cfg, tag = bd.run_config(base, seed=0, epsilon=8.0, unit="utterance", overrides={**tuned, **bd.LEVERS[lever]},
                             label=lever)
    assert RunConfig.from_toml(cfg.to_toml()) == cfg and tag.startswith(lever)
    changed = {sec for sec in ("train", "federation", "privacy") if getattr(cfg, sec) != getattr(ref, sec)}
    assert changed == set(bd.LEVERS[lever])


def _fake_data():
    from privspk.corpus import SpeakerSplit
    from privspk.prepare import PreparedData

    clients = [tuple(f"c{k}s{i:02d}" for i in range(8)) for k in range(3)]
    held = tuple(f"h{i}" for i in range(4))
    utt2spk = {f"{s}-{j}": s for s in [x for g in clients for x in g] + list(held) for j in range(5)}
    split = SpeakerSplit(public=("p0",), clients=tuple(clients), heldout=held)
    return PreparedData(corpus=None, split=split, features=None, utt2spk=utt2spk, trials=["test trials"],
                        corpus_id="x", speaker_domains={s: "callcentre" for g in clients for s in g},
                        domain_trials={"callcentre": ["test"]})


def test_validation_split_keeps_speakers_out_of_training_and_away_from_the_test_trials():
    data = _fake_data()
    train, val = bd.validation_split(data, per_client=3)
    kept = set(val.split.heldout)
    assert len(kept) == 9 and all(len(g) == 5 for g in train.split.clients)
    assert not kept & {s for g in train.split.clients for s in g}  # never trained on
    assert kept <= {s for g in data.split.clients for s in g} and not kept & set(data.split.heldout)
    assert train.trials == data.trials and train.domain_trials == data.domain_trials  # the test trials, unchanged
    assert val.split.clients == train.split.clients
    spk = {u: s for u, s in data.utt2spk.items()}
    for t in val.trials:
        assert spk[t.enroll] in kept and spk[t.test] in kept
    assert set(val.domain_trials) == {"callcentre", "callcentre/cross"}
    assert all(t.enroll.endswith("@callcentre") and t.test.endswith("@callcentre") for t in val.domain_trials["callcentre"])
    assert any(t.target for t in val.trials) and any(not t.target for t in val.trials)
    again, _ = bd.validation_split(data, per_client=3)
    assert again.split == train.split  # deterministic


def test_validation_split_refuses_too_small_clients():
    from privspk.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot keep 7 for validation"):
        bd.validation_split(_fake_data(), per_client=7)
    with pytest.raises(ConfigError, match="must be >= 2"):
        bd.validation_split(_fake_data(), per_client=1)


def test_tuning_picks_the_lowest_validation_eer_and_states_the_privacy_cost():
    rows = [{"stage": "tune", "epsilon": 8.0, "lr": lr, "clip": c, "final": {"callcentre": e, "clean": 0.1},
             "seconds": 60.0} for lr, c, e in ((1e-2, 0.3, 0.12), (3e-2, 0.3, 0.10), (3e-2, 1.0, 0.11))]
    rows += [{"stage": "tune", "epsilon": None, "lr": lr, "clip": None, "final": {"callcentre": e, "clean": 0.1},
              "seconds": 60.0} for lr, e in ((1e-3, 0.09), (3e-3, 0.08))]
    t = bd.tuning_table(rows, ["callcentre"])
    assert t["chosen_dp"] == {"lr": 3e-2, "clip": 0.3} and t["chosen_np"] == {"lr": 3e-3}
    assert t["configs_dp"] == 3 and "at most 24 per utterance" in t["privacy_cost"] and t["minutes"] == 5.0


def _row(seed, eps, unit, pre, fin):
    return {"seed": seed, "epsilon": eps, "unit": unit, "pretrain": {"car": pre}, "final": {"car": fin},
            "seconds": 1.0, "sigma": None}


def test_summary_computes_relative_gain_and_gain_kept(tmp_path):
    rows = [_row(0, None, "utterance", 0.20, 0.10), _row(0, 8.0, "utterance", 0.20, 0.14),
            _row(1, None, "utterance", 0.20, 0.12), _row(1, 8.0, "utterance", 0.20, 0.16)]
    (s,) = bd.summarise(rows)
    assert s["condition"] == "car" and math.isclose(s["eer_pretrain"], 0.20)
    assert math.isclose(s["nonprivate_relative_gain"], (0.20 - 0.11) / 0.20)
    kept = s["dp"]["utterance/8"]["gain_kept"]
    assert math.isclose(kept[0], (0.6 + 0.5) / 2) and kept[1] > 0
    md = bd.markdown({"meta": {"date": "d", "machine": "m", "threads": 1, "minutes": 1, "clients": 4, "rounds": 5,
                               "trials": 10, "heldout": 2, "seeds": [0, 1], "command": "c", "load_start": "1",
                               "load_end": "2", "domains": ["car"], "val_per_client": 4, "val_speakers": 12,
                               "val_trials": 100},
                      "summary": [s], "notes": "n", "skipped": []})
    assert "| car | 20.00 | 11.00 +- 1.41 | 45 % | 15.00 +- 1.41 / 0.55 +- 0.07 |" in md


def test_run_keys_leave_the_paths_out_and_legacy_rows_are_found_and_rekeyed(tmp_path):
    a = bd.base_config(SimpleNamespace(runs=tmp_path / "a", data=tmp_path / "d1", threads=1, domains="callcentre"))
    b = bd.base_config(SimpleNamespace(runs=tmp_path / "b", data=tmp_path / "d2", threads=1, domains="callcentre"))
    cfg_a, _ = bd.run_config(a, seed=0, epsilon=8.0, unit="utterance", overrides={"lr": 1e-2, "clip": 0.3})
    cfg_b, _ = bd.run_config(b, seed=0, epsilon=8.0, unit="utterance", overrides={"lr": 1e-2, "clip": 0.3})
    assert bd.run_key(cfg_a, split="val") == bd.run_key(cfg_b, split="val") != bd.run_key(cfg_a, split="test")
    # a row keyed the old way (the whole config's fingerprint, paths included)
    runs = tmp_path / "runs"
    runs.mkdir()
    old = {"key": f"val:{cfg_a.fingerprint()}", "split": "val", "final": {"callcentre": 0.1}}
    (runs / "rows.jsonl").write_text(json.dumps(old) + "\n")
    assert not bd.Runner(runs).has(cfg_b, split="val")
    legacy = bd.Runner(runs, legacy_dirs=(str(tmp_path / "a"), str(tmp_path / "d1")))
    row = legacy.run(cfg_b, None, split="val", stage="tune", info={})  # found: nothing trains (data is None)
    assert row["final"] == old["final"] and row["key"] == bd.run_key(cfg_b, split="val")
    assert bd.Runner(runs).has(cfg_b, split="val")  # re-keyed on disk: found without the legacy paths next time


@pytest.mark.parametrize("unit", sorted(bd.PRIOR_GRID))
def test_prior_grid_configs_are_valid_and_change_only_the_subspace_and_lr(base, unit):
    from privspk.api import check_run_config

    tuned = {"lr": 1e-2, "clip": 0.3}
    ref, _ = bd.run_config(base, seed=0, epsilon=8.0, unit=unit, overrides=tuned)
    d_in, d_out = bd._embedding_dims(base)
    assert (d_in, d_out) == (384, 192)
    for k, k_out, lr in bd.PRIOR_GRID[unit]:
        assert 1 <= k <= d_in and 0 <= k_out <= d_out
        cfg, _ = bd.run_config(base, seed=0, epsilon=8.0, unit=unit, label="x",
                               overrides={**tuned, "lr": lr, "train": {"public_subspace": k, "public_subspace_out": k_out}})
        check_run_config(cfg)
        assert RunConfig.from_toml(cfg.to_toml()) == cfg
        assert cfg.train.public_subspace == k and cfg.train.public_subspace_out == k_out and cfg.train.lr == lr
        assert dataclasses.replace(cfg.train, public_subspace=0, public_subspace_out=0, lr=ref.train.lr) == ref.train
        assert cfg.privacy == ref.privacy and cfg.federation == ref.federation


def test_a_rekeyed_row_is_counted_once(tmp_path):
    a = bd.base_config(SimpleNamespace(runs=tmp_path / "a", data=tmp_path / "d1", threads=1, domains="callcentre"))
    cfg, _ = bd.run_config(a, seed=0, epsilon=8.0, unit="utterance", overrides={"lr": 1e-2, "clip": 0.3})
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "rows.jsonl").write_text(json.dumps({"key": f"val:{cfg.fingerprint()}", "seconds": 1.0}) + "\n")
    legacy = bd.Runner(runs, legacy_dirs=(str(tmp_path / "a"), str(tmp_path / "d1")))
    legacy.run(cfg, None, split="val", stage="tune", info={})
    assert len(legacy.done) == 1 and len(bd.Runner(runs).done) == 1
