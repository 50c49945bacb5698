"""``privspk.train`` end to end on a tiny built-in corpus (8 speakers x 4 utterances, built once per session).

Also home of the helpers the CLI and prepare tests share (``tiny_config``, ``ensure_tiny_encoder``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import privspk
from privspk.config import (
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
from privspk.errors import ConfigError, LedgerError
from privspk.privacy import Ledger, PrivacyBudget, epsilon

pytestmark = [
    pytest.mark.filterwarnings("ignore:Full backward hook is firing"),
    pytest.mark.filterwarnings("ignore:Secure RNG turned off"),
]

TINY_ENCODER = "test_tiny_ecapa"
SRC = Path(privspk.__file__).resolve().parents[1]
API_WORKER = Path(__file__).with_name("federation") / "federation_api_worker.py"


def ensure_tiny_encoder() -> str:
    """Register a ~6k-parameter ECAPA under :data:`TINY_ENCODER` (once per process)."""
    from privspk.models import ECAPAEncoder, list_encoders, register_encoder

    if TINY_ENCODER not in list_encoders():

        @register_encoder(TINY_ENCODER)
        def _tiny(*, in_dim: int) -> ECAPAEncoder:
            return ECAPAEncoder(in_dim, channels=16, embed_dim=16, dilations=(2, 3), attention_channels=8)

    return TINY_ENCODER


def shared_data_dir(tmp_path_factory) -> Path:
    """One data folder per test session: the tiny corpus and its features are built once."""
    return tmp_path_factory.getbasetemp() / "privspk_tiny_data"


def tiny_config(data_dir: Path, out_dir: Path, *, name: str = "tiny", dp: bool = True, scheme: str = "mask",
                rounds: int = 2, epsilon: float = 3.0, randomness: str = "simulation") -> RunConfig:
    """A run that takes seconds: 8 eSpeak speakers x 4 utterances, 20 fbank bins, a tiny encoder.

    ``simulation`` randomness by default: the crash tests compare runs bit for bit."""
    ensure_tiny_encoder()
    return RunConfig(
        name=name, threads=1, data_dir=str(data_dir), out_dir=str(out_dir),
        corpus=CorpusSection(n_speakers=8, utts_per_speaker=4), split=SplitSection(heldout=2),
        features=FeaturesSection(n_mels=20), model=ModelSection(encoder=TINY_ENCODER),
        pretrain=PretrainSection(steps=3, batch_size=8, crop_frames=40),
        train=TrainSection(recipe="last", local_steps=2, batch_size=1, physical_batch=1, crop_frames=40,
                           speaker_batch=2),
        privacy=PrivacySection(enabled=dp, epsilon=epsilon, randomness=randomness),
        secagg=SecAggSection(scheme=scheme),
        federation=FederationSection(n_clients=3, rounds=rounds),
        eval=EvalSection(max_frames=200, target_per_utt=1, nontarget_per_utt=2),
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-round DP run with pairwise masks and the deployment's secret randomness (and its config)."""
    cfg = tiny_config(shared_data_dir(tmp_path_factory), tmp_path_factory.mktemp("runs"), randomness="secret")
    return cfg, privspk.train(cfg, progress=False)


