"""The HE roles: the secret key stays with the key holder, which opens one verified sum per round."""

from __future__ import annotations

import gc
import hashlib
import itertools
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from privspk.errors import AggregationError, ConfigError, KeyLeakError, PrivspkError, ProtocolError
from privspk.secagg import KEYHOLDER, AggregateResult, RoundSpec
from privspk.secagg.he_client import HeClient
from privspk.secagg.he_common import SERVER, Stage, load_public_context, pledge_digest, public_context_bytes
from privspk.secagg.he_common import sign_statement as _sign
from privspk.secagg.he_common import sketch_hex as _sketch_hex
from privspk.secagg.he_common import sketch_rows as _sketch_rows
from privspk.secagg.he_keyholder import KeyHolder
from privspk.secagg.he_server import HeServerRound
from privspk.secagg.he_wire import seal_frame, vector_bytes
from privspk.secagg.simulate import run_round
from privspk.secagg.wire import pack

from secagg_support import build_trusted

ts = pytest.importorskip("tenseal")

_PREFIX = struct.Struct(">4sBI")
Hook = Callable[[str, str, bytes], "bytes | None"]


def split(blob: bytes) -> tuple[dict[str, Any], bytes]:
    """Header and body of an envelope, unchecked (for tampering)."""
    _, _, hlen = _PREFIX.unpack_from(blob)
    return json.loads(blob[_PREFIX.size : _PREFIX.size + hlen]), blob[_PREFIX.size + hlen :]


def repack(blob: bytes, *, changes: dict[str, Any] | None = None, body: bytes | None = None) -> bytes:
    """A valid envelope again, with header fields changed and/or another body."""
    header, old = split(blob)
    header.pop("body_len")
    header.pop("body_sha256")
    header.update(changes or {})
    return pack(header, old if body is None else body)


def setup(name: str = "bfv", k: int = 3, dim: int = 50, *, options: dict | None = None, round_id: int = 0,
          seed: int = 0):
    scheme = build_trusted(name, options, seed=seed)
    spec = RoundSpec(run_id="he-test", round_id=round_id, clients=tuple(f"c{i}" for i in range(k)), dim=dim)
    clients = {c: scheme.client(c) for c in spec.clients}
    rng = np.random.default_rng(seed)
    updates = {c: rng.uniform(-1, 1, dim) for c in spec.clients}
    for c in spec.clients:
        clients[c].submit(round_id, updates[c])
    return scheme, spec, clients, updates


@dataclass
class Run:
    """A round driven by hand: its result (or the error that ended it) and every message."""

    result: AggregateResult | None = None
    error: PrivspkError | None = None
    log: list[tuple[str, str, str, bytes]] = field(default_factory=list)  # (stage, up/down, party, blob)
    refused: list[tuple[str, str, PrivspkError]] = field(default_factory=list)  # endpoints that sent nothing
    rejected: list[tuple[str, str, ProtocolError]] = field(default_factory=list)  # replies the server refused

    def body(self, stage: str, direction: str, party: str) -> bytes:
        return next(split(b)[1] for st, d, p, b in self.log if (st, d, p) == (stage, direction, party))

    def message(self, stage: str, direction: str, party: str) -> bytes:
        return next(b for st, d, p, b in self.log if (st, d, p) == (stage, direction, party))


def drive(scheme, spec, clients, *, on_request: Hook | None = None, on_reply: Hook | None = None,
          server: HeServerRound | None = None, silent: dict[str, str] | None = None) -> Run:
    """Run a round by hand, recording every message; hooks may rewrite (or drop, with None) messages."""
    server = server or scheme.server_round(spec)
    kh = scheme.keyholder()
    run = Run()
    silent = silent or {}
    try:
        while True:
            stage = server.stage
            for dest, req in server.outbox().items():
                if on_request is not None:
                    req = on_request(stage, dest, req)
                    if req is None:
                        continue
                run.log.append((stage, "down", dest, req))
                if silent.get(dest) == stage:
                    continue
                endpoint = kh if dest == KEYHOLDER else clients[dest]
                try:
                    reply = endpoint.handle(req)
                except PrivspkError as exc:
                    run.refused.append((stage, dest, exc))
                    continue
                if on_reply is not None:
                    reply = on_reply(stage, dest, reply)
                    if reply is None:
                        continue
                run.log.append((stage, "up", dest, reply))
                try:
                    server.receive(dest, reply)
                except ProtocolError as exc:
                    run.rejected.append((stage, dest, exc))
            if not server.advance():
                break
        run.result = server.result()
    except AggregationError as exc:
        run.error = exc
    return run


