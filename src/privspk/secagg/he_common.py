"""What every role of an HE round shares: stage names, contexts, the codec interface, signatures, sketches.

The roles live beside this module: :mod:`~privspk.secagg.he_keyholder` (the only holder of
the secret key), :mod:`~privspk.secagg.he_client` (encrypts), :mod:`~privspk.secagg.he_server`
(adds ciphertexts) and :mod:`~privspk.secagg.he_scheme` (ties them to a scheme; it describes the
protocol).

Signatures. Every party signs with its Ed25519 :class:`~privspk.secagg.keys.IdentityKey` and
checks with a :class:`~privspk.secagg.keys.KeyRegistry` - the clients' registry, or the
one-entry registry of the key holder's verify key (:func:`keyholder_registry`). What is signed is
:func:`statement`: the canonical JSON of ``[DOMAIN, what, run, round, ...]``, where ``DOMAIN``
keeps a signature from serving another protocol and ``what`` (``context``, ``frozen``,
``collect``, ``reveal``, ``sketch``) from serving another stage. Signatures travel as hex.

>>> from privspk.secagg.keys import IdentityKey
>>> me = IdentityKey.generate()
>>> sig = sign_statement(me, "context", "run", 0, "ab" * 32)
>>> verify_statement(keyholder_registry(me.public_bytes()), KEYHOLDER, sig, "context", "run", 0, "ab" * 32,
...                  what="the public context", client=SERVER)
>>> verify_statement(keyholder_registry(me.public_bytes()), KEYHOLDER, sig, "context", "run", 1, "ab" * 32,
...                  what="the public context", client=SERVER)
Traceback (most recent call last):
...
privspk.errors.ProtocolError: client server: bad signature on the public context
"""

from __future__ import annotations

import hashlib
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from privspk.errors import ConfigError, KeyLeakError, ProtocolError
from privspk.secagg.base import KEYHOLDER
from privspk.secagg.he_wire import SKETCH_ROWS, CipherLayout, SealFrame
from privspk.secagg.keys import SIGNATURE_BYTES, IdentityKey, KeyRegistry

SERVER = "server"
"""Sender name of the server on the wire."""

DOMAIN = "privspk/he/v1"
"""Prefix of everything signed here, so a signature cannot be reused by another protocol."""


class Stage:
    """Stage names of an HE round, in order.

    >>> Stage.ORDER.index(Stage.COMMIT) < Stage.ORDER.index(Stage.OPEN)
    True
    """

    SETUP = "setup"
    PLEDGE = "pledge"
    FREEZE = "freeze"
    COLLECT = "collect"
    COMMIT = "commit"
    VERIFY = "verify"
    OPEN = "open"
    DONE = "done"
    ORDER = (SETUP, PLEDGE, FREEZE, COLLECT, COMMIT, VERIFY, OPEN, DONE)


# --------------------------------------------------------------------------- contexts


def public_context_bytes(ctx: Any) -> bytes:
    """Serialise a TenSEAL context with its public key only; refuse if the secret key survives.

    The bytes are reloaded and checked (``has_secret_key()`` must be False), so what is
    checked is the bytes, not the intent. The context itself is not modified.

    >>> import tenseal as ts
    >>> ctx = ts.context(ts.SCHEME_TYPE.BFV, 4096, plain_modulus=1032193, coeff_mod_bit_sizes=[36, 21])
    >>> blob = public_context_bytes(ctx)
    >>> ctx.has_secret_key(), ts.context_from(blob).has_secret_key()
    (True, False)
    """
    import tenseal as ts

    blob = ctx.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False)
    if ts.context_from(blob, n_threads=1).has_secret_key():
        raise KeyLeakError("the serialised public context still holds the secret key; refusing to hand it out")
    return blob


def load_public_context(blob: bytes, *, who: str | None = None) -> Any:
    """Load a context that must not hold a secret key (server and clients use this).

    A context with the secret key raises :class:`KeyLeakError`: the key holder leaked it.

    >>> import tenseal as ts
    >>> ctx = ts.context(ts.SCHEME_TYPE.BFV, 4096, plain_modulus=1032193, coeff_mod_bit_sizes=[36, 21])
    >>> load_public_context(ctx.serialize(save_secret_key=True))
    Traceback (most recent call last):
    ...
    privspk.errors.KeyLeakError: the context received holds the secret key; only the key holder may have it
    """
    import tenseal as ts

    try:
        ctx = ts.context_from(bytes(blob), n_threads=1)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise ProtocolError(f"public context does not load ({exc})", client=who) from None
    if ctx.has_secret_key():
        raise KeyLeakError("the context received holds the secret key; only the key holder may have it")
    return ctx


