"""One stage over Flower: push one message per node, pull the replies, stop at a deadline.

Flower's stock ``send_and_receive`` sleeps 3 s between pulls; a privspk round has up
to six stages, so this loop polls every ``poll`` seconds instead (default 20 ms) and
returns as soon as every node has answered or the stage's timeout has passed. A node
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
from privspk.runtimes.flower.messages import MESSAGE_TYPE, from_content, to_content

log = logging.getLogger(__name__)


@dataclass
class Reply:
    """A node's answer to one request (``error`` set when there is none to use)."""

    meta: dict[str, Any] = field(default_factory=dict)
    body: bytes = b""
    error: str = ""
    seconds: float = 0.0


@dataclass
class StageTiming:
    """Where a stage's wall time went, as seen from the ServerApp."""

    push: float = 0.0
    wait: float = 0.0
    polls: int = 0


def exchange(grid, requests: Mapping[int, tuple[dict[str, Any], bytes]], *, timeout: float, poll: float = 0.02,
             timing: StageTiming | None = None) -> dict[int, Reply]:
    """Send ``requests`` (node id -> (meta, body)) and collect one reply per node within ``timeout`` s."""
    from flwr.app import Message

    start = time.perf_counter()
    msgs = [Message(to_content(meta, body), dst_node_id=int(node), message_type=MESSAGE_TYPE,
                    ttl=max(timeout, 1.0) + 30.0)
            for node, (meta, body) in requests.items()]
    ids = list(grid.push_messages(msgs))
    pending = {mid: node for mid, node in zip(ids, requests) if mid}
    replies: dict[int, Reply] = {node: Reply(error="the message could not be delivered")
                                 for mid, node in zip(ids, requests) if not mid}
    t_push = time.perf_counter()
    polls = 0
    deadline = start + timeout
    while pending:
        polls += 1
        for msg in grid.pull_messages(list(pending)):
            node = pending.pop(msg.metadata.reply_to_message_id, None)
            if node is None:
                continue
            elapsed = time.perf_counter() - start
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
                replies[node] = Reply(meta=meta, body=body, seconds=elapsed)
        if not pending or time.perf_counter() >= deadline:
            break
        time.sleep(poll)
    for node in pending.values():
        replies[node] = Reply(error=f"no answer within {timeout:g} s (timed out)", seconds=timeout)
    if timing is not None:
        timing.push += t_push - start
        timing.wait += time.perf_counter() - t_push
        timing.polls += polls
    return replies