# --------------------------------------------------------------------------- one DP run, end to end
def test_result_and_report_fields(finished):
    cfg, res = finished
    assert res.config == cfg and res.run_dir == Path(cfg.out_dir) / cfg.name
    assert [r["round"] for r in res.rounds] == [1, 2]
    for row in res.rounds:
        assert row["included"] == ["client0", "client1", "client2"] and row["skipped"] == ""
        assert row["unit"] == "utterance" and row["delta"] == 1e-5 and row["randomness"] == "secret"
        assert 0.0 <= row["eval"]["eer"] <= 1.0
        assert set(row["epsilon"]) == {"client0", "client1", "client2"}
    for ev in (res.pretrain_eval, res.final_eval):
        assert 0.0 <= ev["eer"] <= 1.0 and 0.0 <= ev["top1"] <= 1.0 and ev["n_target"] > 0
    rep = res.report
    assert rep["run"] == cfg.name and rep["config"] == cfg.to_dict()
    assert rep["corpus"]["speakers"] == 8 and rep["corpus"]["heldout"] == 2
    assert rep["corpus"]["utterances"] == 32 and len(rep["corpus"]["clients"]) == 3
    priv = rep["privacy"]
    assert priv["epsilon_budget"] == 3.0 and priv["unit"] == "utterance" and priv["accountant"] == "rdp"
    assert priv["randomness"] == "secret" and priv["randomness_warning"] is None
    assert set(priv["noise_multiplier"]) == set(priv["sample_rate"]) == {"client0", "client1", "client2"}
    assert priv["epsilon_spent"] == res.epsilon
    for c, e in res.epsilon.items():
        assert 0 < e <= 3.0
        want = epsilon([(priv["noise_multiplier"][c], priv["sample_rate"][c], cfg.train.local_steps)] * 2,
                       delta=1e-5)
        assert e == pytest.approx(want, rel=1e-9)
        assert e >= 3.0 - 0.011  # the plan uses the budget (within the planner's tolerance)
    assert rep["secagg"] == {"scheme": "mask", "options": {"clip": cfg.federation.update_clip,
                                                           "colluders": cfg.secagg.colluders}}
    assert rep["trainable_parameters"] > 0
    assert json.loads((res.run_dir / "report.json").read_text()) == json.loads(json.dumps(rep, default=str))
    assert RunConfig.load(res.run_dir / "config.toml") == cfg


def test_ledger_rows_of_the_run(finished):
    cfg, res = finished
    with Ledger(res.run_dir / "ledger.sqlite", readonly=True) as led:
        rows = led.rows()
        assert led.run_id == cfg.name
        assert sorted((r.client, r.round, r.status) for r in rows) == [
            (c, r, "aggregated") for c in ("client0", "client1", "client2") for r in (1, 2)]
        for r in rows:
            assert (r.unit, r.delta, r.scheme, r.accountant, r.steps, r.clip) == ("utterance", 1e-5, "mask", "rdp",
                                                                                    2, cfg.privacy.clip)
            assert r.noise_multiplier == res.report["privacy"]["noise_multiplier"][r.client]
            assert r.update_digest is not None and r.randomness == "secret"
        assert all(c.ok for c in led.recompute())
        assert {c: led.epsilon(c) for c in led.clients()} == res.epsilon
        assert led.settings["epsilon"] == 3.0 and led.settings["rounds"] == 2
        assert led.settings["randomness"] == "secret"
    assert not list(res.run_dir.glob("clients/*/update_r*.npy")), "staged updates are dropped once aggregated"


def test_checkpoint_loads_as_the_trained_encoder(finished):
    from privspk.evaluation.trials import read_scores, read_trials
    from privspk.models.checkpoint import load_encoder

    cfg, res = finished
    enc, meta = load_encoder(res.run_dir / "encoder.pt")
    assert meta["extra"] == {"run": cfg.name, "recipe": "last"}
    want = res.encoder.state_dict()
    assert set(enc.state_dict()) == set(want)
    assert all(torch.equal(v, want[k]) for k, v in enc.state_dict().items())
    x = torch.randn(2, 50, 20)
    assert torch.allclose(enc.eval()(x), res.encoder.eval()(x))
    trials = read_trials(res.run_dir / "trials")
    assert len(trials) == res.report["corpus"]["trials"] == len(read_scores(res.run_dir / "scores"))


def test_resuming_a_finished_run_adds_no_round_and_no_spend(finished):
    cfg, res = finished
    again = privspk.train(cfg, progress=False, resume=True)
    assert again.rounds == [] and again.epsilon == res.epsilon
    with Ledger(res.run_dir / "ledger.sqlite", readonly=True) as led:
        assert len(led.rows()) == 6
    assert all(torch.equal(v, res.encoder.state_dict()[k]) for k, v in again.encoder.state_dict().items())


