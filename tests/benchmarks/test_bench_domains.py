"""Tests of benchmarks/domains.py's bookkeeping (the benchmark itself trains for tens of minutes)."""

from __future__ import annotations

import importlib.util
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
    return bd.base_config(SimpleNamespace(runs=tmp_path / "runs", data=tmp_path / "data", threads=1))


def test_one_client_per_domain_and_configs_round_trip(base):
    assert base.corpus.domains == bd.DOMAINS and base.federation.n_clients == len(bd.DOMAINS)
    for eps, unit in ((None, "utterance"), (8.0, "utterance"), (2.0, "speaker")):
        cfg, tag = bd.run_config(base, seed=1, epsilon=eps, unit=unit)
        assert cfg.privacy.enabled == (eps is not None) and cfg.seed == 1
        assert RunConfig.from_toml(cfg.to_toml()) == cfg
        if eps is None:
            assert cfg.train.lr == bd.NONPRIVATE["lr"] and tag == "utterance_np_s1"
        if unit == "speaker":
            assert cfg.train.speaker_batch == bd.SPEAKER_UNIT["speaker_batch"] and cfg.privacy.unit == "speaker"


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
                               "trials": 10, "heldout": 2, "seeds": [0, 1], "command": "c"},
                      "summary": [s], "notes": "n", "skipped": []})
    assert "| car | 20.00 | 11.00 +- 1.41 | 45 % | 15.00 +- 1.41 / 0.55 +- 0.07 |" in md
