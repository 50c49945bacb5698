"""The ``privspk`` command line: parser, config overrides, ledger, enroll/verify, error exit codes."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import privspk
from privspk.api import open_run_ledger
from privspk.audio.io import write_audio
from privspk.cli import _config, build_parser, main
from privspk.config import RunConfig
from privspk.errors import ConfigError
from privspk.evaluation.metrics import threshold_at_eer, threshold_at_far
from privspk.evaluation.trials import Trial, write_scores, write_trials
from privspk.federation.guard import LedgerGuard
from privspk.models import build_encoder, save_encoder
from privspk.privacy import Ledger, Mechanism, PrivacyBudget, epsilon
from privspk.privacy.ledger import SIMULATION_WARNING, Spend
from test_api import shared_data_dir, tiny_config

SRC = Path(privspk.__file__).resolve().parents[1]


# --------------------------------------------------------------------------- parser and overrides
def test_parser_knows_every_command():
    p = build_parser()
    for argv in (["prepare"], ["demo"], ["train"], ["eval", "--run", "r"], ["enroll", "--run", "r", "--store", "s",
                 "ann", "a.wav"], ["verify", "--run", "r", "--store", "s", "ann", "a.wav"], ["ledger", "r"],
                 ["bench", "secagg"]):
        args = p.parse_args(argv)
        assert args.command == argv[0] and callable(args.func)
    args = p.parse_args(["enroll", "--run", "r", "--store", "s", "ann", "a.wav", "b.wav", "--far", "0.01"])
    assert (args.speaker, args.wavs, args.far, args.replace) == ("ann", ["a.wav", "b.wav"], 0.01, False)


def test_recipe_option_takes_the_library_recipes():
    from privspk.models.finetune import RECIPES

    for recipe in RECIPES:
        assert build_parser().parse_args(["train", "--recipe", recipe]).recipe == recipe
    args = build_parser().parse_args(["train", "--recipe", "embedding"])
    assert _config(args).train.recipe == "embedding"


@pytest.mark.parametrize("argv", [[], ["fly"], ["demo", "--secagg", "rot13"], ["demo", "--unit", "client"],
                                  ["demo", "--epsilon", "lots"], ["eval"], ["verify", "--run", "r", "ann", "x.wav"],
                                  ["bench", "everything"]])
def test_bad_command_lines_exit_with_status_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    assert "usage: privspk" in capsys.readouterr().err


def test_options_override_the_demo_preset():
    args = build_parser().parse_args(["train", "--data", "D", "--out", "O", "--name", "N", "--secagg", "plain",
                                      "--epsilon", "2.5", "--unit", "speaker", "--rounds", "7", "--recipe",
                                      "adapters"])
    cfg = _config(args)
    demo = RunConfig.preset("demo")
    assert (cfg.data_dir, cfg.out_dir, cfg.name) == ("D", "O", "N")
    assert cfg.secagg.scheme == "plain" and cfg.federation.rounds == 7 and cfg.train.recipe == "adapters"
    assert (cfg.privacy.epsilon, cfg.privacy.unit, cfg.privacy.enabled) == (2.5, "speaker", True)
    assert cfg.model == demo.model and cfg.corpus == demo.corpus  # the rest is the preset's
    assert _config(build_parser().parse_args(["demo"])) == demo
    assert not _config(build_parser().parse_args(["demo", "--no-dp"])).privacy.enabled


def test_options_override_a_config_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(RunConfig(name="mine", seed=4).to_toml(), encoding="utf-8")
    cfg = _config(build_parser().parse_args(["train", "--config", str(path), "--rounds", "2"]))
    assert (cfg.name, cfg.seed, cfg.federation.rounds) == ("mine", 4, 2)


# --------------------------------------------------------------------------- ledger
def _write_ledger(run: Path) -> dict[str, float]:
    cfg = RunConfig(name="cli")
    dp = Mechanism(unit="utterance", noise_multiplier=2.0, clip=1.0, sample_rate=0.1, steps=4, delta=1e-5)
    eps = {}
    with open_run_ledger(run / "ledger.sqlite", cfg) as led:
        for c in ("client0", "client1"):
            g = LedgerGuard(led, c, PrivacyBudget(epsilon=8, delta=1e-5), accountant="rdp")
            for r in (1, 2, 3):
                eps[c] = g.commit(round_id=r, mechanism=dp, scheme="mask", update=np.full(3, float(r)))
            led.mark_aggregated(1, [c])
    return eps


def test_ledger_command_prints_checks_and_exports(tmp_path, capsys):
    run = tmp_path / "run"
    eps = _write_ledger(run)
    want = epsilon([(2.0, 0.1, 4)] * 3, delta=1e-5)
    assert eps == {"client0": pytest.approx(want), "client1": pytest.approx(want)}
    out_json, out_csv, out_png = tmp_path / "l.json", tmp_path / "l.csv", tmp_path / "l.png"
    rc = main(["ledger", str(run), "--check", "--json", str(out_json), "--csv", str(out_csv), "--plot",
               str(out_png)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "run cli:" in out and out.count("client0  ") == 3 and out.count("client1  ") == 3
    assert "all 6 rows recompute to their recorded epsilon" in out and "MISMATCH" not in out
    data = json.loads(out_json.read_text())
    assert data["run_id"] == "cli" and len(data["rows"]) == 6
    assert data["rows"][2]["epsilon_after"] == pytest.approx(want)
    assert [r["status"] for r in data["rows"]] == ["aggregated", "spent", "spent"] * 2
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 6 and {r["client"] for r in rows} == {"client0", "client1"}
    assert float(rows[0]["noise_multiplier"]) == 2.0 and rows[0]["update_digest"]
    assert out_png.stat().st_size > 1000 and out_png.read_bytes()[:4] == b"\x89PNG"
    # the ledger file itself may be named, and one client shown
    rc = main(["ledger", str(run / "ledger.sqlite"), "--client", "client1"])
    out = capsys.readouterr().out
    assert rc == 0 and "client1" in out and "client0" not in out


def test_ledger_check_fails_on_a_row_recorded_too_low(tmp_path, capsys):
    run = tmp_path / "run"
    with Ledger(run / "ledger.sqlite", run_id="r", settings={}) as led:
        mech = Mechanism(noise_multiplier=1.0, sample_rate=0.1, steps=10, delta=1e-5, clip=1.0)
        led.record_spend(Spend(client="c0", round=1, mechanism=mech, epsilon_after=0.01, scheme="mask"))
    rc = main(["ledger", str(run), "--check"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "c0 round 1: recorded 0.010000 recomputed" in out and "MISMATCH" in out
    assert "1 of 1 rows do not recompute to their recorded epsilon" in out


# --------------------------------------------------------------------------- enroll / verify
def _tone(freq: float) -> torch.Tensor:
    t = torch.arange(16000) / 16000
    return 0.3 * torch.sin(2 * math.pi * freq * t)


def _speech(text: str, variant: str | None = None) -> torch.Tensor:
    from privspk.audio.io import resample
    from privspk.corpus.espeak import ESPEAK_SAMPLE_RATE, EspeakVoice, synthesize

    raw = torch.from_numpy(synthesize(text, EspeakVoice(accent="en-us", variant=variant), seed=1) / 32768.0)
    return resample(raw.to(torch.float32), orig_freq=ESPEAK_SAMPLE_RATE, new_freq=16000)


@pytest.fixture
def run_dir(tmp_path, tmp_path_factory):
    """A run directory made by hand: tiny encoder checkpoint and config over a 12-speaker corpus (4 public)."""
    import dataclasses

    run = tmp_path / "run"
    run.mkdir()
    cfg = tiny_config(shared_data_dir(tmp_path_factory), tmp_path, name="run")
    cfg = cfg.replace(corpus=dataclasses.replace(cfg.corpus, n_speakers=12))
    (run / "config.toml").write_text(cfg.to_toml(), encoding="utf-8")
    torch.manual_seed(0)
    enc = build_encoder(cfg.model.encoder, in_dim=cfg.features.n_mels)
    save_encoder(run / "encoder.pt", enc, name=cfg.model.encoder, in_dim=cfg.features.n_mels)
    write_audio(tmp_path / "ann1.wav", _speech("The quick brown fox jumps over the lazy dog."), sample_rate=16000)
    write_audio(tmp_path / "ann2.wav", _speech("Please call me back when you reach the station."),
                sample_rate=16000)
    write_audio(tmp_path / "other.wav", _speech("My voice is my password, verify me now.", "f3"), sample_rate=16000)
    write_audio(tmp_path / "tone.wav", _tone(200), sample_rate=16000)
    return run


def test_enroll_then_verify_exit_codes(run_dir, tmp_path, capsys):
    store = tmp_path / "store"
    wav = lambda n: str(tmp_path / f"{n}.wav")  # noqa: E731
    rc = main(["enroll", "--run", str(run_dir), "--store", str(store), "ann", wav("ann1"), wav("ann2")])
    out = capsys.readouterr().out
    assert rc == 0 and "enrolled 'ann' from 2 recording(s); 1 speaker(s)" in out
    assert "calibrated on 2 public speakers" in out and "false-accept rate <= 0.01" in out
    meta = json.loads((store / "verifier.json").read_text())
    assert meta["speakers"] == ["ann"] and meta["score"] == "as-norm"
    assert meta["calibration"]["source"] == "public speakers (never test trials)"
    assert meta["calibration"]["far"] == 0.01 and meta["calibration"]["far_reached"] <= 0.01

    assert main(["verify", "--run", str(run_dir), "--store", str(store), "ann", wav("tone")]) == 1
    out = capsys.readouterr().out
    assert "-> REJECT" in out and "s of speech, need 0.5 s" in out

    assert main(["enroll", "--run", str(run_dir), "--store", str(store), "ann", wav("other")]) == 2
    assert "ann" in capsys.readouterr().err  # already enrolled: refused without --replace
    assert main(["enroll", "--run", str(run_dir), "--store", str(store), "ann", wav("tone"), wav("tone"),
                 "--replace"]) == 2
    assert "speech" in capsys.readouterr().err  # a tone cannot be enrolled
    assert json.loads((store / "verifier.json").read_text()) == meta  # nothing changed


def test_eval_on_a_kaldi_data_dir_scores_the_trials_by_utterance_id(run_dir, tmp_path, capsys):
    """wav.scp (relative and absolute paths) + trials by utterance id give the scores --wav-dir gives."""
    kdir = tmp_path / "kaldi"
    (kdir / "audio").mkdir(parents=True)
    (kdir / "audio" / "a1.wav").write_bytes((tmp_path / "ann1.wav").read_bytes())
    (kdir / "wav.scp").write_text(f"annA audio/a1.wav\nannB {tmp_path / 'ann2.wav'}\n"
                                  f"othX {tmp_path / 'other.wav'}\nunused {tmp_path / 'tone.wav'}\n")
    (kdir / "trials").write_text("annA annB target\nannA othX nontarget\nannB othX nontarget\n")
    assert main(["eval", "--run", str(run_dir), "--kaldi-dir", str(kdir), "--scores", str(tmp_path / "k.txt")]) == 0
    assert "EER" in capsys.readouterr().out
    (tmp_path / "paths.trials").write_text("ann1.wav ann2.wav target\nann1.wav other.wav nontarget\n"
                                           "ann2.wav other.wav nontarget\n")
    assert main(["eval", "--run", str(run_dir), "--trials", str(tmp_path / "paths.trials"), "--wav-dir",
                 str(tmp_path), "--scores", str(tmp_path / "w.txt")]) == 0
    capsys.readouterr()
    kaldi = [line.split() for line in (tmp_path / "k.txt").read_text().splitlines()]
    paths = [line.split() for line in (tmp_path / "w.txt").read_text().splitlines()]
    assert [row[:2] for row in kaldi] == [["annA", "annB"], ["annA", "othX"], ["annB", "othX"]]
    assert len(kaldi) == len(paths) == 3
    assert [row[2] for row in kaldi] == [row[2] for row in paths]  # same files, same code path: same scores
    # --trials overrides the dir's trials file, ids still looked up in wav.scp
    (tmp_path / "two.trials").write_text("annA annB target\nannB othX nontarget\n")
    assert main(["eval", "--run", str(run_dir), "--kaldi-dir", str(kdir), "--trials", str(tmp_path / "two.trials"),
                 "--scores", str(tmp_path / "two.txt")]) == 0
    capsys.readouterr()
    two = [line.split() for line in (tmp_path / "two.txt").read_text().splitlines()]
    assert [row[:2] for row in two] == [kaldi[0][:2], kaldi[2][:2]]
    assert np.allclose([float(r[2]) for r in two], [float(kaldi[0][2]), float(kaldi[2][2])], rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("scp", "trials", "extra", "match"),
    [
        ("annA sox a.flac -t wav - |\n", "annA annA target\n", [], "is a piped command ('sox a.flac -t wav - |')"),
        ("annA a.wav\n", "annA zoe target\n", [], "1 utterance id(s) of the trials have no wav.scp entry"),
        ("annA a.wav\n", None, [], "no 'trials' file in the Kaldi data dir"),
        ("annA a.wav\n", "annA annA target\n", ["--wav-dir", "."], "--wav-dir and --kaldi-dir exclude each other"),
    ],
)
def test_eval_refuses_a_kaldi_dir_it_cannot_read(run_dir, tmp_path, capsys, scp, trials, extra, match):
    kdir = tmp_path / "kaldi"
    kdir.mkdir()
    (kdir / "wav.scp").write_text(scp)
    if trials is not None:
        (kdir / "trials").write_text(trials)
    scores = tmp_path / "scores.txt"
    assert main(["eval", "--run", str(run_dir), "--kaldi-dir", str(kdir), "--scores", str(scores), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("privspk eval: error: ") and match in err and err.count("\n") == 1
    assert not scores.exists()


def test_enroll_with_a_false_accept_target(run_dir, tmp_path, capsys):
    store = tmp_path / "store_far"
    rc = main(["enroll", "--run", str(run_dir), "--store", str(store), "--far", "0.5", "bob",
               str(tmp_path / "ann1.wav"), str(tmp_path / "ann2.wav")])
    assert rc == 0
    meta = json.loads((store / "verifier.json").read_text())
    assert meta["calibration"]["far"] == 0.5 and meta["calibration"]["far_reached"] <= 0.5


def test_verify_before_enrolling_and_unknown_speakers_are_errors(run_dir, tmp_path, capsys):
    wav = str(tmp_path / "ann1.wav")
    assert main(["verify", "--run", str(run_dir), "--store", str(tmp_path / "empty"), "ann", wav]) == 2
    err = capsys.readouterr().err
    assert err.startswith("privspk verify: error: ") and "no enrolled speakers here; run `privspk enroll` first" in err
    assert main(["enroll", "--run", str(run_dir), "--store", str(tmp_path / "s"), "ann", wav,
                 str(tmp_path / "ann2.wav")]) == 0
    capsys.readouterr()
    assert main(["verify", "--run", str(run_dir), "--store", str(tmp_path / "s"), "zoe", wav]) == 2
    assert "zoe" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["ledger", "{missing}"], "no ledger file here"),
        (["eval", "--run", "{missing}"], "config.toml does not exist"),
        (["enroll", "--run", "{missing}", "--store", "{tmp}/s", "ann", "{tmp}/a.wav"], "no such checkpoint file"),
        (["verify", "--run", "{missing}", "--store", "{tmp}/s", "ann", "{tmp}/a.wav"], "no such checkpoint file"),
        (["train", "--config", "{tmp}/bad.toml", "--quiet"], "invalid run config: [privacy] unknown key 'epsilonn'"),
    ],
)
def test_library_errors_are_one_line_with_exit_status_2(tmp_path, capsys, argv, match):
    (tmp_path / "bad.toml").write_text("[privacy]\nepsilonn = 3\n")
    argv = [a.format(missing=tmp_path / "no_run", tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"privspk {argv[0]}: error: ") and match in err
    assert err.count("\n") == 1, "one line, no traceback"


def test_console_script_reports_a_missing_run(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, "-m", "privspk.cli", "ledger", str(tmp_path / "nope")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("privspk ledger: error: ") and "no ledger file here" in proc.stderr


# --------------------------------------------------------------------------- a real run, through the CLI
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_train_eval_ledger_enroll_verify_on_a_trained_run(tmp_path_factory, capsys):
    from privspk.corpus import build_builtin_corpus

    data_dir = shared_data_dir(tmp_path_factory)
    out = tmp_path_factory.mktemp("cli_runs")
    cfg = tiny_config(data_dir, out, name="cli_run")
    cfg_path = out / "cli_run.toml"
    cfg_path.write_text(cfg.to_toml(), encoding="utf-8")
    assert main(["train", "--config", str(cfg_path), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "round 1/2" in text and "round 2/2" in text and "final: EER" in text
    # tiny_config runs on simulation randomness: every epsilon line says what it is worth
    eps_lines = [line for line in text.splitlines() if "eps per" in line]
    assert len(eps_lines) == 2 and all(SIMULATION_WARNING in line for line in eps_lines)
    run = out / "cli_run"
    assert main(["train", "--config", str(cfg_path), "--quiet"]) == 2  # exists: needs --resume or --overwrite
    assert "pass resume=True" in capsys.readouterr().err
    assert main(["train", "--config", str(cfg_path), "--quiet", "--resume"]) == 0
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--quiet"]) == 0
    assert "cli_run on" in capsys.readouterr().out
    assert main(["ledger", str(run), "--check"]) == 0
    text = capsys.readouterr().out
    assert "all 6 rows recompute" in text
    assert sum(SIMULATION_WARNING in line for line in text.splitlines()) == 12  # 6 table rows, 6 checks
    corpus = build_builtin_corpus(data_dir / "builtin_8x4_seed0", n_speakers=8, utts_per_speaker=4, progress=False)
    by_spk = corpus.by_speaker()
    spk_a, spk_b = sorted(by_spk)[:2]
    store = out / "store"
    enroll = [str(u.path) for u in by_spk[spk_a][:2]]
    assert main(["enroll", "--run", str(run), "--store", str(store), spk_a, *enroll]) == 0
    codes = {main(["verify", "--run", str(run), "--store", str(store), spk_a, str(u.path)])
             for u in by_spk[spk_a][2:] + by_spk[spk_b]}
    assert codes <= {0, 1}
    assert main(["verify", "--run", str(run), "--store", str(store), spk_a, enroll[0]]) == 0


def test_secagg_he_without_the_trust_acceptance_is_refused_before_the_run_starts():
    with pytest.raises(ConfigError, match='no client colludes with the server.*scheme = "mask"'):
        _config(build_parser().parse_args(["demo", "--secagg", "bfv"]))
