"""Sample-level privacy accounting: a thin, typed layer over Opacus' accountants.

The state of an accountant is the *history of its inputs* - a list of
``(noise_multiplier, sample_rate, steps)`` - never an epsilon, so every epsilon
can be recomputed from what the ledger stores. Two accountants are offered:

* ``"rdp"`` (default): Rényi DP of the sampled Gaussian mechanism, Opacus'
  ``opacus.accountants.analysis.rdp`` with the orders of Opacus' ``RDPAccountant``
  and the RDP -> (epsilon, delta) conversion of Balle et al. 2020. The RDP
  curve of each distinct ``(noise_multiplier, sample_rate)`` is cached, so
  composing many rounds costs one evaluation per distinct setting.
* ``"prv"``: numerical composition of privacy loss random variables
  (Gopi et al. 2021) through Opacus' ``PRVAccountant``; tighter, slower, and an
  upper bound within ``eps_error = 0.01``.

Opacus (and so torch) is imported on first use only, so ``import privspk.privacy``
stays fast.

>>> history = [SpendStep(noise_multiplier=1.5, sample_rate=0.04, steps=2250)]
>>> round(epsilon(history, delta=1e-5), 6)  # Opacus' own test value: 7.32911117143
7.329111
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from privspk.errors import ConfigError
from privspk.privacy._checks import positive_float, positive_int, probability

__all__ = [
    "ACCOUNTANTS",
    "PrivacyAccountant",
    "RoundSpend",
    "SpendStep",
    "as_history",
    "check_accountant",
    "compact",
    "epsilon",
    "rdp_orders",
    "rounds_epsilon",
    "speaker_epsilons",
]

logger = logging.getLogger(__name__)

ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv")
"""Accountant names accepted everywhere in privspk (Opacus mechanism names)."""

PRV_EPS_ERROR = 0.01
"""Opacus' default ``eps_error`` for the PRV accountant; its epsilon is an upper bound within this."""


@dataclass(frozen=True, kw_only=True)
class SpendStep:
    """``steps`` DP-SGD steps at one noise multiplier and Poisson sampling rate.

    Args:
        noise_multiplier: std of the Gaussian noise divided by the clipping bound (> 0).
        sample_rate: Poisson sampling probability of one record per step, in (0, 1].
        steps: number of steps (>= 1).

    >>> SpendStep(noise_multiplier=1.0, sample_rate=0.01, steps=100).as_tuple()
    (1.0, 0.01, 100)
    """

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "noise_multiplier", positive_float("noise_multiplier", self.noise_multiplier))
        object.__setattr__(self, "sample_rate", probability("sample_rate", self.sample_rate, allow_one=True))
        object.__setattr__(self, "steps", positive_int("steps", self.steps))

    def as_tuple(self) -> tuple[float, float, int]:
        """``(noise_multiplier, sample_rate, steps)``, the entry format of Opacus' ``history``.

        >>> SpendStep(noise_multiplier=2, sample_rate=1, steps=3).as_tuple()
        (2.0, 1.0, 3)
        """
        return (self.noise_multiplier, self.sample_rate, self.steps)


SpendEntry = SpendStep | tuple[float, float, int]


def as_history(entries: Iterable[SpendEntry]) -> tuple[SpendStep, ...]:
    """Validate ``entries`` (``SpendStep`` or Opacus-style ``(sigma, q, steps)`` tuples).

    >>> as_history([(1.0, 0.5, 2)])
    (SpendStep(noise_multiplier=1.0, sample_rate=0.5, steps=2),)
    """
    out: list[SpendStep] = []
    for i, entry in enumerate(entries):
        if isinstance(entry, SpendStep):
            out.append(entry)
            continue
        if not isinstance(entry, (tuple, list)) or len(entry) != 3:
            raise ConfigError(
                f"history entry {i} must be a SpendStep or a (noise_multiplier, sample_rate, steps) tuple, "
                f"got {entry!r}"
            )
        sigma, q, steps = entry
        out.append(SpendStep(noise_multiplier=sigma, sample_rate=q, steps=steps))
    return tuple(out)


def compact(history: Iterable[SpendEntry]) -> tuple[SpendStep, ...]:
    """Merge consecutive entries with the same noise multiplier and sample rate.

    Composition only depends on the multiset of steps, so this changes no
    epsilon; it makes a history of many equal rounds cost one evaluation.

    >>> [s.as_tuple() for s in compact([(1.0, 0.1, 5), (1.0, 0.1, 5), (2.0, 0.1, 1)])]
    [(1.0, 0.1, 10), (2.0, 0.1, 1)]
    """
    merged: list[SpendStep] = []
    for step in as_history(history):
        if merged and (merged[-1].noise_multiplier, merged[-1].sample_rate) == (
            step.noise_multiplier,
            step.sample_rate,
        ):
            last = merged.pop()
            step = SpendStep(
                noise_multiplier=last.noise_multiplier, sample_rate=last.sample_rate, steps=last.steps + step.steps
            )
        merged.append(step)
    return tuple(merged)


