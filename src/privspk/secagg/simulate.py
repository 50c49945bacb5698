"""In-process driver of one aggregation round: moves bytes, nothing else.

It routes each request of the server to its client (or to the key holder), feeds
back the replies, and counts bytes each way. Fault injection for tests and
benchmarks: ``silent`` makes a client stop answering from a given stage on
(a dropout), ``tamper`` rewrites a reply in flight. ``hooks`` (a :class:`RoundHooks`)
sees each stage begin, times every server and endpoint call and every delivered message,
so a benchmark measures the library's own round loop instead of copying it.

>>> import numpy as np
>>> from privspk.secagg import build_scheme, RoundSpec
>>> s = build_scheme("plain")
>>> spec = RoundSpec(run_id="r", round_id=0, clients=("a", "b"), dim=1)
>>> eps = {c: s.client(c) for c in spec.clients}
>>> eps["a"].submit(0, np.array([1.0])); eps["b"].submit(0, np.array([2.0]))
>>> res = run_round(s, spec, eps, tamper=lambda who, stage, blob: blob[:-1] if who == "b" else blob)
>>> res.total.tolist(), sorted(res.dropped)
([1.0], ['b'])
>>> class Count(RoundHooks):
...     def __init__(self): self.calls = []
...     def message(self, party, stage, *, up, n_bytes): self.calls.append((party, stage, up))
>>> eps["a"].submit(1, np.array([1.0])); eps["b"].submit(1, np.array([2.0]))
>>> hooks = Count()
>>> _ = run_round(s, RoundSpec(run_id="r", round_id=1, clients=("a", "b"), dim=1), eps, hooks=hooks)
>>> sorted(hooks.calls)
[('a', 'collect', False), ('a', 'collect', True), ('b', 'collect', False), ('b', 'collect', True)]
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import ContextManager

from privspk.errors import PrivspkError, ProtocolError
from privspk.secagg.base import KEYHOLDER, AggregateResult, ClientEndpoint, RoundSpec, Scheme

log = logging.getLogger(__name__)

Tamper = Callable[[str, str, bytes], bytes]


class RoundHooks:
    """What :func:`run_round` reports while it drives a round; every method does nothing here.

    Subclass and override what you need (e.g. a benchmark's timers). ``party`` is
    ``"server"``, :data:`~privspk.secagg.base.KEYHOLDER` or a client id.
    """

    def stage(self, stage: str) -> None:
        """A new stage of the server begins (called before its outbox is built)."""

    def span(self, party: str, stage: str) -> ContextManager[None]:
        """Wraps each call of ``party`` in ``stage``: the server's outbox/receive/advance, an endpoint's handle."""
        return contextlib.nullcontext()

    def message(self, party: str, stage: str, *, up: bool, n_bytes: int) -> None:
        """A request delivered to ``party`` (``up=False``) or its reply that reached the server (``up=True``)."""


def run_round(
    scheme: Scheme,
    spec: RoundSpec,
    clients: Mapping[str, ClientEndpoint],
    *,
    silent: Mapping[str, str] | None = None,
    tamper: Tamper | None = None,
    server=None,
    hooks: RoundHooks | None = None,
) -> AggregateResult:
    """Run one round to the end and return its :class:`AggregateResult`.

    Args:
        scheme: the configured scheme.
        spec: the round's announcement.
        clients: endpoint of each participating client (submit updates before calling).
        silent: client id -> first stage at which it stops answering.
        tamper: ``f(sender, stage, reply) -> reply`` applied to every reply in flight.
        server: an existing :class:`ServerRound` to drive (default: a new one).
        hooks: a :class:`RoundHooks` that sees stages, timed calls and delivered messages.
    """
    hooks = hooks if hooks is not None else RoundHooks()
    silent = dict(silent or {})
    server = server if server is not None else scheme.server_round(spec)
    keyholder = scheme.keyholder()
    gone: set[str] = set()
    bytes_up: dict[str, int] = {}
    bytes_down: dict[str, int] = {}
    stages: list[str] = []
    while True:
        stage = server.stage
        stages.append(stage)
        hooks.stage(stage)
        with hooks.span("server", stage):
            outbox = server.outbox()
        for dest, request in outbox.items():
            bytes_down[dest] = bytes_down.get(dest, 0) + len(request)
            if dest == KEYHOLDER:
                endpoint = keyholder
            else:
                if dest in gone or silent.get(dest) == stage:
                    gone.add(dest)
                    continue
                endpoint = clients.get(dest)
            if endpoint is None:
                continue
            hooks.message(dest, stage, up=False, n_bytes=len(request))
            try:
                with hooks.span(dest, stage):
                    reply = endpoint.handle(request)
            except PrivspkError as exc:  # the endpoint refused the request: it sends nothing
                log.warning("%s refused %s request: %s", dest, stage, exc)
                continue
            if reply is None:
                continue
            if tamper is not None:
                reply = tamper(dest, stage, reply)
            bytes_up[dest] = bytes_up.get(dest, 0) + len(reply)
            hooks.message(dest, stage, up=True, n_bytes=len(reply))
            try:
                with hooks.span("server", stage):
                    server.receive(dest, reply)
            except ProtocolError as exc:
                log.warning("server rejected %s at %s: %s", dest, stage, exc)
        with hooks.span("server", stage):
            more = server.advance()
        if not more:
            break
    result = server.result()
    result.bytes_up = {k: v for k, v in bytes_up.items() if k != KEYHOLDER}
    result.bytes_down = {k: v for k, v in bytes_down.items() if k != KEYHOLDER}
    result.stages = tuple(stages)
    return result