def check_context_moduli(ctx: Any, layout: CipherLayout, *, who: str | None = None) -> None:
    """Check that a context has the ring degree and data-level primes of ``layout``.

    SEAL reports only the low 64-bit word of the modulus product, so the product is
    checked through that word and its bit count (the primes follow from the bit sizes).

    >>> import tenseal as ts
    >>> from privspk.secagg.he_wire import ntt_primes
    >>> ctx = ts.context(ts.SCHEME_TYPE.BFV, 4096, plain_modulus=1032193, coeff_mod_bit_sizes=[36, 21])
    >>> check_context_moduli(ctx, CipherLayout(poly_degree=4096, moduli=ntt_primes(4096, [36])))
    >>> try:
    ...     check_context_moduli(ctx, CipherLayout(poly_degree=4096, moduli=ntt_primes(4096, [40])))
    ... except ProtocolError as exc:
    ...     print(str(exc)[:60])
    context parameters (degree 4096, 36-bit modulus) do not matc
    """
    first = ctx.seal_context().data.first_context_data()
    degree = first.parms().poly_modulus_degree()
    product = math.prod(layout.moduli)
    if (
        degree != layout.poly_degree
        or first.total_coeff_modulus() != product % (1 << 64)
        or first.total_coeff_modulus_bit_count() != product.bit_length()
    ):
        raise ProtocolError(
            f"context parameters (degree {degree}, {first.total_coeff_modulus_bit_count()}-bit modulus) do not "
            f"match this scheme's configuration (degree {layout.poly_degree}, primes {layout.moduli})",
            client=who,
        )


# --------------------------------------------------------------------------- codec interface