def test_resume_with_other_privacy_settings_is_refused_and_leaves_the_run_alone(finished):
    cfg, res = finished
    before = (res.run_dir / "config.toml").read_text()
    other = tiny_config(Path(cfg.data_dir), Path(cfg.out_dir), name=cfg.name, epsilon=5.0)
    with pytest.raises(LedgerError, match=r"privacy settings differ .*keys: epsilon"):
        privspk.train(other, progress=False, resume=True)
    assert (res.run_dir / "config.toml").read_text() == before, "a refused resume must not rewrite the config"


def test_resume_cannot_switch_the_randomness_silently(finished):
    cfg, res = finished
    other = tiny_config(Path(cfg.data_dir), Path(cfg.out_dir), name=cfg.name, randomness="simulation")
    with pytest.raises(LedgerError, match=r"privacy settings differ .*keys: randomness"):
        privspk.train(other, progress=False, resume=True)


def test_resuming_a_private_run_without_privacy_is_refused(finished):
    cfg, res = finished
    before = (res.run_dir / "config.toml").read_text()
    other = tiny_config(Path(cfg.data_dir), Path(cfg.out_dir), name=cfg.name, dp=False)
    with pytest.raises(ConfigError, match="is a differentially private run .*never without privacy"):
        privspk.train(other, progress=False, resume=True)
    assert (res.run_dir / "config.toml").read_text() == before


# --------------------------------------------------------------------------- refusals (fast)
def test_an_existing_run_directory_is_refused_without_resume_or_overwrite(tmp_path):
    cfg = tiny_config(tmp_path / "data", tmp_path / "runs", name="taken")
    run_dir = tmp_path / "runs" / "taken"
    run_dir.mkdir(parents=True)
    (run_dir / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="run directory .*taken exists; pass resume=True .* overwrite=True"):
        privspk.train(cfg, progress=False)
    assert (run_dir / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "data").exists(), "refused before any data was prepared"


@pytest.mark.parametrize("budget", [8.0, {"epsilon": 8.0, "delta": 1e-5}])
def test_budget_must_be_a_privacy_budget(tmp_path, budget):
    cfg = tiny_config(tmp_path / "data", tmp_path / "runs")
    with pytest.raises(ConfigError, match="budget must be a PrivacyBudget"):
        privspk.train(cfg, budget=budget, progress=False)
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- slower variants
@pytest.mark.slow
def test_budget_override_and_overwrite(tmp_path_factory):
    cfg = tiny_config(shared_data_dir(tmp_path_factory), tmp_path_factory.mktemp("runs_b"), name="budget")
    run_dir = Path(cfg.out_dir) / cfg.name
    run_dir.mkdir(parents=True)
    (run_dir / "old.txt").write_text("old")
    budget = PrivacyBudget(epsilon=1.5, delta=1e-6, unit="speaker")
    res = privspk.train(cfg, budget=budget, progress=False, overwrite=True)
    assert not (run_dir / "old.txt").exists()
    assert (res.config.privacy.epsilon, res.config.privacy.delta, res.config.privacy.unit) == (1.5, 1e-6, "speaker")
    assert RunConfig.load(run_dir / "config.toml") == res.config
    assert res.report["privacy"]["epsilon_budget"] == 1.5 and res.report["privacy"]["unit"] == "speaker"
    with Ledger(run_dir / "ledger.sqlite", readonly=True) as led:
        assert {(r.unit, r.delta) for r in led.rows()} == {("speaker", 1e-6)}
        assert led.settings["epsilon"] == 1.5 and led.settings["unit"] == "speaker"
    assert all(0 < e <= 1.5 for e in res.epsilon.values())


