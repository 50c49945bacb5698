"""benchmarks/gpu_speedup.py at toy sizes, so the script cannot rot (its figures come from a GPU machine)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_speedup.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_speedup", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_speedup"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_the_script_times_both_steps_and_says_when_there_is_no_cuda(tmp_path: Path, capsys) -> None:
    gs = _load()
    argv = ["--encoder", "ecapa_gn_c64", "--batch", "4", "--crop", "40", "--steps", "1", "--warmup", "1",
            "--speakers", "4", "--utts", "4", "--frames", "60", "--out", str(tmp_path)]
    assert gs.main(argv) == 0
    doc = json.loads((tmp_path / "gpu_speedup.json").read_text())
    cpu = doc["seconds_per_step"]["cpu"]
    assert set(cpu) == {"pretrain_step_s", "dp_sgd_utterance_step_s", "dp_sgd_speaker_step_s"}
    assert all(v > 0 for v in cpu.values())
    md = (tmp_path / "gpu_speedup.md").read_text()
    if torch.cuda.is_available():
        assert all(v > 0 for v in doc["speedup_cpu_over_cuda"].values())
    else:
        assert doc["seconds_per_step"]["cuda"] is None and doc["speedup_cpu_over_cuda"] is None
        assert "no CUDA device" in capsys.readouterr().out and "not measured" in md