class HeCodec(ABC):
    """What a homomorphic scheme adds to the shared roles: contexts, encoding and decoding.

    >>> from privspk.secagg.bfv import BfvCodec, BfvConfig
    >>> codec = BfvCodec(BfvConfig())
    >>> isinstance(codec, HeCodec), codec.kind, codec.n_chunks(10_000)
    (True, 'bfv', 2)
    """

    kind: ClassVar[str]
    """Scheme name (also on the wire)."""

    layout: CipherLayout
    values_per_chunk: int
    """Update coordinates one ciphertext carries."""

    def n_chunks(self, dim: int) -> int:
        """Ciphertexts an update of ``dim`` values needs."""
        return -(-dim // self.values_per_chunk)

    @abstractmethod
    def make_context(self) -> Any:
        """A fresh TenSEAL context with its secret key (the key holder alone calls this)."""

    @abstractmethod
    def check_context(self, ctx: Any, *, who: str | None = None) -> None:
        """Refuse (ProtocolError) a context whose parameters differ from the configuration."""

    @abstractmethod
    def encrypt(self, ctx: Any, update: np.ndarray, *, rng: np.random.Generator) -> np.ndarray:
        """Encode and encrypt one update; returns ciphertext words ``(chunks, 2, L, N)``."""

    @abstractmethod
    def frame(self, ctx: Any) -> SealFrame:
        """The :class:`SealFrame` of this context's fresh ciphertexts."""

    @abstractmethod
    def decrypt(self, ctx: Any, words: np.ndarray, frame: SealFrame, *, dim: int, n_summands: int) -> np.ndarray:
        """Decrypt and decode a sum of ``n_summands`` ciphertexts to a float64 vector of ``dim``."""

    @abstractmethod
    def sum_tolerance(self, n_clients: int) -> float:
        """Largest absolute error of one coordinate of a sum of ``n_clients`` clipped updates."""


# --------------------------------------------------------------------------- signatures


def sha256_hex(blob: bytes) -> str:
    """SHA-256 of ``blob`` in hex (fingerprints of contexts, digests of ciphertexts).

    >>> sha256_hex(b"")[:16]
    'e3b0c44298fc1c14'
    """
    return hashlib.sha256(blob).hexdigest()


def statement(*parts: Any) -> bytes:
    """The bytes an HE signature covers: canonical JSON of ``[DOMAIN, *parts]``.

    >>> statement("frozen", "r", 0)
    b'["privspk/he/v1","frozen","r",0]'
    """
    return json.dumps([DOMAIN, *parts], separators=(",", ":"), sort_keys=True).encode()


def sign_statement(identity: IdentityKey, *parts: Any) -> str:
    """``identity``'s Ed25519 signature of :func:`statement` ``(*parts)``, in hex (as it travels).

    >>> len(sign_statement(IdentityKey.generate(), "sketch", "r", 0))
    128
    """
    return identity.sign(statement(*parts)).hex()


def verify_statement(keys: KeyRegistry, signer: str, signature: Any, *parts: Any, what: str,
                     client: str | None) -> None:
    """Check ``signer``'s hex ``signature`` of :func:`statement` ``(*parts)`` against ``keys``.

    A bad, malformed or unregistered signature is a :class:`ProtocolError` on ``what``,
    blamed on ``client`` (who delivered it, which need not be who signed it).

    >>> verify_statement(KeyRegistry(), "c0", "00" * 64, "collect", what="the pledge of c0", client="server")
    Traceback (most recent call last):
    ...
    privspk.errors.ProtocolError: client server: bad signature on the pledge of c0
    """
    try:
        raw = bytes.fromhex(signature) if isinstance(signature, str) else b""
    except ValueError:
        raw = b""
    try:
        if len(raw) != SIGNATURE_BYTES:
            raise ProtocolError("malformed signature", client=signer)
        keys.verify(signer, raw, statement(*parts))
    except ProtocolError:
        raise ProtocolError(f"bad signature on {what}", client=client) from None


def keyholder_registry(verify_key: bytes) -> KeyRegistry:
    """A registry holding only the key holder's verify key (under :data:`KEYHOLDER`).

    >>> KEYHOLDER in keyholder_registry(IdentityKey.generate().public_bytes())
    True
    """
    keys = KeyRegistry()
    keys.register(KEYHOLDER, raw_ed25519(verify_key, "the key holder's verify key"))
    return keys


def identity_or_fresh(identity: IdentityKey | None) -> IdentityKey:
    """``identity`` (a deployed node's long-term key), or a fresh one when it is None.

    >>> isinstance(identity_or_fresh(None), IdentityKey)
    True
    """
    return identity if identity is not None else IdentityKey.generate()


def raw_ed25519(public_key: Any, what: str) -> bytes:
    """``public_key`` when it is a raw Ed25519 public key (32 bytes); ConfigError naming ``what`` otherwise.

    >>> raw_ed25519(b"12", "the key holder's verify key")
    Traceback (most recent call last):
    ...
    privspk.errors.ConfigError: the key holder's verify key must be a raw Ed25519 public key (32 bytes)
    """
    if not isinstance(public_key, bytes) or len(public_key) != 32:
        raise ConfigError(f"{what} must be a raw Ed25519 public key (32 bytes)")
    return public_key


def hex32(value: str, what: str, client: str | None) -> bytes:
    """32 bytes from 64 hex characters (a challenge or digest on the wire); ProtocolError otherwise.

    >>> hex32("zz", "challenge", "server")
    Traceback (most recent call last):
    ...
    privspk.errors.ProtocolError: client server: challenge must be 64 hex characters
    """
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ProtocolError(f"{what} must be 64 hex characters", client=client)
    return raw


def pledge_digest(pledges: Mapping[str, Any]) -> str:
    """Digest of a round's pledge list ``{client: [ciphertext digest, signature]}`` (what a reveal signs).

    >>> pledge_digest({"b": ["01", "02"], "a": ["03", "04"]}) == pledge_digest({"a": ["03", "04"], "b": ["01", "02"]})
    True
    """
    return sha256_hex(json.dumps({c: list(v) for c, v in pledges.items()}, separators=(",", ":"),
                              sort_keys=True).encode())


# --------------------------------------------------------------------------- sketches


def sketch_hex(rows: list[list[int]], layout: CipherLayout) -> str:
    """Fixed-width hex of a sketch (so every reply of a stage has the same length)."""
    widths = [-(-w // 4) for w in layout.widths]
    return "".join(f"{v:0{w}x}" for row in rows for v, w in zip(row, widths))


def sketch_rows(text: Any, layout: CipherLayout, *, client: str | None) -> list[list[int]]:
    """Parse and check a sketch: ``SKETCH_ROWS`` rows of one value below each ``q_l``."""
    widths = [-(-w // 4) for w in layout.widths]
    size = SKETCH_ROWS * sum(widths)
    if not isinstance(text, str) or len(text) != size or any(ch not in "0123456789abcdef" for ch in text):
        raise ProtocolError(f"sketch must be {size} lowercase hex characters", client=client)
    rows, pos = [], 0
    for _ in range(SKETCH_ROWS):
        row = []
        for w, q in zip(widths, layout.moduli):
            v = int(text[pos : pos + w], 16)
            if v >= q:
                raise ProtocolError("sketch value is not below its modulus", client=client)
            row.append(v)
            pos += w
        rows.append(row)
    return rows


def sum_rows(rows: list[list[list[int]]], layout: CipherLayout) -> list[list[int]]:
    total = [[0] * len(layout.moduli) for _ in range(SKETCH_ROWS)]
    for sk in rows:
        for k in range(SKETCH_ROWS):
            for l, q in enumerate(layout.moduli):
                total[k][l] = (total[k][l] + sk[k][l]) % q
    return total