def expected_total(scheme, updates, included):
    clip = scheme.config.clip
    return sum(np.clip(updates[c], -clip, clip) for c in included)


@pytest.mark.parametrize("name", ["bfv", "ckks"])
def test_round_opens_the_sum_of_all_clients(name: str) -> None:
    scheme, spec, clients, updates = setup(name, k=4, dim=300)
    res = run_round(scheme, spec, clients)
    assert res.included == spec.clients and res.dropped == {}
    assert res.stages == ("setup", "pledge", "freeze", "collect", "commit", "verify", "open")
    err = np.abs(res.total - expected_total(scheme, updates, spec.clients)).max()
    assert err <= scheme.sum_tolerance(4)
    assert scheme.min_survivors(4) == 2 and scheme.dropout_tolerance(4) == 2


# ---------------------------------------------------------------- the secret key stays with the key holder


@pytest.mark.parametrize("name", ["bfv", "ckks"])
def test_every_route_of_the_context_leaves_the_secret_key_behind(name: str) -> None:
    scheme, spec, clients, _ = setup(name)
    kh = scheme.keyholder()
    run = drive(scheme, spec, clients)
    routes = {"public_context_bytes": kh.public_context_bytes()}
    routes.update({f"{stage}/{direction}/{party}": split(blob)[1] for stage, direction, party, blob in run.log
                   if (stage, direction) in (("setup", "up"), ("pledge", "down"))})
    assert len(routes) == 1 + 1 + len(spec.clients)
    for where, blob in routes.items():
        ctx = ts.context_from(blob)
        assert not ctx.has_secret_key() and ctx.is_public(), where
        # and no further copy or re-serialisation brings it back
        assert not ctx.copy().has_secret_key(), where
        assert not ts.context_from(ctx.serialize(save_secret_key=True)).has_secret_key(), where
    assert kh._context.has_secret_key()  # serialising a public copy left the key holder's context intact


@pytest.mark.parametrize("name", ["bfv", "ckks"])
def test_the_servers_context_cannot_decrypt_a_client_ciphertext(name: str) -> None:
    scheme, spec, clients, _ = setup(name)
    run = drive(scheme, spec, clients)
    public = run.body("setup", "up", KEYHOLDER)
    server_ctx = load_public_context(public)
    assert not server_ctx.has_secret_key()
    codec = scheme.codec
    blob = run.body("collect", "up", "c0")
    words = codec.layout.unpack(blob, n_chunks=codec.n_chunks(spec.dim))
    vec = ts.ckks_vector if name == "ckks" else ts.bfv_vector
    frame = seal_frame(vec(server_ctx, [0]), codec.layout)
    slots = codec.values_per_chunk if name == "ckks" else codec.slots
    data = vector_bytes(words, codec.layout, frame, slots=slots, ckks=name == "ckks")
    loader = ts.ckks_vector_from if name == "ckks" else ts.bfv_vector_from
    with pytest.raises(ValueError, match="secret_key"):
        loader(server_ctx, data).decrypt()
    # the key holder's context does decrypt the very same bytes
    assert len(loader(scheme.keyholder()._context, data).decrypt()) == slots


def _reachable(root: object, limit: int = 20000) -> list[object]:
    seen: dict[int, object] = {}
    todo = [root]
    while todo and len(seen) < limit:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, (type, type(gc))) or callable(obj) and not hasattr(obj, "__dict__"):
            continue
        seen[id(obj)] = obj
        todo.extend(gc.get_referents(obj))
    return list(seen.values())


