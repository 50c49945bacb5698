"""Keys of the ``mask`` scheme: identities, per-round key pairs, signatures, share sealing.

* Each client owns a long-term **Ed25519 identity key**. Its public half sits in a
  :class:`KeyRegistry`, a stand-in for a PKI that every party trusts (assumption:
  the server cannot register or replace a client's identity key).
* Each round, each client makes two fresh **X25519** key pairs, ``c`` (to seal the
  Shamir shares it sends) and ``s`` (to agree pairwise mask seeds), and signs them
  with its identity key together with the round's public digest
  (:func:`advert_message`). Every receiver checks that signature against the
  registry, so a server cannot swap in keys of its own.
* Shares travel sealed with AES-256-GCM under ``HKDF(X25519(c_u, c_v))``; the key
  and the associated data bind the round digest, the sender and the receiver.

>>> reg = KeyRegistry()
>>> me = IdentityKey.generate()
>>> reg.register("c0", me.public_bytes())
>>> sig = me.sign(b"hello")
>>> reg.verify("c0", sig, b"hello")
>>> reg.verify("c0", sig, b"hellO")
Traceback (most recent call last):
...
privspk.errors.ProtocolError: client c0: bad signature on its message (forged, altered or signed by another key)
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Iterable

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from privspk.errors import ConfigError, KeyLeakError, ProtocolError

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
NONCE_BYTES = 12
TAG_BYTES = 16

_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw
_RAW_PRIV = serialization.PrivateFormat.Raw


def encode_ids(*ids: str) -> bytes:
    """Unambiguous byte encoding of client ids (length-prefixed UTF-8) for signatures and KDF labels.

    >>> encode_ids("a", "bc")
    b'\\x00\\x00\\x00\\x01a\\x00\\x00\\x00\\x02bc'
    """
    out = bytearray()
    for i in ids:
        raw = i.encode("utf-8")
        out += struct.pack(">I", len(raw)) + raw
    return bytes(out)


class IdentityKey:
    """A client's long-term Ed25519 signing key. Never leaves the client.

    >>> k = IdentityKey.generate()
    >>> len(k.public_bytes()), len(k.sign(b"m"))
    (32, 64)
    """

    def __init__(self, key: ed25519.Ed25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def generate(cls) -> IdentityKey:
        """A fresh key from the OS CSPRNG."""
        return cls(ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> IdentityKey:
        """Rebuild a key from its 32 raw secret bytes (a client reloading its own key from its store).

        >>> k = IdentityKey.generate()
        >>> IdentityKey.from_private_bytes(k.private_bytes()).public_bytes() == k.public_bytes()
        True
        """
        if not isinstance(raw, bytes) or len(raw) != 32:
            raise ConfigError("an Ed25519 secret key is 32 raw bytes")
        return cls(ed25519.Ed25519PrivateKey.from_private_bytes(raw))

    def private_bytes(self) -> bytes:
        """The 32 raw secret bytes, only for the client to store its own key."""
        return self._key.private_bytes(_RAW, _RAW_PRIV, serialization.NoEncryption())

    def public_bytes(self) -> bytes:
        """The 32-byte public key to register."""
        return self._key.public_key().public_bytes(_RAW, _RAW_PUB)

    def sign(self, message: bytes) -> bytes:
        """A 64-byte Ed25519 signature of ``message``."""
        return self._key.sign(message)

    def __repr__(self) -> str:
        return "IdentityKey(<secret>)"


class KeyRegistry:
    """Public identity keys by client id: the PKI stand-in all parties trust.

    A client id is registered once; registering another key for it is refused.

    >>> reg = KeyRegistry()
    >>> reg.register("c0", IdentityKey.generate().public_bytes())
    >>> reg.register("c0", IdentityKey.generate().public_bytes())
    Traceback (most recent call last):
    ...
    privspk.errors.KeyLeakError: client 'c0' already has an identity key; refusing to replace it
    """

    def __init__(self) -> None:
        self._keys: dict[str, ed25519.Ed25519PublicKey] = {}
        self._raw: dict[str, bytes] = {}

    def register(self, client_id: str, public_key: bytes) -> None:
        """Record ``client_id``'s public identity key (32 raw bytes)."""
        if not isinstance(client_id, str) or not client_id:
            raise ConfigError(f"client id must be a non-empty string, got {client_id!r}")
        if not isinstance(public_key, bytes) or len(public_key) != PUBLIC_KEY_BYTES:
            raise ConfigError(f"an identity key is {PUBLIC_KEY_BYTES} raw bytes")
        if client_id in self._raw:
            if self._raw[client_id] == public_key:
                return
            raise KeyLeakError(f"client {client_id!r} already has an identity key; refusing to replace it")
        self._keys[client_id] = ed25519.Ed25519PublicKey.from_public_bytes(public_key)
        self._raw[client_id] = public_key

    def __contains__(self, client_id: object) -> bool:
        return client_id in self._raw

    def copy(self) -> KeyRegistry:
        """A registry with the same keys; later registrations in either do not reach the other.

        >>> reg = KeyRegistry()
        >>> snap = reg.copy()
        >>> reg.register("c0", IdentityKey.generate().public_bytes())
        >>> "c0" in reg, "c0" in snap
        (True, False)
        """
        other = KeyRegistry()
        other._keys, other._raw = dict(self._keys), dict(self._raw)
        return other

    def public_bytes(self, client_id: str) -> bytes:
        """The registered public key of ``client_id``."""
        if client_id not in self._raw:
            raise ProtocolError("has no registered identity key", client=client_id)
        return self._raw[client_id]

    def verify(self, client_id: str, signature: bytes, message: bytes) -> None:
        """Check ``client_id``'s signature on ``message``; ProtocolError naming the client if it fails."""
        key = self._keys.get(client_id)
        if key is None:
            raise ProtocolError("has no registered identity key", client=client_id)
        try:
            key.verify(bytes(signature), bytes(message))
        except InvalidSignature:
            raise ProtocolError(
                "bad signature on its message (forged, altered or signed by another key)", client=client_id
            ) from None


