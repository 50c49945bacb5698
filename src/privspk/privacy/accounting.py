"""Privacy accounting: sample-level (a thin, typed layer over Opacus' accountants) and client-level.

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

Client-level accounting (distributed DP, add/remove one client's update) is the second half
of this module: :class:`ClientLevelMechanism` (the integer noise an opened sum is guaranteed to
hold), its RDP at integer orders ``CLIENT_RDP_ORDERS`` (Kairouz, Liu, Steinke 2021 for the
distributed discrete Gaussian; Agarwal, Kairouz, Liu 2021 for Skellam), Poisson subsampling
of clients by the general bound of Zhu & Wang 2019, and :func:`client_level_epsilon`
(see :mod:`privspk.privacy.distributed` for the mechanism itself).

Opacus (and so torch) is imported on first use only, so ``import privspk.privacy``
stays fast.

>>> history = [SpendStep(noise_multiplier=1.5, sample_rate=0.04, steps=2250)]
>>> round(epsilon(history, delta=1e-5), 6)  # Opacus' own test value: 7.32911117143
7.329111
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from privspk.errors import ConfigError
from privspk.privacy._checks import positive_float, positive_int, probability
from privspk.privacy.noise import _check_noise

__all__ = [
    "CLIENT_RDP_ORDERS",
    "ClientLevelMechanism",
    "ClientLevelRound",
    "client_level_epsilon",
    "client_level_rdp",
    "poisson_subsampled_rdp",
    "rdp_to_epsilon",
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
        """The mechanism name (``"rdp"`` or ``"prv"``).

        >>> PrivacyAccountant(accountant="prv").accountant
        'prv'
        """
        return self._accountant

    @property
    def history(self) -> tuple[SpendStep, ...]:
        """The compacted history of steps.

        >>> acc = PrivacyAccountant(history=[(1.0, 0.1, 5), (1.0, 0.1, 5)])
        >>> [s.steps for s in acc.history]  # same setting: one entry
        [10]
        """
        return self._history

    def __len__(self) -> int:
        return sum(s.steps for s in self._history)

    def step(self, *, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Record ``steps`` more steps at ``noise_multiplier`` and ``sample_rate``.

        >>> acc = PrivacyAccountant(); acc.step(noise_multiplier=1.0, sample_rate=0.1, steps=3)
        >>> acc.history[0].steps
        3
        """
        new = SpendStep(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
        self._history = compact((*self._history, new))

    def epsilon(self, *, delta: float) -> float:
        """Epsilon spent so far at ``delta``.

        >>> round(PrivacyAccountant(history=[(1.5, 0.04, 2250)]).epsilon(delta=1e-5), 6)
        7.329111
        """
        return epsilon(self._history, delta=delta, accountant=self._accountant)

    def state_dict(self) -> dict[str, object]:
        """``{"accountant": str, "history": [[sigma, q, steps], ...]}`` (JSON types only).

        >>> PrivacyAccountant(history=[(1.0, 0.1, 5)]).state_dict()
        {'accountant': 'rdp', 'history': [[1.0, 0.1, 5]]}
        """
        return {"accountant": self._accountant, "history": [list(s.as_tuple()) for s in self._history]}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Replace the history with ``state``'s; refuses a state of another mechanism.

        >>> acc = PrivacyAccountant()
        >>> acc.load_state_dict({"accountant": "rdp", "history": [[1.0, 0.1, 5]]}); len(acc.history)
        1
        """
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
        """Build an accountant from :meth:`state_dict` output.

        >>> PrivacyAccountant.from_state_dict({"accountant": "prv", "history": []}).accountant
        'prv'
        """
        if not isinstance(state, Mapping) or "accountant" not in state:
            raise ConfigError("accountant state must be a mapping with an 'accountant' key")
        acc = cls(accountant=str(state["accountant"]))
        acc.load_state_dict(state)
        return acc


# --------------------------------------------------------------------------- client-level accounting
CLIENT_RDP_ORDERS: tuple[int, ...] = tuple(range(2, 257))
"""Consecutive integer RDP orders (the subsampling bound needs every order from 2 up)."""


def poisson_subsampled_rdp(rdp: np.ndarray, *, sample_rate: float) -> np.ndarray:
    """RDP at orders 2, 3, ..., of a mechanism with RDP ``rdp`` (same orders) under Poisson sampling.

    ``rdp[i]`` must be the mechanism's RDP at order ``i + 2`` (consecutive integer orders).

    General upper bound of Zhu & Wang 2019, valid for any mechanism,
    capped by the unsampled RDP (sampling never hurts, by joint convexity):

    ``(1/(a-1)) log[(1-q)^(a-1) (a q - q + 1) + C(a,2) q^2 (1-q)^(a-2) e^{rdp(2)}
    + 3 sum_{l=3..a} C(a,l) (1-q)^(a-l) q^l e^{(l-1) rdp(l)}]``.

    >>> g = np.array([a / 2.0 for a in range(2, 20)])   # Gaussian, noise multiplier 1
    >>> sub = poisson_subsampled_rdp(g, sample_rate=0.01)
    >>> bool(np.all(sub <= g)) and float(sub[0]) < 1e-3
    True
    """
    from scipy.special import gammaln, logsumexp

    eps = np.asarray(rdp, dtype=float)
    if eps.ndim != 1:
        raise ConfigError(f"rdp must be a 1-D array over orders 2, 3, ..., got shape {eps.shape}")
    q = probability("sample_rate", sample_rate, allow_one=True)
    if q == 1.0:
        return eps.copy()
    out = np.empty_like(eps)
    log_q, log_1q = math.log(q), math.log1p(-q)
    for i in range(eps.size):
        a = i + 2
        ls = np.arange(3, a + 1)
        log_comb = gammaln(a + 1) - gammaln(ls + 1) - gammaln(a - ls + 1)
        terms = [
            (a - 1) * log_1q + math.log(a * q - q + 1.0),
            math.log(a * (a - 1) / 2.0) + 2 * log_q + (a - 2) * log_1q + eps[0],
        ]
        if a >= 3:
            tail = math.log(3.0) + log_comb + ls * log_q + (a - ls) * log_1q + (ls - 1) * eps[ls - 2]
            terms.extend(tail.tolist())
        out[i] = min(float(logsumexp(terms)) / (a - 1), float(eps[i]))
    return out


def rdp_to_epsilon(rdp: np.ndarray, *, orders: Sequence[float], delta: float) -> float:
    """(epsilon at ``delta``) from RDP values, via Opacus' conversion (Balle et al. 2020, Theorem 21).

    >>> orders = list(range(2, 33))
    >>> round(rdp_to_epsilon(np.array([a / 2.0 for a in orders]), orders=orders, delta=1e-5), 3)
    4.753
    """
    import warnings

    from opacus.accountants.analysis import rdp as rdp_analysis

    delta = probability("delta", delta)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        eps, _ = rdp_analysis.get_privacy_spent(orders=list(orders), rdp=np.asarray(rdp, dtype=float), delta=delta)
    return float(eps)


@dataclass(frozen=True, kw_only=True)
class ClientLevelMechanism:
    """One round's client-level mechanism: the noisy integer sum, in integer units.

    Args:
        noise: ``"dgauss"`` or ``"skellam"``.
        share_sigma: std of each client's noise share (for ``"dgauss"``, the
            discrete Gaussian's sigma parameter; >= 0.5 as KLS21 requires).
        shares: how many shares are counted in the sum (see the module notes).
        l2_sensitivity: L2 bound of one client's rounded integer update.
        l1_sensitivity: L1 bound of it (<= min(sqrt(dim), l2) * l2 for integers).
        dim: number of coordinates.

    >>> m = ClientLevelMechanism(noise="skellam", share_sigma=50.0, shares=4, l2_sensitivity=100.0,
    ...                          l1_sensitivity=1000.0, dim=100)
    >>> round(m.noise_multiplier, 3)
    1.0
    >>> ClientLevelMechanism.from_dict(m.to_dict()) == m
    True
    """

    noise: str
    share_sigma: float
    shares: int
    l2_sensitivity: float
    l1_sensitivity: float
    dim: int

    def __post_init__(self) -> None:
        _check_noise(self.noise)
        object.__setattr__(self, "share_sigma", positive_float("share_sigma", self.share_sigma))
        object.__setattr__(self, "shares", positive_int("shares", self.shares))
        object.__setattr__(self, "l2_sensitivity", positive_float("l2_sensitivity", self.l2_sensitivity))
        object.__setattr__(self, "l1_sensitivity", positive_float("l1_sensitivity", self.l1_sensitivity))
        object.__setattr__(self, "dim", positive_int("dim", self.dim))
        if self.noise == "dgauss" and self.share_sigma < 0.5:
            raise ConfigError(
                f"discrete Gaussian shares need sigma >= 0.5 for the KLS21 bound, got {self.share_sigma:g}; "
                "raise the scale or the noise multiplier"
            )

    @property
    def sum_variance(self) -> float:
        """Per-coordinate variance of the counted noise (``shares * share_sigma^2``).

        >>> ClientLevelMechanism(noise="skellam", share_sigma=50.0, shares=4, l2_sensitivity=100.0,
        ...                      l1_sensitivity=1000.0, dim=100).sum_variance
        10000.0
        """
        return self.shares * self.share_sigma**2

    @property
    def noise_multiplier(self) -> float:
        """Effective central noise multiplier: counted noise std / L2 sensitivity.

        >>> ClientLevelMechanism(noise="skellam", share_sigma=50.0, shares=4, l2_sensitivity=100.0,
        ...                      l1_sensitivity=1000.0, dim=100).noise_multiplier
        1.0
        """
        return math.sqrt(self.sum_variance) / self.l2_sensitivity

    def rdp(self) -> np.ndarray:
        """Unsampled RDP of one round at :data:`CLIENT_RDP_ORDERS`.

        >>> ClientLevelMechanism(noise="skellam", share_sigma=50.0, shares=4, l2_sensitivity=100.0,
        ...                      l1_sensitivity=1000.0, dim=100).rdp().shape == (len(CLIENT_RDP_ORDERS),)
        True
        """
        return _mechanism_rdp(self).copy()

    def to_dict(self) -> dict[str, float | int | str]:
        """Plain-typed dict (what the ledger stores).

        >>> sorted(ClientLevelMechanism(noise="skellam", share_sigma=50.0, shares=4, l2_sensitivity=100.0,
        ...                      l1_sensitivity=1000.0, dim=100).to_dict())
        ['dim', 'l1_sensitivity', 'l2_sensitivity', 'noise', 'share_sigma', 'shares']
        """
        return {
            "noise": self.noise,
            "share_sigma": self.share_sigma,
            "shares": self.shares,
            "l2_sensitivity": self.l2_sensitivity,
            "l1_sensitivity": self.l1_sensitivity,
            "dim": self.dim,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> ClientLevelMechanism:
        """Inverse of :meth:`to_dict`; unknown or missing keys are errors.

        >>> m = ClientLevelMechanism(noise="skellam", share_sigma=50.0, shares=4, l2_sensitivity=100.0,
        ...                          l1_sensitivity=1000.0, dim=100)
        >>> ClientLevelMechanism.from_dict(m.to_dict()) == m
        True
        """
        keys = {"noise", "share_sigma", "shares", "l2_sensitivity", "l1_sensitivity", "dim"}
        if not isinstance(data, Mapping) or set(data) != keys:
            got = sorted(data) if isinstance(data, Mapping) else type(data).__name__
            raise ConfigError(f"client-level mechanism needs exactly the keys {sorted(keys)}, got {got}")
        return cls(**{k: data[k] for k in keys})  # type: ignore[arg-type]


@functools.lru_cache(maxsize=1024)
def _mechanism_rdp(mech: ClientLevelMechanism) -> np.ndarray:
    a = np.asarray(CLIENT_RDP_ORDERS, dtype=float)
    d2, d1, dim = mech.l2_sensitivity, mech.l1_sensitivity, mech.dim
    if mech.noise == "skellam":
        v = mech.sum_variance
        surcharge = np.minimum(((2.0 * a - 1.0) * d2 * d2 + 6.0 * d1) / (4.0 * v * v), 3.0 * d1 / (2.0 * v))
        out = a * d2 * d2 / (2.0 * v) + surcharge
    else:
        n, s = mech.shares, mech.share_sigma
        ks = np.arange(1, n)
        tau = 10.0 * float(np.sum(np.exp(-2.0 * math.pi**2 * s * s * ks / (ks + 1.0))))
        l2s = d2 / (math.sqrt(n) * s)
        l1s = d1 / (math.sqrt(n) * s)
        out = np.minimum.reduce(
            [
                a / 2.0 * l2s**2 + tau * dim,
                a / 2.0 * (l2s**2 + 2.0 * l1s * tau + tau**2 * dim),
                a / 2.0 * (l2s + math.sqrt(dim) * tau) ** 2,
            ]
        )
    out.setflags(write=False)
    return out


@functools.lru_cache(maxsize=1024)
def _subsampled(mech: ClientLevelMechanism, sample_rate: float) -> np.ndarray:
    out = poisson_subsampled_rdp(_mechanism_rdp(mech), sample_rate=sample_rate)
    out.setflags(write=False)
    return out


@dataclass(frozen=True, kw_only=True)
class ClientLevelRound:
    """A round a client took part in, with its client-level mechanism and client sampling rate.

    >>> m = ClientLevelMechanism(noise="skellam", share_sigma=50.0, shares=4, l2_sensitivity=100.0,
    ...                          l1_sensitivity=1000.0, dim=100)
    >>> ClientLevelRound(round=3, mechanism=m, sample_rate=0.1).round
    3
    """

    round: int
    mechanism: ClientLevelMechanism
    sample_rate: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "round", positive_int("round", self.round))
        if not isinstance(self.mechanism, ClientLevelMechanism):
            raise ConfigError(f"mechanism must be a ClientLevelMechanism, got {type(self.mechanism).__name__}")
        object.__setattr__(self, "sample_rate", probability("sample_rate", self.sample_rate, allow_one=True))


def client_level_rdp(rounds: Sequence[ClientLevelRound]) -> np.ndarray:
    """Composed client-level RDP at :data:`CLIENT_RDP_ORDERS` (the rules are in the module notes).

    >>> m = ClientLevelMechanism(noise="skellam", share_sigma=50.0, shares=4, l2_sensitivity=100.0,
    ...                          l1_sensitivity=1000.0, dim=100)
    >>> one = client_level_rdp([ClientLevelRound(round=1, mechanism=m, sample_rate=0.1)])
    >>> gap = client_level_rdp([ClientLevelRound(round=3, mechanism=m, sample_rate=0.1)])
    >>> bool(np.allclose(gap, 3 * one))
    True
    """
    ordered = sorted(rounds, key=lambda r: r.round)
    total = np.zeros(len(CLIENT_RDP_ORDERS))
    previous = 0
    for r in ordered:
        if r.round <= previous:
            raise ConfigError(f"client-level rounds must be distinct, round {r.round} appears twice")
        count = r.round - previous if r.sample_rate < 1.0 else 1
        total = total + count * _subsampled(r.mechanism, r.sample_rate)
        previous = r.round
    return total


def client_level_epsilon(rounds: Sequence[ClientLevelRound], *, delta: float) -> float:
    """Client-level epsilon at ``delta`` after ``rounds``; 0.0 when there are none.

    >>> m = ClientLevelMechanism(noise="dgauss", share_sigma=60.0, shares=10, l2_sensitivity=150.0,
    ...                          l1_sensitivity=1500.0, dim=100)
    >>> eps = client_level_epsilon([ClientLevelRound(round=r, mechanism=m, sample_rate=1.0) for r in (1, 2)],
    ...                            delta=1e-5)
    >>> 0 < eps < 20
    True
    """
    rounds = list(rounds)
    if not rounds:
        return 0.0
    return rdp_to_epsilon(client_level_rdp(rounds), orders=CLIENT_RDP_ORDERS, delta=delta)
