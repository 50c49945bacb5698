from __future__ import annotations

import dataclasses
import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from privspk.errors import ConfigError
from privspk.privacy.budget import PRIVACY_UNITS, PrivacyBudget


def test_valid_budget_is_frozen_and_plain_typed() -> None:
    b = PrivacyBudget(epsilon=8, delta=1e-5, unit="speaker")
    assert (b.epsilon, b.delta, b.unit) == (8.0, 1e-5, "speaker")
    assert type(b.epsilon) is float and type(b.delta) is float
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.epsilon = 9.0  # type: ignore[misc]
    assert str(b) == "epsilon=8 (delta=1e-05) per speaker"


def test_positional_arguments_are_refused() -> None:
    with pytest.raises(TypeError):
        PrivacyBudget(8.0, 1e-5)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"epsilon": 0.0, "delta": 1e-5}, "epsilon must be finite and > 0, got 0.0"),
        ({"epsilon": -1.0, "delta": 1e-5}, "epsilon must be finite and > 0, got -1.0"),
        ({"epsilon": math.inf, "delta": 1e-5}, "epsilon must be finite and > 0, got inf"),
        ({"epsilon": math.nan, "delta": 1e-5}, "epsilon must be finite and > 0, got nan"),
        ({"epsilon": "8", "delta": 1e-5}, "epsilon must be a number, got '8'"),
        ({"epsilon": True, "delta": 1e-5}, "epsilon must be a number, got True"),
        ({"epsilon": 8.0, "delta": 1.0}, "delta must be in (0, 1), got 1.0"),
        ({"epsilon": 8.0, "delta": 1.5}, "delta must be in (0, 1), got 1.5"),
        ({"epsilon": 8.0, "delta": 0.0}, "delta must be in (0, 1), got 0.0"),
        ({"epsilon": 8.0, "delta": -1e-5}, "delta must be in (0, 1), got -1e-05"),
        ({"epsilon": 8.0, "delta": math.nan}, "delta must be in (0, 1), got nan"),
        ({"epsilon": 8.0, "delta": 1e-5, "unit": "frame"}, "unit must be one of utterance, speaker, client"),
    ],
)
def test_bad_budget_names_the_problem(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        PrivacyBudget(**kwargs)  # type: ignore[arg-type]
    assert needle in str(info.value)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        PrivacyBudget(epsilon=-1, delta=2, unit="x")
    msg = str(info.value)
    assert "epsilon" in msg and "delta" in msg and "unit" in msg


@given(
    epsilon=st.floats(min_value=1e-6, max_value=1e6, allow_nan=False, allow_infinity=False),
    delta=st.floats(min_value=1e-15, max_value=0.999, allow_nan=False),
    unit=st.sampled_from(PRIVACY_UNITS),
)
def test_dict_round_trip_through_json(epsilon: float, delta: float, unit: str) -> None:
    b = PrivacyBudget(epsilon=epsilon, delta=delta, unit=unit)
    again = PrivacyBudget.from_dict(json.loads(json.dumps(b.to_dict())))
    assert again == b


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"epsilon": 1.0}, "missing key(s) delta"),
        ({"delta": 1e-5}, "missing key(s) epsilon"),
        ({"epsilon": 1.0, "delta": 1e-5, "sigma": 1.0}, "unknown key(s) sigma"),
        ([("epsilon", 1.0)], "must be a mapping"),
        ({"epsilon": 0, "delta": 1e-5}, "epsilon must be finite and > 0"),
    ],
)
def test_from_dict_refuses_bad_input(data: object, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        PrivacyBudget.from_dict(data)  # type: ignore[arg-type]
    assert needle in str(info.value)


def test_from_dict_defaults_unit_to_utterance() -> None:
    assert PrivacyBudget.from_dict({"epsilon": 2, "delta": 1e-6}).unit == "utterance"
