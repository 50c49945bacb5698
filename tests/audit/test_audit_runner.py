"""``privspk audit RUN`` end to end on a tiny DP run (built-in corpus, tiny encoder, embedding recipe)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_api import tiny_config  # noqa: E402

import privspk  # noqa: E402
from privspk.audit.runner import AuditSettings, audit_run, read_ledger  # noqa: E402
from privspk.cli import main  # noqa: E402
from privspk.config import CorpusSection, SplitSection, TrainSection  # noqa: E402
from privspk.errors import ConfigError  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.filterwarnings("ignore::FutureWarning")]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    cfg = tiny_config(tmp_path_factory.mktemp("data"), tmp_path_factory.mktemp("runs"), name="tinyaudit",
                      epsilon=3.0)
    cfg = cfg.replace(corpus=CorpusSection(n_speakers=16, utts_per_speaker=4), split=SplitSection(heldout=4),
                      train=TrainSection(recipe="embedding", local_steps=5, batch_size=4, physical_batch=16,
                                         crop_frames=40, trunk_crops=2))
    privspk.train(cfg, progress=False)
    return cfg


def test_reads_the_ledger_of_the_run(tiny_run):
    view = read_ledger(Path(tiny_run.out_dir) / tiny_run.name / "ledger.sqlite")
    assert view.unit == "utterance" and len(view.epsilon_by_round) == 2
    assert 0 < view.epsilon_by_round[0] < view.epsilon_by_round[1] <= 3.0
    assert read_ledger(Path(tiny_run.out_dir) / "nothing.sqlite") is None


@pytest.mark.slow
def test_audit_command_writes_every_section(tiny_run, capsys, monkeypatch):
    import privspk.audit.runner as runner

    monkeypatch.setattr(runner.AuditSettings, "preset",
                        classmethod(lambda cls, *, quick: AuditSettings(canaries=100, canary_rounds=1, bootstrap=50,
                                                                        probe_utts=2)))
    run = Path(tiny_run.out_dir) / tiny_run.name
    code = main(["audit", str(run), "--quick", "--quiet"])
    text = capsys.readouterr().out
    for section in ("1. Membership inference", "2. Canary audit", "3. What the server learns"):
        assert section in text
    doc = json.loads((run / "audit" / "audit.json").read_text())
    assert set(doc["verdicts"]) == {"membership", "canary", "leakage"}
    assert doc["canary"]["control"]["m"] == 100 and doc["canary"]["dp"]["insertions"] > 0
    assert doc["canary"]["verdict"]["verdict"] in ("PASS", "INCONCLUSIVE")  # the real mechanism never FAILs
    assert code == 0
    assert (run / "audit" / "canary_epsilon.png").exists() and (run / "audit" / "membership_scores.png").exists()


def test_an_unfinished_run_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="not a finished run"):
        audit_run(tmp_path)


@pytest.mark.slow
def test_quick_audit_of_a_run_with_more_speakers(tmp_path_factory):
    """The quick path: one re-run client, its speakers split in three for the leakage attack."""
    cfg = tiny_config(tmp_path_factory.mktemp("data"), tmp_path_factory.mktemp("runs"), name="tinyquick",
                      epsilon=3.0)
    cfg = cfg.replace(corpus=CorpusSection(n_speakers=30, utts_per_speaker=4), split=SplitSection(heldout=4),
                      train=TrainSection(recipe="embedding", local_steps=5, batch_size=4, physical_batch=16,
                                         crop_frames=40, trunk_crops=2))
    privspk.train(cfg, progress=False)
    rep = audit_run(Path(cfg.out_dir) / cfg.name, progress=False,
                    settings=AuditSettings(canaries=100, canary_rounds=1, rerun_clients=1, bootstrap=50,
                                           probe_utts=2, mia_utts_per_speaker=3))
    assert rep.canary.clients == ("client0",)
    assert set(rep.membership) == {"dp", "control"}
    views = list(rep.leakage)
    assert views[0] == "plain update" and views[1] == "DP update" and views[2].startswith("opened mask sum of 3")
    assert set(rep.leakage["plain update"]) == {"part0", "part1", "part2"}
    assert sum(a.held for a in rep.leakage[views[2]].values()) == rep.leakage[views[2]]["part0"].candidates