def test_server_round_and_clients_hold_no_secret_key() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    scheme, spec, clients, _ = setup("bfv")
    server = scheme.server_round(spec)
    assert drive(scheme, spec, clients, server=server).result is not None
    for obj in _reachable(server):
        assert not isinstance(obj, (KeyHolder, HeClient, Ed25519PrivateKey)), type(obj)
        assert not (isinstance(obj, ts.Context) and obj.has_secret_key())
    kh_key = scheme.keyholder()._identity
    for c, endpoint in clients.items():
        objs = _reachable(endpoint)
        contexts = [o for o in objs if isinstance(o, ts.Context)]
        assert contexts, "the walk should reach the client's cached public context"
        assert not any(ctx.has_secret_key() for ctx in contexts), c
        assert not any(isinstance(o, KeyHolder) or o is kh_key or o is scheme.keyholder()._context for o in objs)


def test_public_context_bytes_refuses_a_leaking_serialisation() -> None:
    class Leaky:
        def __init__(self) -> None:
            self.ctx = ts.context(ts.SCHEME_TYPE.BFV, 4096, plain_modulus=1032193, coeff_mod_bit_sizes=[36, 21])

        def serialize(self, **flags: bool) -> bytes:  # ignores save_secret_key=False
            return self.ctx.serialize(save_secret_key=True)

    with pytest.raises(KeyLeakError, match="still holds the secret key"):
        public_context_bytes(Leaky())


def test_server_and_clients_refuse_a_context_with_the_secret_key() -> None:
    scheme, spec, clients, _ = setup("bfv")
    kh = scheme.keyholder()
    private = kh._context.serialize(save_secret_key=True)
    kh._public = private  # a key holder that leaks (its signature still checks out)
    kh.fingerprint = hashlib.sha256(private).hexdigest()
    with pytest.raises(KeyLeakError, match="holds the secret key"):
        run_round(scheme, spec, clients)
    setup_reply = kh.handle(pack({"scheme": "bfv", "run": spec.run_id, "round": 0, "stage": "setup",
                                  "sender": SERVER}))
    h, body = split(setup_reply)
    request = pack({"scheme": "bfv", "run": spec.run_id, "round": 0, "stage": "pledge", "sender": SERVER,
                    "dim": spec.dim, "fingerprint": h["fingerprint"], "context_signature": h["context_signature"]},
                   body)
    with pytest.raises(KeyLeakError, match="holds the secret key"):
        clients["c0"].handle(request)  # a client will not encrypt under it either


def test_clients_refuse_a_context_the_key_holder_did_not_sign() -> None:
    scheme, spec, clients, _ = setup("bfv")
    own_public = public_context_bytes(scheme.codec.make_context())  # the server's own key pair

    def substitute(stage: str, dest: str, blob: bytes) -> bytes:
        if stage == "pledge":
            return repack(blob, changes={"fingerprint": hashlib.sha256(own_public).hexdigest()}, body=own_public)
        return blob

    run = drive(scheme, spec, clients, on_request=substitute)
    assert isinstance(run.error, AggregationError) and "only 0 of 3" in str(run.error)
    assert sorted(d for _, d, _ in run.refused) == list(spec.clients)
    assert all("bad signature on the public context" in str(e) for _, _, e in run.refused)


# ---------------------------------------------------------------- the key holder opens one verified sum per round


def test_key_holder_opens_a_round_once() -> None:
    scheme, spec, clients, _ = setup("bfv")
    run = drive(scheme, spec, clients)
    kh = scheme.keyholder()
    with pytest.raises(ProtocolError, match="already committed; one sum is opened per round") as e:
        kh.handle(run.message("commit", "down", KEYHOLDER))
    assert e.value.client == SERVER
    with pytest.raises(ProtocolError, match="already opened .* one decryption per round"):
        kh.handle(run.message("open", "down", KEYHOLDER))


def test_key_holder_refuses_a_sum_of_too_few_contributions() -> None:
    scheme, spec, clients, _ = setup("bfv", options={"min_clients": 3})
    with pytest.raises(AggregationError, match="only 2 of 3 clients sent a valid ciphertext"):
        run_round(scheme, spec, clients, silent={"c2": "collect"})
    # a server that announces a smaller sum anyway is refused by the key holder
    scheme, spec, clients, _ = setup("bfv", options={"min_clients": 3}, round_id=1)

    def shrink(stage: str, dest: str, blob: bytes) -> bytes:
        if stage == "commit":
            h, _ = split(blob)
            who = h["contributors"][:2]
            return repack(blob, changes={"contributors": who,
                                         "digests": {c: h["digests"][c] for c in who},
                                         "signatures": {c: h["signatures"][c] for c in who}})
        return blob

    run = drive(scheme, spec, clients, on_request=shrink)
    assert isinstance(run.error, AggregationError) and "refused to commit" in str(run.error)
    assert "at least min_clients = 3" in str(run.refused[0][2])


