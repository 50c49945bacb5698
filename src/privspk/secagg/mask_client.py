"""The client side of the ``mask`` scheme: one state machine per round.

A client answers each stage's request once, in order; any defect in a request
(wrong stage, bad field, bad signature, a share that does not open, a request to
reveal both secrets of one client) raises :class:`~privspk.errors.ProtocolError`,
erases the round's secrets and ends the client's part in that round. A round
id is never started twice, so a server cannot make a client mask the same
update under two different key sets. That memory ends with the process: across
restarts and run ids, a bound client (:meth:`ClientEndpoint.bind`) asks its gate
before sending the masked update and before unmasking, and
:class:`privspk.federation.FederatedClient` persists which sum each round went into.

>>> import numpy as np
>>> from privspk.secagg import build_scheme, RoundSpec
>>> from privspk.secagg.simulate import run_round
>>> s = build_scheme("mask", {"bits": 12})
>>> spec = RoundSpec(run_id="doc", round_id=0, clients=("a", "b", "c", "d"), dim=2)
>>> eps = {c: s.client(c) for c in spec.clients}
>>> for c in spec.clients:
...     eps[c].submit_integers(0, np.array([100, -7]))
>>> res = run_round(s, spec, eps, silent={"d": "collect"})
>>> (res.total * s.quantiser(4).scale).round().tolist(), res.included
([300.0, -21.0], ('a', 'b', 'c'))
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass, field

import numpy as np

from privspk.errors import ConfigError, PrivspkError, ProtocolError
from privspk.secagg.base import ClientEndpoint
from privspk.secagg.keys import (
    PUBLIC_KEY_BYTES,
    SIGNATURE_BYTES,
    IdentityKey,
    KeyRegistry,
    RoundKeyPair,
    advert_message,
    open_sealed,
    seal,
)
from privspk.secagg.mask_protocol import (
    ADVERT_BYTES,
    REQUEST_FIELDS,
    SCHEME,
    SEALED_BYTES,
    SEED_BYTES,
    SERVER,
    MaskConfig,
    RoundParams,
    Stage,
    check_transition,
    confirm_statement,
    id_list,
    message,
    parse,
)
from privspk.secagg.prg import MaskStream, derive_mask_key
from privspk.secagg.quantise import RoundingRandomness, rng_for_round
from privspk.secagg.shamir import split_secret
from privspk.secagg.wire import unpack

log = logging.getLogger(__name__)


@dataclass
class _Peer:
    c_pk: bytes
    s_pk: bytes


@dataclass
class _RoundState:
    params: RoundParams
    stage: str
    c_key: RoundKeyPair | None = None
    s_key: RoundKeyPair | None = None
    seed: bytes | None = None
    peers: dict[str, _Peer] = field(default_factory=dict)
    held: dict[str, bytes] = field(default_factory=dict)  # owner -> its 48-byte share held here
    senders: tuple[str, ...] | None = None  # the neighbours it masked against at collect
    confirmed: tuple[tuple[str, ...], tuple[str, ...]] | None = None  # (survivors, shared) it signed


class MaskClient(ClientEndpoint):
    """A client of the ``mask`` scheme (create it with ``MaskScheme.client``).

    Args:
        client_id: its id in rounds.
        config: the scheme's options (must equal the server's).
        identity: its long-term Ed25519 key (its public half is in ``registry``).
        registry: the public identity keys of all clients.
        rng: randomness for stochastic rounding only (never for keys or masks): a generator, or a
            :class:`~privspk.secagg.quantise.RoundingRandomness` (one generator per run and round).

    >>> from privspk.secagg.mask import MaskScheme
    >>> c = MaskScheme(MaskConfig()).client("a")
    >>> c.handle(b"not a request")
    Traceback (most recent call last):
    ...
    privspk.errors.ProtocolError: client server: not a privspk message (magic b'not ')
    """

    def __init__(
        self,
        client_id: str,
        *,
        config: MaskConfig,
        identity: IdentityKey,
        registry: KeyRegistry,
        rng: np.random.Generator | RoundingRandomness,
    ) -> None:
        self.client_id = client_id
        self._config = config
        self._identity = identity
        self._registry = registry
        self._rng = rng
        self._updates: dict[int, np.ndarray] = {}
        self._codes: dict[int, np.ndarray] = {}
        self._min_survivors: dict[int, int] = {}
        self._rounds: dict[tuple[str, int], _RoundState] = {}
        self._closed: set[tuple[str, int]] = set()

    # -- inputs -------------------------------------------------------------------------------

    def submit(self, round_id: int, update: np.ndarray) -> None:
        """Store the float update of ``round_id``; it is clipped and quantised when masked.

        >>> from privspk.secagg import build_scheme
        >>> build_scheme("mask").client("a").submit(0, np.array([np.nan]))
        Traceback (most recent call last):
        ...
        privspk.errors.ConfigError: client a: update must be a finite 1-D vector
        """
        u = np.asarray(update, dtype=np.float64)
        if u.ndim != 1 or u.size == 0 or not np.all(np.isfinite(u)):
            raise ConfigError(f"client {self.client_id}: update must be a finite 1-D vector")
        self._codes.pop(round_id, None)
        self._updates[round_id] = u.copy()

    def submit_integers(self, round_id: int, codes: np.ndarray, *, min_survivors: int | None = None) -> None:
        """Store already-quantised signed integer codes (e.g. with distributed-DP noise added).

        Codes are in units of ``scheme.quantiser(K).scale``; with ``noise_headroom_bits = h``
        each must satisfy ``|code| < 2**(bits - 1 + h)`` (checked when masked).
        ``min_survivors``: the codes carry a noise share counted on an opened sum of at least
        this many clients; a round announced with a threshold below it (a sum could open with
        fewer) is refused at its first message, before anything is sent.

        >>> from privspk.secagg import build_scheme
        >>> build_scheme("mask").client("a").submit_integers(0, np.array([0.5]))
        Traceback (most recent call last):
        ...
        privspk.errors.ConfigError: client a: integer codes must be a non-empty 1-D integer array, got float64
        """
        c = np.asarray(codes)
        if c.ndim != 1 or c.size == 0 or c.dtype.kind not in "iu":
            raise ConfigError(f"client {self.client_id}: integer codes must be a non-empty 1-D integer array, "
                              f"got {c.dtype}")
        if min_survivors is not None and (type(min_survivors) is not int or min_survivors < 1):
            raise ConfigError(f"client {self.client_id}: min_survivors must be a positive int, got {min_survivors!r}")
        self._updates.pop(round_id, None)
        self._codes[round_id] = c.astype(np.int64)
        self._min_survivors.pop(round_id, None)
        if min_survivors is not None:
            self._min_survivors[round_id] = min_survivors

    # -- the state machine --------------------------------------------------------------------

    def handle(self, request: bytes) -> bytes | None:
        """Answer one server request (see :mod:`privspk.secagg.mask_protocol` for the stages)."""
        header, body = unpack(request, client=SERVER)
        if header["scheme"] != SCHEME:
            raise ProtocolError(f"request is for scheme {header['scheme']!r}, this client runs {SCHEME!r}",
                                client=SERVER)
        self.check_run(header["run"], who=SERVER)  # a bound client serves its own run only
        key = (header["run"], header["round"])
        state = self._rounds.get(key)
        current = state.stage if state is not None else (Stage.DONE if key in self._closed else None)
        try:
            stage = check_transition(current, header["stage"], client=SERVER)
            parse(header, run=key[0], round_id=key[1], stage=stage, fields=REQUEST_FIELDS[stage], client=SERVER)
            if stage == Stage.ADVERTISE:
                state, reply = self._advertise(header, body)
                self._rounds[key] = state
                return reply
            if state is None:  # pragma: no cover - check_transition only lets 'advertise' start a round
                raise ProtocolError(f"no state for round {key}", client=SERVER)
            reply = getattr(self, f"_{stage}")(state, header, body)
            state.stage = stage
            if stage == Stage.UNMASK:
                del self._rounds[key]
            return reply
        except PrivspkError as exc:
            # Any refusal ends this client's part in the round; its round secrets go with the state.
            if self._rounds.pop(key, None) is not None:
                log.warning("client %s leaves round %s/%s: %s", self.client_id, key[0], key[1], exc)
            raise
        finally:
            self._closed.add(key)  # a round id is used once, whatever happens

    def _reply(self, p: RoundParams, stage: str, fields: dict | None = None, body: bytes = b"") -> bytes:
        return message(run=p.run_id, round_id=p.round_id, stage=stage, sender=self.client_id, fields=fields,
                       body=body)

    def _advertise(self, header: dict, body: bytes) -> tuple[_RoundState, bytes]:
        clients = header["clients"]
        if not all(type(c) is str for c in clients) or sorted(set(clients)) != clients:
            raise ProtocolError("field 'clients' must list distinct client ids in ascending order", client=SERVER)
        if self.client_id not in clients:
            raise ProtocolError(f"{self.client_id!r} is not among the round's clients", client=SERVER)
        if body:
            raise ProtocolError(f"an advertise request has no body, got {len(body)} bytes", client=SERVER)
        try:
            p = RoundParams.build(self._config, run_id=header["run"], round_id=header["round"],
                                  clients=tuple(clients), dim=header["dim"])
        except ConfigError as exc:
            raise ProtocolError(f"the announced round cannot be masked: {exc}", client=SERVER) from None
        have = self._updates.get(p.round_id, self._codes.get(p.round_id))
        if have is None:
            raise ProtocolError(f"client {self.client_id} has no update for round {p.round_id}", client=SERVER)
        if have.shape[0] != p.dim:
            raise ProtocolError(f"server asks for dim {p.dim}, the update has {have.shape[0]}", client=SERVER)
        need = self._min_survivors.get(p.round_id) if p.round_id in self._codes else None
        if need is not None and p.threshold < need:
            raise ProtocolError(f"the announced round of {len(clients)} clients can open its sum with {p.threshold} "
                                f"survivors, but this client's distributed-DP noise share was counted on {need} "
                                "(honest noise shares plus colluders): refusing the round, nothing sent",
                                client=SERVER)
        state = _RoundState(params=p, stage=Stage.ADVERTISE, c_key=RoundKeyPair.generate(),
                            s_key=RoundKeyPair.generate(), seed=secrets.token_bytes(SEED_BYTES))
        c_pk, s_pk = state.c_key.public_bytes(), state.s_key.public_bytes()
        commit = p.commitment(self.client_id, state.seed)
        sig = self._identity.sign(advert_message(p.digest, self.client_id, c_pk, s_pk, commit))
        return state, self._reply(p, Stage.ADVERTISE, body=c_pk + s_pk + commit + sig)

    def _share(self, state: _RoundState, header: dict, body: bytes) -> bytes:
        p, me = state.params, self.client_id
        peers = id_list(header, "peers", within=p.graph.neighbours(me), client=SERVER)
        if len(body) != ADVERT_BYTES * len(peers):
            raise ProtocolError(f"expected {len(peers)} adverts of {ADVERT_BYTES} bytes, got {len(body)} bytes",
                                client=SERVER)
        if len(peers) + 1 < p.threshold:
            raise ProtocolError(f"only {len(peers)} neighbours advertised keys; {p.threshold - 1} are needed to "
                                f"hold shares (threshold {p.threshold})", client=SERVER)
        seen = {state.c_key.public_bytes(), state.s_key.public_bytes()}
        for i, v in enumerate(peers):
            rec = body[i * ADVERT_BYTES : (i + 1) * ADVERT_BYTES]
            c_pk, s_pk = rec[:PUBLIC_KEY_BYTES], rec[PUBLIC_KEY_BYTES : 2 * PUBLIC_KEY_BYTES]
            commit, sig = rec[2 * PUBLIC_KEY_BYTES : 3 * PUBLIC_KEY_BYTES], rec[3 * PUBLIC_KEY_BYTES :]
            self._registry.verify(v, sig, advert_message(p.digest, v, c_pk, s_pk, commit))
            if c_pk in seen or s_pk in seen or c_pk == s_pk:
                raise ProtocolError("advertises a key already used in this round", client=v)
            seen.update((c_pk, s_pk))
            state.peers[v] = _Peer(c_pk=c_pk, s_pk=s_pk)
        closed = p.graph.closed(me)
        shares = split_secret(state.seed + state.s_key.secret_bytes(), threshold=p.threshold, n_shares=len(closed))
        state.held[me] = shares[p.graph.share_index(me, me) - 1]
        boxes = []
        for v in peers:
            shared = state.c_key.agree(state.peers[v].c_pk, peer=v)
            boxes.append(seal(shares[p.graph.share_index(me, v) - 1], shared=shared, digest=p.digest, src=me, dst=v))
        return self._reply(p, Stage.SHARE, {"to": list(peers)}, b"".join(boxes))

    def _collect(self, state: _RoundState, header: dict, body: bytes) -> bytes:
        p, me = state.params, self.client_id
        # the masked update can enter a sum of any survivors among the announced clients
        self.check_release(run_id=p.run_id, round_id=p.round_id, context=sum_context(p.clients), opens=False)
        senders = id_list(header, "senders", within=state.peers, client=SERVER)
        if len(senders) + 1 < p.threshold:
            raise ProtocolError(f"only {len(senders)} neighbours shared their secrets; {p.threshold - 1} needed",
                                client=SERVER)
        if len(body) != SEALED_BYTES * len(senders):
            raise ProtocolError(f"expected {len(senders)} sealed shares of {SEALED_BYTES} bytes, got {len(body)} "
                                "bytes", client=SERVER)
        for i, v in enumerate(senders):
            shared = state.c_key.agree(state.peers[v].c_pk, peer=v)
            box = body[i * SEALED_BYTES : (i + 1) * SEALED_BYTES]
            state.held[v] = open_sealed(box, shared=shared, digest=p.digest, src=v, dst=me)
        acc = self._take_words(p)
        masks = [(derive_mask_key(state.seed, salt=p.digest, info=p.self_info(me)), +1)]
        for v in senders:
            shared = state.s_key.agree(state.peers[v].s_pk, peer=v)
            masks.append((derive_mask_key(shared, salt=p.digest, info=p.pair_info(me, v)), p.pair_sign(me, v)))
        MaskStream(dim=p.dim, dtype=p.quantiser.dtype).apply_all(acc, masks)
        # The masks are applied: the keys and seed are no longer needed here.
        state.c_key = state.s_key = None
        state.seed = None
        state.held = {v: s for v, s in state.held.items() if v == me or v in senders}
        state.senders = senders
        return self._reply(p, Stage.COLLECT, body=p.quantiser.words_to_bytes(acc))

    def _take_words(self, p: RoundParams) -> np.ndarray:
        """This round's update as words: given integer codes (bounds-checked) or quantised floats."""
        q = p.quantiser
        if p.round_id in self._codes:
            codes = self._codes.pop(p.round_id)
            limit = (1 << (q.bits - 1 + q.headroom_bits)) - 1
            if codes.shape[0] != p.dim or int(np.abs(codes).max()) > limit:
                raise ConfigError(f"client {self.client_id}: integer codes must be {p.dim} values with |code| <= "
                                  f"{limit} ({q.bits} bits + {q.headroom_bits} headroom bits)")
            return q.wrap(codes)
        return q.encode(self._updates.pop(p.round_id), rng=rng_for_round(self._rng, run_id=p.run_id,
                                                                         round_id=p.round_id))

    def _confirm(self, state: _RoundState, header: dict, body: bytes) -> bytes:
        p, me = state.params, self.client_id
        survivors = id_list(header, "survivors", within=p.clients, client=SERVER)
        shared = id_list(header, "shared", within=p.clients, client=SERVER)
        if me not in survivors:
            raise ProtocolError(f"asked to confirm a survivor set without {me!r}", client=SERVER)
        if body:
            raise ProtocolError(f"a confirm request has no body, got {len(body)} bytes", client=SERVER)
        unshared = sorted(set(survivors) - set(shared))
        if unshared:
            raise ProtocolError(f"survivor(s) {unshared} are not in the set of clients that shared their secrets",
                                client=SERVER)
        # The sender list of collect is bound here: this client signs only a view in which its
        # neighbours that shared are exactly the ones it masked against.
        mine = tuple(v for v in p.graph.neighbours(me) if v in shared)
        if mine != state.senders:
            raise ProtocolError(f"the view says neighbours {list(mine)} shared their secrets, but this client "
                                f"masked against {list(state.senders or ())} at collect: refusing to sign",
                                client=SERVER)
        state.confirmed = (survivors, shared)
        return self._reply(p, Stage.CONFIRM, body=self._identity.sign(confirm_statement(p.digest, header)))

    def _unmask(self, state: _RoundState, header: dict, body: bytes) -> bytes:
        p, me = state.params, self.client_id
        survivors = id_list(header, "survivors", within=p.clients, client=SERVER)
        shared = id_list(header, "shared", within=p.clients, client=SERVER)
        dropped = id_list(header, "dropped", within=p.clients, client=SERVER)
        signers = id_list(header, "signers", within=p.clients, client=SERVER)
        if (survivors, shared) != state.confirmed:
            raise ProtocolError("the survivor set or the set of clients that shared differs from the one this "
                                "client confirmed", client=SERVER)
        both = sorted(set(survivors) & set(dropped))
        if both:
            raise ProtocolError(f"client(s) {both} listed as both survivor and dropped: revealing both shares "
                                "would open their update", client=SERVER)
        nbrs = p.graph.neighbours(me)
        strangers = [v for v in dropped if v not in nbrs]
        if strangers:
            raise ProtocolError(f"asked about client(s) {strangers}, which are not neighbours", client=SERVER)
        unheld = [v for v in dropped if v not in state.held]
        if unheld:
            raise ProtocolError(f"asked about client(s) {unheld}, whose shares this client never received",
                                client=SERVER)
        closed = set(p.graph.closed(me))
        alive = [w for w in survivors if w in closed]
        if len(alive) < p.threshold:
            raise ProtocolError(f"only {len(alive)} of its neighbourhood survived, threshold {p.threshold}: "
                                "refusing to reveal shares", client=SERVER)
        outside = [w for w in signers if w not in closed or w not in survivors]
        if outside:
            raise ProtocolError(f"signatures from {outside}, who are not surviving neighbours", client=SERVER)
        if len(body) != SIGNATURE_BYTES * len(signers):
            raise ProtocolError(f"expected {len(signers)} signatures, got {len(body)} bytes", client=SERVER)
        if len(signers) < p.threshold:
            raise ProtocolError(f"only {len(signers)} neighbours confirmed the survivor set, threshold "
                                f"{p.threshold}: refusing to reveal shares", client=SERVER)
        msg = confirm_statement(p.digest, header)
        for i, w in enumerate(signers):
            self._registry.verify(w, body[i * SIGNATURE_BYTES : (i + 1) * SIGNATURE_BYTES], msg)
        # revealing these shares fixes the sum of this update to the survivors'
        self.check_release(run_id=p.run_id, round_id=p.round_id, context=sum_context(survivors), opens=True)
        b_of = [w for w in survivors if w in state.held]
        out = b"".join(state.held[w][:SEED_BYTES] for w in b_of)
        out += b"".join(state.held[v][SEED_BYTES:] for v in dropped)
        state.held = {}
        return self._reply(p, Stage.UNMASK, {"b_of": b_of, "s_of": list(dropped)}, out)


def sum_context(clients) -> str:
    """What names a masked sum for the release gate: the scheme and the (sorted) client ids in it.

    >>> sum_context(("b", "a"))
    '{"clients":["a","b"],"scheme":"mask"}'
    """
    return json.dumps({"scheme": SCHEME, "clients": sorted(clients)}, sort_keys=True, separators=(",", ":"))

