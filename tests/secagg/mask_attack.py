"""A malicious ``mask`` server with colluding clients, driving real :class:`MaskClient` endpoints.

The attacker runs ``advertise`` and ``share`` through the real server (so every key and
sealed share is genuine), then writes the later requests itself: per-client sender lists
at ``collect``, per-client views at ``confirm``/``unmask``, signed by every colluder for
every view. Colluders are real client objects whose secrets (round keys, self-mask seed,
the shares they hold, identity key) the attacker reads. :meth:`Attack.recover` then tries
to open each honest client's masked vector *on its own*, using only what the attacker
holds, and returns the updates it could open exactly.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

import numpy as np
from secagg_support import setup_round, split_envelope

from privspk.errors import AggregationError, ProtocolError
from privspk.secagg.keys import PUBLIC_KEY_BYTES, RoundKeyPair
from privspk.secagg.mask_protocol import (
    REQUEST_FIELDS,
    SEALED_BYTES,
    SEED_BYTES,
    SERVER,
    Stage,
    confirm_statement,
    message,
)
from privspk.secagg.prg import MaskStream, derive_mask_key
from privspk.secagg.shamir import combine_secret


def view_fields(survivors: Iterable[str], shared: Iterable[str]) -> dict[str, list[str]]:
    """The view a confirm request shows: the survivor set, and the set of clients that shared
    their secrets wherever the protocol has a field for it (the attacker forges every field it can)."""
    fields = {"survivors": sorted(survivors)}
    if "shared" in REQUEST_FIELDS[Stage.CONFIRM]:
        fields["shared"] = sorted(shared)
    return fields


class Attack:
    """One round of ``k`` real clients, ``colluders`` among them, run by a malicious server."""

    def __init__(self, k: int, *, colluders: Iterable[str], options: dict | None = None, seed: int = 0,
                 dim: int = 4) -> None:
        scheme, spec, eps = setup_round("mask", k, dim, options=options, seed=seed)
        self.scheme, self.spec, self.eps = scheme, spec, eps
        self.p = scheme.round_params(spec)
        self.g, self.t = self.p.graph, self.p.threshold
        self.colluders = frozenset(colluders)
        self.honest = tuple(c for c in spec.clients if c not in self.colluders)
        q = self.p.quantiser
        limit = (1 << (q.bits - 1)) - 1
        rng = np.random.default_rng(seed)
        self.codes = {c: rng.integers(-limit, limit, dim, endpoint=True) for c in spec.clients}
        for c in spec.clients:
            eps[c].submit_integers(spec.round_id, self.codes[c])
        self.key = (spec.run_id, spec.round_id)
        self.s_pk: dict[str, bytes] = {}
        self.commit: dict[str, bytes] = {}
        self.sealed: dict[tuple[str, str], bytes] = {}
        self.own: dict[str, tuple[bytes, bytes]] = {}  # colluder -> (self-mask seed, s secret key)
        self.senders: dict[str, tuple[str, ...]] = {}  # what each client was told at collect
        self.y: dict[str, np.ndarray] = {}  # masked vectors received
        self.b: dict[str, dict[int, bytes]] = defaultdict(dict)  # owner -> holder index -> seed share
        self.s: dict[str, dict[int, bytes]] = defaultdict(dict)  # owner -> holder index -> s-key share
        self.sigs: dict[tuple, dict[str, bytes]] = defaultdict(dict)  # view -> signer -> signature
        self.refused: dict[str, tuple[str, str]] = {}  # honest client -> (stage, reason)
        self.revealed: set[str] = set()  # honest clients that answered unmask
        self._setup()

    # -- stages ------------------------------------------------------------------------------

    def _ask(self, c: str, stage: str, request: bytes) -> bytes | None:
        try:
            return self.eps[c].handle(request)
        except ProtocolError as exc:
            self.refused.setdefault(c, (stage, exc.reason))
            return None

    def _setup(self) -> None:
        server = self.scheme.server_round(self.spec)
        for stage in (Stage.ADVERTISE, Stage.SHARE):
            for c, request in server.outbox().items():
                reply = self.eps[c].handle(request)
                server.receive(c, reply)
                header, body = split_envelope(reply)
                if stage == Stage.ADVERTISE:
                    self.s_pk[c] = body[PUBLIC_KEY_BYTES : 2 * PUBLIC_KEY_BYTES]
                    self.commit[c] = body[2 * PUBLIC_KEY_BYTES : 3 * PUBLIC_KEY_BYTES]
                else:
                    for i, v in enumerate(header["to"]):
                        self.sealed[(c, v)] = body[i * SEALED_BYTES : (i + 1) * SEALED_BYTES]
            server.advance()
        for c in self.colluders:  # read before collect, where the client erases them
            state = self.eps[c]._rounds[self.key]
            self.own[c] = (state.seed, state.s_key.secret_bytes())

    def collect(self, senders_of: Mapping[str, Iterable[str]] | None = None) -> None:
        """Ask every client for its masked vector; ``senders_of`` overrides whose shares it is told about."""
        for c in self.spec.clients:
            senders = tuple(sorted((senders_of or {}).get(c, self.g.neighbours(c))))
            self.senders[c] = senders
            request = message(run=self.spec.run_id, round_id=self.spec.round_id, stage=Stage.COLLECT,
                              sender=SERVER, fields={"senders": list(senders)},
                              body=b"".join(self.sealed[(v, c)] for v in senders))
            reply = self._ask(c, Stage.COLLECT, request)
            if reply is None:
                continue
            self.y[c] = self.p.quantiser.words_from_bytes(split_envelope(reply)[1], dim=self.spec.dim)
            if c in self.colluders:
                for owner, share in self.eps[c]._rounds[self.key].held.items():
                    idx = self.g.share_index(owner, c)
                    self.b[owner][idx], self.s[owner][idx] = share[:SEED_BYTES], share[SEED_BYTES:]

    def confirm(self, views: Mapping[str, tuple[Iterable[str], Iterable[str]]]) -> None:
        """Show each honest client in ``views`` its (survivors, shared) view; colluders sign every view."""
        for c, (survivors, shared) in views.items():
            fields = view_fields(survivors, shared)
            view = _key(fields)
            if c in self.colluders:
                continue
            request = message(run=self.spec.run_id, round_id=self.spec.round_id, stage=Stage.CONFIRM,
                              sender=SERVER, fields=fields)
            reply = self._ask(c, Stage.CONFIRM, request)
            if reply is not None:
                self.sigs[view][c] = split_envelope(reply)[1]
        for fields in {_key(view_fields(*v)): view_fields(*v) for v in views.values()}.values():
            for w in self.colluders:
                self.sigs[_key(fields)][w] = self.eps[w]._identity.sign(confirm_statement(self.p.digest, fields))

    def unmask(self, views: Mapping[str, tuple[Iterable[str], Iterable[str]]]) -> None:
        """Ask each honest client for shares under its view: seeds of survivors, s keys of every
        client it holds a share of that its view calls dropped; with every signature of that view."""
        for c, (survivors, shared) in views.items():
            if c in self.colluders or c in self.refused:
                continue
            fields = view_fields(survivors, shared)
            sigs = self.sigs[_key(fields)]
            signers = sorted(w for w in sigs if w in self.g.closed(c) and w in fields["survivors"])
            dropped = sorted(v for v in self.senders[c] if v not in fields["survivors"])
            request = message(run=self.spec.run_id, round_id=self.spec.round_id, stage=Stage.UNMASK,
                              sender=SERVER, fields={**fields, "dropped": dropped, "signers": signers},
                              body=b"".join(sigs[w] for w in signers))
            reply = self._ask(c, Stage.UNMASK, request)
            if reply is None:
                continue
            self.revealed.add(c)
            header, body = split_envelope(reply)
            for i, w in enumerate(header["b_of"]):
                self.b[w][self.g.share_index(w, c)] = body[i * SEED_BYTES : (i + 1) * SEED_BYTES]
            off = SEED_BYTES * len(header["b_of"])
            for i, v in enumerate(header["s_of"]):
                self.s[v][self.g.share_index(v, c)] = body[off + i * 32 : off + (i + 1) * 32]

    # -- what the attacker can open -------------------------------------------------------------

    def seed_of(self, w: str) -> bytes | None:
        """``w``'s self-mask seed, if the attacker holds it or ``t`` shares of it (checked against the commitment)."""
        if w in self.own:
            return self.own[w][0]
        try:
            seed = combine_secret(self.b[w], threshold=self.t)
        except AggregationError:
            return None
        return seed if self.p.commitment(w, seed) == self.commit[w] else None

    def s_key_of(self, v: str) -> RoundKeyPair | None:
        """``v``'s mask key pair, if the attacker holds it or ``t`` shares of it (checked against its advert)."""
        if v in self.own:
            return RoundKeyPair.from_secret(self.own[v][1])
        try:
            key = RoundKeyPair.from_secret(combine_secret(self.s[v], threshold=self.t))
        except AggregationError:
            return None
        return key if key.public_bytes() == self.s_pk[v] else None

    def open_one(self, w: str, *, seed: bytes | None = None, s_keys: Mapping[str, RoundKeyPair] | None = None
                 ) -> np.ndarray | None:
        """Unmask ``w``'s vector alone: its self mask and each pair mask it added (None if a key is missing)."""
        s_keys = dict(s_keys or {})
        seed = seed if seed is not None else self.seed_of(w)
        if seed is None or w not in self.y:
            return None
        p = self.p
        masks = [(derive_mask_key(seed, salt=p.digest, info=p.self_info(w)), -1)]
        mine = s_keys.get(w) or self.s_key_of(w)
        for v in self.senders[w]:
            theirs = s_keys.get(v) or self.s_key_of(v)
            if theirs is not None:
                shared = theirs.agree(self.s_pk[w], peer=w)
            elif mine is not None:
                shared = mine.agree(self.s_pk[v], peer=v)
            else:
                return None
            masks.append((derive_mask_key(shared, salt=p.digest, info=p.pair_info(w, v)), -p.pair_sign(w, v)))
        acc = self.y[w].copy()
        MaskStream(dim=self.spec.dim, dtype=p.quantiser.dtype).apply_all(acc, masks)
        return acc

    def recover(self) -> dict[str, list[int]]:
        """Honest updates the attacker opened individually and exactly (integer codes)."""
        out = {}
        for w in self.honest:
            words = self.open_one(w)
            if words is not None and np.array_equal(words, self.p.quantiser.wrap(self.codes[w])):
                out[w] = self.codes[w].tolist()
        return out


def _key(fields: Mapping[str, list[str]]) -> tuple:
    return tuple(sorted((k, tuple(v)) for k, v in fields.items()))