def test_key_holder_refuses_one_ciphertext_passed_off_as_the_sum(monkeypatch: pytest.MonkeyPatch) -> None:
    scheme, spec, clients, _ = setup("bfv")
    decrypted: list[int] = []
    real = scheme.codec.decrypt
    monkeypatch.setattr(scheme.codec, "decrypt", lambda *a, **k: decrypted.append(1) or real(*a, **k))
    sent: dict[str, bytes] = {}

    def keep(stage: str, dest: str, blob: bytes) -> bytes:
        if stage == "collect":
            sent[dest] = split(blob)[1]
        return blob

    def forge(stage: str, dest: str, blob: bytes) -> bytes:
        return repack(blob, body=sent["c0"]) if stage == "commit" else blob  # "the sum" is c0's ciphertext

    run = drive(scheme, spec, clients, on_request=forge, on_reply=keep)
    assert isinstance(run.error, AggregationError) and "refused to open" in str(run.error)
    assert "not the sum of the contributors' ciphertexts" in str(run.refused[-1][2])
    assert decrypted == []


def test_key_holder_refuses_unregistered_or_badly_signed_contributors() -> None:
    scheme, spec, clients, _ = setup("bfv")
    commit = drive(scheme, spec, clients).message("commit", "down", KEYHOLDER)
    fresh = build_trusted("bfv")  # another run: a fresh key holder that has seen no commit yet
    kh = fresh.keyholder()
    with pytest.raises(ProtocolError, match="was not set up"):
        kh.handle(commit)
    kh.handle(pack({"scheme": "bfv", "run": spec.run_id, "round": 0, "stage": "setup", "sender": SERVER}))
    with pytest.raises(ProtocolError, match="another context"):
        kh.handle(commit)
    forged = repack(commit, changes={"fingerprint": kh.fingerprint})
    with pytest.raises(ProtocolError, match=r"not registered clients"):
        kh.handle(forged)
    for c in spec.clients:
        fresh.client(c)  # same ids, other keys
    with pytest.raises(ProtocolError, match="bad signature on the ciphertext digest of c0"):
        kh.handle(forged)


def test_forwarded_ciphertext_must_be_the_one_its_client_signed() -> None:
    scheme, spec, clients, _ = setup("bfv")

    def swap(stage: str, dest: str, blob: bytes) -> bytes:
        if stage == "open":
            h, body = split(blob)
            assert h["forwarded"] == ["c1"]
            return repack(blob, body=body[:-1] + bytes([body[-1] ^ 1]))
        return blob

    run = drive(scheme, spec, clients, on_request=swap, silent={"c1": "verify"})
    assert isinstance(run.error, AggregationError) and "refused to open" in str(run.error)
    assert "forwarded ciphertext of c1 is not the one it signed" in str(run.refused[-1][2])


@pytest.mark.parametrize("name", ["bfv", "ckks"])
def test_silence_or_a_wrong_sketch_at_verify_keeps_the_client_in_the_sum(name: str) -> None:
    scheme, spec, clients, updates = setup(name, k=4)

    seen: dict[str, str] = {}

    def note(stage: str, dest: str, blob: bytes) -> bytes:
        if (stage, dest) == ("verify", "c3"):
            h, _ = split(blob)
            seen.update(digest=h["digest"], challenge=h["challenge"])
        return blob

    def lie(stage: str, dest: str, blob: bytes) -> bytes:  # a validly signed but wrong sketch
        if (stage, dest) != ("verify", "c3"):
            return blob
        h, _ = split(blob)
        layout = scheme.codec.layout
        rows = _sketch_rows(h["sketch"], layout, client="c3")
        text = _sketch_hex([[(v + 1) % q for v, q in zip(r, layout.moduli)] for r in rows], layout)
        sig = _sign(clients["c3"]._identity, "sketch", spec.run_id, spec.round_id, "c3",
                    scheme.keyholder().fingerprint, seen["digest"], seen["challenge"], text)
        return repack(blob, changes={"sketch": text, "signature": sig})

    run = drive(scheme, spec, clients, on_request=note, on_reply=lie, silent={"c1": "verify"})
    res = run.result
    assert res is not None and res.included == spec.clients
    assert split(run.message("open", "down", KEYHOLDER))[0]["forwarded"] == ["c1", "c3"]
    err = np.abs(res.total - expected_total(scheme, updates, spec.clients)).max()
    assert err <= scheme.sum_tolerance(4)


