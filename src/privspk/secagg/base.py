"""The one interface every aggregation scheme implements.

A round of secure aggregation is a short conversation between a server and the
round's clients (and, for homomorphic encryption, a *key holder* that alone can
decrypt). The server drives it in stages: it emits requests (:meth:`ServerRound.outbox`),
takes replies (:meth:`ServerRound.receive`), then closes the stage
(:meth:`ServerRound.advance`). Every message is ``bytes`` in the envelope of
:mod:`privspk.secagg.wire`, so a runtime only has to move bytes; the in-process
driver is :func:`privspk.secagg.simulate.run_round`.

A scheme registers itself by name; runs pick one with ``build_scheme(name, options)``.

>>> import numpy as np
>>> from privspk.secagg import build_scheme, RoundSpec
>>> from privspk.secagg.simulate import run_round
>>> scheme = build_scheme("plain")
>>> spec = RoundSpec(run_id="demo", round_id=0, clients=("a", "b"), dim=3)
>>> clients = {c: scheme.client(c) for c in spec.clients}
>>> clients["a"].submit(0, np.array([1.0, 2.0, 3.0]))
>>> clients["b"].submit(0, np.array([0.5, 0.5, 0.5]))
>>> run_round(scheme, spec, clients).total.tolist()
[1.5, 2.5, 3.5]
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from privspk.errors import ConfigError, ProtocolError

KEYHOLDER = "keyholder"
"""Routing id of the key-holder role (HE schemes): never a client id."""


@dataclass(frozen=True)
class RoundSpec:
    """What the server announces for one aggregation round.

    >>> RoundSpec(run_id="r", round_id=1, clients=("c1", "c0"), dim=4).clients
    ('c0', 'c1')
    """

    run_id: str
    round_id: int
    clients: tuple[str, ...]
    dim: int

    def __post_init__(self) -> None:
        if not isinstance(self.run_id, str) or not self.run_id:
            raise ConfigError(f"run_id must be a non-empty string, got {self.run_id!r}")
        if type(self.round_id) is not int or self.round_id < 0:
            raise ConfigError(f"round_id must be a non-negative int, got {self.round_id!r}")
        if type(self.dim) is not int or self.dim < 1:
            raise ConfigError(f"dim must be a positive int, got {self.dim!r}")
        clients = tuple(self.clients)
        if not clients:
            raise ConfigError("a round needs at least one client")
        bad = [c for c in clients if not isinstance(c, str) or not c or c == KEYHOLDER]
        if bad:
            raise ConfigError(f"client ids must be non-empty strings other than {KEYHOLDER!r}: {bad!r}")
        if len(set(clients)) != len(clients):
            raise ConfigError(f"client ids repeat in {clients!r}")
        object.__setattr__(self, "clients", tuple(sorted(clients)))


@dataclass
class AggregateResult:
    """What a finished round yields: the sum and who is in it.

    ``total`` is the float64 sum of the included clients' updates as the scheme
    encodes them (clipped and quantised for ``mask``/``bfv``, CKKS-approximate for
    ``ckks``). ``dropped`` maps each excluded client to the reason.

    >>> r = AggregateResult(total=np.array([3.0]), included=("a", "b"), dropped={"c": "silent"})
    >>> r.total.tolist(), r.included, r.stages
    ([3.0], ('a', 'b'), ())
    """

    total: np.ndarray
    included: tuple[str, ...]
    dropped: dict[str, str] = field(default_factory=dict)
    bytes_up: dict[str, int] = field(default_factory=dict)
    bytes_down: dict[str, int] = field(default_factory=dict)
    stages: tuple[str, ...] = ()


ReleaseGate = Callable[..., None]
"""``gate(*, run_id, round_id, context, opens)``: asked by an endpoint before it releases anything
derived from its update (see :meth:`ClientEndpoint.bind`); raises a PrivspkError to refuse."""


class ClientEndpoint(ABC):
    """A client's side of a scheme; lives for the whole run (keys, contexts).

    >>> from privspk.secagg import build_scheme
    >>> isinstance(build_scheme("plain").client("a"), ClientEndpoint)
    True
    """

    client_id: str
    run_id: str | None = None
    """The one run this endpoint serves once :meth:`bind` named it (``None``: any run)."""
    release_gate: ReleaseGate | None = None

    def bind(self, *, run_id: str | None, gate: ReleaseGate | None = None) -> None:
        """Serve only run ``run_id`` and ask ``gate`` before every release.

        A request of another run is refused (ProtocolError) before anything is computed. The
        gate is called with ``run_id``, ``round_id``, ``context`` (a string naming the sum the
        release can enter) and ``opens`` right before the endpoint sends anything a sum of its
        update can be opened from: ``opens=True`` when that sum is then fixed to ``context``
        (``mask``: the survivor set it unmasks; HE: the key holder's context, which opens one
        sum per round), ``opens=False`` when it is only bounded by it (``mask``: the masked
        update, sent for the announced client list). A client that persists what it released
        (:class:`privspk.federation.FederatedClient`) refuses there to put one update into two sums.

        >>> from privspk.secagg import build_scheme
        >>> c = build_scheme("mask").client("a")
        >>> c.bind(run_id="run-1")
        >>> c.check_run("run-1"); c.check_run("run-2")
        Traceback (most recent call last):
        ...
        privspk.errors.ProtocolError: request is for run 'run-2'; client a serves run 'run-1' only
        """
        if run_id is not None and (not isinstance(run_id, str) or not run_id):
            raise ConfigError(f"run_id must be a non-empty string or None, got {run_id!r}")
        self.run_id = run_id
        self.release_gate = gate

    def check_run(self, run_id: object, *, who: str | None = None) -> None:
        """Refuse (ProtocolError) a request of a run other than the bound one.

        >>> from privspk.secagg import build_scheme
        >>> c = build_scheme("plain").client("a")
        >>> c.check_run("any run")  # not bound: every run is served
        """
        if self.run_id is not None and run_id != self.run_id:
            raise ProtocolError(f"request is for run {run_id!r}; client {self.client_id} serves run "
                                f"{self.run_id!r} only", client=who)

    def check_release(self, *, run_id: str, round_id: int, context: str, opens: bool) -> None:
        """Ask the bound gate (if any) whether this release may happen; it raises to refuse.

        >>> from privspk.errors import ProtocolError
        >>> from privspk.secagg import build_scheme
        >>> c = build_scheme("plain").client("a")
        >>> def gate(**kw):
        ...     raise ProtocolError(f"not into {kw['context']}")
        >>> c.bind(run_id="r", gate=gate)
        >>> c.check_release(run_id="r", round_id=0, context="sum-1", opens=True)
        Traceback (most recent call last):
        ...
        privspk.errors.ProtocolError: not into sum-1
        """
        if self.release_gate is not None:
            self.release_gate(run_id=run_id, round_id=round_id, context=context, opens=opens)

    @abstractmethod
    def submit(self, round_id: int, update: np.ndarray) -> None:
        """Hand over this client's float update for ``round_id`` (before the stage that sends it).

        >>> from privspk.secagg import build_scheme
        >>> build_scheme("plain").client("a").submit(0, np.array([0.5, -0.5]))
        """

    def submit_integers(self, round_id: int, codes: np.ndarray, *, min_survivors: int | None = None) -> None:
        """Hand over already-quantised signed integer codes (client-level distributed DP) for ``round_id``.

        Only a scheme that sums integers in its own quantiser's units (``mask``) takes them;
        ``min_survivors`` is the smallest opened sum whose noise shares the ledger counts. The
        other schemes refuse with a ConfigError (the config check refuses such a run first).

        >>> from privspk.secagg import build_scheme
        >>> build_scheme("plain").client("a").submit_integers(0, np.array([3]))
        Traceback (most recent call last):
        ...
        privspk.errors.ConfigError: client a: scheme endpoint PlainClient takes float updates only; integer codes (client-level DP) need the 'mask' scheme
        """
        raise ConfigError(f"client {self.client_id}: scheme endpoint {type(self).__name__} takes float updates only; "
                          "integer codes (client-level DP) need the 'mask' scheme")

    @abstractmethod
    def handle(self, request: bytes) -> bytes | None:
        """Answer one server request; ``None`` when there is nothing to send back.

        A malformed or unexpected request raises :class:`~privspk.errors.ProtocolError`;
        the client then sends nothing (the server sees it as dropped).

        >>> from privspk.secagg import build_scheme
        >>> build_scheme("plain").client("a").handle(b"not a request")
        Traceback (most recent call last):
        ...
        privspk.errors.ProtocolError: ...
        """


class ServerRound(ABC):
    """The server's side of one round. It never holds a secret that opens one update.

    A driver (:func:`privspk.secagg.simulate.run_round`, or a runtime over the network)
    sends each stage's :meth:`outbox`, hands the replies to :meth:`receive` and calls
    :meth:`advance` until it returns ``False``.

    >>> from privspk.secagg import build_scheme
    >>> s = build_scheme("plain"); a = s.client("a"); a.submit(0, np.array([1.5]))
    >>> r = s.server_round(RoundSpec(run_id="r", round_id=0, clients=("a",), dim=1))
    >>> while True:
    ...     for dest, request in r.outbox().items():
    ...         r.receive(dest, a.handle(request))
    ...     if not r.advance():
    ...         break
    >>> r.result().total.tolist()
    [1.5]
    """

    spec: RoundSpec

    @property
    @abstractmethod
    def stage(self) -> str:
        """Name of the current stage (``"done"`` when finished).

        >>> from privspk.secagg import build_scheme
        >>> s = build_scheme("plain"); a = s.client("a"); a.submit(0, np.array([2.0]))
        >>> r = s.server_round(RoundSpec(run_id="r", round_id=0, clients=("a",), dim=1))
        >>> r.stage
        'collect'
        """

    @abstractmethod
    def outbox(self) -> dict[str, bytes]:
        """Requests of the current stage, keyed by recipient (client id or :data:`KEYHOLDER`).

        >>> from privspk.secagg import build_scheme
        >>> s = build_scheme("plain"); a = s.client("a"); a.submit(0, np.array([2.0]))
        >>> r = s.server_round(RoundSpec(run_id="r", round_id=0, clients=("a",), dim=1))
        >>> sorted(r.outbox())
        ['a']
        """

    @abstractmethod
    def receive(self, sender: str, payload: bytes) -> None:
        """Take one reply. A bad reply raises ProtocolError and its sender counts as dropped;
        what was already aggregated is kept.

        >>> from privspk.secagg import build_scheme
        >>> s = build_scheme("plain"); a = s.client("a"); a.submit(0, np.array([2.0]))
        >>> r = s.server_round(RoundSpec(run_id="r", round_id=0, clients=("a",), dim=1))
        >>> r.receive("a", a.handle(r.outbox()["a"]))
        """

    @abstractmethod
    def advance(self) -> bool:
        """Close the current stage. Returns ``False`` once the round is finished.

        Raises :class:`~privspk.errors.AggregationError` when the round cannot finish
        (e.g. fewer survivors than the threshold); nothing is opened then.

        >>> from privspk.secagg import build_scheme
        >>> s = build_scheme("plain"); a = s.client("a"); a.submit(0, np.array([2.0]))
        >>> r = s.server_round(RoundSpec(run_id="r", round_id=0, clients=("a",), dim=1))
        >>> r.advance()  # nobody answered
        Traceback (most recent call last):
        ...
        privspk.errors.AggregationError: ...
        """

    @abstractmethod
    def result(self) -> AggregateResult:
        """The opened sum, after :meth:`advance` returned ``False``.

        >>> from privspk.secagg import build_scheme
        >>> s = build_scheme("plain"); a = s.client("a"); a.submit(0, np.array([2.0]))
        >>> r = s.server_round(RoundSpec(run_id="r", round_id=0, clients=("a",), dim=1))
        >>> r.receive("a", a.handle(r.outbox()["a"])); r.advance()
        False
        >>> r.result().total.tolist(), r.result().included
        ([2.0], ('a',))
        """


class Scheme(ABC):
    """A configured aggregation scheme for one run.

    Subclasses set ``name`` and ``Config`` (a dataclass of their options) and are
    registered with :func:`register_scheme`.

    >>> from privspk.secagg import build_scheme
    >>> s = build_scheme("mask")
    >>> s.name, isinstance(s, Scheme)
    ('mask', True)
    """

    name: ClassVar[str]
    Config: ClassVar[type]

    def __init__(self, config: Any, *, seed: int | None = None) -> None:
        self.config = config
        self.seed = seed

    @abstractmethod
    def client(self, client_id: str) -> ClientEndpoint:
        """The endpoint for ``client_id`` (created once, then reused).

        >>> from privspk.secagg import build_scheme
        >>> s = build_scheme("plain")
        >>> s.client("a") is s.client("a")
        True
        """

    @abstractmethod
    def server_round(self, spec: RoundSpec) -> ServerRound:
        """A fresh server state machine for one round.

        >>> from privspk.secagg import build_scheme
        >>> build_scheme("plain").server_round(RoundSpec(run_id="r", round_id=0, clients=("a", "b"), dim=4)).stage
        'collect'
        """

    def keyholder(self) -> ClientEndpoint | None:
        """The key holder's endpoint (HE schemes); ``None`` when the scheme has none.

        >>> from privspk.secagg import build_scheme
        >>> build_scheme("mask").keyholder() is None
        True
        """
        return None

    # What the shared test suite (and callers) may rely on. Optional: the defaults
    # describe an exact scheme that finishes with any one survivor.

    def sum_tolerance(self, n_clients: int, *, bound: float = 1.0) -> float:
        """Largest absolute error of one coordinate of an opened sum of ``n_clients`` updates
        whose coordinates lie in ``[-bound, bound]``, against the exact float64 sum.

        The default, 0.0, claims an exact sum; schemes that round or approximate override it.

        >>> from privspk.secagg import build_scheme
        >>> 0 <= build_scheme("plain").sum_tolerance(3) < build_scheme("mask").sum_tolerance(3)  # float32 vs 16 bits
        True
        """
        return 0.0

    def min_survivors(self, n_clients: int) -> int:
        """Fewest clients whose updates must reach the server for a round of ``n_clients`` to
        finish; with fewer it fails with AggregationError and nothing is opened (default 1).

        Schemes may need more answers in later stages (``mask`` needs ``t`` of each
        neighbourhood to unmask); :meth:`dropout_tolerance` is what always survives.

        >>> from privspk.secagg import build_scheme
        >>> build_scheme("plain").min_survivors(5)
        1
        """
        return 1

    def dropout_tolerance(self, n_clients: int) -> int:
        """How many of ``n_clients`` may drop out, at any stages, with the round still
        guaranteed to finish (default ``n_clients - 1``).

        >>> from privspk.secagg import build_scheme
        >>> build_scheme("plain").dropout_tolerance(5)
        4
        """
        return n_clients - 1


_SCHEMES: dict[str, type[Scheme]] = {}


def register_scheme(name: str) -> Callable[[type[Scheme]], type[Scheme]]:
    """Class decorator adding a scheme to the registry; a repeated name is refused.

    >>> import privspk.secagg  # registers the built-in schemes
    >>> @register_scheme("plain")
    ... class Again(Scheme):
    ...     pass
    Traceback (most recent call last):
    ...
    privspk.errors.ConfigError: scheme 'plain' registered twice
    """

    def deco(cls: type[Scheme]) -> type[Scheme]:
        if name in _SCHEMES:
            raise ConfigError(f"scheme {name!r} registered twice")
        cls.name = name
        _SCHEMES[name] = cls
        return cls

    return deco


def config_from_options(cls: type, options: Mapping[str, Any] | None) -> Any:
    """Build the dataclass ``cls`` from a mapping, refusing unknown keys by name.

    >>> @dataclasses.dataclass(frozen=True)
    ... class C:
    ...     bits: int = 16
    >>> config_from_options(C, {"bitz": 12})
    Traceback (most recent call last):
    ...
    privspk.errors.ConfigError: unknown option(s) ['bitz'] for C; known: ['bits']
    """
    options = dict(options or {})
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for {cls.__name__}; known: {known}")
    for f in dataclasses.fields(cls):
        if f.name in options and isinstance(options[f.name], list):
            options[f.name] = tuple(options[f.name])  # TOML arrays -> tuples
    return cls(**options)
