"""``plain``: the baseline with no protection; the server sees every update.

It exists to measure what the other schemes cost and to check that they reach the
same sum. Updates travel as little-endian float32.

>>> import numpy as np
>>> from privspk.secagg import build_scheme, RoundSpec
>>> from privspk.secagg.simulate import run_round
>>> s = build_scheme("plain")
>>> spec = RoundSpec(run_id="r", round_id=0, clients=("a", "b", "c"), dim=2)
>>> eps = {c: s.client(c) for c in spec.clients}
>>> for c in spec.clients:
...     eps[c].submit(0, np.ones(2))
>>> res = run_round(s, spec, eps, silent={"c": "collect"})
>>> res.total.tolist(), res.included, res.dropped
([2.0, 2.0], ('a', 'b'), {'c': 'no reply at stage collect'})
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from privspk.errors import AggregationError, ConfigError, ProtocolError
from privspk.secagg.base import AggregateResult, ClientEndpoint, RoundSpec, Scheme, ServerRound, register_scheme
from privspk.secagg.wire import check_fields, expect, pack, unpack

_F32 = np.dtype("<f4")
SERVER = "server"


@dataclass(frozen=True)
class PlainConfig:
    """Options of the plain scheme.

    Args:
        min_clients: fewest replies that still make a sum.
    """

    min_clients: int = 1

    def __post_init__(self) -> None:
        if type(self.min_clients) is not int or self.min_clients < 1:
            raise ConfigError(f"min_clients must be a positive int, got {self.min_clients!r}")


class PlainClient(ClientEndpoint):
    """Sends its update as float32, in the clear."""

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self._updates: dict[int, np.ndarray] = {}

    def submit(self, round_id: int, update: np.ndarray) -> None:
        """Store the update to send in ``round_id``."""
        u = np.asarray(update, dtype=np.float64)
        if u.ndim != 1 or not np.all(np.isfinite(u)):
            raise ConfigError(f"client {self.client_id}: update must be a finite 1-D vector")
        self._updates[round_id] = u

    def handle(self, request: bytes) -> bytes | None:
        """Reply to ``collect`` with the stored update."""
        header, _ = unpack(request, client=SERVER)
        check_fields(header, {"dim": int})
        expect(header, scheme="plain", run=header["run"], round_id=header["round"], stage="collect", client=SERVER)
        self.check_run(header["run"], who=SERVER)  # a bound client serves its own run only
        update = self._updates.pop(header["round"], None)
        if update is None:
            raise ProtocolError(f"client {self.client_id} has no update for round {header['round']}")
        if update.shape[0] != header["dim"]:
            raise ProtocolError(f"server asks for dim {header['dim']}, update has {update.shape[0]}")
        body = update.astype(_F32).tobytes()
        return pack({"scheme": "plain", "run": header["run"], "round": header["round"], "stage": "collect",
                     "sender": self.client_id}, body)


class PlainServerRound(ServerRound):
    """Collects float32 vectors and adds them."""

    def __init__(self, spec: RoundSpec, config: PlainConfig) -> None:
        self.spec = spec
        self.config = config
        self._stage = "collect"
        self._total = np.zeros(spec.dim, dtype=np.float64)
        self._got: list[str] = []
        self._rejected: dict[str, str] = {}

    @property
    def stage(self) -> str:
        """Current stage: ``collect`` then ``done``."""
        return self._stage

    def outbox(self) -> dict[str, bytes]:
        """One ``collect`` request per client."""
        if self._stage != "collect":
            return {}
        return {
            c: pack({"scheme": "plain", "run": self.spec.run_id, "round": self.spec.round_id,
                     "stage": "collect", "sender": SERVER, "dim": self.spec.dim})
            for c in self.spec.clients
        }

    def receive(self, sender: str, payload: bytes) -> None:
        """Add one client's vector after checking envelope, membership, duplicates and length."""
        try:
            if sender not in self.spec.clients:
                raise ProtocolError("not a participant of this round", client=sender)
            if sender in self._got:
                raise ProtocolError("second message in the same stage (duplicate or replay)", client=sender)
            if self._stage != "collect":
                raise ProtocolError(f"message after the round closed (stage {self._stage})", client=sender)
            header, body = unpack(payload, client=sender)
            expect(header, scheme="plain", run=self.spec.run_id, round_id=self.spec.round_id,
                   stage="collect", client=sender)
            if len(body) != self.spec.dim * 4:
                raise ProtocolError(f"expected {self.spec.dim} float32 ({self.spec.dim * 4} bytes), "
                                    f"got {len(body)} bytes", client=sender)
            vec = np.frombuffer(body, dtype=_F32).astype(np.float64)
            if not np.all(np.isfinite(vec)):
                raise ProtocolError("update holds NaN or inf", client=sender)
        except ProtocolError as exc:
            if sender in self.spec.clients and sender not in self._got:
                self._rejected.setdefault(sender, exc.reason)
            raise
        self._total += vec
        self._got.append(sender)

    def advance(self) -> bool:
        """Close ``collect``; fails if fewer than ``min_clients`` replied."""
        if self._stage == "collect":
            if len(self._got) < self.config.min_clients:
                raise AggregationError(f"only {len(self._got)} of {len(self.spec.clients)} clients replied; "
                                       f"plain needs {self.config.min_clients}")
            self._stage = "done"
        return False

    def result(self) -> AggregateResult:
        """The sum of the received vectors."""
        if self._stage != "done":
            raise AggregationError(f"round not finished (stage {self._stage})")
        dropped = {c: self._rejected.get(c, "no reply at stage collect") for c in self.spec.clients
                   if c not in self._got}
        return AggregateResult(total=self._total.copy(), included=tuple(sorted(self._got)), dropped=dropped,
                               stages=("collect",))


@register_scheme("plain")
class PlainScheme(Scheme):
    """No protection: the reference every other scheme is checked against."""

    Config = PlainConfig

    def __init__(self, config: PlainConfig, *, seed: int | None = None) -> None:
        super().__init__(config, seed=seed)
        self._clients: dict[str, PlainClient] = {}

    def client(self, client_id: str) -> PlainClient:
        """The (cached) endpoint of ``client_id``."""
        return self._clients.setdefault(client_id, PlainClient(client_id))

    def server_round(self, spec: RoundSpec) -> PlainServerRound:
        """A new server round."""
        return PlainServerRound(spec, self.config)

    def sum_tolerance(self, n_clients: int, *, bound: float = 1.0) -> float:
        """Float32 transport rounds each value by at most ``bound * 2**-24``; twice that per client.

        >>> PlainScheme(PlainConfig()).sum_tolerance(4)
        4.76837158203125e-07
        """
        return n_clients * float(bound) * 2.0**-23

    def min_survivors(self, n_clients: int) -> int:
        """``min_clients``: fewer replies fail the round."""
        return self.config.min_clients

    def dropout_tolerance(self, n_clients: int) -> int:
        """All but ``min_clients`` may drop out."""
        return max(0, n_clients - self.config.min_clients)