def advert_message(digest: bytes, client_id: str, c_pk: bytes, s_pk: bytes, commitment: bytes) -> bytes:
    """What a client signs when it advertises its round keys and its self-mask seed commitment.

    >>> len(advert_message(bytes(32), "c0", bytes(32), bytes(32), bytes(32))) > 128
    True
    """
    return b"privspk/mask/advert/v1" + digest + encode_ids(client_id) + c_pk + s_pk + commitment


def confirm_message(digest: bytes, survivors: Iterable[str], shared: Iterable[str]) -> bytes:
    """What a client signs to confirm the view it was shown: the survivor set and the set of
    clients whose shares were forwarded at ``collect`` (consistency check; both length-prefixed).

    >>> confirm_message(bytes(32), ["a", "b"], ["a", "b"]) == confirm_message(bytes(32), ["a", "b"], ["a", "b", "c"])
    False
    """
    ids, sent = list(survivors), list(shared)
    return (b"privspk/mask/confirm/v2" + digest + struct.pack(">I", len(ids)) + encode_ids(*ids)
            + struct.pack(">I", len(sent)) + encode_ids(*sent))


class RoundKeyPair:
    """A fresh X25519 key pair for one round and one purpose (sealing shares or mask seeds).

    >>> a, b = RoundKeyPair.generate(), RoundKeyPair.generate()
    >>> a.agree(b.public_bytes(), peer="b") == b.agree(a.public_bytes(), peer="a")
    True
    """

    def __init__(self, key: x25519.X25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def generate(cls) -> RoundKeyPair:
        """A fresh key pair from the OS CSPRNG."""
        return cls(x25519.X25519PrivateKey.generate())

    @classmethod
    def from_secret(cls, secret: bytes) -> RoundKeyPair:
        """Rebuild a key pair from its 32 raw secret bytes (the server, for a dropped client's ``s`` key)."""
        if not isinstance(secret, bytes) or len(secret) != 32:
            raise ConfigError("an X25519 secret key is 32 raw bytes")
        return cls(x25519.X25519PrivateKey.from_private_bytes(secret))

    def public_bytes(self) -> bytes:
        """The 32-byte public key."""
        return self._key.public_key().public_bytes(_RAW, _RAW_PUB)

    def secret_bytes(self) -> bytes:
        """The 32 raw secret bytes (only to Shamir-share them)."""
        return self._key.private_bytes(_RAW, _RAW_PRIV, serialization.NoEncryption())

    def agree(self, peer_public: bytes, *, peer: str) -> bytes:
        """The 32-byte X25519 shared secret with ``peer``; a degenerate peer key is a ProtocolError."""
        try:
            pk = x25519.X25519PublicKey.from_public_bytes(bytes(peer_public))
            return self._key.exchange(pk)
        except ValueError as exc:  # low-order point: an all-zero shared secret
            raise ProtocolError(f"unusable X25519 public key ({exc})", client=peer) from None

    def __repr__(self) -> str:
        return "RoundKeyPair(<secret>)"


def _share_key(shared: bytes, *, digest: bytes, src: str, dst: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=digest, info=b"privspk/mask/share/v1" + encode_ids(src, dst)
    ).derive(shared)


def sealed_size(plain_len: int) -> int:
    """Bytes of a sealed share holding ``plain_len`` bytes.

    >>> sealed_size(48)
    76
    """
    return NONCE_BYTES + plain_len + TAG_BYTES


def seal(plain: bytes, *, shared: bytes, digest: bytes, src: str, dst: str) -> bytes:
    """AES-256-GCM-encrypt ``plain`` from ``src`` to ``dst`` (random nonce, bound to round and parties).

    >>> box = seal(b"s" * 48, shared=bytes(32), digest=b"d", src="a", dst="b")
    >>> open_sealed(box, shared=bytes(32), digest=b"d", src="a", dst="b")[:2]
    b'ss'
    """
    nonce = secrets.token_bytes(NONCE_BYTES)
    key = _share_key(shared, digest=digest, src=src, dst=dst)
    return nonce + AESGCM(key).encrypt(nonce, plain, digest + encode_ids(src, dst))


def open_sealed(box: bytes, *, shared: bytes, digest: bytes, src: str, dst: str) -> bytes:
    """Decrypt a sealed share; a forged, altered or mis-routed one is a ProtocolError naming ``src``.

    >>> box = seal(b"s" * 48, shared=bytes(32), digest=b"d", src="a", dst="b")
    >>> open_sealed(box, shared=bytes(32), digest=b"d", src="a", dst="c")
    Traceback (most recent call last):
    ...
    privspk.errors.ProtocolError: client a: its sealed share does not open (forged, altered or mis-routed)
    """
    key = _share_key(shared, digest=digest, src=src, dst=dst)
    try:
        return AESGCM(key).decrypt(box[:NONCE_BYTES], box[NONCE_BYTES:], digest + encode_ids(src, dst))
    except InvalidTag:
        raise ProtocolError("its sealed share does not open (forged, altered or mis-routed)", client=src) from None
