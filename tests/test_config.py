"""The typed run config: TOML round trip, every problem reported at once, presets, fingerprints."""

from __future__ import annotations

import dataclasses
import math
import tomllib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from privspk.config import (
    HE_TRUST,
    CorpusSection,
    EvalSection,
    FeaturesSection,
    FederationSection,
    ModelSection,
    PretrainSection,
    PrivacySection,
    RunConfig,
    SecAggSection,
    SplitSection,
    TrainSection,
)
from privspk.errors import ConfigError

I64 = 2**63 - 1
text = st.text(max_size=12)
ints = st.integers(-I64, I64)


def pos(lo: int = 1, hi: int = 10**9) -> st.SearchStrategy[int]:
    return st.integers(lo, hi)


def floats(lo: float, hi: float, *, exclude_min: bool = False, exclude_max: bool = False):
    return st.floats(lo, hi, exclude_min=exclude_min, exclude_max=exclude_max, allow_nan=False,
                     allow_infinity=False)


option_values = st.one_of(ints, floats(-1e9, 1e9), text, st.booleans(),
                          st.lists(st.integers(-100, 100), max_size=3))

sections = {
    "corpus": st.builds(CorpusSection, path=text, format=st.sampled_from(["auto", "folder", "librispeech", "voxceleb",
                                                                          "kaldi"]),
                        on_error=st.sampled_from(["raise", "skip"]), n_speakers=pos(8), utts_per_speaker=pos(4),
                        seed=ints),
    "split": st.builds(SplitSection, public_fraction=floats(0, 1, exclude_max=True), heldout=pos(2),
                       skew=floats(0, 1e6), seed=ints),
    "features": st.builds(FeaturesSection, kind=st.sampled_from(["fbank", "mfcc"]), n_mels=st.integers(10, 128),
                          n_mfcc=ints, cmn=st.booleans()),
    "model": st.builds(ModelSection, encoder=text, margin=floats(0, 1, exclude_max=True),
                       scale=floats(0, 1e6, exclude_min=True)),
    "pretrain": st.builds(PretrainSection, enabled=st.booleans(), steps=pos(0), batch_size=pos(),
                          lr=floats(0, 10, exclude_min=True), crop_frames=pos(20)),
    "train": st.builds(TrainSection, recipe=st.sampled_from(["full", "last", "head", "adapters", "embedding"]), local_steps=pos(),
                       batch_size=pos(), physical_batch=pos(), lr=floats(0, 10, exclude_min=True),
                       optimizer=st.sampled_from(["adam", "sgd"]), momentum=floats(-10, 10), crop_frames=pos(20),
                       speaker_batch=pos()),
    "privacy": st.builds(PrivacySection, enabled=st.booleans(), epsilon=floats(0, 1e6, exclude_min=True),
                         delta=floats(0, 1, exclude_min=True, exclude_max=True),
                         unit=st.sampled_from(["utterance", "speaker"]), clip=floats(0, 1e6, exclude_min=True),
                         accountant=st.sampled_from(["rdp", "prv"])),
    "secagg": st.builds(SecAggSection, scheme=st.sampled_from(["plain", "mask", "ckks", "bfv"]),
                        options=st.dictionaries(st.text(min_size=1, max_size=8), option_values, max_size=4)).map(
        lambda s: dataclasses.replace(s, options={**s.options, "he_trust": HE_TRUST})
        if s.scheme in ("ckks", "bfv") else s),  # the HE schemes refuse to start without it
    "federation": st.builds(FederationSection, n_clients=pos(), rounds=pos(),
                            update_clip=floats(0, 1e6, exclude_min=True)),
    "eval": st.builds(EvalSection, target_per_utt=pos(), nontarget_per_utt=pos(), enroll_per_speaker=pos(),
                      max_frames=ints),
}
configs = st.builds(RunConfig, name=text, seed=ints, threads=pos(), data_dir=text, out_dir=text, **sections)


