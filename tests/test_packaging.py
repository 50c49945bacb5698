"""Packaging: pyproject declares ranges the lock satisfies, and the wheel carries the package data."""

from __future__ import annotations

import email.parser
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _declared() -> list[Requirement]:
    project = _pyproject()["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        reqs += [Requirement(r) for r in extra]
    return reqs


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def test_every_declared_dependency_is_pinned_in_the_lock_and_the_pin_satisfies_its_range():
    pins = _lock()
    declared = _declared()
    assert len(declared) >= 12
    for req in declared:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is declared in pyproject.toml but not pinned in requirements.lock"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {req.name}=={pins[name]}, outside the declared {req.specifier}"
        )


def test_runtime_dependencies_are_ranges_except_where_a_single_version_is_required():
    # the exact pins belong in requirements.lock; pyproject only pins what the code is tied to
    exact = [Requirement(r).name for r in _pyproject()["project"]["dependencies"] if "==" in r]
    assert exact == ["tenseal"]


def test_build_backend_in_the_lock_satisfies_build_system_requires():
    pins = _lock()
    for spec in _pyproject()["build-system"]["requires"]:
        req = Requirement(spec)
        assert req.specifier.contains(pins[canonicalize_name(req.name)])


def test_the_wheel_builds_offline_and_carries_package_data_metadata_and_entry_point(tmp_path):
    pytest.importorskip(
        "setuptools.command.bdist_wheel",
        reason="setuptools < 70.1 in this environment: install requirements.lock (setuptools pin)",
    )
    src = tmp_path / "src-tree"  # build from a copy: setuptools writes build/ and egg-info in the tree
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "-q", "-w", str(dist), str(src)],
        check=True, capture_output=True, text=True,
    )
    (wheel,) = dist.glob("privspk-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (meta_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = email.parser.Parser().parsestr(zf.read(meta_name).decode("utf-8"))
        entry_points = zf.read(meta_name.replace("METADATA", "entry_points.txt")).decode("utf-8")
    presets = sorted((ROOT / "src").glob("privspk/presets/*.toml"))
    assert presets
    for data_file in presets:
        assert data_file.relative_to(ROOT / "src").as_posix() in names
    assert "privspk/runtimes/flower/app/pyproject.toml" in names
    assert "privspk/cli.py" in names and "privspk/secagg/__init__.py" in names
    assert not any("__pycache__" in n or n.startswith("tests/") for n in names)
    assert "privspk = privspk.cli:main" in entry_points
    assert meta["Requires-Python"] == _pyproject()["project"]["requires-python"]
    runtime = {str(Requirement(r)) for r in meta.get_all("Requires-Dist") if "extra ==" not in r}
    assert runtime == {str(Requirement(r)) for r in _pyproject()["project"]["dependencies"]}
