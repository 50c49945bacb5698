"""benchmarks/he_collusion_cost.py at toy sizes, so the script cannot rot (its figures come from full runs)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "he_collusion_cost.py"


def _load():
    spec = importlib.util.spec_from_file_location("he_collusion_cost", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["he_collusion_cost"] = module
    spec.loader.exec_module(module)
    return module


def test_the_script_measures_every_mitigation_at_toy_size(tmp_path: Path) -> None:
    hc = _load()
    assert hc.main(["--clients", "2", "--dim", "3000", "--rounds", "1", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "he_collusion_cost.json").read_text())
    now = doc["now"]
    assert now["fresh_key_per_round"] is True
    for name in ("ckks", "bfv"):
        row = now["rounds"][name]
        assert row["stages"] == ["setup", "pledge", "freeze", "collect", "commit", "verify", "open"]
        assert row["round_s"] > 0 and now["keygen_s"][name] > 0
    bits16 = next(r for r in now["bfv_check_bit"] if r["bits"] == 16)
    assert (bits16["without"], bits16["with"]) == (7.0, 7.125)
    assert "Flooding for statistical security: not measured" in (tmp_path / "he_collusion_cost.md").read_text()
