"""In-process driver of one aggregation round: moves bytes, nothing else.

It routes each request of the server to its client (or to the key holder), feeds
back the replies, and counts bytes each way. Fault injection for tests and
benchmarks: ``silent`` makes a client stop answering from a given stage on
(a dropout), ``tamper`` rewrites a reply in flight.

>>> import numpy as np
>>> from privspk.secagg import build_scheme, RoundSpec
>>> s = build_scheme("plain")
>>> spec = RoundSpec(run_id="r", round_id=0, clients=("a", "b"), dim=1)
>>> eps = {c: s.client(c) for c in spec.clients}
>>> eps["a"].submit(0, np.array([1.0])); eps["b"].submit(0, np.array([2.0]))
>>> res = run_round(s, spec, eps, tamper=lambda who, stage, blob: blob[:-1] if who == "b" else blob)
>>> res.total.tolist(), sorted(res.dropped)
([1.0], ['b'])
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from privspk.errors import PrivspkError, ProtocolError
from privspk.secagg.base import KEYHOLDER, AggregateResult, ClientEndpoint, RoundSpec, Scheme

log = logging.getLogger(__name__)

Tamper = Callable[[str, str, bytes], bytes]


def run_round(
    scheme: Scheme,
    spec: RoundSpec,
    clients: Mapping[str, ClientEndpoint],
    *,
    silent: Mapping[str, str] | None = None,
    tamper: Tamper | None = None,
    server=None,
) -> AggregateResult:
    """Run one round to the end and return its :class:`AggregateResult`.

    Args:
        scheme: the configured scheme.
        spec: the round's announcement.
        clients: endpoint of each participating client (submit updates before calling).
        silent: client id -> first stage at which it stops answering.
        tamper: ``f(sender, stage, reply) -> reply`` applied to every reply in flight.
        server: an existing :class:`ServerRound` to drive (default: a new one).
    """
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
        for dest, request in server.outbox().items():
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
            try:
                reply = endpoint.handle(request)
            except PrivspkError as exc:  # the endpoint refused the request: it sends nothing
                log.warning("%s refused %s request: %s", dest, stage, exc)
                continue
            if reply is None:
                continue
            if tamper is not None:
                reply = tamper(dest, stage, reply)
            bytes_up[dest] = bytes_up.get(dest, 0) + len(reply)
            try:
                server.receive(dest, reply)
            except ProtocolError as exc:
                log.warning("server rejected %s at %s: %s", dest, stage, exc)
        if not server.advance():
            break
    result = server.result()
    result.bytes_up = {k: v for k, v in bytes_up.items() if k != KEYHOLDER}
    result.bytes_down = {k: v for k, v in bytes_down.items() if k != KEYHOLDER}
    result.stages = tuple(stages)
    return result