def _tuples_to_lists(x):
    if isinstance(x, dict):
        return {k: _tuples_to_lists(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_tuples_to_lists(v) for v in x]
    return x


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs)
def test_toml_round_trip(cfg):
    text_ = cfg.to_toml()
    back = RunConfig.from_toml(text_)
    assert back == cfg
    assert back.fingerprint() == cfg.fingerprint()
    assert _tuples_to_lists(tomllib.loads(text_)) == _tuples_to_lists(cfg.to_dict())


@settings(max_examples=25, deadline=None)
@given(configs, st.sampled_from(sorted(sections)), st.data())
def test_fingerprint_depends_only_on_the_named_sections(cfg, name, data):
    other_value = data.draw(sections[name])
    changed = cfg.replace(**{name: other_value})
    others = [s for s in sections if s != name]
    assert changed.fingerprint(*others) == cfg.fingerprint(*others)
    assert (changed.fingerprint(name) == cfg.fingerprint(name)) == (other_value == getattr(cfg, name))
    assert len(cfg.fingerprint()) == 16


def test_defaults_and_a_file_round_trip(tmp_path):
    cfg = RunConfig()
    assert (cfg.privacy.epsilon, cfg.privacy.delta, cfg.secagg.scheme) == (8.0, 1e-5, "plain")
    path = tmp_path / "run.toml"
    path.write_text(cfg.to_toml(), encoding="utf-8")
    assert RunConfig.load(path) == cfg


def test_an_int_is_accepted_where_a_float_is_expected():
    cfg = RunConfig.from_dict({"privacy": {"epsilon": 3, "clip": 2}})
    assert cfg.privacy.epsilon == 3.0 and type(cfg.privacy.epsilon) is float and type(cfg.privacy.clip) is float


def test_unknown_keys_and_wrong_types_are_all_reported_at_once():
    data = {
        "nmae": "x",
        "threads": "2",
        "privacy": {"epsilonn": 3, "delta": "small"},
        "train": {"lr": True, "local_steps": 2.0},
        "federation": [1, 2],
        "secagg": {"options": 3},
        "eval": {"target_per_utt": False},
    }
    with pytest.raises(ConfigError) as exc:
        RunConfig.from_dict(data)
    msg = str(exc.value)
    assert msg.startswith("invalid run config: ")
    for part in [
        "unknown top-level key 'nmae' (known: ",
        "threads: expected int, got str '2'",
        "[privacy] unknown key 'epsilonn' (known: accountant, ",
        "[privacy] delta: expected a number, got str 'small'",
        "[train] lr: expected a number, got bool True",  # a bool is not a number here
        "[train] local_steps: expected int, got float 2.0",
        "[federation] must be a table, got list",
        "[secagg] options: expected a table, got int",
        "[eval] target_per_utt: expected int, got bool False",
    ]:
        assert part in msg, f"missing {part!r} in {msg}"
    assert msg.count(";") == 8  # nine problems, one message


def test_out_of_range_values_are_all_reported_at_once():
    data = {"threads": 0, "privacy": {"epsilon": -1.0, "delta": 1.5, "unit": "client"},
            "train": {"recipe": "everything"}, "features": {"n_mels": 5}}
    with pytest.raises(ConfigError) as exc:
        RunConfig.from_dict(data)
    msg = str(exc.value)
    for part in ["[privacy] epsilon must be a positive finite number, got -1.0", "[privacy] delta must be in (0, 1)",
                 "[privacy] unit must be utterance|speaker, got 'client'",
                 "[train] recipe must be full|last|head|adapters|embedding|embedding_norm, got 'everything'",
                 "[features] n_mels must be in [10, 128], got 5", "threads must be >= 1, got 0"]:
        assert part in msg, f"missing {part!r} in {msg}"


