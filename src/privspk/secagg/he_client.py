"""A client of an HE round: encrypts its update under the key holder's signed public context.

It pledges a signed digest of its ciphertext, reveals the ciphertext only against the pledge
list the key holder froze, and answers the key holder's challenge with a signed sketch (see
:mod:`privspk.secagg.he_scheme`).

>>> from privspk.secagg import build_scheme
>>> c = build_scheme("bfv", {"he_trust": "no-client-colludes-with-server"}).client("c0")
>>> isinstance(c, HeClient)
True
"""

from __future__ import annotations

import json
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
    hex32,
    identity_or_fresh,
    keyholder_registry,
    load_public_context,
    pledge_digest,
    sha256_hex,
    sign_statement,
    sketch_hex,
    verify_statement,
)
from privspk.secagg.keys import IdentityKey
from privspk.secagg.wire import check_fields, expect, pack, unpack


@dataclass
class _Sent:
    run: str
    round_id: int
    packed: bytes
    digest: str
    fingerprint: str
    n_chunks: int
    revealed: bool = False


class HeClient(ClientEndpoint):
    """A client of an HE scheme: encrypts under the key holder's signed public context.

    >>> from privspk.secagg import build_scheme
    >>> c = build_scheme("bfv", {"he_trust": "no-client-colludes-with-server"}).client("c0")
    >>> c.client_id, len(c.public_key)
    ('c0', 32)

    Args:
        client_id: this client's id.
        codec: the scheme's codec.
        keyholder_key: the key holder's raw Ed25519 public key (from the PKI stand-in).
        rng: randomness for encoding (stochastic rounding); encryption uses SEAL's own CSPRNG.
        identity: its long-term Ed25519 signing key (a deployed node's); a fresh one when omitted.
    """

    def __init__(self, client_id: str, codec: HeCodec, *, keyholder_key: bytes, rng: np.random.Generator,
                 identity: IdentityKey | None = None) -> None:
        self.client_id = client_id
        self._codec = codec
        self._keyholder = keyholder_registry(keyholder_key)
        self._rng = rng
        self._identity = identity_or_fresh(identity)
        self.public_key = self._identity.public_bytes()
        self._updates: dict[int, np.ndarray] = {}
        self._sent: _Sent | None = None
        self._context: tuple[str, Any] | None = None

    def submit(self, round_id: int, update: np.ndarray) -> None:
        """Store the float update to encrypt in ``round_id``.

        >>> from privspk.secagg import build_scheme
        >>> build_scheme("ckks", {"he_trust": "no-client-colludes-with-server"}).client("c0").submit(0, np.array([np.nan]))
        Traceback (most recent call last):
        ...
        privspk.errors.ConfigError: client c0: update must be a finite 1-D vector
        """
        if type(round_id) is not int or round_id < 0:
            raise ConfigError(f"client {self.client_id}: round_id must be a non-negative int, got {round_id!r}")
        u = np.asarray(update, dtype=np.float64)
        if u.ndim != 1 or u.size == 0 or not np.all(np.isfinite(u)):
            raise ConfigError(f"client {self.client_id}: update must be a finite 1-D vector")
        self._updates[round_id] = u.copy()

    def handle(self, request: bytes) -> bytes | None:
        """Answer ``pledge`` (signed digest), ``collect`` (ciphertext) or ``verify`` (sketch); refuse anything else."""
        header, body = unpack(request, client=SERVER)
        expect(header, scheme=self._codec.kind, run=header["run"], round_id=header["round"],
               stage=header["stage"], client=SERVER)
        self.check_run(header["run"], who=SERVER)  # a bound client serves its own run only
        if header["stage"] == Stage.PLEDGE:
            return self._pledge(header, body)
        if header["stage"] == Stage.COLLECT:
            return self._reveal(header, body)
        if header["stage"] == Stage.VERIFY:
            return self._verify_request(header)
        raise ProtocolError(f"client {self.client_id} does not answer stage {header['stage']!r}", client=SERVER)

    def _load(self, blob: bytes, fingerprint: str) -> Any:
        if self._context is None or self._context[0] != fingerprint:
            ctx = load_public_context(blob, who=SERVER)
            self._codec.check_context(ctx, who=SERVER)
            self._context = (fingerprint, ctx)
        return self._context[1]

    def _pledge(self, header: Mapping[str, Any], body: bytes) -> bytes:
        """Encrypt now, send only the signed digest: the ciphertext is fixed before any is shown."""
        check_fields(header, {"dim": int, "fingerprint": str, "context_signature": str}, client=SERVER)
        run, rnd, fp = header["run"], header["round"], header["fingerprint"]
        update = self._updates.get(rnd)
        if update is None:
            raise ProtocolError(f"client {self.client_id} has no update for round {rnd}", client=SERVER)
        if update.shape[0] != header["dim"]:
            raise ProtocolError(f"server asks for dim {header['dim']}, the update has {update.shape[0]}",
                                client=SERVER)
        if sha256_hex(body) != fp:
            raise ProtocolError("the context does not match its fingerprint", client=SERVER)
        verify_statement(self._keyholder, KEYHOLDER, header["context_signature"], "context", run, rnd, fp,
                         what="the public context (not signed by the key holder for this round)", client=SERVER)
        ctx = self._load(body, fp)
        # the key holder of this context opens one sum per round: the ciphertext fixes the sum to it
        context = json.dumps({"scheme": self._codec.kind, "fingerprint": fp}, sort_keys=True, separators=(",", ":"))
        self.check_release(run_id=run, round_id=rnd, context=context, opens=True)
        words = self._codec.encrypt(ctx, update, rng=self._rng)
        packed = self._codec.layout.pack(words)
        digest = sha256_hex(packed)
        n_chunks = int(words.shape[0])
        sig = sign_statement(self._identity, "collect", run, rnd, self.client_id, fp, header["dim"], n_chunks, digest)
        del self._updates[rnd]  # one ciphertext per round: a replayed request finds nothing to send
        self._sent = _Sent(run, rnd, packed, digest, fp, n_chunks)
        return pack({"scheme": self._codec.kind, "run": run, "round": rnd, "stage": Stage.PLEDGE,
                     "sender": self.client_id, "n_chunks": n_chunks, "fingerprint": fp, "digest": digest,
                     "signature": sig})

    def _reveal(self, header: Mapping[str, Any], body: bytes) -> bytes:
        """Send the pledged ciphertext, signing the pledge list it was revealed against."""
        check_fields(header, {"pledges": dict, "freeze_signature": str}, client=SERVER)
        if body:
            raise ProtocolError("a reveal request carries no body", client=SERVER)
        run, rnd, pledges = header["run"], header["round"], header["pledges"]
        sent = self._sent
        if sent is None or (sent.run, sent.round_id) != (run, rnd) or sent.revealed:
            raise ProtocolError(f"client {self.client_id} pledged no ciphertext in round {rnd} (or already revealed "
                                "it)", client=SERVER)
        verify_statement(self._keyholder, KEYHOLDER, header["freeze_signature"], "frozen", run, rnd, sent.fingerprint,
                         pledge_digest(pledges),
                         what="the pledge list (not the one the key holder froze for this round)", client=SERVER)
        mine = pledges.get(self.client_id)
        if not (isinstance(mine, list) and len(mine) == 2 and mine[0] == sent.digest):
            raise ProtocolError("the pledge list does not hold this client's pledge", client=SERVER)
        sent.revealed = True  # revealed once, against one pledge list
        sig = sign_statement(self._identity, "reveal", run, rnd, self.client_id, sent.fingerprint,
                             pledge_digest(pledges))
        return pack({"scheme": self._codec.kind, "run": run, "round": rnd, "stage": Stage.COLLECT,
                     "sender": self.client_id, "reveal_signature": sig}, sent.packed)

    def _verify_request(self, header: Mapping[str, Any]) -> bytes:
        check_fields(header, {"challenge": str, "digest": str}, client=SERVER)
        run, rnd = header["run"], header["round"]
        sent = self._sent
        if sent is None or (sent.run, sent.round_id) != (run, rnd) or not sent.revealed:
            raise ProtocolError(f"client {self.client_id} sent no ciphertext in round {rnd} "
                                "(or already answered its challenge)", client=SERVER)
        if header["digest"] != sent.digest:
            raise ProtocolError("the challenge names a ciphertext this client did not send", client=SERVER)
        challenge = hex32(header["challenge"], "challenge", SERVER)
        self._sent = None
        layout = self._codec.layout
        rows = layout.sketch(layout.unpack(sent.packed, n_chunks=sent.n_chunks), challenge)
        text = sketch_hex(rows, layout)
        sig = sign_statement(self._identity, "sketch", run, rnd, self.client_id, sent.fingerprint, sent.digest,
                             challenge.hex(), text)
        return pack({"scheme": self._codec.kind, "run": run, "round": rnd, "stage": Stage.VERIFY,
                     "sender": self.client_id, "sketch": text, "signature": sig})