def check_accountant(name: object) -> str:
    """Return ``name`` if it is a supported accountant, else raise ConfigError listing the choices.

    >>> check_accountant("prv")
    'prv'
    >>> check_accountant("gdp")
    Traceback (most recent call last):
    ...
    privspk.errors.ConfigError: unknown accountant 'gdp'; choose one of: rdp, prv
    """
    if name not in ACCOUNTANTS:
        raise ConfigError(f"unknown accountant {name!r}; choose one of: {', '.join(ACCOUNTANTS)}")
    return str(name)


@functools.cache
def rdp_orders() -> tuple[float, ...]:
    """The RDP orders of Opacus' ``RDPAccountant`` (so epsilons match Opacus exactly).

    >>> orders = rdp_orders()
    >>> (orders[0], orders[-1], len(orders))
    (1.1, 63, 151)
    """
    from opacus.accountants import RDPAccountant

    return tuple(RDPAccountant.DEFAULT_ALPHAS)


@functools.lru_cache(maxsize=8192)
def _rdp_one_step(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    from opacus.accountants.analysis import rdp as rdp_analysis

    vec = np.asarray(
        rdp_analysis.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=list(rdp_orders())),
        dtype=float,
    )
    vec.setflags(write=False)
    return vec


def _rdp_epsilon(history: tuple[SpendStep, ...], delta: float) -> float:
    from opacus.accountants.analysis import rdp as rdp_analysis

    # Same arithmetic as RDPAccountant.get_privacy_spent: sum of (rdp_one_step * steps).
    total = sum(_rdp_one_step(s.noise_multiplier, s.sample_rate) * s.steps for s in history)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        eps, order = rdp_analysis.get_privacy_spent(orders=list(rdp_orders()), rdp=total, delta=delta)
    for w in caught:
        logger.debug("rdp accountant: %s (order %s)", w.message, order)
    return float(eps)


@functools.lru_cache(maxsize=1024)
def _prv_epsilon(history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    from opacus.accountants import PRVAccountant

    acc = PRVAccountant()
    acc.history = [tuple(h) for h in history]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                eps = float(acc.get_epsilon(delta=delta, eps_error=PRV_EPS_ERROR))
        for w in caught:
            logger.debug("prv accountant: %s", w.message)
    except (ValueError, RuntimeError, FloatingPointError, OverflowError) as exc:
        raise ConfigError(
            f"the prv accountant cannot evaluate history {list(history)} at delta={delta:g} ({exc}); "
            "use accountant='rdp' for these settings"
        ) from exc
    if not np.isfinite(eps):
        raise ConfigError(f"the prv accountant returned epsilon={eps} for {list(history)}; use accountant='rdp'")
    return max(eps, 0.0)


def epsilon(history: Iterable[SpendEntry], *, delta: float, accountant: str = "rdp") -> float:
    """Epsilon (at ``delta``) of composing every entry of ``history``; 0.0 for an empty history.

    Args:
        history: ``SpendStep`` objects or Opacus-style ``(sigma, q, steps)`` tuples.
        delta: target delta, 0 < delta < 1.
        accountant: ``"rdp"`` or ``"prv"``.

    >>> epsilon([], delta=1e-5)
    0.0
    >>> a = epsilon([(1.0, 0.01, 500), (1.0, 0.01, 500)], delta=1e-5)
    >>> a == epsilon([(1.0, 0.01, 1000)], delta=1e-5)
    True
    """
    delta = probability("delta", delta)
    accountant = check_accountant(accountant)
    steps = compact(history)
    if not steps:
        return 0.0
    if accountant == "rdp":
        return _rdp_epsilon(steps, delta)
    return _prv_epsilon(tuple(s.as_tuple() for s in steps), delta)


@dataclass(frozen=True, kw_only=True)
class RoundSpend:
    """One round of one client as the accountant sees it.

    Args:
        round: round number (>= 1).
        step: the DP-SGD steps of the round.
        speakers: the speakers whose recordings were eligible in the round;
            empty means "every speaker of the client".

    >>> RoundSpend(round=1, step=SpendStep(noise_multiplier=1, sample_rate=0.1, steps=10)).speakers
    ()
    """

    round: int
    step: SpendStep
    speakers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "round", positive_int("round", self.round))
        if not isinstance(self.step, SpendStep):
            raise ConfigError(f"step must be a SpendStep, got {type(self.step).__name__}")
        object.__setattr__(self, "speakers", tuple(sorted(set(self.speakers))))


