"""One signing convention for HE: IdentityKey signs, KeyRegistry checks, every statement tagged by protocol and stage.

The HE roles sign with :class:`~privspk.secagg.keys.IdentityKey` and verify through
:class:`~privspk.secagg.keys.KeyRegistry`, as ``mask`` does. A deployed node signs with one
identity key for HE, ``mask`` and its Flower node binding, so a signature made for one
purpose must be useless for every other: these tests replay signatures across stages and
across protocols and see them refused.
"""

from __future__ import annotations

import numpy as np
import pytest

from privspk.errors import ProtocolError
from privspk.secagg import KEYHOLDER, RoundSpec
from privspk.secagg.he_common import (
    DOMAIN,
    SERVER,
    Stage,
    keyholder_registry,
    sign_statement,
    statement,
    verify_statement,
)
from privspk.secagg.keys import IdentityKey, KeyRegistry, advert_message, confirm_message
from privspk.secagg.wire import pack, unpack

from secagg_support import build_trusted

pytest.importorskip("tenseal")


def test_the_signed_bytes_keep_their_meaning():
    """The statement is the canonical JSON the HE protocol always signed: a peer of the old code verifies it."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    parts = ("collect", "run-1", 3, "c0", "ab" * 32, 10, 1, "cd" * 32)
    assert statement(*parts) == (b'["privspk/he/v1","collect","run-1",3,"c0","' + b"ab" * 32 + b'",10,1,"'
                                 + b"cd" * 32 + b'"]')
    me = IdentityKey.generate()
    sig = sign_statement(me, *parts)
    Ed25519PublicKey.from_public_bytes(me.public_bytes()).verify(bytes.fromhex(sig), statement(*parts))
    reg = KeyRegistry()
    reg.register("c0", me.public_bytes())
    verify_statement(reg, "c0", sig, *parts, what="the pledge", client="c0")


@pytest.mark.parametrize("bad", ["", "zz", "00" * 63, "00" * 65, None, 7])
def test_a_malformed_signature_is_a_protocol_error_blamed_on_the_deliverer(bad):
    me = IdentityKey.generate()
    with pytest.raises(ProtocolError, match="bad signature on the context") as e:
        verify_statement(keyholder_registry(me.public_bytes()), KEYHOLDER, bad, "context", "r", 0, "fp",
                         what="the context", client=SERVER)
    assert e.value.client == SERVER


def test_an_unregistered_signer_is_refused_whoever_signed():
    me = IdentityKey.generate()
    sig = sign_statement(me, "sketch", "r", 0)
    with pytest.raises(ProtocolError, match="bad signature on the sketch") as e:
        verify_statement(KeyRegistry(), "c9", sig, "sketch", "r", 0, what="the sketch", client="c9")
    assert e.value.client == "c9"


def test_a_signature_of_one_stage_replayed_at_another_is_refused():
    """The server replays a client's pledge signature as its reveal, and the key holder's context
    signature as its freeze signature: both are refused (the stage tag is signed)."""
    scheme = build_trusted("bfv", {"clip": 1.0}, seed=0)
    spec = RoundSpec(run_id="r", round_id=0, clients=("c0", "c1"), dim=4)
    kh = scheme.keyholder()
    clients = {c: scheme.client(c) for c in spec.clients}
    for k, c in enumerate(spec.clients):
        clients[c].submit(0, np.full(4, 0.1 * (k + 1)))
    server = scheme.server_round(spec)
    context_sig, freeze_forged = None, False
    while server.stage != Stage.COLLECT:
        for dest, req in server.outbox().items():
            reply = (kh if dest == KEYHOLDER else clients[dest]).handle(req)
            if server.stage == Stage.SETUP:
                context_sig = unpack(reply)[0]["context_signature"]
            if server.stage == Stage.FREEZE:  # the attack: the context signature passed off as the freeze
                header, body = unpack(reply)
                forged = {k: v for k, v in header.items() if k not in ("body_len", "body_sha256")}
                with pytest.raises(ProtocolError, match="bad signature on the frozen pledge list"):
                    server.receive(KEYHOLDER, pack({**forged, "freeze_signature": context_sig}, body))
                freeze_forged = True
                # the refused reply is not counted: the genuine one is still taken below
            server.receive(dest, reply)
        assert server.advance()
    assert freeze_forged and context_sig
    pledge_sig = server._pledges["c0"][1]
    reply = clients["c0"].handle(server.outbox()["c0"])
    header, body = unpack(reply)
    forged = {k: v for k, v in header.items() if k not in ("body_len", "body_sha256")}
    with pytest.raises(ProtocolError, match="bad signature on the reveal"):
        server.receive("c0", pack({**forged, "reveal_signature": pledge_sig}, body))


def test_an_he_signature_is_never_a_signature_of_another_protocol():
    """One node key signs HE statements, mask adverts/confirmations and its Flower node binding.
    Their messages start with different domain tags, so none can equal another, and a signature
    of an HE statement does not verify as any of them."""
    from privspk.runtimes.flower.identity import binding_message

    me = IdentityKey.generate()
    reg = KeyRegistry()
    reg.register("c0", me.public_bytes())
    digest = bytes(32)
    he_msg = statement("collect", "r", 0, "c0", digest.hex(), 1, 1, digest.hex())
    others = {
        "mask advert": advert_message(digest, "c0", bytes(32), bytes(32), bytes(32)),
        "mask confirm": confirm_message(digest, ["c0"], ["c0"]),
        "node binding": binding_message(run="r", client_id="c0", node_id=1, node_key=digest.hex()),
    }
    tags = {"he": b'["' + DOMAIN.encode() + b'"'} | {name: msg[:20] for name, msg in others.items()}
    assert all(not a.startswith(b) and not b.startswith(a)
               for i, a in enumerate(tags.values()) for j, b in enumerate(tags.values()) if i < j), tags
    sig = me.sign(he_msg)
    for name, msg in others.items():
        with pytest.raises(ProtocolError, match="bad signature"):
            reg.verify("c0", sig, msg)
