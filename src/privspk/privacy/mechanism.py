"""The DP-SGD mechanism of one client's round, as one typed, validated, frozen value.

A :class:`Mechanism` is everything the accountant needs to charge a round (noise
multiplier, Poisson sample rate, steps, delta) and everything that makes the guarantee
what it is (the clipping bound, the privacy unit, the accountant, where the randomness
comes from). The planner returns one (:func:`privspk.privacy.planner.plan_mechanism`),
local training runs it (:func:`privspk.training.local.train_local`), the client's guard
charges it (:class:`privspk.privacy.guard.BudgetGuard`), the ledger stores its fields in
each row and ``privspk ledger --check`` rebuilds it from a row (:meth:`Mechanism.from_row`)
to recompute the row's epsilon.

Related types, kept because they mean something else: :class:`~privspk.privacy.accounting.SpendStep`
is the accountant's history entry (noise multiplier, sample rate, steps; no clip, unit or delta: a
history composes entries of different mechanisms, and compacting merges their steps);
:class:`~privspk.privacy.ledger.Spend` is one recorded round (a mechanism plus client, round,
epsilon after it, scheme, speakers, update digest); :class:`~privspk.privacy.accounting.ClientLevelMechanism`
is the integer noise of client-level distributed DP, another mechanism with another accountant.

>>> m = Mechanism(noise_multiplier=1.5, sample_rate=0.04, steps=2250, clip=1.0, delta=1e-5)
>>> round(m.epsilon(), 6)  # Opacus' own test value: 7.32911117143
7.329111
>>> m.unit, m.accountant, m.randomness
('utterance', 'rdp', 'secret')
>>> Mechanism.from_row(m.to_dict()) == m
True
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from privspk.errors import ConfigError
from privspk.privacy._checks import positive_float, positive_int, probability
from privspk.privacy.accounting import SpendEntry, SpendStep, as_history, check_accountant, epsilon

__all__ = ["MECHANISM_FIELDS", "RANDOMNESS_MODES", "SAMPLE_UNITS", "SIMULATION_WARNING", "Mechanism"]

SAMPLE_UNITS: tuple[str, ...] = ("utterance", "speaker")
"""What one DP-SGD record is: one recording, or all recordings of one speaker on a client."""

RANDOMNESS_MODES: tuple[str, ...] = ("secret", "simulation")
"""Where a round's noise and sampling came from: the OS CSPRNG, or the run's seed (reproducible)."""

SIMULATION_WARNING = "simulation randomness: ε assumes nothing, not valid for a deployment"
"""Printed beside every epsilon of a run whose random choices derive from its seed."""


@dataclass(frozen=True, kw_only=True)
class Mechanism:
    """One round of DP-SGD: ``steps`` noisy steps at ``noise_multiplier`` and ``sample_rate``, clipped to ``clip``.

    Args:
        noise_multiplier: Gaussian noise std divided by ``clip`` (>= 0; 0 trains with clipping only and
            has no finite epsilon: it cannot be charged to a budget).
        sample_rate: Poisson rate of one record (``unit``) per step, in (0, 1].
        steps: noisy steps (releases) per round, >= 1.
        clip: the L2 clipping bound of one record's gradient, > 0.
        unit: ``"utterance"`` or ``"speaker"``.
        accountant: ``"rdp"`` or ``"prv"``.
        randomness: ``"secret"`` (noise and sampling from the OS CSPRNG) or ``"simulation"``
            (derived from the run's seed: the epsilon assumes nothing).
        delta: the delta every epsilon of this mechanism is stated at, in (0, 1).

    Every problem is a :class:`~privspk.errors.ConfigError` naming the field:

    >>> Mechanism(noise_multiplier=1.0, sample_rate=0.0, steps=5, clip=1.0, delta=1e-5)
    Traceback (most recent call last):
    ...
    privspk.errors.ConfigError: sample_rate must be in (0, 1], got 0.0
    """

    noise_multiplier: float
    sample_rate: float
    steps: int
    clip: float
    delta: float
    unit: str = "utterance"
    accountant: str = "rdp"
    randomness: str = "secret"

    def __post_init__(self) -> None:
        sigma = self.noise_multiplier
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not (0 <= sigma < math.inf):
            raise ConfigError(f"noise_multiplier must be >= 0 and finite, got {sigma!r}")
        sigma = float(sigma)
        object.__setattr__(self, "noise_multiplier", sigma)
        object.__setattr__(self, "sample_rate", probability("sample_rate", self.sample_rate, allow_one=True))
        object.__setattr__(self, "steps", positive_int("steps", self.steps))
        object.__setattr__(self, "clip", positive_float("clip", self.clip))
        object.__setattr__(self, "delta", probability("delta", self.delta))
        if self.unit not in SAMPLE_UNITS:
            raise ConfigError(f"privacy unit must be one of {'|'.join(SAMPLE_UNITS)}, got {self.unit!r}")
        object.__setattr__(self, "accountant", check_accountant(self.accountant))
        if self.randomness not in RANDOMNESS_MODES:
            raise ConfigError(f"randomness must be one of {', '.join(RANDOMNESS_MODES)}, got {self.randomness!r}")

    @property
    def step(self) -> SpendStep:
        """The round as the accountant's history entry (needs a noise multiplier > 0).

        >>> Mechanism(noise_multiplier=1.0, sample_rate=0.1, steps=5, clip=1.0, delta=1e-5).step.steps
        5
        """
        return SpendStep(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate, steps=self.steps)

    def epsilon(self, rounds: int = 1, *, already_spent: Iterable[SpendEntry] = ()) -> float:
        """Epsilon (at :attr:`delta`, by :attr:`accountant`) of ``rounds`` rounds composed after ``already_spent``.

        ``inf`` without noise.

        >>> m = Mechanism(noise_multiplier=1.0, sample_rate=0.05, steps=50, clip=1.0, delta=1e-5)
        >>> round(m.epsilon(), 3), round(m.epsilon(2), 3)
        (3.176, 4.038)
        """
        rounds = positive_int("rounds", rounds)
        if self.noise_multiplier == 0.0:
            return math.inf
        planned = dataclasses.replace(self.step, steps=self.steps * rounds)
        return epsilon((*as_history(already_spent), planned), delta=self.delta, accountant=self.accountant)

    def with_noise(self, noise_multiplier: float) -> Mechanism:
        """The same mechanism at another noise multiplier (the planner's search variable).

        >>> Mechanism(noise_multiplier=1.0, sample_rate=0.1, steps=5, clip=1.0, delta=1e-5).with_noise(2).noise_multiplier
        2.0
        """
        return dataclasses.replace(self, noise_multiplier=noise_multiplier)

    def to_dict(self) -> dict[str, Any]:
        """Plain-typed dict of the fields (the ledger's columns of the same names).

        >>> Mechanism(noise_multiplier=1.0, sample_rate=0.1, steps=5, clip=1.0, delta=1e-5).to_dict()["steps"]
        5
        """
        return {name: getattr(self, name) for name in MECHANISM_FIELDS}

    @classmethod
    def from_row(cls, row: object) -> Mechanism:
        """The mechanism a ledger row (a :class:`~privspk.privacy.ledger.SpendRow`, or a mapping with its columns
        as in the ledger's JSON/CSV export) recorded; a missing column is a ConfigError.

        >>> Mechanism.from_row({"noise_multiplier": 1.2, "sample_rate": "0.1", "steps": "5", "clip": 0.5,
        ...                     "delta": 1e-5, "unit": "speaker", "accountant": "prv", "randomness": "secret"}).unit
        'speaker'
        """
        if not isinstance(row, Mapping):
            mech = getattr(row, "mechanism", None)
            if isinstance(mech, Mechanism):
                return mech
            raise ConfigError(f"cannot read a mechanism from a {type(row).__name__}")
        missing = [name for name in MECHANISM_FIELDS if row.get(name) in (None, "")]
        if missing:
            raise ConfigError(f"ledger row lacks the mechanism's {', '.join(missing)}")
        values = {name: row[name] for name in MECHANISM_FIELDS}
        try:  # CSV cells are strings
            for name in ("noise_multiplier", "sample_rate", "clip", "delta"):
                values[name] = float(values[name])
            values["steps"] = int(values["steps"])
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"ledger row has a malformed mechanism field ({exc})") from None
        return cls(**values)


MECHANISM_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Mechanism))
"""The fields of :class:`Mechanism`, in order (each is a column of the ledger's ``spends`` table)."""
