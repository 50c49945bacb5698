"""One stage over Flower: push one message per node, pull the replies, stop at a deadline.

Flower's stock ``send_and_receive`` sleeps 3 s between pulls; a privspk round has up
to six stages, so this loop polls every ``poll`` seconds instead (default 20 ms) during
the first second after the push or the last reply, then less often (up to every
:data:`POLL_CAP` s: a long training phase does not cost the SuperLink 50 requests a
second), and returns as soon as every node has answered or the stage's timeout has passed. A node
that did not answer in time, or answered with a Flower error or a privspk
``{"error": ...}`` header, is reported with the reason and no payload: the caller
treats it as a dropout of that stage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from privspk.errors import ProtocolError
from privspk.runtimes.flower.launch import idle_interval
from privspk.runtimes.flower.messages import MESSAGE_TYPE, from_content, to_content

log = logging.getLogger(__name__)

POLL_CAP = 0.1
"""Longest wait (s) between two pulls of the ServerApp (after a second without any reply)."""


@dataclass
class Reply:
    """A node's answer to one request (``error`` set when there is none to use)."""

    meta: dict[str, Any] = field(default_factory=dict)
    body: bytes = b""
    error: str = ""
    seconds: float = 0.0
    seen: float = 0.0


LEGS = ("down", "start", "setup", "pull", "load", "app", "up")
"""The legs of an exchange (:class:`StageTiming`); ``setup + pull + load = start``."""


@dataclass
class StageTiming:
    """Where a stage's wall time went, as seen from the ServerApp.

    ``legs`` sums, over the exchanges, the path of each exchange's last reply: ``down``
    (end of the push to the ClientApp's fork on the node), ``start`` (fork to the
    ClientApp handler), split into ``setup`` (fork to the start of the message pull:
    the ClientApp's HTTP client, heartbeat and monitor threads), ``pull`` (its pull of
    the message from the SuperNode, which waits while the SuperNode still fetches it
    from the SuperLink) and ``load`` (pull end to handler: the FAB and the app), then
    ``app`` (the handler: the node's privspk work and the local hop to its agent) and
    ``up`` (handler end to the reply seen by the ServerApp). They come from wall
    clocks of different processes, so they mean something on one machine (loopback) only.

    >>> t = StageTiming()
    >>> t.add_legs(100.0, Reply(meta={"t_node": [100.1, 100.15, 100.4, 100.45, 100.5]}, seen=100.7))
    >>> {k: round(v, 2) for k, v in t.legs.items()}
    {'down': 0.1, 'start': 0.35, 'setup': 0.05, 'pull': 0.25, 'load': 0.05, 'app': 0.05, 'up': 0.2}
    """

    push: float = 0.0
    wait: float = 0.0
    polls: int = 0
    exchanges: int = 0
    legs: dict[str, float] = field(default_factory=lambda: dict.fromkeys(LEGS, 0.0))

    def add_legs(self, t_pushed: float, last: Reply | None) -> None:
        """Add the legs of an exchange whose last reply is ``last`` (pushed at wall time ``t_pushed``)."""
        self.exchanges += 1
        stamps = last.meta.get("t_node") if last is not None else None
        if not (isinstance(stamps, list) and len(stamps) == 5 and last.seen):
            return
        try:
            fork, pull0, pull1, app, end = (float(x) for x in stamps)
        except (TypeError, ValueError):
            return
        for name, value in (("down", fork - t_pushed), ("start", app - fork), ("setup", pull0 - fork),
                            ("pull", pull1 - pull0), ("load", app - pull1), ("app", end - app),
                            ("up", last.seen - end)):
            self.legs[name] += value

    def summary(self) -> dict[str, Any]:
        """Rounded figures for a report."""
        return {"push_seconds": round(self.push, 3), "wait_seconds": round(self.wait, 3), "polls": self.polls,
                "exchanges": self.exchanges, "legs_seconds": {k: round(v, 3) for k, v in self.legs.items()}}


@dataclass
class Posted:
    """Requests pushed by :func:`post` whose replies :func:`collect` has not taken yet."""

    pending: dict[str, int]
    replies: dict[int, Reply]
    timeout: float
    start: float
    pushed: float
    wall_pushed: float


def post(grid, requests: Mapping[int, tuple[dict[str, Any], bytes]], *, timeout: float) -> Posted:
    """Push ``requests`` (node id -> (meta, body)); their replies are due within ``timeout`` s."""
    from flwr.app import Message

    start = time.perf_counter()
    msgs = [Message(to_content(meta, body), dst_node_id=int(node), message_type=MESSAGE_TYPE,
                    ttl=max(timeout, 1.0) + 30.0)
            for node, (meta, body) in requests.items()]
    ids = list(grid.push_messages(msgs))
    pending = {mid: node for mid, node in zip(ids, requests) if mid}
    replies = {node: Reply(error="the message could not be delivered") for mid, node in zip(ids, requests) if not mid}
    return Posted(pending, replies, float(timeout), start, time.perf_counter(), time.time())


def collect(grid, posted: Posted, *, poll: float = 0.02, timing: StageTiming | None = None) -> dict[int, Reply]:
    """Pull the replies of :func:`post`'s requests until all answered or their timeout passed."""
    start, pending, replies, timeout = posted.start, posted.pending, posted.replies, posted.timeout
    t_wait = time.perf_counter()
    polls = 0
    deadline = start + timeout
    quiet_since = t_wait  # last push or reply: poll every `poll` s for a second after it, then slower
    while pending:
        polls += 1
        for msg in grid.pull_messages(list(pending)):
            node = pending.pop(msg.metadata.reply_to_message_id, None)
            if node is None:
                continue
            quiet_since = time.perf_counter()
            elapsed = time.perf_counter() - start
            seen = time.time()
            if msg.has_error():
                replies[node] = Reply(error=f"Flower error {msg.error.code}: {msg.error.reason}", seconds=elapsed)
                continue
            try:
                meta, body = from_content(msg.content, sender=f"node {node}")
            except ProtocolError as exc:
                replies[node] = Reply(error=str(exc), seconds=elapsed)
                continue
            if "error" in meta:
                replies[node] = Reply(error=str(meta["error"]), seconds=elapsed)
            else:
                replies[node] = Reply(meta=meta, body=body, seconds=elapsed, seen=seen)
        now = time.perf_counter()
        if not pending or now >= deadline:
            break
        time.sleep(min(idle_interval(now - quiet_since, poll, cap=POLL_CAP), max(deadline - now, 0.0)))
    for node in pending.values():
        replies[node] = Reply(error=f"no answer within {timeout:g} s (timed out)", seconds=timeout)
    pending.clear()
    if timing is not None:
        timing.push += posted.pushed - start
        timing.wait += time.perf_counter() - t_wait
        timing.polls += polls
        answered = [r for r in replies.values() if r.seen]
        timing.add_legs(posted.wall_pushed, max(answered, key=lambda r: r.seen) if answered else None)
    return replies


def exchange(grid, requests: Mapping[int, tuple[dict[str, Any], bytes]], *, timeout: float, poll: float = 0.02,
             timing: StageTiming | None = None) -> dict[int, Reply]:
    """Send ``requests`` (node id -> (meta, body)) and collect one reply per node within ``timeout`` s."""
    return collect(grid, post(grid, requests, timeout=timeout), poll=poll, timing=timing)
