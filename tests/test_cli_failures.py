"""Issue 17: refuse early, and a disk that says no gives one line, never a traceback.

*Fail before spending time*: an unreachable budget, a scheme that cannot run with the client
count and ``--rounds 0`` are refused before the run directory exists (the assertion is on the
missing directory and the message, not on time).

*File-system errors*: the tests run as root here and in CI, and root ignores permission bits,
so a read-only or full disk is emulated two ways that work for root too: a path under a
regular file (``mkdir`` fails with ENOTDIR, a real error) and monkeypatching the one call
that writes (``Path.mkdir``, ``Path.rename``, ``Path.write_text``, ``numpy.save``) to raise
``OSError(EROFS)`` / ``OSError(ENOSPC)`` for paths of the run, as a read-only mount or a full
disk would.
"""

from __future__ import annotations

import errno
import hashlib
import pathlib
from pathlib import Path

import numpy as np
import pytest

import privspk
from privspk.cli import main
from privspk.errors import ConfigError
from privspk.privacy import Ledger
from test_api import shared_data_dir, tiny_config
from test_cli import run_dir  # noqa: F401 - the hand-made run fixture

pytestmark = [
    pytest.mark.filterwarnings("ignore:Full backward hook is firing"),
    pytest.mark.filterwarnings("ignore:Secure RNG turned off"),
]


def _config_file(out: Path, **kw) -> Path:
    cfg = tiny_config(kw.pop("data_dir"), out, **kw)
    path = out.parent / f"{cfg.name}.toml"
    path.write_text(cfg.to_toml(), encoding="utf-8")
    return path


def _one_line(err: str, command: str) -> str:
    assert err.startswith(f"privspk {command}: error: "), err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- fail before spending time
def test_unreachable_epsilon_is_refused_before_the_run_directory(tmp_path_factory, tmp_path, capsys):
    data_dir = shared_data_dir(tmp_path_factory)
    cfg = _config_file(tmp_path / "runs", data_dir=data_dir, name="tiny_eps", epsilon=0.01)
    assert main(["train", "--config", str(cfg), "--quiet"]) == 2
    err = _one_line(capsys.readouterr().err, "train")
    assert "no noise plan for client0" in err and "within epsilon=0.01" in err and "Nothing was written" in err
    assert not (tmp_path / "runs" / "tiny_eps").exists()
    # the same through the command-line override of a reachable config
    cfg = _config_file(tmp_path / "runs", data_dir=data_dir, name="tiny_eps2")
    assert main(["train", "--config", str(cfg), "--quiet", "--epsilon", "0.01"]) == 2
    assert "no noise plan" in _one_line(capsys.readouterr().err, "train")
    assert not (tmp_path / "runs" / "tiny_eps2").exists()


def test_one_client_with_masks_is_refused_before_any_data_is_read(tmp_path):
    cfg = tiny_config(tmp_path / "data", tmp_path / "runs", name="alone")
    cfg = cfg.replace(federation=cfg.federation.__class__(n_clients=1, rounds=2))
    with pytest.raises(ConfigError, match=r"scheme 'mask' cannot run with \[federation\] n_clients = 1"):
        privspk.train(cfg, progress=False)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


@pytest.mark.parametrize(("option", "value", "match"), [
    ("--rounds", "0", "[federation] n_clients and rounds must be >= 1"),
    ("--epsilon", "0", "[privacy] epsilon must be a positive finite number"),
    ("--name", "", "must name one folder"),
])
def test_command_line_overrides_are_checked_like_toml_values(tmp_path, capsys, option, value, match):
    cfg = _config_file(tmp_path / "runs", data_dir=tmp_path / "data", name="over")
    assert main(["train", "--config", str(cfg), "--quiet", option, value]) == 2
    assert match in _one_line(capsys.readouterr().err, "train")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


def test_a_refused_overwrite_leaves_the_old_run_whole(tmp_path_factory, tmp_path, capsys):
    cfg = _config_file(tmp_path / "runs", data_dir=shared_data_dir(tmp_path_factory), name="old", epsilon=0.01)
    old = tmp_path / "runs" / "old"
    old.mkdir(parents=True)
    (old / "keep.txt").write_text("mine")
    assert main(["train", "--config", str(cfg), "--quiet", "--overwrite"]) == 2
    assert "no noise plan" in _one_line(capsys.readouterr().err, "train")
    assert (old / "keep.txt").read_text() == "mine"


# --------------------------------------------------------------------------- the disk says no
def _refuse(monkeypatch, target: str, under: Path, code: int) -> None:
    """Make ``target`` (e.g. ``pathlib.Path.mkdir``) raise OSError(code) for paths under ``under``."""
    owner, name = target.rsplit(".", 1)
    cls = {"pathlib.Path": pathlib.Path, "numpy": np}[owner]
    real = getattr(cls, name)

    def refused(*args, **kwargs):
        path = Path(args[0] if owner == "pathlib.Path" else args[0])
        if str(path).startswith(str(under)):
            raise OSError(code, __import__("os").strerror(code), str(path))
        return real(*args, **kwargs)

    monkeypatch.setattr(cls, name, refused)


def test_fresh_train_under_a_regular_file(tmp_path_factory, tmp_path, capsys):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    cfg = _config_file(tmp_path / "cfg", data_dir=shared_data_dir(tmp_path_factory), name="f")
    assert main(["train", "--config", str(cfg), "--quiet", "--out", str(blocker / "runs")]) == 2
    err = _one_line(capsys.readouterr().err, "train")
    assert str(blocker) in err and "choose another path" in err
    assert blocker.read_text() == "x"


