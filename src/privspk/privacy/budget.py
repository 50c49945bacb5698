"""Privacy budgets: how much (epsilon, delta) a client or speaker may spend, and on what unit.

A budget always names its *unit* - what one neighbouring record is - so that an
epsilon is never shown without what it protects:

* ``"utterance"``: one recording (sample-level DP-SGD, the Opacus default);
* ``"speaker"``: all recordings of one speaker (speaker-level sampling);
* ``"client"``: a client's whole update (client-level distributed DP).

>>> b = PrivacyBudget(epsilon=8.0, delta=1e-5)
>>> b
PrivacyBudget(epsilon=8.0, delta=1e-05, unit='utterance')
>>> str(b)
'epsilon=8 (delta=1e-05) per utterance'
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass

from privspk.errors import ConfigError

__all__ = ["PRIVACY_UNITS", "PrivacyBudget"]

PRIVACY_UNITS: tuple[str, ...] = ("utterance", "speaker", "client")
"""The units a budget (and every ledger row) may protect."""


def _budget_problems(epsilon: object, delta: object, unit: object) -> list[str]:
    problems: list[str] = []
    if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real):
        problems.append(f"epsilon must be a number, got {epsilon!r}")
    elif not (math.isfinite(float(epsilon)) and float(epsilon) > 0.0):
        problems.append(f"epsilon must be finite and > 0, got {epsilon!r} (a budget of zero spends nothing: "
                        "train without the client instead)")
    if isinstance(delta, bool) or not isinstance(delta, numbers.Real):
        problems.append(f"delta must be a number, got {delta!r}")
    elif not (0.0 < float(delta) < 1.0):
        problems.append(f"delta must be in (0, 1), got {delta!r} (typical: below 1/number of records, e.g. 1e-5)")
    if unit not in PRIVACY_UNITS:
        problems.append(f"unit must be one of {', '.join(PRIVACY_UNITS)}, got {unit!r}")
    return problems


@dataclass(frozen=True, kw_only=True)
class PrivacyBudget:
    """An (epsilon, delta) budget for one unit of privacy; immutable and validated.

    Every problem is reported at once, as one :class:`~privspk.errors.ConfigError`.

    Args:
        epsilon: total epsilon allowed, finite and > 0.
        delta: delta of the guarantee, 0 < delta < 1.
        unit: what one record is: ``"utterance"``, ``"speaker"`` or ``"client"``.

    >>> PrivacyBudget(epsilon=2, delta=1e-6, unit="speaker").epsilon
    2.0
    >>> PrivacyBudget(epsilon=0, delta=1.0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    privspk.errors.ConfigError: invalid privacy budget: epsilon must be finite and > 0, got 0 ...; delta must...
    """

    epsilon: float
    delta: float
    unit: str = "utterance"

    def __post_init__(self) -> None:
        problems = _budget_problems(self.epsilon, self.delta, self.unit)
        if problems:
            raise ConfigError("invalid privacy budget: " + "; ".join(problems))
        object.__setattr__(self, "epsilon", float(self.epsilon))
        object.__setattr__(self, "delta", float(self.delta))

    def __str__(self) -> str:
        return f"epsilon={self.epsilon:g} (delta={self.delta:g}) per {self.unit}"

    def to_dict(self) -> dict[str, float | str]:
        """Plain-typed dict (JSON/TOML friendly); :meth:`from_dict` reverses it.

        >>> PrivacyBudget(epsilon=8, delta=1e-5).to_dict()
        {'epsilon': 8.0, 'delta': 1e-05, 'unit': 'utterance'}
        """
        return {"epsilon": self.epsilon, "delta": self.delta, "unit": self.unit}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> PrivacyBudget:
        """Build a budget from :meth:`to_dict` output; unknown or missing keys are errors.

        >>> PrivacyBudget.from_dict({"epsilon": 4, "delta": 1e-5, "unit": "client"}).unit
        'client'
        >>> PrivacyBudget.from_dict({"epsilon": 4, "delta": 1e-5, "eps": 3})
        Traceback (most recent call last):
        ...
        privspk.errors.ConfigError: privacy budget: unknown key(s) eps; allowed: epsilon, delta, unit
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"privacy budget must be a mapping, got {type(data).__name__}")
        allowed = ("epsilon", "delta", "unit")
        unknown = sorted(str(k) for k in data if k not in allowed)
        if unknown:
            raise ConfigError(f"privacy budget: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
        missing = [k for k in ("epsilon", "delta") if k not in data]
        if missing:
            raise ConfigError(f"privacy budget: missing key(s) {', '.join(missing)}")
        unit = data.get("unit", "utterance")
        return cls(epsilon=data["epsilon"], delta=data["delta"], unit=unit)  # type: ignore[arg-type]