# ---------------------------------------------------------------- what the server refuses


def _pledge_reply(scheme, spec, clients, who: str = "c0") -> tuple[HeServerRound, bytes]:
    """A server at stage pledge and ``who``'s genuine pledge."""
    server = scheme.server_round(spec)
    for dest, req in server.outbox().items():
        server.receive(dest, scheme.keyholder().handle(req))
    server.advance()
    req = server.outbox()[who]
    return server, clients[who].handle(req)


def _collect_reply(scheme, spec, clients, who: str = "c0") -> tuple[HeServerRound, bytes]:
    """A server at stage collect (every client pledged) and ``who``'s genuine reveal."""
    server = scheme.server_round(spec)
    for _ in range(3):
        for dest, req in server.outbox().items():
            server.receive(dest, (scheme.keyholder() if dest == KEYHOLDER else clients[dest]).handle(req))
        server.advance()
    req = server.outbox()[who]
    return server, clients[who].handle(req)


def test_a_ciphertext_under_another_context_is_rejected() -> None:
    scheme, spec, clients, updates = setup("bfv")
    server, genuine = _pledge_reply(scheme, spec, clients)
    other = build_trusted("bfv")  # same parameters, other key pair
    other_ctx = load_public_context(other.keyholder().public_context_bytes())
    words = other.codec.encrypt(other_ctx, updates["c0"], rng=np.random.default_rng(0))
    body = other.codec.layout.pack(words)
    h, _ = split(genuine)
    def signed(fp: str) -> bytes:
        digest = hashlib.sha256(body).hexdigest()
        sig = _sign(clients["c0"]._identity, "collect", spec.run_id, 0, "c0", fp, spec.dim, h["n_chunks"], digest)
        return repack(genuine, changes={"fingerprint": fp, "digest": digest, "signature": sig})

    with pytest.raises(ProtocolError, match="under another context") as e:
        server.receive("c0", signed(other.keyholder().fingerprint))
    assert e.value.client == "c0"
    server.receive("c0", genuine)  # the genuine message still gets in
    # other parameters: the packed length (or the residue range) gives it away at collect
    server, reveal = _collect_reply(*setup("bfv", round_id=1)[:3])
    ckks = build_trusted("ckks")
    ckks_ctx = load_public_context(ckks.keyholder().public_context_bytes())
    body = ckks.codec.layout.pack(ckks.codec.encrypt(ckks_ctx, updates["c0"], rng=np.random.default_rng(0)))
    with pytest.raises(ProtocolError, match="packed ciphertexts take .* bytes") as e:
        server.receive("c0", repack(reveal, body=body))
    assert e.value.client == "c0"
    server.receive("c0", reveal)


def test_same_parameters_other_key_under_a_forged_fingerprint_is_never_opened() -> None:
    """Undetectable by the server (SEAL cannot tell keys apart), but the key holder refuses the garbage."""
    scheme, spec, clients, updates = setup("bfv")
    other = build_trusted("bfv")
    other_ctx = load_public_context(other.keyholder().public_context_bytes())

    class OtherKey:  # c0's software encrypts under the other key and signs what it sends
        def __getattr__(self, name: str):
            return getattr(scheme.codec, name)

        def encrypt(self, ctx, update, *, rng):
            return other.codec.encrypt(other_ctx, update, rng=rng)

    clients["c0"]._codec = OtherKey()
    run = drive(scheme, spec, clients)
    assert isinstance(run.error, AggregationError) and "refused to open" in str(run.error)
    assert "not a sum of 3 quantised updates" in str(run.refused[-1][2])


