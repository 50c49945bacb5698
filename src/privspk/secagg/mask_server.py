"""The server side of the ``mask`` scheme: relay keys and shares, add masked vectors, open the sum.

The server holds only what it receives: signed public keys, sealed shares it
cannot open, the running sum of masked vectors, signatures, and in the last
stage the shares it needs -- self-mask seed shares of survivors and ``s``-key
shares of dropped clients, never both kinds for one client. It checks every
reply (envelope, stage, exact fields, sizes, signatures) before using it; a bad
reply raises :class:`~privspk.errors.ProtocolError` naming the client, which then
counts as dropped. Secrets are rebuilt from exactly ``t`` shares, and only once
every needed secret has ``t`` shares: below that the round fails with
:class:`~privspk.errors.AggregationError` and nothing is opened.

>>> import numpy as np
>>> from privspk.secagg import build_scheme, RoundSpec
>>> from privspk.secagg.simulate import run_round
>>> s = build_scheme("mask", {"bits": 12})
>>> spec = RoundSpec(run_id="doc", round_id=0, clients=("a", "b", "c", "d"), dim=3)
>>> eps = {c: s.client(c) for c in spec.clients}
>>> for c in spec.clients:
...     eps[c].submit(0, np.full(3, 0.25))
>>> res = run_round(s, spec, eps, silent={"d": "confirm"})
>>> bool(np.abs(res.total - 1.0).max() < 4 / 2047), res.included
(True, ('a', 'b', 'c', 'd'))
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np

from privspk.errors import AggregationError, ProtocolError
from privspk.secagg.base import AggregateResult, RoundSpec, ServerRound
from privspk.secagg.keys import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, KeyRegistry, RoundKeyPair, advert_message
from privspk.secagg.mask_protocol import (
    ADVERT_BYTES,
    REPLY_FIELDS,
    SEALED_BYTES,
    SEED_BYTES,
    SERVER,
    SKEY_BYTES,
    MaskConfig,
    RoundParams,
    Stage,
    confirm_statement,
    id_list,
    message,
    parse,
)
from privspk.secagg.prg import MaskStream, derive_mask_key
from privspk.secagg.shamir import combine_secret
from privspk.secagg.wire import unpack

log = logging.getLogger(__name__)

_PROBE = RoundKeyPair.generate()  # only to reject degenerate X25519 keys at the door


class MaskServerRound(ServerRound):
    """The server state machine of one masked round (create it with ``MaskScheme.server_round``).

    >>> from privspk.secagg.mask import MaskScheme
    >>> srv = MaskScheme(MaskConfig()).server_round(RoundSpec(run_id="r", round_id=0, clients=("a", "b", "c"), dim=8))
    >>> srv.stage, sorted(srv.outbox())
    ('advertise', ['a', 'b', 'c'])
    >>> srv.receive("a", b"junk")
    Traceback (most recent call last):
    ...
    privspk.errors.ProtocolError: client a: message shorter than its 9-byte prefix (4 bytes)
    """

    def __init__(self, spec: RoundSpec, config: MaskConfig, registry: KeyRegistry) -> None:
        self.spec = spec
        self.params = RoundParams.build(config, run_id=spec.run_id, round_id=spec.round_id, clients=spec.clients,
                                        dim=spec.dim)
        self._registry = registry
        self._stage = Stage.ADVERTISE
        self._asked: frozenset[str] = frozenset(spec.clients)
        self._replied: set[str] = set()
        self._gone: dict[str, str] = {}  # client -> why it left before its update was summed
        self._late: dict[str, str] = {}  # survivor -> why it stopped answering after its update was summed
        self._adverts: dict[str, bytes] = {}
        self._sealed: dict[tuple[str, str], bytes] = {}
        self._u1: frozenset[str] = frozenset()
        self._u2: frozenset[str] = frozenset()
        self._survivors: frozenset[str] = frozenset()
        self._dropped_needed: frozenset[str] = frozenset()
        self._sum: np.ndarray | None = None
        self._confirm_sigs: dict[str, bytes] = {}
        self._b_shares: dict[str, dict[int, bytes]] = {}
        self._s_shares: dict[str, dict[int, bytes]] = {}
        self._result: AggregateResult | None = None

    # -- ServerRound interface ----------------------------------------------------------------

    @property
    def stage(self) -> str:
        """Current stage (see :class:`~privspk.secagg.mask_protocol.Stage`)."""
        return self._stage

    def outbox(self) -> dict[str, bytes]:
        """The current stage's request to each client still in the round."""
        if self._stage == Stage.DONE:
            return {}
        return {c: self._request(c) for c in sorted(self._asked)}

    def receive(self, sender: str, payload: bytes) -> None:
        """Check and take one reply; a bad one raises ProtocolError naming ``sender`` (then dropped)."""
        try:
            if sender not in self.spec.clients:
                raise ProtocolError("not a participant of this round", client=sender)
            if self._stage == Stage.DONE:
                raise ProtocolError("message after the round closed", client=sender)
            if sender in self._replied:
                raise ProtocolError(f"second message at stage {self._stage!r} (duplicate or replay)", client=sender)
            if sender not in self._asked:
                raise ProtocolError(f"not asked at stage {self._stage!r} (it left the round earlier)", client=sender)
            header, body = unpack(payload, client=sender)
            parse(header, run=self.spec.run_id, round_id=self.spec.round_id, stage=self._stage,
                  fields=REPLY_FIELDS[self._stage], client=sender)
            getattr(self, f"_take_{self._stage}")(sender, header, body)
        except ProtocolError as exc:
            if exc.client != sender:
                exc = ProtocolError(exc.reason, client=sender)
            if sender in self._asked and sender not in self._replied:
                self._note_gone(sender, f"rejected at stage {self._stage}: {exc.reason}")
            raise exc from None
        self._replied.add(sender)

    def advance(self) -> bool:
        """Close the current stage; AggregationError when too few clients remain (nothing is opened)."""
        stage = self._stage
        if stage == Stage.DONE:
            return False
        for c in self._asked - self._replied:
            self._note_gone(c, f"no reply at stage {stage}")
        replied = frozenset(self._replied)
        if stage == Stage.ADVERTISE:
            self._u1 = self._prune(replied, stage)
            self._next(Stage.SHARE, self._u1)
        elif stage == Stage.SHARE:
            self._u2 = self._prune(replied, stage)
            self._sum = np.zeros(self.spec.dim, dtype=self.params.quantiser.dtype)
            self._next(Stage.COLLECT, self._u2)
        elif stage == Stage.COLLECT:
            self._survivors = replied
            if not replied:
                raise AggregationError("no client sent its masked update; nothing to open")
            g = self.params.graph
            self._dropped_needed = frozenset(v for v in self._u2 - replied if set(g.neighbours(v)) & replied)
            self._check_recoverable(replied, stage)
            self._next(Stage.CONFIRM, replied)
        elif stage == Stage.CONFIRM:
            t, g = self.params.threshold, self.params.graph
            # A survivor reveals shares only after t of its neighbours signed the set; ask only those who will.
            able = frozenset(u for u in replied if len(set(g.closed(u)) & replied) >= t)
            for u in replied - able:
                self._late[u] = f"fewer than {t} neighbours confirmed the survivor set"
            self._check_recoverable(able, stage)
            self._next(Stage.UNMASK, able)
        elif stage == Stage.UNMASK:
            self._open()
            self._next(Stage.DONE, frozenset())
            return False
        return True

    def result(self) -> AggregateResult:
        """The opened sum (after :meth:`advance` returned ``False``)."""
        if self._result is None:
            raise AggregationError(f"round not finished (stage {self._stage}); nothing was opened")
        return self._result

    # -- requests -----------------------------------------------------------------------------

    def _request(self, c: str) -> bytes:
        g = self.params.graph
        fields: dict[str, object]
        body = b""
        if self._stage == Stage.ADVERTISE:
            fields = {"clients": list(self.spec.clients), "dim": self.spec.dim}
        elif self._stage == Stage.SHARE:
            peers = sorted(set(g.neighbours(c)) & self._u1)
            fields, body = {"peers": peers}, b"".join(self._adverts[v] for v in peers)
        elif self._stage == Stage.COLLECT:
            senders = sorted(set(g.neighbours(c)) & self._u2)
            fields, body = {"senders": senders}, b"".join(self._sealed[(v, c)] for v in senders)
        elif self._stage == Stage.CONFIRM:
            fields = self._view()
        else:
            signers = sorted(set(g.closed(c)) & set(self._confirm_sigs))
            fields = {**self._view(), "dropped": self._dropped_of(c), "signers": signers}
            body = b"".join(self._confirm_sigs[w] for w in signers)
        return message(run=self.spec.run_id, round_id=self.spec.round_id, stage=self._stage, sender=SERVER,
                       fields=fields, body=body)

    def _view(self) -> dict[str, list[str]]:
        """The round's view that clients confirm (and see again at unmask)."""
        key = (self._survivors, self._u2)
        if getattr(self, "_view_memo", (None,))[0] != key:  # sorted once per stage, not once per client
            view = {"survivors": sorted(self._survivors), "shared": sorted(self._u2)}
            self._view_memo = (key, view, confirm_statement(self.params.digest, view))
        return {k: list(v) for k, v in self._view_memo[1].items()}

    def _view_statement(self) -> bytes:
        """The bytes each confirmation signs (for the current view)."""
        self._view()
        return self._view_memo[2]

    def _dropped_of(self, c: str) -> list[str]:
        return sorted(set(self.params.graph.neighbours(c)) & self._dropped_needed)

    def _b_of(self, c: str) -> list[str]:
        return sorted(set(self.params.graph.closed(c)) & self._survivors)

    # -- replies ------------------------------------------------------------------------------

    def _take_advertise(self, sender: str, header: dict, body: bytes) -> None:
        if len(body) != ADVERT_BYTES:
            raise ProtocolError(f"an advert is {ADVERT_BYTES} bytes, got {len(body)}", client=sender)
        c_pk, s_pk = body[:PUBLIC_KEY_BYTES], body[PUBLIC_KEY_BYTES : 2 * PUBLIC_KEY_BYTES]
        commit, sig = body[2 * PUBLIC_KEY_BYTES : 3 * PUBLIC_KEY_BYTES], body[3 * PUBLIC_KEY_BYTES :]
        self._registry.verify(sender, sig, advert_message(self.params.digest, sender, c_pk, s_pk, commit))
        used = {k for adv in self._adverts.values() for k in (adv[:PUBLIC_KEY_BYTES],
                                                             adv[PUBLIC_KEY_BYTES : 2 * PUBLIC_KEY_BYTES])}
        if c_pk == s_pk or c_pk in used or s_pk in used:
            raise ProtocolError("advertises a round key already used in this round", client=sender)
        _PROBE.agree(c_pk, peer=sender)
        _PROBE.agree(s_pk, peer=sender)
        self._adverts[sender] = bytes(body)

    def _take_share(self, sender: str, header: dict, body: bytes) -> None:
        want = sorted(set(self.params.graph.neighbours(sender)) & self._u1)
        to = id_list(header, "to", within=self.spec.clients, client=sender)
        if list(to) != want:
            raise ProtocolError(f"sealed shares are addressed to {list(to)}, expected {want}", client=sender)
        if len(body) != SEALED_BYTES * len(to):
            raise ProtocolError(f"expected {len(to)} sealed shares of {SEALED_BYTES} bytes, got {len(body)} bytes",
                                client=sender)
        for i, v in enumerate(to):
            self._sealed[(sender, v)] = body[i * SEALED_BYTES : (i + 1) * SEALED_BYTES]

    def _take_collect(self, sender: str, header: dict, body: bytes) -> None:
        q = self.params.quantiser
        want = self.spec.dim * q.bytes_per_value
        if len(body) != want:
            raise ProtocolError(f"expected {self.spec.dim} x {q.bytes_per_value}-byte words ({want} bytes), got "
                                f"{len(body)} bytes", client=sender)
        words = np.frombuffer(body, dtype=np.dtype(q.dtype).newbyteorder("<"))
        np.add(self._sum, words, out=self._sum, casting="unsafe")

    def _take_confirm(self, sender: str, header: dict, body: bytes) -> None:
        if len(body) != SIGNATURE_BYTES:
            raise ProtocolError(f"a confirmation is one {SIGNATURE_BYTES}-byte signature, got {len(body)} bytes",
                                client=sender)
        self._registry.verify(sender, body, self._view_statement())
        self._confirm_sigs[sender] = bytes(body)

    def _take_unmask(self, sender: str, header: dict, body: bytes) -> None:
        b_of = list(id_list(header, "b_of", within=self.spec.clients, client=sender))
        s_of = list(id_list(header, "s_of", within=self.spec.clients, client=sender))
        if b_of != self._b_of(sender) or s_of != self._dropped_of(sender):
            raise ProtocolError(f"revealed shares of b_of={b_of}, s_of={s_of}; expected b_of={self._b_of(sender)}, "
                                f"s_of={self._dropped_of(sender)}", client=sender)
        want = SEED_BYTES * len(b_of) + SKEY_BYTES * len(s_of)
        if len(body) != want:
            raise ProtocolError(f"expected {want} bytes of shares, got {len(body)}", client=sender)
        g = self.params.graph
        for i, w in enumerate(b_of):
            self._b_shares.setdefault(w, {})[g.share_index(w, sender)] = body[i * SEED_BYTES : (i + 1) * SEED_BYTES]
        off = SEED_BYTES * len(b_of)
        for i, v in enumerate(s_of):
            chunk = body[off + i * SKEY_BYTES : off + (i + 1) * SKEY_BYTES]
            self._s_shares.setdefault(v, {})[g.share_index(v, sender)] = chunk

    # -- stage bookkeeping --------------------------------------------------------------------

    def _note_gone(self, c: str, reason: str) -> None:
        if c in self._survivors:
            self._late.setdefault(c, reason)
        else:
            self._gone.setdefault(c, reason)

    def _next(self, stage: str, asked: frozenset[str]) -> None:
        self._stage = stage
        self._asked = asked
        self._replied = set()

    def _prune(self, present: frozenset[str], stage: str) -> frozenset[str]:
        """Drop, until none is left, clients with fewer than t of their neighbourhood present."""
        t, g = self.params.threshold, self.params.graph
        keep = set(present)
        changed = True
        while changed:
            changed = False
            for c in sorted(keep):
                have = len(set(g.closed(c)) & keep)
                if have < t:
                    keep.discard(c)
                    self._gone.setdefault(c, f"only {have} of its neighbourhood took part at stage {stage} "
                                             f"(threshold {t})")
                    changed = True
        if not keep:
            raise AggregationError(f"after stage {stage} no client has {t} of its neighbourhood left "
                                   f"({len(present)} of {len(self.spec.clients)} clients answered); nothing opened")
        return frozenset(keep)

    def _check_recoverable(self, holders: Iterable[str], stage: str) -> None:
        """Raise unless every needed secret has at least t holders among ``holders``."""
        t, g = self.params.threshold, self.params.graph
        holders = set(holders)
        short = [f"seed of {w} ({len(set(g.closed(w)) & holders)} holders)" for w in sorted(self._survivors)
                 if len(set(g.closed(w)) & holders) < t]
        short += [f"s key of {v} ({len(set(g.closed(v)) & holders)} holders)" for v in sorted(self._dropped_needed)
                  if len(set(g.closed(v)) & holders) < t]
        if short:
            raise AggregationError(f"after stage {stage} too few clients remain to unmask the sum (threshold {t}): "
                                   f"{', '.join(short)}; nothing opened")

    # -- opening ------------------------------------------------------------------------------

    def _open(self) -> None:
        p = self.params
        t = p.threshold
        short = [f"seed of {w}: {len(self._b_shares.get(w, {}))} shares" for w in sorted(self._survivors)
                 if len(self._b_shares.get(w, {})) < t]
        short += [f"s key of {v}: {len(self._s_shares.get(v, {}))} shares" for v in sorted(self._dropped_needed)
                  if len(self._s_shares.get(v, {})) < t]
        if short:
            raise AggregationError(f"too few unmask replies (threshold {t}): {', '.join(short)}; nothing opened")
        masks = []  # every mask still in the sum, with the sign that removes it
        for w in sorted(self._survivors):
            seed = combine_secret(self._b_shares[w], threshold=t, what=f"seed of {w}")
            if p.commitment(w, seed) != self._adverts[w][2 * PUBLIC_KEY_BYTES : 3 * PUBLIC_KEY_BYTES]:
                raise AggregationError(f"the rebuilt self-mask seed of {w} does not match its commitment "
                                       "(a share was corrupted); nothing opened")
            masks.append((derive_mask_key(seed, salt=p.digest, info=p.self_info(w)), -1))
        g = p.graph
        for v in sorted(self._dropped_needed):
            key = RoundKeyPair.from_secret(combine_secret(self._s_shares[v], threshold=t, what=f"s key of {v}"))
            if key.public_bytes() != self._adverts[v][PUBLIC_KEY_BYTES : 2 * PUBLIC_KEY_BYTES]:
                raise AggregationError(f"the rebuilt mask key of dropped client {v} does not match its advertised "
                                       "key (a share was corrupted); nothing opened")
            for w in sorted(set(g.neighbours(v)) & self._survivors):
                shared = key.agree(self._adverts[w][PUBLIC_KEY_BYTES : 2 * PUBLIC_KEY_BYTES], peer=w)
                masks.append((derive_mask_key(shared, salt=p.digest, info=p.pair_info(w, v)), -p.pair_sign(w, v)))
        acc = self._sum
        MaskStream(dim=self.spec.dim, dtype=p.quantiser.dtype).apply_all(acc, masks)
        try:
            total = p.quantiser.decode_sum(acc, n_summands=len(self._survivors))
        except ProtocolError as exc:
            raise AggregationError(f"unmasked sum is out of range: {exc}") from None
        self._sum = None
        for c, why in sorted(self._late.items()):
            log.info("survivor %s stopped answering after its update was summed: %s", c, why)
        dropped = {c: self._gone.get(c, "left the round") for c in self.spec.clients if c not in self._survivors}
        self._result = AggregateResult(total=total, included=tuple(sorted(self._survivors)), dropped=dropped,
                                       stages=Stage.ORDER[:-1])
