"""Tests of benchmarks/dp_recipes.py's bookkeeping, so the script cannot rot.

The sweep itself trains for tens of minutes; here the pieces it hangs on are checked: each
named recipe builds a valid run config whose privacy unit and overrides land where they
should, the gain-kept summary computes the issue's formula, and the report and plot are
written from rows.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from privspk.config import RunConfig

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "dp_recipes.py"


def _load():
    spec = importlib.util.spec_from_file_location("dp_recipes", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["dp_recipes"] = module
    spec.loader.exec_module(module)
    return module


dr = _load()


@pytest.fixture
def base(tmp_path):
    return dr.base_config(SimpleNamespace(runs=tmp_path / "runs", data=tmp_path / "data", threads=1))


def test_base_config_is_the_demo_with_plain_aggregation(base):
    demo = RunConfig.preset("demo")
    assert base.secagg.scheme == "plain"  # aggregation does not change the model beyond quantisation
    assert base.model == demo.model and base.pretrain == demo.pretrain and base.federation == demo.federation


@pytest.mark.parametrize("recipe", sorted(dr.RECIPES))
def test_every_recipe_builds_a_config_that_round_trips_through_toml(base, recipe):
    cfg, tag = dr.run_config(base, recipe=recipe, seed=2, epsilon=4.0, unit="utterance", overrides={})
    assert cfg.train.recipe == dr.RECIPES[recipe]["recipe"]
    assert cfg.privacy.enabled and cfg.privacy.epsilon == 4.0 and cfg.seed == 2
    assert tag == f"{recipe}_utterance_eps4_s2"
    assert RunConfig.from_toml(cfg.to_toml()) == cfg


def test_non_private_reference_disables_privacy_and_takes_its_own_lr(base):
    cfg, tag = dr.run_config(base, recipe="embedding", seed=0, epsilon=None, unit="utterance",
                             overrides={"lr": 3e-3})
    assert not cfg.privacy.enabled and cfg.train.lr == 3e-3 and tag.endswith("_np_s0")


def test_speaker_unit_defaults_then_sweep_overrides(base):
    cfg, _ = dr.run_config(base, recipe="embedding", seed=0, epsilon=8.0, unit="speaker", overrides={})
    assert cfg.privacy.unit == "speaker"
    assert (cfg.train.batch_size, cfg.train.speaker_batch) == (128, 8)
    ov = dr.SPEAKER_SWEEP[-1]
    cfg, _ = dr.run_config(base, recipe="embedding", seed=0, epsilon=8.0, unit="speaker", overrides=ov)
    assert (cfg.train.batch_size, cfg.train.speaker_batch, cfg.train.local_steps) == (
        ov["batch_size"], ov["speaker_batch"], ov["local_steps"])


def test_clip_override_goes_to_the_privacy_section(base):
    cfg, _ = dr.run_config(base, recipe="embedding", seed=0, epsilon=8.0, unit="utterance",
                           overrides={"lr": 3e-2, "clip": 0.3})
    assert cfg.privacy.clip == 0.3 and cfg.train.lr == 3e-2 and not hasattr(cfg.train, "clip")


def _row(seed, eer, eer_np=0.06, eer_pre=0.08, eps=8.0, unit="utterance"):
    return {"recipe": "embedding", "unit": unit, "epsilon": eps, "seed": seed, "eer": eer, "min_dcf": 0.9,
            "eer_pretrain": eer_pre, "eer_nonprivate": eer_np,
            "gain_kept": (eer_pre - eer) / (eer_pre - eer_np), "dp_step_s": 0.04, "nonprivate_step_s": 0.02}


def test_summary_gives_mean_and_spread_of_gain_kept():
    rows = [_row(0, 0.07), _row(1, 0.065), _row(2, 0.075), _row(0, 0.079, eps=2.0)]
    summary = {(s["epsilon"]): s for s in dr.summarise(rows)}
    s8 = summary[8.0]
    assert s8["seeds"] == 3
    assert math.isclose(s8["gain_kept_mean"], (0.5 + 0.75 + 0.25) / 3)
    assert math.isclose(s8["gain_kept_std"], 0.25)
    assert math.isclose(s8["eer_ratio_dp_to_nonprivate"], (0.07 + 0.065 + 0.075) / 3 / 0.06)
    assert summary[2.0]["seeds"] == 1 and summary[2.0]["gain_kept_std"] == 0.0


def test_markdown_and_plot_are_written_from_rows(tmp_path):
    rows = [_row(0, 0.07), _row(1, 0.072), _row(0, 0.078, unit="speaker")]
    payload = {"meta": {"date": "d", "machine": "m", "threads": 1, "clients": 3, "rounds": 5, "trials": 10,
                        "heldout": 4},
               "summary": dr.summarise(rows), "sweep": {"chosen": {"embedding": {"dp": {"lr": 0.01}, "np": {}}}},
               "skipped": ["last/utterance/eps=2/seed=0"]}
    md = dr.markdown(payload)
    assert "| embedding | utterance | 8 | 2 | 0.45 +- 0.07 |" in md
    assert "| embedding | speaker | 8 | 1 | 0.10 +- 0.00 |" in md
    assert "Not run (time budget): last/utterance/eps=2/seed=0" in md
    dr.plot(payload, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_from_json_re_renders_without_training(tmp_path):
    import json

    rows = [_row(0, 0.07), _row(1, 0.072)]
    payload = {"meta": {"date": "d", "machine": "m", "threads": 1, "clients": 3, "rounds": 5, "trials": 10,
                        "heldout": 4, "complete": False},
               "summary": dr.summarise(rows), "sweep": None, "skipped": []}
    src = tmp_path / "in.json"
    src.write_text(json.dumps(payload))
    assert dr.main(["--from-json", str(src), "--out", str(tmp_path)]) == 0
    md = (tmp_path / "dp_recipes.md").read_text()
    assert "| embedding | utterance | 8 | 2 | 0.45 +- 0.07 |" in md and "(partial:" in md
    assert (tmp_path / "dp_recipes.png").stat().st_size > 1000


def test_sweep_picks_the_lowest_eer_of_each_grid(base, monkeypatch):
    seen = []

    def fake_run(cfg, data):
        seen.append((cfg.privacy.enabled, cfg.privacy.unit, cfg.train.lr, cfg.privacy.clip))
        eer = abs(cfg.train.lr - 1e-2) + (0.0 if cfg.privacy.clip == 0.3 else 1e-3)  # best: lr 1e-2, clip 0.3
        return {"eer": eer}

    monkeypatch.setattr(dr, "one_run", fake_run)
    out = dr.sweep(None, base, None, ["embedding"], ["embedding"])
    ch = out["chosen"]["embedding"]
    assert ch["dp"] == {"lr": 1e-2, "clip": 0.3} and ch["np"] == {"lr": 1e-2}
    assert ch["speaker"]["lr"] == 1e-2
    n = len(dr.SPEAKER_SWEEP) + len(dr.SWEEP["embedding"]["dp"]) + len(dr.SWEEP["embedding"]["np"])
    assert len(seen) == len(out["tried"]) == n
    assert {u for _, u, _, _ in seen} == {"utterance", "speaker"}
