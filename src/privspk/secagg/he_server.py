"""The server's side of an HE round: it holds the public context and ciphertexts, never a secret key.

It checks every ciphertext (envelope, signature, context fingerprint, exact length, every
residue below its modulus), adds them as residue arrays (:mod:`privspk.secagg.he_wire`) and
asks the key holder to open the sum (see :mod:`privspk.secagg.he_scheme`).

>>> from privspk.secagg import RoundSpec, build_scheme
>>> s = build_scheme("bfv", {"he_trust": "no-client-colludes-with-server"})
>>> isinstance(s.server_round(RoundSpec(run_id="r", round_id=0, clients=("a",), dim=2)), HeServerRound)
True
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from privspk.errors import AggregationError, KeyLeakError, ProtocolError
from privspk.secagg.base import KEYHOLDER, AggregateResult, RoundSpec, ServerRound
from privspk.secagg.he_common import (
    SERVER,
    Stage,
    check_context_moduli,
    hex32,
    keyholder_registry,
    load_public_context,
    pledge_digest,
    sha256_hex,
    sketch_rows,
    sum_rows,
    verify_statement,
)
from privspk.secagg.he_wire import CipherLayout
from privspk.secagg.keys import KeyRegistry
from privspk.secagg.wire import check_fields, expect, pack, unpack

log = logging.getLogger(__name__)


class HeServerRound(ServerRound):
    """The server's side of one HE round; it holds the public context and ciphertexts only.

    >>> from privspk.secagg import build_scheme, KEYHOLDER
    >>> s = build_scheme("ckks", {"he_trust": "no-client-colludes-with-server"})
    >>> server = s.server_round(RoundSpec(run_id="r", round_id=0, clients=("a", "b"), dim=5))
    >>> server.stage, list(server.outbox()) == [KEYHOLDER]
    ('setup', True)

    Args:
        spec: the round's announcement.
        codec_kind: scheme name on the wire.
        layout: ciphertext layout of the scheme's context.
        n_chunks: ciphertexts per update.
        min_clients: fewest contributions a sum must hold.
        registry: the clients' identity keys (copied: later registrations do not join this round).
        keyholder_key: the key holder's raw Ed25519 public key.
    """

    def __init__(self, spec: RoundSpec, *, codec_kind: str, layout: CipherLayout, n_chunks: int, min_clients: int,
                 registry: KeyRegistry, keyholder_key: bytes) -> None:
        self.spec = spec
        self._kind = codec_kind
        self._layout = layout
        self._n_chunks = n_chunks
        self._min = min_clients
        self._registry = registry.copy()  # the registry as the round starts
        self._keyholder = keyholder_registry(keyholder_key)
        self._stage = Stage.SETUP
        self._public: bytes | None = None
        self._fingerprint = ""
        self._context_sig = ""
        self._sum = layout.zeros(n_chunks)
        self._lazy = 0  # additions since the sum was last reduced
        self._packed: dict[str, bytes] = {}
        self._pledges: dict[str, list[str]] = {}
        self._reveals: dict[str, str] = {}
        self._digests: dict[str, str] = {}
        self._signatures: dict[str, str] = {}
        self._rejected: dict[str, str] = {}
        self._replied: set[str] = set()
        self._challenge: bytes | None = None
        self._freeze_sig: str | None = None
        self._sketches: dict[str, list[list[int]]] = {}
        self._sketch_text: dict[str, str] = {}
        self._sketch_sigs: dict[str, str] = {}
        self._forwarded: list[str] = []
        self._total: np.ndarray | None = None

    @property
    def stage(self) -> str:
        """Current stage (see :class:`Stage`)."""
        return self._stage

    def _header(self, stage: str, **extra: Any) -> dict[str, Any]:
        return {"scheme": self._kind, "run": self.spec.run_id, "round": self.spec.round_id, "stage": stage,
                "sender": SERVER, **extra}

    def outbox(self) -> dict[str, bytes]:
        """Requests of the current stage, keyed by recipient."""
        st = self._stage
        if st == Stage.SETUP:
            return {KEYHOLDER: pack(self._header(st))}
        if st == Stage.PLEDGE and self._public is not None:
            req = pack(self._header(st, dim=self.spec.dim, fingerprint=self._fingerprint,
                                    context_signature=self._context_sig), self._public)
            return {c: req for c in self.spec.clients}
        if st == Stage.FREEZE:
            return {KEYHOLDER: pack(self._header(st, pledges=self._pledges, dim=self.spec.dim,
                                                 n_chunks=self._n_chunks, fingerprint=self._fingerprint))}
        if st == Stage.COLLECT and self._freeze_sig is not None:
            req = pack(self._header(st, pledges=self._pledges, freeze_signature=self._freeze_sig))
            return {c: req for c in sorted(self._pledges)}
        if st == Stage.COMMIT:
            who = sorted(self._packed)
            return {KEYHOLDER: pack(self._header(st, contributors=who, digests=self._digests,
                                                 signatures=self._signatures, n_chunks=self._n_chunks,
                                                 dim=self.spec.dim, fingerprint=self._fingerprint,
                                                 pledges=self._pledges, reveals=self._reveals),
                                    self._layout.pack(self._sum))}
        if st == Stage.VERIFY and self._challenge is not None:
            return {c: pack(self._header(st, challenge=self._challenge.hex(), digest=self._digests[c]))
                    for c in sorted(self._packed)}
        if st == Stage.OPEN:
            body = b"".join(self._packed[c] for c in self._forwarded)
            return {KEYHOLDER: pack(self._header(st, sketches=self._sketch_text, sketch_signatures=self._sketch_sigs,
                                                 forwarded=self._forwarded), body)}
        return {}

    def receive(self, sender: str, payload: bytes) -> None:
        """Take one reply; a bad one raises ProtocolError naming its sender (dropped at ``collect``)."""
        try:
            st = self._stage
            expected = {KEYHOLDER} if st in (Stage.SETUP, Stage.FREEZE, Stage.COMMIT, Stage.OPEN) else (
                set(self.spec.clients) if st == Stage.PLEDGE else set(self._pledges) if st == Stage.COLLECT
                else set(self._packed) if st == Stage.VERIFY else set())
            if sender not in expected:
                raise ProtocolError(f"not expected to send at stage {st}", client=sender)
            if sender in self._replied:
                raise ProtocolError("second message in the same stage (duplicate or replay)", client=sender)
            header, body = unpack(payload, client=sender)
            expect(header, scheme=self._kind, run=self.spec.run_id, round_id=self.spec.round_id, stage=st,
                   client=sender)
            if st == Stage.SETUP:
                self._on_context(header, body)
            elif st == Stage.PLEDGE:
                self._on_pledge(sender, header, body)
            elif st == Stage.FREEZE:
                check_fields(header, {"freeze_signature": str}, client=sender)
                verify_statement(self._keyholder, KEYHOLDER, header["freeze_signature"], "frozen", self.spec.run_id,
                                 self.spec.round_id, self._fingerprint, pledge_digest(self._pledges),
                                 what="the frozen pledge list", client=KEYHOLDER)
                self._freeze_sig = header["freeze_signature"]
            elif st == Stage.COLLECT:
                self._on_ciphertext(sender, header, body)
            elif st == Stage.COMMIT:
                check_fields(header, {"challenge": str}, client=sender)
                if body:
                    raise ProtocolError("a challenge reply carries no body", client=sender)
                self._challenge = hex32(header["challenge"], "challenge", sender)
            elif st == Stage.VERIFY:
                self._on_sketch(sender, header, body)
            else:
                self._on_sum(header, body)
            self._replied.add(sender)
        except ProtocolError as exc:
            if self._stage in (Stage.PLEDGE, Stage.COLLECT) and sender in self.spec.clients \
                    and sender not in self._packed:
                self._rejected.setdefault(sender, exc.reason)
            raise

    def _on_context(self, header: Mapping[str, Any], body: bytes) -> None:
        check_fields(header, {"fingerprint": str, "context_signature": str}, client=KEYHOLDER)
        if sha256_hex(body) != header["fingerprint"]:
            raise ProtocolError("public context does not match its fingerprint", client=KEYHOLDER)
        verify_statement(self._keyholder, KEYHOLDER, header["context_signature"], "context", self.spec.run_id,
                         self.spec.round_id, header["fingerprint"], what="the public context", client=KEYHOLDER)
        ctx = load_public_context(body, who=KEYHOLDER)  # KeyLeakError aborts the round
        if ctx.is_private():
            raise KeyLeakError("the server was handed a private context; refusing it")
        check_context_moduli(ctx, self._layout, who=KEYHOLDER)
        self._public, self._fingerprint, self._context_sig = body, header["fingerprint"], header["context_signature"]

    def _on_pledge(self, sender: str, header: Mapping[str, Any], body: bytes) -> None:
        check_fields(header, {"n_chunks": int, "fingerprint": str, "digest": str, "signature": str}, client=sender)
        if body:
            raise ProtocolError("a pledge carries no body (the ciphertext comes at collect)", client=sender)
        if header["fingerprint"] != self._fingerprint:
            raise ProtocolError("ciphertext is under another context (fingerprint differs)", client=sender)
        if header["n_chunks"] != self._n_chunks:
            raise ProtocolError(f"{header['n_chunks']} ciphertexts sent, the round needs {self._n_chunks}",
                                client=sender)
        if sender not in self._registry:
            raise ProtocolError("not a registered client", client=sender)
        hex32(header["digest"], "digest", sender)
        verify_statement(self._registry, sender, header["signature"], "collect", self.spec.run_id, self.spec.round_id,
                         sender, self._fingerprint, self.spec.dim, self._n_chunks, header["digest"],
                         what="the ciphertext", client=sender)
        self._pledges[sender] = [header["digest"], header["signature"]]

    def _on_ciphertext(self, sender: str, header: Mapping[str, Any], body: bytes) -> None:
        check_fields(header, {"reveal_signature": str}, client=sender)
        want = self._layout.packed_bytes(self._n_chunks)
        if len(body) != want:
            raise ProtocolError(f"{self._n_chunks} packed ciphertexts take {want} bytes, got {len(body)} "
                                f"({'truncated' if len(body) < want else 'oversized'})", client=sender)
        words = self._layout.unpack(body, n_chunks=self._n_chunks, client=sender)
        digest = header["body_sha256"]  # wire.unpack checked it against the body
        pledged, signature = self._pledges[sender]
        if pledged != digest:
            raise ProtocolError("ciphertext does not match its pledged (signed) digest", client=sender)
        verify_statement(self._registry, sender, header["reveal_signature"], "reveal", self.spec.run_id,
                         self.spec.round_id, sender, self._fingerprint, pledge_digest(self._pledges), what="the reveal",
                         client=sender)
        if self._lazy + 1 >= self._layout.lazy_adds:
            self._layout.reduce(self._sum)
            self._lazy = 0
        np.add(self._sum, words, out=self._sum)  # only after every check passed; reduced before use
        self._lazy += 1
        self._packed[sender] = body
        self._digests[sender] = digest
        self._signatures[sender] = signature
        self._reveals[sender] = header["reveal_signature"]

    def _on_sketch(self, sender: str, header: Mapping[str, Any], body: bytes) -> None:
        check_fields(header, {"sketch": str, "signature": str}, client=sender)
        if body:
            raise ProtocolError("a sketch reply carries no body", client=sender)
        rows = sketch_rows(header["sketch"], self._layout, client=sender)
        if self._challenge is None:
            raise ProtocolError("no challenge was issued in this round", client=sender)
        verify_statement(self._registry, sender, header["signature"], "sketch", self.spec.run_id, self.spec.round_id,
                         sender, self._fingerprint, self._digests[sender], self._challenge.hex(), header["sketch"],
                         what="the sketch", client=sender)
        self._sketches[sender] = rows
        self._sketch_text[sender] = header["sketch"]
        self._sketch_sigs[sender] = header["signature"]

    def _on_sum(self, header: Mapping[str, Any], body: bytes) -> None:
        check_fields(header, {"included": list}, client=KEYHOLDER)
        if sorted(header["included"]) != sorted(self._packed):
            raise ProtocolError("key holder opened a sum of other contributors", client=KEYHOLDER)
        if len(body) != 8 * self.spec.dim:
            raise ProtocolError(f"opened sum has {len(body)} bytes, expected {8 * self.spec.dim}", client=KEYHOLDER)
        total = np.frombuffer(body, dtype="<f8").astype(np.float64)
        if not np.all(np.isfinite(total)):
            raise ProtocolError("opened sum holds NaN or inf", client=KEYHOLDER)
        self._total = total

    def _check_sketches(self) -> None:
        """Keep the sketches that add up; the other contributors' ciphertexts get forwarded."""
        layout = self._layout
        if self._challenge is None:
            raise AggregationError("no challenge was issued in this round")
        silent = [c for c in sorted(self._packed) if c not in self._sketches]
        rest = layout.zeros(self._n_chunks)
        for c in silent:
            layout.add_into(rest, layout.unpack(self._packed[c], n_chunks=self._n_chunks))
        target = layout.sketch(layout.sub_into(self._sum.copy(), rest), self._challenge)
        if sum_rows(list(self._sketches.values()), layout) != target:
            for c in sorted(self._sketches):  # someone lied: check each (costs a sketch per client)
                own = layout.sketch(layout.unpack(self._packed[c], n_chunks=self._n_chunks), self._challenge)
                if own != self._sketches[c]:
                    log.warning("client %s sent a wrong sketch; forwarding its ciphertext instead", c)
                    del self._sketches[c], self._sketch_text[c], self._sketch_sigs[c]
        self._forwarded = sorted(c for c in self._packed if c not in self._sketches)

    def advance(self) -> bool:
        """Close the current stage; AggregationError when the round cannot finish (nothing is opened)."""
        st = self._stage
        self._replied = set()
        if st == Stage.SETUP:
            if self._public is None:
                raise AggregationError("the key holder sent no valid public context; nothing can be encrypted")
            self._stage = Stage.PLEDGE
        elif st == Stage.PLEDGE:
            if len(self._pledges) < self._min:
                raise AggregationError(f"only {len(self._pledges)} of {len(self.spec.clients)} clients pledged a "
                                       f"ciphertext; the key holder opens sums of at least {self._min}")
            self._stage = Stage.FREEZE
        elif st == Stage.FREEZE:
            if self._freeze_sig is None:
                raise AggregationError("the key holder refused to freeze the pledge list; nothing is revealed")
            self._stage = Stage.COLLECT
        elif st == Stage.COLLECT:
            if len(self._packed) < self._min:
                raise AggregationError(f"only {len(self._packed)} of {len(self.spec.clients)} clients sent a valid "
                                       f"ciphertext; the key holder opens sums of at least {self._min}")
            self._layout.reduce(self._sum)
            self._lazy = 0
            self._stage = Stage.COMMIT
        elif st == Stage.COMMIT:
            if self._challenge is None:
                raise AggregationError("the key holder refused to commit to the sum; nothing is opened")
            self._stage = Stage.VERIFY
        elif st == Stage.VERIFY:
            self._check_sketches()
            self._stage = Stage.OPEN
        elif st == Stage.OPEN:
            if self._total is None:
                raise AggregationError("the key holder refused to open the sum")
            self._stage = Stage.DONE
            return False
        else:
            return False
        return True

    def result(self) -> AggregateResult:
        """The opened sum and who is in it."""
        if self._stage != Stage.DONE or self._total is None:
            raise AggregationError(f"round not finished (stage {self._stage})")
        dropped = {c: self._rejected.get(c, "no reply at stage collect" if c in self._pledges
                                         else "no reply at stage pledge") for c in self.spec.clients
                   if c not in self._packed}
        return AggregateResult(total=self._total.copy(), included=tuple(sorted(self._packed)), dropped=dropped)