@pytest.mark.parametrize("cut", [1, 7, 1000])
def test_truncated_and_oversized_ciphertexts_are_named(cut: int) -> None:
    scheme, spec, clients, _ = setup("bfv")
    server, genuine = _collect_reply(scheme, spec, clients)
    _, body = split(genuine)
    for bad, word in ((body[:-cut], "truncated"), (body + b"\0" * cut, "oversized")):
        with pytest.raises(ProtocolError, match=word) as e:
            server.receive("c0", repack(genuine, body=bad))
        assert e.value.client == "c0"
    with pytest.raises(ProtocolError, match="truncated") as e:
        server.receive("c0", genuine[:-cut])
    assert e.value.client == "c0"
    server.receive("c0", genuine)


def test_residues_above_the_modulus_and_wrong_chunk_counts_are_rejected() -> None:
    scheme, spec, clients, _ = setup("bfv")
    server, genuine = _collect_reply(scheme, spec, clients)
    h, body = split(genuine)
    layout = scheme.codec.layout
    words = layout.unpack(body, n_chunks=1)
    words[0, 0, 0, 5] = np.uint64(layout.moduli[0])  # one residue equal to q
    from privspk.secagg.he_wire import _pack_bits

    bad = b"".join(_pack_bits(np.ascontiguousarray(words[:, :, l, :]).ravel(), w)
                   for l, w in enumerate(layout.widths))
    with pytest.raises(ProtocolError, match="not below the modulus") as e:
        server.receive("c0", repack(genuine, body=bad))
    assert e.value.client == "c0"
    with pytest.raises(ProtocolError, match="does not match its pledged"):
        server.receive("c0", repack(genuine, body=body[:-1] + bytes([body[-1] ^ 1])))
    with pytest.raises(ProtocolError, match="bad signature on the reveal"):
        server.receive("c0", repack(genuine, changes={"reveal_signature": "00" * 64}))
    server.receive("c0", genuine)
    assert "c0" in server._packed
    # what a pledge must carry
    scheme, spec, clients, _ = setup("bfv", round_id=1)
    server, pledge = _pledge_reply(scheme, spec, clients)
    with pytest.raises(ProtocolError, match="ciphertexts sent, the round needs 1"):
        server.receive("c0", repack(pledge, changes={"n_chunks": 2}))
    with pytest.raises(ProtocolError, match="bad signature on the ciphertext"):
        server.receive("c0", repack(pledge, changes={"signature": "00" * 64}))
    with pytest.raises(ProtocolError, match="field 'n_chunks' must be int, got bool"):
        server.receive("c0", repack(pledge, changes={"n_chunks": True}))
    with pytest.raises(ProtocolError, match="a pledge carries no body"):
        server.receive("c0", repack(pledge, body=b"x"))
    server.receive("c0", pledge)
    assert "c0" in server._pledges


def test_replayed_and_duplicated_messages_are_rejected() -> None:
    scheme, spec, clients, _ = setup("bfv")
    server, genuine = _collect_reply(scheme, spec, clients)
    server.receive("c0", genuine)
    with pytest.raises(ProtocolError, match="second message in the same stage") as e:
        server.receive("c0", genuine)
    assert e.value.client == "c0"
    with pytest.raises(ProtocolError, match="header claims sender 'c0'"):
        server.receive("c1", genuine)  # c0's message under c1's name
    # round 1: round 0's message is stale
    spec1 = RoundSpec(run_id=spec.run_id, round_id=1, clients=spec.clients, dim=spec.dim)
    server1 = scheme.server_round(spec1)
    for dest, req in server1.outbox().items():
        server1.receive(dest, scheme.keyholder().handle(req))
    server1.advance()
    with pytest.raises(ProtocolError, match="replayed or stale") as e:
        server1.receive("c0", genuine)
    assert e.value.client == "c0"
    # a replayed collect request gets no second reveal from the client
    with pytest.raises(ProtocolError, match="already revealed it"):
        clients["c0"].handle(server.outbox()["c0"])


