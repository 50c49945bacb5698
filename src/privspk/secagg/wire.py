"""The envelope every aggregation message travels in.

A message is ``MAGIC | version | header length | header (canonical JSON) | body``.
The header names the scheme, run, round, stage and sender and records the body's
length and SHA-256, so a truncated, padded or spliced payload is caught before any
field is used. Runtimes (in-process, Flower) move these bytes and nothing else.

>>> blob = pack({"scheme": "plain", "run": "r1", "round": 3, "stage": "collect",
...              "sender": "c0"}, b"\\x01\\x02")
>>> header, body = unpack(blob)
>>> header["round"], body
(3, b'\\x01\\x02')
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from typing import Any

from privspk.errors import ProtocolError

MAGIC = b"PSPK"
VERSION = 1
_PREFIX = struct.Struct(">4sBI")  # magic, version, header length
MAX_HEADER_BYTES = 1 << 20
MAX_BODY_BYTES = 1 << 31

# Fields every header carries, with their exact types (``type(v) is int`` refuses ``True``).
ENVELOPE_FIELDS: dict[str, type] = {
    "scheme": str,
    "run": str,
    "round": int,
    "stage": str,
    "sender": str,
}


def pack(header: Mapping[str, Any], body: bytes = b"") -> bytes:
    """Serialise ``header`` (JSON-able, with the envelope fields) and ``body``.

    >>> len(pack({"scheme": "plain", "run": "r", "round": 0, "stage": "s", "sender": "c"})) > 9
    True
    """
    missing = [k for k in ENVELOPE_FIELDS if k not in header]
    if missing:
        raise ProtocolError(f"cannot pack a message without header fields {missing}")
    full = dict(header)
    full["body_len"] = len(body)
    full["body_sha256"] = hashlib.sha256(body).hexdigest()
    raw = json.dumps(full, sort_keys=True, separators=(",", ":")).encode()
    return _PREFIX.pack(MAGIC, VERSION, len(raw)) + raw + bytes(body)


def unpack(blob: bytes, *, client: str | None = None) -> tuple[dict[str, Any], bytes]:
    """Parse and verify an envelope; any defect raises :class:`ProtocolError`.

    ``client`` is the transport-level sender, used to name the culprit in errors
    and checked against the header's ``sender``.

    >>> unpack(b"junk", client="c1")
    Traceback (most recent call last):
    ...
    privspk.errors.ProtocolError: client c1: message shorter than its 9-byte prefix (4 bytes)
    """
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"message must be bytes, got {type(blob).__name__}", client=client)
    blob = bytes(blob)
    if len(blob) < _PREFIX.size:
        raise ProtocolError(
            f"message shorter than its {_PREFIX.size}-byte prefix ({len(blob)} bytes)", client=client
        )
    magic, version, hlen = _PREFIX.unpack_from(blob)
    if magic != MAGIC:
        raise ProtocolError(f"not a privspk message (magic {magic!r})", client=client)
    if version != VERSION:
        raise ProtocolError(f"unsupported message version {version} (this build speaks {VERSION})", client=client)
    if hlen > MAX_HEADER_BYTES or _PREFIX.size + hlen > len(blob):
        raise ProtocolError(
            f"header length {hlen} exceeds the {len(blob) - _PREFIX.size} bytes received", client=client
        )
    raw = blob[_PREFIX.size : _PREFIX.size + hlen]
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"header is not valid JSON ({exc})", client=client) from None
    if not isinstance(header, dict):
        raise ProtocolError("header must be a JSON object", client=client)
    check_fields(header, {**ENVELOPE_FIELDS, "body_len": int, "body_sha256": str}, client=client)
    body = blob[_PREFIX.size + hlen :]
    if header["body_len"] != len(body):
        raise ProtocolError(
            f"body is {len(body)} bytes but the header announces {header['body_len']} "
            f"({'truncated' if len(body) < header['body_len'] else 'oversized'})",
            client=client,
        )
    if hashlib.sha256(body).hexdigest() != header["body_sha256"]:
        raise ProtocolError("body does not match its SHA-256 in the header (corrupted)", client=client)
    if client is not None and header["sender"] != client:
        raise ProtocolError(
            f"header claims sender {header['sender']!r} but the message came from {client!r}", client=client
        )
    return header, body


def check_fields(header: Mapping[str, Any], spec: Mapping[str, type], *, client: str | None = None) -> None:
    """Require each key of ``spec`` in ``header`` with exactly that type (bool is not int).

    >>> check_fields({"round": True}, {"round": int}, client="c2")
    Traceback (most recent call last):
    ...
    privspk.errors.ProtocolError: client c2: field 'round' must be int, got bool
    """
    for key, typ in spec.items():
        if key not in header:
            raise ProtocolError(f"missing field {key!r}", client=client)
        if type(header[key]) is not typ:
            raise ProtocolError(
                f"field {key!r} must be {typ.__name__}, got {type(header[key]).__name__}", client=client
            )


def expect(
    header: Mapping[str, Any], *, scheme: str, run: str, round_id: int, stage: str, client: str | None = None
) -> None:
    """Check that a message belongs to this scheme, run, round and stage.

    A message from another round is refused as a replay; one for another stage as
    out of order.

    >>> h = {"scheme": "plain", "run": "r", "round": 2, "stage": "collect", "sender": "c0"}
    >>> expect(h, scheme="plain", run="r", round_id=3, stage="collect", client="c0")
    Traceback (most recent call last):
    ...
    privspk.errors.ProtocolError: client c0: message is for round 2, this is round 3 (replayed or stale)
    """
    if header["scheme"] != scheme:
        raise ProtocolError(f"message is for scheme {header['scheme']!r}, this round runs {scheme!r}", client=client)
    if header["run"] != run:
        raise ProtocolError(f"message is for run {header['run']!r}, this is run {run!r}", client=client)
    if header["round"] != round_id:
        raise ProtocolError(
            f"message is for round {header['round']}, this is round {round_id} (replayed or stale)", client=client
        )
    if header["stage"] != stage:
        raise ProtocolError(
            f"message is for stage {header['stage']!r}, the round is at stage {stage!r} (out of order)",
            client=client,
        )
