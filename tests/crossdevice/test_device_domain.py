"""Device domains: ``[crossdevice] domain`` puts every device's audio through a channel (issue 18 x issue 15).

Config validation, a device's features in the domain (different from clean, deterministic), the
population cache key that keeps clean and domain populations apart, and the held-out evaluation
in the domain condition (from the CLI, on the tiny corpus).
"""

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from privspk.config import CrossDeviceSection, RunConfig
from privspk.crossdevice.loop import check_crossdevice_config, device_domain, population_for
from privspk.crossdevice.population import DevicePopulation
from privspk.errors import ConfigError
from privspk.features.config import FeatureConfig

FEATS = FeatureConfig(n_mels=20)


def test_domain_setting_is_validated_and_defaults_to_clean():
    assert RunConfig().crossdevice.domain == "none" and device_domain(RunConfig()) is None
    cfg = RunConfig.from_dict({"crossdevice": {"domain": "phone"}})
    assert device_domain(cfg) == "phone"
    with pytest.raises(ConfigError, match=r"\[crossdevice\] domain must be none or one of callcentre, phone, car"):
        RunConfig.from_dict({"crossdevice": {"domain": "telephone"}})
    with pytest.raises(ConfigError, match="domain must be none or one of"):  # built in Python, checked at use
        device_domain(RunConfig(crossdevice=CrossDeviceSection(domain="mars")))
    # a config without the setting hashes as before it existed (cached results stay valid)
    section = dataclasses.asdict(RunConfig().crossdevice)
    del section["domain"]
    blob = json.dumps({"crossdevice": section}, sort_keys=True, default=str).encode()
    assert RunConfig().fingerprint("crossdevice") == hashlib.sha256(blob).hexdigest()[:16]
    assert RunConfig().fingerprint("crossdevice") != cfg.fingerprint("crossdevice")
    assert RunConfig.from_toml(cfg.to_toml()) == cfg
    both = RunConfig.from_dict({"federation": {"mode": "cross-device"}, "train": {"recipe": "embedding"},
                                "crossdevice": {"domain": "phone"}, "corpus": {"domains": ["car"]}})
    with pytest.raises(ConfigError, match=r"leave \[corpus\] domains empty"):
        check_crossdevice_config(both)


def test_device_features_in_a_domain_differ_from_clean_and_are_deterministic(tmp_path):
    clean = DevicePopulation(tmp_path / "a", n_devices=3, utts_per_device=2, seed=0, features=FEATS)
    phone = DevicePopulation(tmp_path / "a", n_devices=3, utts_per_device=2, seed=0, features=FEATS, domain="phone")
    again = DevicePopulation(tmp_path / "b", n_devices=3, utts_per_device=2, seed=0, features=FEATS, domain="phone")
    for pop in (clean, phone, again):
        assert pop.build(workers=1, progress=False) == 3
    for d in clean.device_ids:
        c, p, q = clean.features(d), phone.features(d), again.features(d)
        assert [x.shape for x in c] == [x.shape for x in p]  # the channel keeps the length
        # the channel changes every utterance clearly (log-mel units), not in the last bits
        assert all(float((x - y).abs().mean()) > 0.1 for x, y in zip(c, p))
        assert all(np.array_equal(x.numpy(), y.numpy()) for x, y in zip(p, q))  # same draw, same features
    # different utterances of a device get different channel draws (per-utterance seeding)
    a, b = phone.features("dev00000")
    ca, cb = clean.features("dev00000")
    n = min(len(a), len(b))
    assert not np.allclose((a[:n] - ca[:n]).mean(0).numpy(), (b[:n] - cb[:n]).mean(0).numpy(), atol=0.05)


def test_population_cache_is_keyed_by_the_domain(tmp_path):
    keys = {d: DevicePopulation(tmp_path, n_devices=3, utts_per_device=2, seed=0, features=FEATS, domain=d)
            for d in (None, "phone", "car", "callcentre", "smarthome")}
    assert len({p.key for p in keys.values()}) == 5 and len({p.dir for p in keys.values()}) == 5
    # the clean population keeps the key it had before domains existed (no keyword = domain None)
    assert DevicePopulation(tmp_path, n_devices=3, utts_per_device=2, seed=0, features=FEATS).key == keys[None].key
    keys["phone"].build(workers=1, progress=False)
    assert keys[None].missing() == list(keys[None].device_ids)  # nothing of the phone build is seen as clean
    with pytest.raises(ConfigError, match="unknown device domain 'mars'"):
        DevicePopulation(tmp_path, n_devices=3, utts_per_device=2, seed=0, features=FEATS, domain="mars")
    cfg = RunConfig(crossdevice=CrossDeviceSection(domain="phone"))
    assert population_for(cfg).domain == "phone" and population_for(RunConfig()).domain is None


def test_crossdevice_run_in_the_phone_domain_reports_the_domain_conditions(tmp_path_factory, capsys):
    from privspk.cli import main
    from test_crossdevice import _xdev_config

    cfg = _xdev_config(tmp_path_factory, name="xdev-phone", mechanism="dp-fedavg", dp=False)
    cfg = cfg.replace(crossdevice=dataclasses.replace(cfg.crossdevice, domain="phone"))
    path = tmp_path_factory.mktemp("cfg") / "x.toml"
    path.write_text(cfg.to_toml(), encoding="utf-8")
    assert main(["train", "--config", str(path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "device audio through the phone channel" in out
    assert "phone, enrolment and test in phone: EER" in out and "phone, clean enrolment -> phone test: EER" in out
    rep = json.loads((Path(cfg.out_dir) / cfg.name / "report.json").read_text(encoding="utf-8"))
    assert rep["population"]["domain"] == "phone"
    for ev in (rep["pretrain_eval"], rep["final_eval"]):
        assert set(ev["domains"]) == {"phone", "phone/cross"}
        assert all(0.0 <= r["eer"] <= 1.0 and r["n_target"] > 0 for r in ev["domains"].values())
    # pretraining stays public clean: the same encoder as a clean run's, so the clean EER before training is equal
    from privspk.crossdevice import run_crossdevice

    clean = run_crossdevice(cfg.replace(crossdevice=dataclasses.replace(cfg.crossdevice, domain="none")),
                            progress=False, write=False, eval_every=0)
    assert clean.pretrain_eval["eer"] == rep["pretrain_eval"]["eer"] and "domains" not in clean.final_eval
    assert clean.report["population"]["key"] != rep["population"]["key"]