def _server_at(scheme, spec, clients, stage: str) -> tuple[HeServerRound, dict[str, bytes]]:
    """A server advanced to ``stage`` and a genuine reply for every stage reached so far (by sender)."""
    server = scheme.server_round(spec)
    kh = scheme.keyholder()
    replies: dict[str, bytes] = {}
    while server.stage != stage:
        for dest, req in server.outbox().items():
            reply = (kh if dest == KEYHOLDER else clients[dest]).handle(req)
            replies[server.stage] = reply
            server.receive(dest, reply)
        server.advance()
    return server, replies


def test_stage_transition_table() -> None:
    """At every stage, a message stamped with any other stage is refused as out of order."""
    stages = [Stage.SETUP, Stage.PLEDGE, Stage.FREEZE, Stage.COLLECT, Stage.COMMIT, Stage.VERIFY, Stage.OPEN]
    checked = 0
    for at in stages:
        scheme, spec, clients, _ = setup("bfv", k=2)
        server, replies = _server_at(scheme, spec, clients, at)
        sender = KEYHOLDER if at in (Stage.SETUP, Stage.FREEZE, Stage.COMMIT, Stage.OPEN) else "c0"
        template = replies.get(Stage.SETUP) if at == Stage.SETUP else None
        if template is None:
            template = pack({"scheme": "bfv", "run": spec.run_id, "round": 0, "stage": at, "sender": sender})
        for label in stages:
            if label == at:
                continue
            with pytest.raises(ProtocolError, match="out of order") as e:
                server.receive(sender, repack(template, changes={"stage": label, "sender": sender}))
            assert e.value.client == sender
            checked += 1
        for other, label in itertools.product(["c1", KEYHOLDER, "stranger"], [at]):
            if other == sender or (other == "c1" and at in (Stage.PLEDGE, Stage.COLLECT, Stage.VERIFY)):
                continue
            with pytest.raises(ProtocolError, match="not expected to send at stage"):
                server.receive(other, repack(template, changes={"sender": other}))
    assert checked == len(stages) * (len(stages) - 1)


def test_a_round_without_the_key_holder_fails_cleanly() -> None:
    scheme, spec, clients, _ = setup("bfv")
    with pytest.raises(AggregationError, match="no valid public context"):
        run_round(scheme, spec, clients, tamper=lambda who, st, b: b[:-1] if who == KEYHOLDER else b)


# ---------------------------------------------------------------- what clients and the key holder refuse


def test_clients_refuse_out_of_place_requests() -> None:
    scheme, spec, clients, _ = setup("bfv")
    server = scheme.server_round(spec)
    kh = scheme.keyholder()
    for dest, req in server.outbox().items():
        server.receive(dest, kh.handle(req))
    server.advance()
    collect = server.outbox()["c0"]  # the pledge request (it carries the context)
    verify = pack({"scheme": "bfv", "run": spec.run_id, "round": 0, "stage": "verify", "sender": SERVER,
                   "challenge": "00" * 32, "digest": "ab"})
    with pytest.raises(ProtocolError, match="sent no ciphertext in round 0"):
        clients["c0"].handle(verify)
    with pytest.raises(ProtocolError, match="server asks for dim 51"):
        clients["c0"].handle(repack(collect, changes={"dim": 51}))
    with pytest.raises(ProtocolError, match="does not match its fingerprint"):
        clients["c0"].handle(repack(collect, changes={"fingerprint": "00" * 32}))
    with pytest.raises(ProtocolError, match="is for scheme 'ckks'"):
        clients["c0"].handle(repack(collect, changes={"scheme": "ckks"}))
    with pytest.raises(ProtocolError, match="does not answer stage 'commit'"):
        clients["c0"].handle(repack(collect, changes={"stage": "commit"}))
    reply = clients["c0"].handle(collect)
    digest = split(reply)[0]["digest"]
    listed = {"c0": [digest, split(reply)[0]["signature"]]}
    frozen = _sign(kh._identity, "frozen", spec.run_id, 0, kh.fingerprint, pledge_digest(listed))  # test-only
    reveal = pack({"scheme": "bfv", "run": spec.run_id, "round": 0, "stage": "collect", "sender": SERVER,
                   "pledges": listed, "freeze_signature": frozen})
    with pytest.raises(ProtocolError, match="not the one the key holder froze"):
        clients["c0"].handle(repack(reveal, changes={"freeze_signature": "00" * 64}))
    with pytest.raises(ProtocolError, match="sent no ciphertext in round 0"):
        clients["c0"].handle(repack(verify, changes={"digest": digest}))  # pledged, not yet revealed
    other = {"c0": ["cd" * 32, "00"]}
    with pytest.raises(ProtocolError, match="does not hold this client's pledge"):
        clients["c0"].handle(repack(reveal, changes={"pledges": other, "freeze_signature": _sign(
            kh._identity, "frozen", spec.run_id, 0, kh.fingerprint, pledge_digest(other))}))
    clients["c0"].handle(reveal)
    with pytest.raises(ProtocolError, match="already revealed"):
        clients["c0"].handle(reveal)
    with pytest.raises(ProtocolError, match="names a ciphertext this client did not send"):
        clients["c0"].handle(repack(verify, changes={"digest": "cd" * 32}))
    with pytest.raises(ProtocolError, match="challenge must be 64 hex"):
        clients["c0"].handle(repack(verify, changes={"digest": digest, "challenge": "zz"}))
    clients["c0"].handle(repack(verify, changes={"digest": digest}))
    with pytest.raises(ProtocolError, match="already answered its challenge"):
        clients["c0"].handle(repack(verify, changes={"digest": digest}))


