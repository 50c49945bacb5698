"""Helpers shared by the secagg test files: a recording server proxy and envelope surgery."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from privspk.errors import ProtocolError
from privspk.secagg import AggregateResult, ClientEndpoint, RoundSpec, Scheme, ServerRound, build_scheme
from privspk.secagg.he_params import HE_TRUST
from privspk.secagg.wire import pack

PREFIX = struct.Struct(">4sBI")


def client_ids(k: int) -> tuple[str, ...]:
    """``c00, c01, ...`` (sorted order = creation order)."""
    return tuple(f"c{i:02d}" for i in range(k))


def build_trusted(name: str, options: dict[str, Any] | None = None, *, seed: int | None = None) -> Scheme:
    """``build_scheme``; for ``ckks``/``bfv`` with the operator's acceptance that no client colludes with
    the server (they refuse to start without it; what a colluder gets is tested in
    test_secagg_he_collusion.py)."""
    opts = dict(options or {})
    if name in ("ckks", "bfv"):
        opts.setdefault("he_trust", HE_TRUST)
    return build_scheme(name, opts, seed=seed)


def setup_round(
    name: str,
    k: int,
    dim: int,
    *,
    options: dict[str, Any] | None = None,
    seed: int = 0,
    round_id: int = 0,
    run_id: str = "test-run",
) -> tuple[Scheme, RoundSpec, dict[str, ClientEndpoint]]:
    """A scheme, a round spec over ``k`` clients and their endpoints."""
    scheme = build_trusted(name, options, seed=seed)
    spec = RoundSpec(run_id=run_id, round_id=round_id, clients=client_ids(k), dim=dim)
    return scheme, spec, {c: scheme.client(c) for c in spec.clients}


def random_updates(spec: RoundSpec, seed: int, *, bound: float = 1.0) -> dict[str, np.ndarray]:
    """One float update per client, uniform in ``[-bound, bound]``."""
    rng = np.random.default_rng(seed)
    return {c: rng.uniform(-bound, bound, spec.dim) for c in spec.clients}


def split_envelope(blob: bytes) -> tuple[dict[str, Any], bytes]:
    """Header and body of a well-formed envelope, without any checks (for tampering)."""
    _, _, hlen = PREFIX.unpack_from(blob)
    header = json.loads(blob[PREFIX.size : PREFIX.size + hlen])
    return header, blob[PREFIX.size + hlen :]


def repack(blob: bytes, *, changes: dict[str, Any] | None = None, body: bytes | None = None) -> bytes:
    """Re-pack ``blob`` with header fields changed and/or a new body (a *valid* envelope again)."""
    header, old_body = split_envelope(blob)
    header.pop("body_len")
    header.pop("body_sha256")
    header.update(changes or {})
    return pack(header, old_body if body is None else body)


@dataclass
class RecordingServer(ServerRound):
    """Delegates to a real server round and records its traffic.

    ``intercept(stage, sender, payload, deliver)`` (optional) replaces the plain
    delivery of a reply: it may call ``deliver(payload)`` any number of times;
    ``deliver`` returns whether the server accepted that payload.
    """

    inner: ServerRound
    intercept: Callable[[str, str, bytes, Callable[[bytes], bool]], None] | None = None
    received: list[tuple[str, str, bytes]] = field(default_factory=list)
    rejected: list[tuple[str, str, ProtocolError]] = field(default_factory=list)
    requests: list[tuple[str, str, bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.spec = self.inner.spec

    @property
    def stage(self) -> str:
        return self.inner.stage

    def outbox(self) -> dict[str, bytes]:
        box = self.inner.outbox()
        self.requests.extend((self.inner.stage, dest, blob) for dest, blob in box.items())
        return box

    def _deliver(self, sender: str, payload: bytes) -> None:
        stage = self.inner.stage
        self.received.append((stage, sender, payload))
        try:
            self.inner.receive(sender, payload)
        except ProtocolError as exc:
            self.rejected.append((stage, sender, exc))
            raise

    def receive(self, sender: str, payload: bytes) -> None:
        if self.intercept is None:
            self._deliver(sender, payload)
            return
        stage = self.inner.stage

        def deliver(blob: bytes) -> bool:
            try:
                self._deliver(sender, blob)
            except ProtocolError:
                return False
            return True

        self.intercept(stage, sender, payload, deliver)

    def advance(self) -> bool:
        return self.inner.advance()

    def result(self) -> AggregateResult:
        return self.inner.result()


class Stepper:
    """Drives a round stage by stage so a test can stop it and craft requests or replies."""

    def __init__(self, scheme: Scheme, spec: RoundSpec, clients: dict[str, ClientEndpoint],
                 *, silent: dict[str, str] | None = None) -> None:
        self.scheme, self.spec, self.clients = scheme, spec, clients
        self.server = scheme.server_round(spec)
        self.silent = dict(silent or {})
        self.gone: set[str] = set()
        self.replies: dict[tuple[str, str], bytes] = {}
        self.requests: dict[tuple[str, str], bytes] = {}

    def step(self, *, skip: frozenset[str] = frozenset()) -> bool:
        """Run the server's current stage; clients in ``skip`` get no request this time."""
        stage = self.server.stage
        for dest, req in self.server.outbox().items():
            self.requests[(stage, dest)] = req
            if dest in skip or dest in self.gone or self.silent.get(dest) == stage:
                self.gone.add(dest) if dest not in skip else None
                continue
            try:
                reply = self.clients[dest].handle(req)
            except ProtocolError:
                continue
            if reply is None:
                continue
            self.replies[(stage, dest)] = reply
            try:
                self.server.receive(dest, reply)
            except ProtocolError:
                pass
        return self.server.advance()

    def run_to(self, stage: str, *, skip: frozenset[str] = frozenset()) -> None:
        """Step until the server is at ``stage`` (its requests not yet sent)."""
        while self.server.stage != stage:
            if not self.step(skip=skip):
                raise AssertionError(f"round ended before stage {stage}")

    def finish(self) -> AggregateResult:
        while self.step():
            pass
        return self.server.result()
