"""privspk bytes in Flower records: a JSON header in a ``ConfigRecord``, the payload as bytes.

Every message between the ServerApp and a node is ``(meta, body)``: ``meta`` a small
JSON object (``kind``, round, stage, ...), ``body`` opaque bytes (a scheme message, a
model vector). The header travels as one ``ConfigRecord`` string. A body of up to
:data:`INLINE_MAX` bytes travels in the same ``ConfigRecord`` (one Flower object); a
larger one as a ``uint8`` array in an ``ArrayRecord``, which Flower chunks. Flower moves
each object of a message with its own request on every hop (ServerApp -> SuperLink ->
SuperNode -> ClientApp and back), so the small form (3 objects instead of 6) halves
those requests for the scheme stages. Light imports only: each Flower message runs in
a fresh ClientApp process that imports this module.

>>> content = to_content({"kind": "secagg", "round": 2}, b"\\x00\\x01")
>>> from_content(content)
({'kind': 'secagg', 'round': 2}, b'\\x00\\x01')
>>> big = to_content({"kind": "setup"}, bytes(INLINE_MAX + 1))
>>> sorted(big.array_records), len(from_content(big)[1]) == INLINE_MAX + 1
(['body'], True)
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from privspk.errors import ProtocolError

MESSAGE_TYPE = "query.privspk"
"""The Flower message type of every privspk message (a ``@app.query("privspk")`` handler)."""

KINDS = ("setup", "roster", "train", "secagg", "aggregated", "bye", "ping")
"""What the ServerApp asks a node, in the order of a run."""

MAX_META_BYTES = 1 << 20
INLINE_MAX = 1 << 20
"""Bodies up to this many bytes travel inside the header's ``ConfigRecord`` (Flower chunks arrays at 5 MiB)."""


def to_content(meta: dict[str, Any], body: bytes = b"") -> RecordDict:
    """Pack a header and a payload into a Flower ``RecordDict``."""
    raw = json.dumps(meta, sort_keys=True, separators=(",", ":"))
    body = bytes(body)
    if len(body) <= INLINE_MAX:
        return RecordDict({"meta": ConfigRecord({"json": raw, "body": body})})
    arr = np.frombuffer(body, dtype=np.uint8)
    return RecordDict({"meta": ConfigRecord({"json": raw}),
                       "body": ArrayRecord({"bytes": Array(arr)})})


def from_content(content: RecordDict, *, sender: str = "peer") -> tuple[dict[str, Any], bytes]:
    """Unpack :func:`to_content`; a record of another shape raises :class:`ProtocolError`.

    >>> from_content(RecordDict({}), sender="node 7")
    Traceback (most recent call last):
    ...
    privspk.errors.ProtocolError: client node 7: not a privspk message (no 'meta'/'body' records)
    """
    try:
        header = content.config_records["meta"]
        raw = header["json"]
        inline = header.get("body")
        arr = content.array_records["body"]["bytes"] if "body" in content.array_records else None
    except (KeyError, TypeError, AttributeError):
        raise ProtocolError("not a privspk message (no 'meta'/'body' records)", client=sender) from None
    if (inline is None) == (arr is None):
        raise ProtocolError("a privspk message carries its body exactly once (in 'meta' or as the 'body' array)",
                            client=sender)
    if not isinstance(raw, str) or len(raw) > MAX_META_BYTES:
        raise ProtocolError("message header must be a JSON string under 1 MiB", client=sender)
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"message header is not JSON ({exc})", client=sender) from None
    if not isinstance(meta, dict):
        raise ProtocolError("message header must be a JSON object", client=sender)
    if inline is not None:
        if not isinstance(inline, bytes) or len(inline) > INLINE_MAX:
            raise ProtocolError(f"an inline message body must be bytes of at most {INLINE_MAX}", client=sender)
        return meta, inline
    try:
        values = arr.numpy()
    except Exception as exc:  # Flower raises several types for a bad array
        raise ProtocolError(f"message body is not an array ({exc})", client=sender) from None
    if values.dtype != np.uint8 or values.ndim != 1:
        raise ProtocolError(f"message body must be a 1-D uint8 array, got {values.dtype} {values.shape}",
                            client=sender)
    body = values.tobytes()
    return meta, body