@pytest.mark.slow
def test_non_private_run_keeps_no_ledger(tmp_path_factory):
    cfg = tiny_config(shared_data_dir(tmp_path_factory), tmp_path_factory.mktemp("runs_np"), dp=False,
                      scheme="plain")
    res = privspk.train(cfg, progress=False)
    assert res.report["privacy"] == {"enabled": False}
    assert res.epsilon == {"client0": 0.0, "client1": 0.0, "client2": 0.0}
    assert not (res.run_dir / "ledger.sqlite").exists()
    assert all(r["unit"] is None and r["delta"] is None for r in res.rounds)


def _api_worker(cfg_path: Path, *, fault: str | None, resume: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PRIVSPK_FAULT"}
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if fault:
        env["PRIVSPK_FAULT"] = fault
    cmd = [sys.executable, str(API_WORKER), str(cfg_path), TINY_ENCODER] + (["--resume"] if resume else [])
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["after_spend:client1:2", "before_spend:client0:2"])
def test_api_train_killed_mid_round_resumes_to_the_uncrashed_result(tmp_path_factory, fault):
    data_dir = shared_data_dir(tmp_path_factory)
    out = tmp_path_factory.mktemp("runs_crash")
    ref = privspk.train(tiny_config(data_dir, out, name="ref", scheme="plain"), progress=False)
    cfg = tiny_config(data_dir, out, name="crashed", scheme="plain")
    cfg_path = out / "crashed.toml"
    cfg_path.write_text(cfg.to_toml(), encoding="utf-8")
    proc = _api_worker(cfg_path, fault=fault)
    assert proc.returncode == 86, proc.stderr[-3000:]
    assert not (out / "crashed" / "encoder.pt").exists()
    res = privspk.train(cfg, progress=False, resume=True)
    assert [r["round"] for r in res.rounds] == [2]
    assert res.epsilon == pytest.approx(ref.epsilon, rel=1e-12)
    with Ledger(out / "crashed" / "ledger.sqlite", readonly=True) as led:
        rows = led.rows()
        assert sorted((r.client, r.round, r.status) for r in rows) == [
            (c, r, "aggregated") for c in ("client0", "client1", "client2") for r in (1, 2)]
        assert all(c.ok for c in led.recompute())
    a = np.concatenate([v.reshape(-1).numpy() for v in res.encoder.state_dict().values()])
    b = np.concatenate([v.reshape(-1).numpy() for v in ref.encoder.state_dict().values()])
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_resume_with_masks_is_bit_identical_and_reports_every_round(tmp_path_factory):
    """Crash in round 3 of 3 (after round 2 is aggregated), resume: the same encoder bits as a run never killed.

    Both runs go through the same worker script (same code path); the mask scheme rounds every
    update stochastically, so the rounding generator must not depend on what the process did before.
    """
    from privspk.models.checkpoint import load_encoder

    data_dir = shared_data_dir(tmp_path_factory)
    runs = {}
    for kind in ("ref", "crashed"):
        out = tmp_path_factory.mktemp(f"resume_{kind}")
        cfg = tiny_config(data_dir, out, name="same", scheme="mask", rounds=3)
        (out / "run.toml").write_text(cfg.to_toml(), encoding="utf-8")
        runs[kind] = out
    proc = _api_worker(runs["ref"] / "run.toml", fault=None)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _api_worker(runs["crashed"] / "run.toml", fault="before_spend:client0:3")
    assert proc.returncode == 86, proc.stderr[-3000:]
    proc = _api_worker(runs["crashed"] / "run.toml", fault=None, resume=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = {k: json.loads((out / "same" / "report.json").read_text()) for k, out in runs.items()}
    assert [r["round"] for r in reports["crashed"]["rounds"]] == [1, 2, 3]
    assert [r["round"] for r in reports["ref"]["rounds"]] == [1, 2, 3]
    assert [r["epsilon"] for r in reports["crashed"]["rounds"]] == [r["epsilon"] for r in reports["ref"]["rounds"]]
    a, _ = load_encoder(runs["ref"] / "same" / "encoder.pt")
    b, _ = load_encoder(runs["crashed"] / "same" / "encoder.pt")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), f"{name} differs after the resume"