def test_key_holder_refuses_what_it_does_not_serve() -> None:
    scheme = build_trusted("bfv")
    kh = scheme.keyholder()
    base = {"scheme": "bfv", "run": "r", "round": 0, "sender": SERVER}
    with pytest.raises(ProtocolError, match="does not answer stage 'collect'"):
        kh.handle(pack({**base, "stage": "collect"}))
    with pytest.raises(ProtocolError, match="serves 'bfv'"):
        kh.handle(pack({**base, "scheme": "ckks", "stage": "setup"}))
    with pytest.raises(ProtocolError, match="has no committed sum"):
        kh.handle(pack({**base, "stage": "open", "sketches": {}, "sketch_signatures": {}, "forwarded": []}))
    with pytest.raises(ProtocolError, match="takes no update"):
        kh.submit(0, np.zeros(3))


def test_round_size_is_bounded_by_max_clients() -> None:
    scheme = build_trusted("bfv", {"max_clients": 3})
    spec = RoundSpec(run_id="r", round_id=0, clients=("a", "b", "c", "d"), dim=4)
    with pytest.raises(ConfigError, match="4 clients exceed max_clients = 3"):
        scheme.server_round(spec)
    with pytest.raises(ConfigError, match="client id"):
        scheme.client(KEYHOLDER)


def test_consecutive_rounds_share_the_key_holder() -> None:
    scheme, spec, clients, updates = setup("bfv", k=3)
    first = run_round(scheme, spec, clients)
    spec1 = RoundSpec(run_id=spec.run_id, round_id=1, clients=spec.clients, dim=spec.dim)
    for c in spec.clients:
        clients[c].submit(1, -updates[c])
    second = run_round(scheme, spec1, clients)
    assert np.abs(first.total + second.total).max() <= 2 * scheme.sum_tolerance(3)


def test_a_commit_left_unopened_expires_when_the_next_round_commits() -> None:
    scheme, spec, clients, updates = setup("bfv", k=2)
    stalled = drive(scheme, spec, clients, on_request=lambda st, d, b: None if st == "open" else b)
    assert isinstance(stalled.error, AggregationError)  # the server never asked to open round 0
    spec1 = RoundSpec(run_id=spec.run_id, round_id=1, clients=spec.clients, dim=spec.dim)
    for c in spec.clients:
        clients[c].submit(1, updates[c])
    assert run_round(scheme, spec1, clients).included == spec.clients
    late_open = pack({"scheme": "bfv", "run": spec.run_id, "round": 0, "stage": "open", "sender": SERVER,
                      "sketches": {}, "sketch_signatures": {}, "forwarded": []})
    with pytest.raises(ProtocolError, match="already opened \\(or refused\\)"):
        scheme.keyholder().handle(late_open)
