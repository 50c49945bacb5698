"""Tests of benchmarks/crossdevice.py's tables: runs on two builds of the data are kept apart."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "crossdevice.py"
_spec = importlib.util.spec_from_file_location("bench_crossdevice", _PATH)
bc = importlib.util.module_from_spec(_spec)
sys.modules["bench_crossdevice"] = bc
_spec.loader.exec_module(bc)


def _run(eps: float, seed: int, pre: float, final: float) -> dict:
    return {"domain": "callcentre", "k": 500, "epsilon": eps, "seed": seed, "objective": "codewords", "rounds": 10,
            "settings": {"trainable": "embedding"}, "pretrain_eer": pre, "final_eer": final,
            "clean_pretrain_eer": 0.076, "clean_final_eer": 0.078, "cross_pretrain_eer": 0.148, "cross_final_eer": 0.14}


def _row(lines: list[str], pre: str, eps: str) -> list[str]:
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines if ln.startswith("| callcentre")]
    hits = [r for r in rows if r[5] == eps and r[7] == pre]
    assert len(hits) == 1, rows
    return hits[0]


def test_gain_kept_compares_runs_of_the_same_build_only():
    # build A: pretrained 12.00 %, non-private 10.00 %, eps 8 11.00 % -> half the gain kept
    # build B: pretrained 11.70 %, non-private 11.20 %, eps 8 11.45 % -> half of its own gain
    runs = [_run(math.inf, s, 0.12, 0.10) for s in (0, 1)] + [_run(8.0, s, 0.12, 0.11) for s in (0, 1)]
    runs += [_run(math.inf, 0, 0.117, 0.112), _run(8.0, 0, 0.117, 0.1145), _run(4.0, 0, 0.117, 0.116)]
    lines = bc.summary(runs)
    a_inf, a8 = _row(lines, "12.00 %", "inf"), _row(lines, "12.00 %", "8.0")
    b_inf, b8, b4 = _row(lines, "11.70 %", "inf"), _row(lines, "11.70 %", "8.0"), _row(lines, "11.70 %", "4.0")
    assert (a_inf[6], a8[6], b_inf[6], b8[6]) == ("2", "2", "1", "1")  # seeds counted per build
    assert a_inf[8].startswith("10.00 %") and b_inf[8].startswith("11.20 %")
    assert a8[10] == "50 %" and b8[10] == "50 %" and b4[10] == "20 %"


def test_a_build_without_its_own_non_private_run_claims_no_gain_kept():
    runs = [_run(math.inf, 0, 0.12, 0.10), _run(8.0, 0, 0.117, 0.11)]
    assert _row(bc.summary(runs), "11.70 %", "8.0")[10] == "-"


def test_append_repeats_a_run_only_on_another_build_of_the_data(tmp_path, monkeypatch):
    import json
    from types import SimpleNamespace

    import privspk.crossdevice.loop as loop
    import privspk.prepare as prepare

    calls = []
    secs = {k: 1.0 for k in ("local_training", "key_agreement", "masking", "aggregation", "unmasking", "round",
                             "round_cpu")}

    def fake_run(cfg, **kw):
        calls.append((cfg.crossdevice.devices_per_round, cfg.crossdevice.device_epsilon, cfg.seed))
        ev = {"eer": 0.08, "domains": {"callcentre": {"eer": 0.11}, "callcentre/cross": {"eer": 0.14}}}
        return SimpleNamespace(rounds=[{"seconds": secs}], pretrain_eval={**ev, "domains": {
            "callcentre": {"eer": 0.12}, "callcentre/cross": {"eer": 0.15}}}, final_eval=ev,
            report={"trainable_parameters": 3, "privacy": {"noise_multiplier": 4.0, "central_epsilon": 8.0}})

    monkeypatch.setattr(prepare, "prepare_data", lambda cfg, progress=False: None)
    monkeypatch.setattr(loop, "run_crossdevice", fake_run)
    out = tmp_path / "xd"
    old = dict(_run(8.0, 0, 0.12, 0.11), seconds_per_round=secs, noise_multiplier=4.0, pretrained_sha256="A")
    out.with_suffix(".json").write_text(json.dumps({"runs": [old]}))
    argv = ["crossdevice.py", "--domain", "callcentre", "--ks", "500", "--eps", "8", "--seeds", "0", "--rounds", "10",
            "--append", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(bc, "_encoder_sha256", lambda cfg, data: "A")
    bc.main()
    assert calls == []  # on record for this build
    monkeypatch.setattr(bc, "_encoder_sha256", lambda cfg, data: "B")
    bc.main()
    bc.main()
    assert calls == [(500, 8.0, 0)]  # once for the new build, then on record
    saved = json.loads(out.with_suffix(".json").read_text())["runs"]
    assert [r["pretrained_sha256"] for r in saved] == ["A", "B"]
