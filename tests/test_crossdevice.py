"""The cross-device mode end to end on the tiny corpus: API, CLI, budget sit-outs; population caching."""

import dataclasses
import json

import numpy as np
import pytest

from privspk.config import CrossDeviceSection, FederationSection
from privspk.crossdevice import run_crossdevice
from privspk.crossdevice.loop import population_for
from privspk.crossdevice.population import DevicePopulation, builtin_heldout_variants, device_profile
from privspk.errors import ConfigError
from privspk.features.config import FeatureConfig
from test_api import shared_data_dir, tiny_config


def _xdev_config(tmp_path_factory, *, name: str, mechanism: str = "dp-ftrl", dp: bool = True):
    cfg = tiny_config(shared_data_dir(tmp_path_factory), tmp_path_factory.mktemp("runs"), name=name, dp=dp)
    return cfg.replace(
        train=dataclasses.replace(cfg.train, recipe="embedding"),
        federation=FederationSection(mode="cross-device", rounds=3),
        crossdevice=CrossDeviceSection(population=8, utts_per_device=2, devices_per_round=4, sampling="fixed",
                                       device_epsilon=30.0, mechanism=mechanism, dropout=0.25,
                                       dropout_allowance=0.25, max_participations=1, local_steps=2,
                                       codeword_length=8, trunk_crops=1),
        eval=dataclasses.replace(cfg.eval, max_frames=200))


def test_population_is_deterministic_cached_and_avoids_heldout_voices(tmp_path):
    excluded = builtin_heldout_variants(n_speakers=200, seed=0)
    assert all(device_profile(i, seed=0, exclude_variants=excluded).variant not in excluded for i in range(200))
    a = DevicePopulation(tmp_path / "a", n_devices=3, utts_per_device=2, seed=0, features=FeatureConfig(n_mels=20))
    b = DevicePopulation(tmp_path / "b", n_devices=3, utts_per_device=2, seed=0, features=FeatureConfig(n_mels=20))
    assert a.build(workers=1, progress=False) == 3 and a.build(workers=1, progress=False) == 0
    b.build(workers=1, progress=False)
    for d in a.device_ids:  # same settings -> bit-identical features (same code path)
        assert all(np.array_equal(x.numpy(), y.numpy()) for x, y in zip(a.features(d), b.features(d)))
    # a larger population starts with the same devices (their cache files are reused)
    big = DevicePopulation(tmp_path / "a", n_devices=4, utts_per_device=2, seed=0, features=FeatureConfig(n_mels=20))
    assert big.dir == a.dir and big.missing() == ["dev00003"]


def test_crossdevice_run_from_the_api_with_budget_sit_outs(tmp_path_factory):
    cfg = _xdev_config(tmp_path_factory, name="xdev-api")
    res = run_crossdevice(cfg, progress=False)
    rounds = res.rounds
    assert [r["round"] for r in rounds] == [1, 2, 3]
    first = rounds[0]
    assert first["sampled"] == 4 and first["dropped"] == 1 and first["included"] == 3 and first["sat_out"] == 0
    # DP-FTRL accounts participations: with max_participations = 1 a device sits out after its first round
    assert rounds[1]["sat_out"] == 4 and rounds[1]["eligible"] == 4 and rounds[1]["sampled"] == 4
    assert "skipped" in rounds[2] and rounds[2]["eligible"] == 0 and rounds[2]["sat_out"] == 8
    from privspk.privacy.device_ledger import DeviceLedger

    led_path = res.run_dir / "device_ledger.sqlite"
    acc = res.report["privacy"]["accountant"]
    from privspk.privacy.device_ledger import accountant_from_dict

    with DeviceLedger(led_path, run_id=cfg.name, accountant=accountant_from_dict(acc), budget=30.0) as led:
        taken = {d: led.participations(d) for d in population_for(cfg).device_ids}  # rounds taken part in
        assert all(len(r) == 1 for r in taken.values()) and all(led.epsilon(d) <= 30.0 for d in taken)
        assert sorted(r[0] for r in taken.values()) == [1] * 4 + [2] * 4
    rep = json.loads((res.run_dir / "report.json").read_text())
    assert rep["mode"] == "cross-device" and 0.0 <= rep["final_eval"]["eer"] <= 1.0
    assert rep["privacy"]["central_epsilon"] <= 30.0
    # codewords exist only in the devices' own storage, one file per device that trained
    assert len(list((res.run_dir / "devices").glob("*.codeword"))) == 8