def test_range_and_type_problems_in_the_same_section_are_reported_together():
    with pytest.raises(ConfigError) as exc:
        RunConfig.from_dict({"privacy": {"epsilon": -1.0, "delta": "x"}, "train": {"lr": -1.0, "zz": 1}})
    msg = str(exc.value)
    for part in ["[privacy] delta: expected a number", "[privacy] epsilon must be a positive finite number",
                 "[train] unknown key 'zz'", "[train] lr must be > 0"]:
        assert part in msg, f"missing {part!r} in {msg}"
    # a range problem in one section, an unknown key in another, a bad top-level value
    with pytest.raises(ConfigError) as exc:
        RunConfig.from_dict({"threads": 0, "privacy": {"clip": -2}, "eval": {"zz": 1}})
    msg = str(exc.value)
    for part in ["[eval] unknown key 'zz'", "[privacy] clip must be > 0, got -2.0", "threads must be >= 1, got 0"]:
        assert part in msg, f"missing {part!r} in {msg}"


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_epsilon_in_toml_is_refused(value):
    with pytest.raises(ConfigError, match="epsilon must be a positive finite number"):
        RunConfig.from_toml(f"[privacy]\nepsilon = {value}\n")


def test_invalid_toml_missing_file_and_non_table_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="run config is not valid TOML"):
        RunConfig.from_toml("[privacy\nepsilon = 3")
    with pytest.raises(ConfigError, match=r"config file .*nope\.toml does not exist"):
        RunConfig.load(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="run config must be a table, got list"):
        RunConfig.from_dict([1, 2])  # type: ignore[arg-type]


def test_constructing_an_invalid_config_directly_is_refused():
    with pytest.raises(ConfigError, match=r"\[federation\] n_clients and rounds must be >= 1"):
        RunConfig(federation=FederationSection(rounds=0))
    with pytest.raises(ConfigError, match="invalid run config"):
        RunConfig().replace(privacy=dataclasses.replace(RunConfig().privacy, epsilon=math.inf))


def test_demo_preset_is_the_shipped_toml():
    from importlib import resources

    cfg = RunConfig.preset("demo")
    text_ = (resources.files("privspk") / "presets" / "demo.toml").read_text(encoding="utf-8")
    assert cfg == RunConfig.from_toml(text_)
    assert cfg.name == "demo" and cfg.privacy.enabled and cfg.secagg.scheme == "mask"
    assert cfg.federation.n_clients == 3 and cfg.train.recipe == "embedding"


def test_config_recipes_are_the_library_recipes():
    from privspk.config import TRAIN_RECIPES
    from privspk.models.finetune import RECIPES

    assert TRAIN_RECIPES == RECIPES


def test_config_schemes_are_the_registered_secagg_schemes():
    from privspk.config import SECAGG_SCHEMES
    from privspk.secagg.registry import scheme_names

    assert sorted(SECAGG_SCHEMES) == list(scheme_names())
    assert len(set(SECAGG_SCHEMES)) == len(SECAGG_SCHEMES)


def test_config_units_are_what_local_training_accepts():
    import torch

    from privspk.config import TRAIN_UNITS
    from privspk.privacy.budget import PRIVACY_UNITS
    from privspk.training.data import ClientData
    from privspk.training.local import UNITS, sample_rate_for

    assert TRAIN_UNITS == UNITS and set(TRAIN_UNITS) <= set(PRIVACY_UNITS)
    data = ClientData.from_pairs(lambda u: torch.zeros(1, 1), [(f"u{i}", f"s{i % 4}") for i in range(40)])
    for unit in TRAIN_UNITS:
        assert 0 < sample_rate_for(data, unit=unit, batch_size=8, speaker_batch=2) <= 1
    with pytest.raises(ConfigError, match="privacy unit"):
        sample_rate_for(data, unit="client", batch_size=8, speaker_batch=2)


