"""Ledger rows: what a client records for a round (:class:`Spend`), a recorded row (:class:`SpendRow`).

A spend holds the round's :class:`~privspk.privacy.mechanism.Mechanism` and its outcome (the
client's epsilon after it, the scheme, the eligible speakers, the client-level part, the
digest of the exact update bytes); :data:`EXPORT_COLUMNS` are a row's exported fields.

>>> _example_spend().noise_multiplier
1.1
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np

from privspk.errors import ConfigError
from privspk.privacy._checks import nonempty_str, positive_int, probability, real
from privspk.privacy.accounting import ClientLevelMechanism, SpendStep
from privspk.privacy.mechanism import Mechanism

__all__ = ["EXPORT_COLUMNS", "STATUSES", "ClientLevelSpend", "Spend", "SpendRow", "digest_update"]

_EXAMPLE_MECHANISM = Mechanism(noise_multiplier=1.1, sample_rate=0.05, steps=20, clip=1.0, delta=1e-5)

STATUSES: tuple[str, ...] = ("spent", "released", "aggregated", "abandoned")


_COLUMNS: dict[str, tuple[str, ...]] = {
    "meta": ("key", "value"),
    "runs": ("run_id", "settings", "created_at"),
    "spends": (
        "run_id", "client", "round", "unit", "accountant", "noise_multiplier", "sample_rate", "steps", "delta",
        "epsilon_after", "client_noise_multiplier", "client_sample_rate", "client_delta", "client_epsilon_after",
        "client_mechanism", "clip", "scheme", "update_digest", "status", "note", "created_at", "updated_at",
        "randomness",
    ),
    "spend_speakers": ("run_id", "client", "round", "speaker"),
}

EXPORT_COLUMNS: tuple[str, ...] = (*_COLUMNS["spends"][:18], "speakers", *_COLUMNS["spends"][18:])

_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")


def digest_update(payload: bytes | bytearray | memoryview | np.ndarray) -> str:
    """SHA-256 hex digest of the exact bytes of an update (arrays: dtype, shape and data).

    >>> digest_update(b"abc")[:16]
    'ba7816bf8f01cfea'
    >>> digest_update(np.zeros(3, dtype=np.int64)) == digest_update(np.zeros(3, dtype=np.int32))
    False
    """
    h = hashlib.sha256()
    if isinstance(payload, np.ndarray):
        arr = np.ascontiguousarray(payload)
        h.update(f"{arr.dtype.str}{arr.shape}".encode())
        h.update(arr.tobytes())
    elif isinstance(payload, (bytes, bytearray, memoryview)):
        h.update(bytes(payload))
    else:
        raise ConfigError(f"update payload must be bytes or a numpy array, got {type(payload).__name__}")
    return h.hexdigest()


def _example_spend(client: str = "c0", round: int = 1, epsilon_after: float = 0.5) -> Spend:
    """A valid spend for the doctests of this module (keeps each example to one line)."""
    return Spend(client=client, round=round, mechanism=_EXAMPLE_MECHANISM, epsilon_after=epsilon_after, scheme="mask")


@dataclass(frozen=True, kw_only=True)
class ClientLevelSpend:
    """The client-level (distributed DP) part of a round's spend.

    >>> m = ClientLevelMechanism(noise="skellam", share_sigma=50.0, shares=4, l2_sensitivity=100.0,
    ...                          l1_sensitivity=1000.0, dim=100)
    >>> ClientLevelSpend(mechanism=m, sample_rate=0.5, delta=1e-5, epsilon_after=1.2).noise_multiplier
    1.0
    """

    mechanism: ClientLevelMechanism
    sample_rate: float
    delta: float
    epsilon_after: float

    def __post_init__(self) -> None:
        if not isinstance(self.mechanism, ClientLevelMechanism):
            raise ConfigError(f"mechanism must be a ClientLevelMechanism, got {type(self.mechanism).__name__}")
        object.__setattr__(self, "sample_rate", probability("client sample_rate", self.sample_rate, allow_one=True))
        object.__setattr__(self, "delta", probability("client delta", self.delta))
        eps = real("client epsilon_after", self.epsilon_after)
        if eps < 0:
            raise ConfigError(f"client epsilon_after must be >= 0, got {eps}")
        object.__setattr__(self, "epsilon_after", eps)

    @property
    def noise_multiplier(self) -> float:
        """Effective central noise multiplier of the counted noise.

        >>> m = ClientLevelMechanism(noise="skellam", share_sigma=50.0, shares=4, l2_sensitivity=100.0,
        ...                          l1_sensitivity=1000.0, dim=100)
        >>> ClientLevelSpend(mechanism=m, sample_rate=1.0, delta=1e-5, epsilon_after=1.0).noise_multiplier
        1.0
        """
        return self.mechanism.noise_multiplier


@dataclass(frozen=True, kw_only=True)
class Spend:
    """What a client records for one round, before its update leaves it: the round's mechanism and its outcome.

    Args:
        client: client id.
        round: round number, >= 1 (rounds of a client must increase).
        mechanism: the round's DP-SGD :class:`~privspk.privacy.mechanism.Mechanism` (noise multiplier > 0).
        epsilon_after: the client's epsilon after this round, at ``mechanism.delta`` (worst speaker when
            speakers are declared).
        scheme: aggregation scheme that protects the update (``"mask"``, ``"bfv"``...).
        speakers: speakers eligible in this round (empty: all of the client's).
        client_level: the distributed-DP part, if any.
        update_digest: :func:`digest_update` of the exact bytes to be released.

    The mechanism's fields read as the spend's own (``spend.noise_multiplier``...), as they are
    the row's columns.

    >>> Spend(client="c0", round=0, mechanism=_EXAMPLE_MECHANISM, epsilon_after=1.0, scheme="mask")
    Traceback (most recent call last):
    ...
    privspk.errors.ConfigError: round must be >= 1, got 0
    """

    client: str
    round: int
    mechanism: Mechanism
    epsilon_after: float
    scheme: str
    speakers: tuple[str, ...] = ()
    client_level: ClientLevelSpend | None = None
    update_digest: str | None = None

    def __post_init__(self) -> None:
        nonempty_str("client", self.client)
        object.__setattr__(self, "round", positive_int("round", self.round))
        if not isinstance(self.mechanism, Mechanism):
            raise ConfigError(f"mechanism must be a Mechanism, got {type(self.mechanism).__name__}")
        self.mechanism.step  # noqa: B018 - a recorded round must have noise (SpendStep refuses 0)
        eps = real("epsilon_after", self.epsilon_after)
        if eps < 0:
            raise ConfigError(f"epsilon_after must be >= 0, got {eps}")
        object.__setattr__(self, "epsilon_after", eps)
        nonempty_str("scheme", self.scheme)
        if isinstance(self.speakers, str):
            raise ConfigError("speakers must be a sequence of speaker ids, not one string")
        spk = tuple(sorted(set(self.speakers)))
        for s in spk:
            nonempty_str("speaker", s)
        object.__setattr__(self, "speakers", spk)
        if self.client_level is not None and not isinstance(self.client_level, ClientLevelSpend):
            raise ConfigError(f"client_level must be a ClientLevelSpend, got {type(self.client_level).__name__}")
        if self.update_digest is not None and not (
            isinstance(self.update_digest, str) and _DIGEST_RE.match(self.update_digest)
        ):
            raise ConfigError("update_digest must be a lowercase SHA-256 hex string (use digest_update())")

    @property
    def step(self) -> SpendStep:
        """The round's DP-SGD steps (the accountant's history entry).

        >>> _example_spend().step.steps
        20
        """
        return self.mechanism.step

    # the mechanism's fields, read as the row's columns
    @property
    def unit(self) -> str:
        """The privacy unit. (the mechanism's)

        >>> _example_spend().unit
        'utterance'
        """
        return self.mechanism.unit

    @property
    def accountant(self) -> str:
        """The accountant. (the mechanism's)

        >>> _example_spend().accountant
        'rdp'
        """
        return self.mechanism.accountant

    @property
    def noise_multiplier(self) -> float:
        """The noise multiplier. (the mechanism's)

        >>> _example_spend().noise_multiplier
        1.1
        """
        return self.mechanism.noise_multiplier

    @property
    def sample_rate(self) -> float:
        """The Poisson sample rate. (the mechanism's)

        >>> _example_spend().sample_rate
        0.05
        """
        return self.mechanism.sample_rate

    @property
    def steps(self) -> int:
        """The round's steps. (the mechanism's)

        >>> _example_spend().steps
        20
        """
        return self.mechanism.steps

    @property
    def delta(self) -> float:
        """The delta of ``epsilon_after``. (the mechanism's)

        >>> _example_spend().delta
        1e-05
        """
        return self.mechanism.delta

    @property
    def clip(self) -> float:
        """The clipping bound. (the mechanism's)

        >>> _example_spend().clip
        1.0
        """
        return self.mechanism.clip

    @property
    def randomness(self) -> str:
        """``secret`` or ``simulation``. (the mechanism's)

        >>> _example_spend().randomness
        'secret'
        """
        return self.mechanism.randomness


@dataclass(frozen=True, kw_only=True)
class SpendRow(Spend):
    """A recorded spend: the :class:`Spend` plus run id, status, note and timestamps (UTC ISO 8601).

    >>> r = SpendRow(run_id="r", client="c0", round=1, mechanism=_EXAMPLE_MECHANISM, epsilon_after=1.0,
    ...              scheme="mask", status="spent", created_at="t", updated_at="t")
    >>> r.to_dict()["status"], r.to_dict()["client_epsilon_after"]
    ('spent', None)
    """

    run_id: str
    status: str
    created_at: str
    updated_at: str
    note: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.status not in STATUSES:
            raise ConfigError(f"status must be one of {', '.join(STATUSES)}, got {self.status!r}")

    def to_dict(self) -> dict[str, object]:
        """Flat, JSON-friendly dict with the columns of :data:`EXPORT_COLUMNS`.

        >>> r = SpendRow(run_id="r", client="c0", round=1, mechanism=_EXAMPLE_MECHANISM, epsilon_after=1.0,
        ...              scheme="mask", status="spent", created_at="t", updated_at="t")
        >>> r.to_dict()["noise_multiplier"], r.to_dict()["speakers"]
        (1.1, [])
        """
        cl = self.client_level
        out: dict[str, object] = {
            "run_id": self.run_id,
            "client": self.client,
            "round": self.round,
            "unit": self.unit,
            "accountant": self.accountant,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
            "delta": self.delta,
            "epsilon_after": self.epsilon_after,
            "client_noise_multiplier": None if cl is None else cl.noise_multiplier,
            "client_sample_rate": None if cl is None else cl.sample_rate,
            "client_delta": None if cl is None else cl.delta,
            "client_epsilon_after": None if cl is None else cl.epsilon_after,
            "client_mechanism": None if cl is None else cl.mechanism.to_dict(),
            "clip": self.clip,
            "scheme": self.scheme,
            "update_digest": self.update_digest,
            "speakers": list(self.speakers),
            "status": self.status,
            "note": self.note,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "randomness": self.randomness,
        }
        return {k: out[k] for k in EXPORT_COLUMNS}