def test_crossdevice_run_from_the_cli(tmp_path_factory, capsys):
    from privspk.cli import main

    cfg = _xdev_config(tmp_path_factory, name="xdev-cli", mechanism="dp-fedavg")
    cfg = cfg.replace(crossdevice=dataclasses.replace(cfg.crossdevice, device_epsilon=50.0))
    path = tmp_path_factory.mktemp("cfg") / "x.toml"
    path.write_text(cfg.to_toml(), encoding="utf-8")
    assert main(["train", "--config", str(path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "privspk cross-device: 8 phones" in out and "round 3/3" in out and "after cross-device training" in out


def test_validation_split_and_a_smaller_trainable_part(tmp_path_factory):
    """evaluate_on="validation" scores only the corpus' client speakers (never a held-out trial);
    trainable="norms" sends and changes only the LayerNorm gains/biases and the linear bias."""
    from privspk.api import pretrained_encoder
    from privspk.crossdevice.device import flat_params, trainable_names
    from privspk.crossdevice.loop import validation_evaluator
    from privspk.prepare import prepare_data

    cfg = _xdev_config(tmp_path_factory, name="xdev-val", mechanism="dp-fedavg", dp=False)
    cfg = cfg.replace(crossdevice=dataclasses.replace(cfg.crossdevice, trainable="norms"))
    data = prepare_data(cfg, progress=False)
    ev = validation_evaluator(cfg, data)
    clients = {s for g in data.split.clients for s in g}
    assert ev.data.trials and all(data.utt2spk[t.enroll] in clients and data.utt2spk[t.test] in clients
                                  for t in ev.data.trials)
    assert not clients & set(data.split.heldout)
    res = run_crossdevice(cfg, progress=False, data=data, write=False, evaluate_on="validation")
    layer = res.encoder.embedding
    names = trainable_names(layer, "norms")
    assert res.report["evaluated_on"] == "validation" and res.report["eval_trials"] == len(ev.data.trials)
    assert res.report["trainable_parameters"] == flat_params(layer, names).numel() < flat_params(layer).numel()
    base, _ = pretrained_encoder(cfg, data, progress=False)
    assert torch_equal(base.embedding.linear.weight, layer.linear.weight)  # not trained
    assert not torch_equal(base.embedding.norm.bias, layer.norm.bias)  # trained
    with pytest.raises(ConfigError, match="evaluate_on must be test|validation"):
        run_crossdevice(cfg, progress=False, data=data, write=False, evaluate_on="train")


def test_a_round_that_cannot_be_opened_releases_nothing_and_is_charged(tmp_path_factory):
    """4 devices a round, 45 % dropouts: 2 drop, 2 survivors < t = 3, so no round can be opened (a real
    SecAgg+ AggregationError). The run goes on: each such round is recorded as failed, the model
    stays the public one, and the sampled devices are charged in the ledger."""
    from privspk.api import pretrained_encoder
    from privspk.prepare import prepare_data

    cfg = _xdev_config(tmp_path_factory, name="xdev-fail")
    cfg = cfg.replace(crossdevice=dataclasses.replace(cfg.crossdevice, dropout=0.45, dropout_allowance=0.45))
    data = prepare_data(cfg, progress=False)
    res = run_crossdevice(cfg, progress=False, data=data)
    opened = [r for r in res.rounds if "skipped" not in r]
    assert len(opened) == 2 and all("too few" in r["failed"] and r["included"] == 0 for r in opened)
    assert all(r["admitted"] == 4 and r["dropped"] == 2 for r in opened)
    base, _ = pretrained_encoder(cfg, data, progress=False)
    for a, b in zip(base.embedding.parameters(), res.encoder.embedding.parameters()):
        assert torch_equal(a, b)
    from privspk.privacy.device_ledger import DeviceLedger, accountant_from_dict

    acc = accountant_from_dict(res.report["privacy"]["accountant"])
    with DeviceLedger(res.run_dir / "device_ledger.sqlite", run_id=cfg.name, accountant=acc, budget=30.0) as led:
        charged = [d for d in population_for(cfg).device_ids if led.participations(d)]
    assert len(charged) == 8
    lines = (res.run_dir / "rounds.jsonl").read_text().splitlines()
    assert sum("failed" in json.loads(x) for x in lines) == 2


def test_dropout_of_half_or_more_is_refused():
    errs = CrossDeviceSection(dropout=0.5, dropout_allowance=0.6).check()
    assert any("strict-majority" in e for e in errs)
    assert CrossDeviceSection(dropout=0.45, dropout_allowance=0.6).check() == []


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a.detach(), b.detach()))
