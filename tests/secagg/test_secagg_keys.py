"""Identity registry, signatures, X25519 agreement and sealed shares."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privspk.errors import ConfigError, KeyLeakError, ProtocolError
from privspk.secagg.keys import (
    IdentityKey,
    KeyRegistry,
    RoundKeyPair,
    advert_message,
    confirm_message,
    encode_ids,
    open_sealed,
    seal,
    sealed_size,
)

ids = st.text(min_size=0, max_size=6)


@settings(max_examples=200, deadline=None)
@given(a=st.lists(ids, max_size=4), b=st.lists(ids, max_size=4))
def test_id_encoding_is_injective(a: list[str], b: list[str]) -> None:
    assert (encode_ids(*a) == encode_ids(*b)) == (a == b)


def test_confirm_message_binds_the_set_and_round() -> None:
    d1, d2 = bytes(32), b"\x01" * 32
    u = ["a", "b", "c"]
    assert confirm_message(d1, ["a", "b"], u) != confirm_message(d1, ["a", "bb"], u)
    assert confirm_message(d1, ["ab"], u) != confirm_message(d1, ["a", "b"], u)
    assert confirm_message(d1, ["a"], u) != confirm_message(d2, ["a"], u)
    # the set of clients that shared is bound too, and cannot be traded against the survivor set
    assert confirm_message(d1, ["a", "b"], u) != confirm_message(d1, ["a", "b"], ["a", "b"])
    assert confirm_message(d1, ["a", "b"], ["c"]) != confirm_message(d1, ["a"], ["b", "c"])


def test_registry_verifies_and_names_the_culprit() -> None:
    reg = KeyRegistry()
    alice, mallory = IdentityKey.generate(), IdentityKey.generate()
    reg.register("alice", alice.public_bytes())
    reg.register("alice", alice.public_bytes())  # the same key again is fine
    msg = advert_message(bytes(32), "alice", b"c" * 32, b"s" * 32, b"m" * 32)
    reg.verify("alice", alice.sign(msg), msg)
    with pytest.raises(ProtocolError, match="bad signature") as e:
        reg.verify("alice", mallory.sign(msg), msg)  # signed by someone else
    assert e.value.client == "alice"
    with pytest.raises(ProtocolError, match="bad signature"):
        sig = alice.sign(msg)
        reg.verify("alice", sig[:-1] + bytes([sig[-1] ^ 0x01]), msg)  # one bit flipped (never a no-op)
    with pytest.raises(ProtocolError, match="no registered identity key") as e:
        reg.verify("bob", alice.sign(msg), msg)
    assert e.value.client == "bob"
    with pytest.raises(KeyLeakError, match="refusing to replace"):
        reg.register("alice", mallory.public_bytes())


@pytest.mark.parametrize(("cid", "key", "match"), [("", bytes(32), "non-empty string"), ("a", bytes(31), "32 raw")])
def test_registry_refuses_bad_entries(cid: str, key: bytes, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        KeyRegistry().register(cid, key)


def test_signature_binds_every_advertised_field() -> None:
    reg, me = KeyRegistry(), IdentityKey.generate()
    reg.register("c0", me.public_bytes())
    parts = [bytes(32), "c0", b"c" * 32, b"s" * 32, b"m" * 32]
    sig = me.sign(advert_message(*parts))
    for i in range(len(parts)):
        changed = list(parts)
        changed[i] = "c1" if i == 1 else b"\x09" * 32
        with pytest.raises(ProtocolError, match="bad signature"):
            reg.verify("c0", sig, advert_message(*changed))


def test_agreement_is_symmetric_and_refuses_degenerate_keys() -> None:
    a, b = RoundKeyPair.generate(), RoundKeyPair.generate()
    assert a.agree(b.public_bytes(), peer="b") == b.agree(a.public_bytes(), peer="a")
    assert RoundKeyPair.from_secret(a.secret_bytes()).public_bytes() == a.public_bytes()
    with pytest.raises(ProtocolError, match="unusable X25519 public key") as e:
        a.agree(bytes(32), peer="evil")  # the all-zero point has low order
    assert e.value.client == "evil"
    with pytest.raises(ConfigError, match="32 raw bytes"):
        RoundKeyPair.from_secret(b"short")


def test_sealed_shares_open_only_for_their_route() -> None:
    shared = RoundKeyPair.generate().agree(RoundKeyPair.generate().public_bytes(), peer="x")
    box = seal(b"p" * 48, shared=shared, digest=b"d1", src="a", dst="b")
    assert len(box) == sealed_size(48)
    assert box != seal(b"p" * 48, shared=shared, digest=b"d1", src="a", dst="b")  # fresh nonce
    assert open_sealed(box, shared=shared, digest=b"d1", src="a", dst="b") == b"p" * 48
    for kwargs in ({"src": "c"}, {"dst": "c"}, {"digest": b"d2"}, {"shared": bytes(32)}):
        route = {"shared": shared, "digest": b"d1", "src": "a", "dst": "b", **kwargs}
        with pytest.raises(ProtocolError, match="does not open") as e:
            open_sealed(box, **route)
        assert e.value.client == route["src"]
    for i in range(len(box)):
        bad = bytearray(box)
        bad[i] ^= 0x40
        with pytest.raises(ProtocolError, match="does not open"):
            open_sealed(bytes(bad), shared=shared, digest=b"d1", src="a", dst="b")


def test_secret_keys_do_not_print() -> None:
    assert "secret" in repr(IdentityKey.generate()) and "secret" in repr(RoundKeyPair.generate())