def test_cli_choices_are_the_config_lists():
    from privspk.cli import build_parser
    from privspk.config import SECAGG_SCHEMES, TRAIN_UNITS

    parser = build_parser()
    for scheme in SECAGG_SCHEMES:
        assert parser.parse_args(["demo", "--secagg", scheme]).secagg == scheme
    for unit in TRAIN_UNITS:
        assert parser.parse_args(["demo", "--unit", unit]).unit == unit
    for flag, bad in (("--secagg", "rot13"), ("--unit", "client")):
        with pytest.raises(SystemExit):
            parser.parse_args(["demo", flag, bad])
    with pytest.raises(ConfigError, match=r"scheme must be plain\|mask\|ckks\|bfv, got 'rot13'"):
        RunConfig.from_dict({"secagg": {"scheme": "rot13"}})
    with pytest.raises(ConfigError, match=r"unit must be utterance\|speaker, got 'client'"):
        RunConfig.from_dict({"privacy": {"unit": "client"}})


def test_defaults_are_the_demo_recipe_and_clip():
    """The default recipe, its step/batch/lr and the clip are the sweep's choice, as in the demo."""
    demo, default = RunConfig.preset("demo"), RunConfig()
    assert default.train == demo.train
    assert default.privacy.clip == demo.privacy.clip == 0.3


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(ConfigError, match=r"no preset named 'tiny'; known: \[.*'demo'.*\]"):
        RunConfig.preset("tiny")


def test_replace_and_feature_config():
    cfg = RunConfig().replace(name="x", features=FeaturesSection(kind="mfcc", n_mels=40, n_mfcc=20, cmn=False))
    assert cfg.name == "x"
    fc = cfg.features.feature_config()
    assert (fc.kind, fc.n_mels, fc.n_mfcc, fc.cmn) == ("mfcc", 40, 20, False)


def test_randomness_is_secret_by_default_and_the_old_noise_seed_key_is_refused():
    from privspk.errors import ConfigError

    assert RunConfig().privacy.randomness == "secret"
    with pytest.raises(ConfigError, match=r"randomness must be secret\|simulation, got 'run'"):
        RunConfig.from_toml('[privacy]\nrandomness = "run"\n')
    assert RunConfig.from_toml('[privacy]\nrandomness = "simulation"\n').privacy.randomness == "simulation"
    with pytest.raises(ConfigError, match=r"\[privacy\] noise_seed was replaced by randomness"):
        RunConfig.from_toml('[privacy]\nnoise_seed = "secret"\n')


def test_secagg_colluders_defaults_to_one_and_is_checked():
    from privspk.errors import ConfigError

    assert RunConfig().secagg.colluders == 1
    assert RunConfig.from_toml('[secagg]\ncolluders = 2\n').secagg.colluders == 2
    with pytest.raises(ConfigError, match="colluders must be an int >= 0"):
        RunConfig.from_toml('[secagg]\ncolluders = -1\n')


@pytest.mark.parametrize("scheme", ["ckks", "bfv"])
def test_he_schemes_are_refused_at_config_load_without_the_trust_acceptance(scheme: str) -> None:
    """Refused before any run directory, ledger or data is touched; the message steers to mask."""
    from privspk.secagg import he_params as he

    assert HE_TRUST == he.HE_TRUST
    with pytest.raises(ConfigError, match='colludes with the server.*scheme = "mask"'):
        RunConfig(secagg=SecAggSection(scheme=scheme))
    with pytest.raises(ConfigError, match="he_trust"):
        RunConfig().replace(secagg=SecAggSection(scheme=scheme, options={"he_trust": "yes"}))
    ok = RunConfig(secagg=SecAggSection(scheme=scheme, options={"he_trust": HE_TRUST}))
    assert RunConfig.from_toml(ok.to_toml()).secagg.options["he_trust"] == HE_TRUST


def test_reading_a_config_and_building_the_parser_import_neither_torch_nor_secagg():
    import subprocess
    import sys

    code = ("import sys, privspk.config, privspk.cli; privspk.cli.build_parser(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'tenseal', 'opacus') "
            "or m.startswith('privspk.secagg')))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"