def test_fresh_train_in_a_read_only_folder(tmp_path_factory, tmp_path, capsys, monkeypatch):
    out = tmp_path / "ro"
    out.mkdir()
    cfg = _config_file(tmp_path / "cfg", data_dir=shared_data_dir(tmp_path_factory), name="r")
    _refuse(monkeypatch, "pathlib.Path.mkdir", out, errno.EROFS)
    assert main(["train", "--config", str(cfg), "--quiet", "--out", str(out)]) == 2
    err = _one_line(capsys.readouterr().err, "train")
    assert str(out / "r") in err and "Read-only file system" in err and "make it writable" in err
    assert list(out.iterdir()) == []


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("ro_runs")
    cfg = _config_file(out / "runs", data_dir=shared_data_dir(tmp_path_factory), name="done")
    assert main(["train", "--config", str(cfg), "--quiet"]) == 0
    return cfg, out / "runs" / "done"


def test_overwrite_of_a_read_only_run(finished_run, capsys, monkeypatch):
    cfg, run = finished_run
    before = _tree(run)
    _refuse(monkeypatch, "pathlib.Path.rename", run, errno.EROFS)
    assert main(["train", "--config", str(cfg), "--quiet", "--overwrite"]) == 2
    err = _one_line(capsys.readouterr().err, "train")
    assert str(run) in err and "make it writable" in err
    assert _tree(run) == before, "a refused overwrite must leave the run as it was"


def test_resume_of_a_read_only_run(finished_run, capsys, monkeypatch):
    cfg, run = finished_run
    before = _tree(run)
    _refuse(monkeypatch, "pathlib.Path.write_text", run, errno.EROFS)
    assert main(["train", "--config", str(cfg), "--quiet", "--resume"]) == 2
    err = _one_line(capsys.readouterr().err, "train")
    assert str(run / "config.toml") in err and "make it writable" in err
    assert _tree(run) == before


def test_enroll_into_a_store_under_a_regular_file(run_dir, tmp_path, capsys):  # noqa: F811
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc = main(["enroll", "--run", str(run_dir), "--store", str(blocker / "store"), "ann",
               str(tmp_path / "ann1.wav")])
    assert rc == 2
    err = _one_line(capsys.readouterr().err, "enroll")
    assert str(blocker) in err and "choose another path" in err


def test_enroll_into_a_read_only_store(run_dir, tmp_path, capsys, monkeypatch):  # noqa: F811
    store = tmp_path / "store"
    store.mkdir()
    import tempfile

    real = tempfile.NamedTemporaryFile

    def refused(*args, **kwargs):
        if str(kwargs.get("dir", "")).startswith(str(store)):
            raise OSError(errno.EROFS, "Read-only file system", str(store))
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", refused)
    rc = main(["enroll", "--run", str(run_dir), "--store", str(store), "ann", str(tmp_path / "ann1.wav")])
    assert rc == 2
    assert "Read-only file system" in _one_line(capsys.readouterr().err, "enroll")
    assert list(store.iterdir()) == []


def test_eval_scores_under_a_regular_file(run_dir, tmp_path, capsys):  # noqa: F811
    blocker = tmp_path / "file"
    blocker.write_text("x")
    (tmp_path / "trials.txt").write_text("ann1.wav ann2.wav target\nann1.wav other.wav nontarget\n")
    rc = main(["eval", "--run", str(run_dir), "--trials", str(tmp_path / "trials.txt"), "--wav-dir", str(tmp_path),
               "--scores", str(blocker / "scores.txt")])
    assert rc == 2
    err = _one_line(capsys.readouterr().err, "eval")
    assert str(blocker) in err


def test_disk_full_mid_round_keeps_the_ledger_consistent_and_resumes(tmp_path_factory, tmp_path, capsys,
                                                                     monkeypatch):
    cfg = _config_file(tmp_path / "runs", data_dir=shared_data_dir(tmp_path_factory), name="mid", rounds=2)
    run = tmp_path / "runs" / "mid"
    real = np.save

    def full(file, arr, *args, **kwargs):
        if "update_r0002" in str(file) and "client1" in str(file):
            raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return real(file, arr, *args, **kwargs)

    monkeypatch.setattr(np, "save", full)
    assert main(["train", "--config", str(cfg), "--quiet"]) == 2
    err = _one_line(capsys.readouterr().err, "train")
    assert "No space left on device" in err and "update_r0002" in err and "free some space" in err
    with Ledger(run / "ledger.sqlite", readonly=True) as led:
        rows = {(r.client, r.round): r.status for r in led.rows()}
        assert rows[("client0", 1)] == rows[("client1", 1)] == "aggregated"
        assert ("client1", 2) not in rows, "no spend without its staged update"
        assert all(c.ok for c in led.recompute()) and led.verify_chain() == []
    monkeypatch.setattr(np, "save", real)  # space freed: the run resumes and completes
    assert main(["train", "--config", str(cfg), "--quiet", "--resume"]) == 0
    capsys.readouterr()
    with Ledger(run / "ledger.sqlite", readonly=True) as led:
        assert sorted(set(r.status for r in led.rows())) == ["aggregated"] and len(led.rows()) == 6
    assert main(["ledger", str(run), "--check"]) == 0
