"""The message envelope: round trip, and every truncation, extension and corruption rejected."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privspk.errors import ProtocolError
from privspk.secagg.wire import MAGIC, MAX_HEADER_BYTES, check_fields, expect, pack, unpack

ids = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)
BASE = {"scheme": "mask", "run": "run-1", "round": 7, "stage": "collect", "sender": "c03"}


def checked(blob: bytes, header: dict = BASE) -> tuple[dict, bytes]:
    """What a receiver does: unpack naming the expected sender, then check scheme/run/round/stage."""
    h, body = unpack(blob, client=header["sender"])
    expect(h, scheme=header["scheme"], run=header["run"], round_id=header["round"], stage=header["stage"],
           client=header["sender"])
    return h, body


@settings(max_examples=40, deadline=None)
@given(scheme=ids, run=ids, round_id=st.integers(0, 2**53), stage=ids, sender=ids, body=st.binary(max_size=300),
       extra=st.dictionaries(st.sampled_from(["peers", "dim", "to"]), st.integers() | st.lists(ids, max_size=3)))
def test_round_trip(scheme: str, run: str, round_id: int, stage: str, sender: str, body: bytes, extra: dict) -> None:
    header = {**extra, "scheme": scheme, "run": run, "round": round_id, "stage": stage, "sender": sender}
    h, b = checked(pack(header, body), header)
    assert b == body
    assert {k: h[k] for k in header} == header
    assert h["body_len"] == len(body)


def test_every_truncation_is_rejected() -> None:
    blob = pack(BASE, b"0123456789abcdef")
    for cut in range(len(blob)):
        with pytest.raises(ProtocolError) as e:
            checked(blob[:cut])
        assert e.value.client == "c03"


def test_truncated_and_oversized_bodies_are_named() -> None:
    blob = pack(BASE, b"x" * 32)
    with pytest.raises(ProtocolError, match=r"body is 31 bytes but the header announces 32 \(truncated\)"):
        unpack(blob[:-1], client="c03")
    with pytest.raises(ProtocolError, match=r"body is 33 bytes but the header announces 32 \(oversized\)"):
        unpack(blob + b"y", client="c03")


@settings(max_examples=60, deadline=None)
@given(extra=st.binary(min_size=1, max_size=64), body=st.binary(max_size=40))
def test_any_extension_is_rejected(extra: bytes, body: bytes) -> None:
    with pytest.raises(ProtocolError, match="oversized"):
        checked(pack(BASE, body) + extra)


def test_every_single_byte_corruption_is_rejected() -> None:
    """All positions x all 255 non-zero XOR masks of an envelope-only message."""
    blob = pack(BASE, b"\x00\x01\x02\xfe\xff payload")
    for pos in range(len(blob)):
        for mask in range(1, 256):
            bad = bytearray(blob)
            bad[pos] ^= mask
            with pytest.raises(ProtocolError):
                checked(bytes(bad))


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_spliced_messages_are_rejected(data: st.DataObject) -> None:
    a = pack(BASE, b"A" * 20)
    b = pack({**BASE, "sender": "c04"}, b"B" * 20)
    i = data.draw(st.integers(1, len(a) - 1))
    j = data.draw(st.integers(1, len(b) - 1))
    spliced = a[:i] + b[j:]
    if spliced == a:
        return
    with pytest.raises(ProtocolError):
        checked(spliced)


WRONG_TYPES = [True, 1.0, None, [1], {"a": 1}, "7", 7]


@pytest.mark.parametrize(
    ("field", "wrong"),
    [(f, w) for f in BASE for w in WRONG_TYPES if type(w) is not type(BASE[f])],
)
def test_each_envelope_field_has_an_exact_type(field: str, wrong: object) -> None:
    header = {**BASE, field: wrong}
    with pytest.raises(ProtocolError, match=f"field '{field}' must be"):
        unpack(pack(header, b""), client=None)


@pytest.mark.parametrize("field", ["scheme", "run", "round", "stage", "sender"])
def test_each_missing_envelope_field_is_refused(field: str) -> None:
    with pytest.raises(ProtocolError, match="without header fields"):
        pack({k: v for k, v in BASE.items() if k != field})
    raw = json.dumps({k: v for k, v in BASE.items() if k != field} | {"body_len": 0,
                     "body_sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}).encode()
    blob = struct.pack(">4sBI", MAGIC, 1, len(raw)) + raw
    with pytest.raises(ProtocolError, match=f"missing field '{field}'"):
        unpack(blob)


@pytest.mark.parametrize(
    ("blob", "match"),
    [
        ("not bytes", "message must be bytes, got str"),
        (b"PSPK", "shorter than its 9-byte prefix"),
        (b"XXXX\x01\x00\x00\x00\x02{}", "not a privspk message"),
        (b"PSPK\x02\x00\x00\x00\x02{}", "unsupported message version 2"),
        (b"PSPK\x01\x00\x00\x00\x05{}", "header length 5 exceeds the 2 bytes received"),
        (struct.pack(">4sBI", MAGIC, 1, MAX_HEADER_BYTES + 1) + b"{}", "header length"),
        (b"PSPK\x01\x00\x00\x00\x02[]", "header must be a JSON object"),
        (b"PSPK\x01\x00\x00\x00\x02{x", "header is not valid JSON"),
        (b"PSPK\x01\x00\x00\x00\x02\xff\xfe", "header is not valid JSON"),
    ],
)
def test_malformed_envelopes_say_what_is_wrong(blob: object, match: str) -> None:
    with pytest.raises(ProtocolError, match=match) as e:
        unpack(blob, client="c09")  # type: ignore[arg-type]
    assert e.value.client == "c09"


def test_sender_mismatch_is_rejected() -> None:
    with pytest.raises(ProtocolError, match="header claims sender 'c03' but the message came from 'c04'"):
        unpack(pack(BASE, b""), client="c04")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"scheme": "plain"}, "for scheme 'plain', this round runs 'mask'"),
        ({"run": "other"}, "for run 'other', this is run 'run-1'"),
        ({"round": 6}, r"for round 6, this is round 7 \(replayed or stale\)"),
        ({"stage": "share"}, r"for stage 'share', the round is at stage 'collect' \(out of order\)"),
    ],
)
def test_expect_names_the_mismatch(change: dict, match: str) -> None:
    h, _ = unpack(pack({**BASE, **change}, b""), client="c03")
    with pytest.raises(ProtocolError, match=match) as e:
        expect(h, scheme="mask", run="run-1", round_id=7, stage="collect", client="c03")
    assert e.value.client == "c03"


def test_check_fields_refuses_bool_for_int() -> None:
    with pytest.raises(ProtocolError, match="field 'dim' must be int, got bool"):
        check_fields({"dim": True}, {"dim": int})
    check_fields({"dim": 3}, {"dim": int})
