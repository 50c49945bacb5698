"""The threat model cites tests by name; every cited test file and test function must exist."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cited_tests() -> list[tuple[str, str | None]]:
    text = (ROOT / "threat_model" / "README.md").read_text(encoding="utf-8")
    cites: list[tuple[str, str | None]] = []
    for row in text.splitlines():
        last_file = None
        for token in re.findall(r"`([^`]+)`", row):
            m = re.fullmatch(r"((?:[\w]+/)*test_\w+\.py)(?:::(\w+))?", token)
            if m:
                last_file = m.group(1)
                cites.append((last_file, m.group(2)))
                continue
            m = re.fullmatch(r"::(\w+)", token)
            if m and last_file:
                cites.append((last_file, m.group(1)))
    return cites


def test_threat_model_cites_tests() -> None:
    assert len(cited_tests()) >= 30


def test_every_cited_test_exists() -> None:
    missing = []
    for file, name in cited_tests():
        path = ROOT / "tests" / file
        if not path.is_file():
            missing.append(file)
        elif name and not re.search(rf"^def {name}\(", path.read_text(encoding="utf-8"), re.M):
            missing.append(f"{file}::{name}")
    assert not missing, f"threat_model/README.md cites tests that do not exist: {missing}"