def _speaker_patterns(rounds: Sequence[RoundSpend]) -> dict[tuple[int, ...], list[str]]:
    """Group speakers by the tuple of round indices they were eligible in."""
    speakers = sorted({s for r in rounds for s in r.speakers})
    groups: dict[tuple[int, ...], list[str]] = {}
    for spk in speakers:
        idx = tuple(i for i, r in enumerate(rounds) if not r.speakers or spk in r.speakers)
        groups.setdefault(idx, []).append(spk)
    return groups


def speaker_epsilons(rounds: Sequence[RoundSpend], *, delta: float, accountant: str = "rdp") -> dict[str, float]:
    """Each declared speaker's epsilon: the composition of the rounds it was eligible in.

    A round with no speaker list counts for every speaker. Speakers with the
    same participation pattern share one evaluation.

    >>> st = SpendStep(noise_multiplier=1.0, sample_rate=0.1, steps=10)
    >>> eps = speaker_epsilons([RoundSpend(round=1, step=st, speakers=("a", "b")),
    ...                         RoundSpend(round=2, step=st, speakers=("a",))], delta=1e-5)
    >>> eps["a"] > eps["b"] > 0
    True
    """
    rounds = list(rounds)
    out: dict[str, float] = {}
    for idx, spks in _speaker_patterns(rounds).items():
        eps = epsilon([rounds[i].step for i in idx], delta=delta, accountant=accountant)
        for spk in spks:
            out[spk] = eps
    return out


def rounds_epsilon(rounds: Sequence[RoundSpend], *, delta: float, accountant: str = "rdp") -> float:
    """A client's epsilon after ``rounds``: its worst speaker's, or all rounds when no speakers are declared.

    >>> st = SpendStep(noise_multiplier=1.0, sample_rate=0.1, steps=10)
    >>> both = [RoundSpend(round=1, step=st), RoundSpend(round=2, step=st)]
    >>> rounds_epsilon(both, delta=1e-5) == epsilon([st, st], delta=1e-5)
    True
    """
    rounds = list(rounds)
    if not any(r.speakers for r in rounds):
        return epsilon([r.step for r in rounds], delta=delta, accountant=accountant)
    return max(speaker_epsilons(rounds, delta=delta, accountant=accountant).values())


class PrivacyAccountant:
    """A running history of DP-SGD steps with a plain-typed ``state_dict``.

    Mirrors Opacus' ``IAccountant`` (``step``/``get_epsilon``/``state_dict``) but
    keeps only JSON types in its state, and refuses another mechanism's state.

    >>> acc = PrivacyAccountant(accountant="rdp")
    >>> acc.step(noise_multiplier=1.5, sample_rate=0.04, steps=2250)
    >>> round(acc.epsilon(delta=1e-5), 4), len(acc)
    (7.3291, 2250)
    >>> PrivacyAccountant.from_state_dict(acc.state_dict()).history == acc.history
    True
    """

    def __init__(self, *, accountant: str = "rdp", history: Iterable[SpendEntry] = ()) -> None:
        self._accountant = check_accountant(accountant)
        self._history: tuple[SpendStep, ...] = compact(history)

    @property
    def accountant(self) -> str:
        """The mechanism name (``"rdp"`` or ``"prv"``)."""
        return self._accountant

    @property
    def history(self) -> tuple[SpendStep, ...]:
        """The compacted history of steps."""
        return self._history

    def __len__(self) -> int:
        return sum(s.steps for s in self._history)

    def step(self, *, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Record ``steps`` more steps at ``noise_multiplier`` and ``sample_rate``."""
        new = SpendStep(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
        self._history = compact((*self._history, new))

    def epsilon(self, *, delta: float) -> float:
        """Epsilon spent so far at ``delta``."""
        return epsilon(self._history, delta=delta, accountant=self._accountant)

    def state_dict(self) -> dict[str, object]:
        """``{"accountant": str, "history": [[sigma, q, steps], ...]}`` (JSON types only)."""
        return {"accountant": self._accountant, "history": [list(s.as_tuple()) for s in self._history]}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Replace the history with ``state``'s; refuses a state of another mechanism."""
        if not isinstance(state, Mapping) or set(state) != {"accountant", "history"}:
            raise ConfigError("accountant state must be a mapping with exactly the keys 'accountant' and 'history'")
        if state["accountant"] != self._accountant:
            raise ConfigError(
                f"accountant state is for {state['accountant']!r}, this accountant is {self._accountant!r}"
            )
        hist = state["history"]
        if not isinstance(hist, (list, tuple)):
            raise ConfigError("accountant state 'history' must be a list of [sigma, q, steps]")
        self._history = compact(tuple(h) if isinstance(h, list) else h for h in hist)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, object]) -> PrivacyAccountant:
        """Build an accountant from :meth:`state_dict` output."""
        if not isinstance(state, Mapping) or "accountant" not in state:
            raise ConfigError("accountant state must be a mapping with an 'accountant' key")
        acc = cls(accountant=str(state["accountant"]))
        acc.load_state_dict(state)
        return acc
