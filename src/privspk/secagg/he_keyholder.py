"""The key holder of an HE round: the only party with the secret key; it opens one verified sum per round.

See :mod:`privspk.secagg.he_scheme` for the protocol, and why a sum is opened only after a
challenge about it is answered.

>>> from privspk.secagg import build_scheme
>>> kh = build_scheme("bfv", {"he_trust": "no-client-colludes-with-server"}).keyholder()
>>> isinstance(kh, KeyHolder), len(kh.public_context_bytes()) > 0
(True, True)
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from privspk.errors import ConfigError, ProtocolError
from privspk.secagg.base import KEYHOLDER, ClientEndpoint
from privspk.secagg.he_common import (
    SERVER,
    HeCodec,
    Stage,
    sha256_hex,
    identity_or_fresh,
    pledge_digest,
    public_context_bytes,
    sign_statement,
    sketch_rows,
    sum_rows,
    verify_statement,
)
from privspk.secagg.he_wire import SealFrame
from privspk.secagg.keys import IdentityKey, KeyRegistry
from privspk.secagg.wire import check_fields, pack, unpack

log = logging.getLogger(__name__)


@dataclass
class _Opening:
    """What the key holder remembers about one round between commit and open."""

    contributors: tuple[str, ...]
    digests: dict[str, str]
    words: np.ndarray | None
    challenge: bytes
    dim: int
    n_chunks: int
    context: Any = None
    frame: SealFrame | None = None
    fingerprint: str = ""
    opened: bool = False


class KeyHolder(ClientEndpoint):
    """The only holder of the secret key; decrypts one verified sum per round.

    A fresh key pair is made for every round (at its ``setup``): a key that leaks opens
    the ciphertexts of one round only. The key made at construction serves the first
    round set up.

    Args:
        codec: the scheme's codec (parameters, encoding).
        registry: the clients' identity keys (the PKI stand-in; the key holder only reads it).
        min_clients: fewest contributions a sum must hold to be opened.
        max_clients: most contributions a sum may hold (the modulus is sized for it).
        identity: its long-term Ed25519 signing key (a deployed key holder's, kept on its node);
            a fresh one when omitted.

    >>> from privspk.secagg import build_scheme
    >>> kh = build_scheme("bfv", {"he_trust": "no-client-colludes-with-server"}).keyholder()
    >>> kh.client_id, len(kh.verify_key)
    ('keyholder', 32)
    """

    client_id = KEYHOLDER

    def __init__(self, codec: HeCodec, *, registry: KeyRegistry, min_clients: int, max_clients: int,
                 identity: IdentityKey | None = None) -> None:
        self._codec = codec
        self._new_key()
        self._identity = identity_or_fresh(identity)
        self.verify_key = self._identity.public_bytes()
        self._registry = registry
        self._min = min_clients
        self._max = max_clients
        self._rounds: dict[tuple[str, int], _Opening] = {}
        self._keyed: tuple[str, int] | None = None  # the round the current key was handed out for
        self._frozen: dict[tuple[str, int], str] = {}  # round -> digest of its one frozen pledge list

    def _new_key(self) -> None:
        try:
            self._context = self._codec.make_context()
        except (ValueError, RuntimeError, TypeError) as exc:
            raise ConfigError(f"TenSEAL refused the {self._codec.kind} parameters: {exc}") from None
        self._public = public_context_bytes(self._context)
        self.fingerprint = sha256_hex(self._public)
        self._frame = self._codec.frame(self._context)

    def public_context_bytes(self) -> bytes:
        """The context as the server and clients get it: public key only (checked)."""
        return self._public

    def submit(self, round_id: int, update: np.ndarray) -> None:
        """The key holder contributes nothing; always refuses."""
        raise ProtocolError("the key holder takes no update")

    def handle(self, request: bytes) -> bytes | None:
        """Answer the server's ``setup``, ``commit`` or ``open`` request; refuse anything else."""
        header, body = unpack(request, client=SERVER)
        if header["scheme"] != self._codec.kind:
            raise ProtocolError(f"request is for scheme {header['scheme']!r}, this key holder serves "
                                f"{self._codec.kind!r}", client=SERVER)
        stage = header["stage"]
        if stage == Stage.SETUP:
            return self._setup(header)
        if stage == Stage.FREEZE:
            return self._freeze(header, body)
        if stage == Stage.COMMIT:
            return self._commit(header, body)
        if stage == Stage.OPEN:
            return self._open(header, body)
        raise ProtocolError(f"the key holder does not answer stage {stage!r}", client=SERVER)

    def _reply(self, header: Mapping[str, Any], extra: Mapping[str, Any], body: bytes = b"") -> bytes:
        return pack({"scheme": self._codec.kind, "run": header["run"], "round": header["round"],
                     "stage": header["stage"], "sender": KEYHOLDER, **extra}, body)

    def _setup(self, header: Mapping[str, Any]) -> bytes:
        key = (header["run"], header["round"])
        if key in self._rounds:
            raise ProtocolError(f"round {key[1]} of run {key[0]!r} was already committed; it gets no new key",
                                client=SERVER)
        if self._keyed is not None and self._keyed != key:
            self._new_key()  # a fresh key per round: the previous round's key is dropped here
        self._keyed = key
        sig = sign_statement(self._identity, "context", header["run"], header["round"], self.fingerprint)
        return self._reply(header, {"fingerprint": self.fingerprint, "context_signature": sig}, self._public)

    def _freeze(self, header: Mapping[str, Any], body: bytes) -> bytes:
        """Sign the round's pledge list, once: clients reveal only against this list."""
        check_fields(header, {"pledges": dict, "dim": int, "n_chunks": int, "fingerprint": str}, client=SERVER)
        run, rnd = header["run"], header["round"]
        key = (run, rnd)
        if body:
            raise ProtocolError("a freeze request carries no body", client=SERVER)
        if key in self._frozen:
            raise ProtocolError(f"the pledge list of round {rnd} of run {run!r} is already frozen; one list per round",
                                client=SERVER)
        if self._keyed != key or header["fingerprint"] != self.fingerprint:
            raise ProtocolError(f"round {rnd} of run {run!r} is not the round set up under this key", client=SERVER)
        pledges, dim, n_chunks = header["pledges"], header["dim"], header["n_chunks"]
        if dim < 1 or n_chunks != self._codec.n_chunks(dim):
            raise ProtocolError(f"{n_chunks} chunks do not fit an update of dim {dim}", client=SERVER)
        if not self._min <= len(pledges) <= self._max:
            raise ProtocolError(f"{len(pledges)} pledges; a round needs {self._min} to {self._max}", client=SERVER)
        self._check_pledge_signatures(pledges, run, rnd, dim, n_chunks)
        listed = pledge_digest(pledges)
        self._frozen[key] = listed
        sig = sign_statement(self._identity, "frozen", run, rnd, self.fingerprint, listed)
        return self._reply(header, {"freeze_signature": sig})

    def _check_pledge_signatures(self, pledges: Mapping[str, Any], run: str, rnd: int, dim: int,
                                 n_chunks: int) -> None:
        for c, entry in pledges.items():
            if c not in self._registry:
                raise ProtocolError(f"pledge of {c!r}, not a registered client", client=SERVER)
            if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(v, str) for v in entry)):
                raise ProtocolError(f"pledge of {c} must be [digest, signature]", client=SERVER)
            verify_statement(self._registry, c, entry[1], "collect", run, rnd, c, self.fingerprint, dim, n_chunks,
                             entry[0], what=f"the pledge of {c}", client=SERVER)

    def _commit(self, header: Mapping[str, Any], body: bytes) -> bytes:
        check_fields(header, {"contributors": list, "digests": dict, "signatures": dict, "n_chunks": int,
                              "dim": int, "fingerprint": str, "pledges": dict, "reveals": dict}, client=SERVER)
        run, rnd = header["run"], header["round"]
        key = (run, rnd)
        if key in self._rounds:
            raise ProtocolError(f"round {rnd} of run {run!r} was already committed; one sum is opened per round",
                                client=SERVER)
        if self._keyed != key:
            raise ProtocolError(f"round {rnd} of run {run!r} was not set up (or another round was set up since); "
                                "its key is gone", client=SERVER)
        if header["fingerprint"] != self.fingerprint:
            raise ProtocolError("the sum is announced under another context", client=SERVER)
        who = self._check_contributors(header)
        dim, n_chunks, digests = header["dim"], header["n_chunks"], header["digests"]
        self._check_pledges(header, who, run, rnd, dim, n_chunks)
        words = self._codec.layout.unpack(body, n_chunks=n_chunks, client=SERVER)
        challenge = secrets.token_bytes(32)
        for stale in self._rounds.values():  # one round is open at a time: older commits can no longer open
            stale.words, stale.opened, stale.context = None, True, None
        self._rounds[key] = _Opening(tuple(who), dict(digests), words, challenge, dim, n_chunks,
                                     context=self._context, frame=self._frame, fingerprint=self.fingerprint)
        return self._reply(header, {"challenge": challenge.hex(), "sum_digest": sha256_hex(body)})

    def _check_contributors(self, header: Mapping[str, Any]) -> list[str]:
        """The contributors of a committed sum: distinct, registered, between ``min_clients`` and
        ``max_clients``, each with its signed ciphertext digest."""
        run, rnd = header["run"], header["round"]
        who = header["contributors"]
        if not all(isinstance(c, str) for c in who) or len(set(who)) != len(who):
            raise ProtocolError("contributors must be distinct client ids", client=SERVER)
        if len(who) < self._min:
            raise ProtocolError(f"the sum holds {len(who)} contributions; the key holder opens only sums of at "
                                f"least min_clients = {self._min}", client=SERVER)
        if len(who) > self._max:
            raise ProtocolError(f"the sum holds {len(who)} contributions, more than max_clients = {self._max} "
                                "that the modulus is sized for", client=SERVER)
        unknown = sorted(c for c in who if c not in self._registry)
        if unknown:
            raise ProtocolError(f"contributors {unknown} are not registered clients", client=SERVER)
        digests, sigs = header["digests"], header["signatures"]
        if set(digests) != set(who) or set(sigs) != set(who):
            raise ProtocolError("digests and signatures must cover exactly the contributors", client=SERVER)
        dim, n_chunks = header["dim"], header["n_chunks"]
        if dim < 1 or n_chunks != self._codec.n_chunks(dim):
            raise ProtocolError(f"{n_chunks} chunks do not fit an update of dim {dim}", client=SERVER)
        for c in who:
            if not isinstance(digests[c], str) or not isinstance(sigs[c], str):
                raise ProtocolError(f"digest and signature of {c} must be strings", client=SERVER)
            verify_statement(self._registry, c, sigs[c], "collect", run, rnd, c, self.fingerprint, dim, n_chunks,
                             digests[c], what=f"the ciphertext digest of {c}", client=SERVER)
        return who

    def _check_pledges(self, header: Mapping[str, Any], who: list[str], run: str, rnd: int, dim: int,
                       n_chunks: int) -> None:
        """Commit-before-reveal: every contributor pledged its digest in the one list this key holder
        froze for the round, and revealed against that list (so no pledged ciphertext was chosen
        after any ciphertext of the round had been shown)."""
        pledges, reveals = header["pledges"], header["reveals"]
        if set(reveals) != set(who):
            raise ProtocolError("reveal signatures must cover exactly the contributors", client=SERVER)
        self._check_pledge_signatures(pledges, run, rnd, dim, n_chunks)
        listed = pledge_digest(pledges)
        if self._frozen.get((run, rnd)) != listed:
            raise ProtocolError("the pledges are not the list this key holder froze for the round", client=SERVER)
        for c in who:
            if c not in pledges or pledges[c][0] != header["digests"][c]:
                raise ProtocolError(f"{c} contributes a ciphertext it did not pledge before the reveal",
                                    client=SERVER)
            if not isinstance(reveals[c], str):
                raise ProtocolError(f"reveal signature of {c} must be a string", client=SERVER)
            verify_statement(self._registry, c, reveals[c], "reveal", run, rnd, c, self.fingerprint, listed,
                             what=f"the reveal of {c} (it revealed after seeing another pledge list)", client=SERVER)

    def _open(self, header: Mapping[str, Any], body: bytes) -> bytes:
        check_fields(header, {"sketches": dict, "sketch_signatures": dict, "forwarded": list}, client=SERVER)
        run, rnd = header["run"], header["round"]
        state = self._rounds.get((run, rnd))
        if state is None:
            raise ProtocolError(f"round {rnd} of run {run!r} has no committed sum", client=SERVER)
        if state.opened or state.words is None:
            raise ProtocolError(f"round {rnd} of run {run!r} was already opened (or refused); "
                                "one decryption per round", client=SERVER)
        state.opened = True  # whatever happens next, this round's sum is never opened again
        parts = self._contributor_sketches(state, header, body)
        layout = self._codec.layout
        words, state.words = state.words, None
        if sum_rows(parts, layout) != layout.sketch(words, state.challenge):
            raise ProtocolError("the sum is not the sum of the contributors' ciphertexts; refusing to decrypt",
                                client=SERVER)
        context, state.context = state.context, None
        total = self._codec.decrypt(context, words, state.frame, dim=state.dim,
                                    n_summands=len(state.contributors))
        log.info("key holder opened run %s round %s: %d contributions", run, rnd, len(state.contributors))
        return self._reply(header, {"included": list(state.contributors)},
                           np.ascontiguousarray(total, dtype="<f8").tobytes())

    def _contributor_sketches(self, state: _Opening, header: Mapping[str, Any],
                              body: bytes) -> list[list[list[int]]]:
        """Each contributor's sketch: its signed one, or one computed from its forwarded ciphertext."""
        run, rnd = header["run"], header["round"]
        layout = self._codec.layout
        sketches, sigs, forwarded = header["sketches"], header["sketch_signatures"], header["forwarded"]
        if (set(sketches) | set(forwarded)) != set(state.contributors) or set(sketches) & set(forwarded) \
                or len(set(forwarded)) != len(forwarded) or set(sigs) != set(sketches):
            raise ProtocolError("each contributor needs exactly one signed sketch or its forwarded ciphertext",
                                client=SERVER)
        size = layout.packed_bytes(state.n_chunks)
        if len(body) != size * len(forwarded):
            raise ProtocolError(f"forwarded ciphertexts take {size * len(forwarded)} bytes, got {len(body)}",
                                client=SERVER)
        parts: list[list[list[int]]] = []
        ch_hex = state.challenge.hex()
        for c in sorted(sketches):
            rows = sketch_rows(sketches[c], layout, client=SERVER)
            if not isinstance(sigs[c], str):
                raise ProtocolError(f"sketch signature of {c} must be a string", client=SERVER)
            verify_statement(self._registry, c, sigs[c], "sketch", run, rnd, c, state.fingerprint, state.digests[c],
                             ch_hex, sketches[c], what=f"the sketch of {c}", client=SERVER)
            parts.append(rows)
        for i, c in enumerate(forwarded):
            blob = body[i * size : (i + 1) * size]
            if sha256_hex(blob) != state.digests[c]:
                raise ProtocolError(f"forwarded ciphertext of {c} is not the one it signed", client=SERVER)
            parts.append(layout.sketch(layout.unpack(blob, n_chunks=state.n_chunks, client=SERVER), state.challenge))
        return parts
