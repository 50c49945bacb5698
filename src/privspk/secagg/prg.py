"""Masks: an AES-256-CTR keystream read as words, from HKDF-derived keys.

Every mask in the ``mask`` scheme comes from here. A seed (a 32-byte X25519
shared secret, or a client's 16-byte self-mask seed) goes through HKDF-SHA256
with the round's public digest as salt and a purpose label as info; the 48 bytes
out are an AES-256 key and a 16-byte initial counter block. The keystream, read
as little-endian unsigned words, is the mask: uniform modulo ``2**word_bits``
because AES-CTR output is indistinguishable from uniform bytes. No seed is folded
or shortened and no non-cryptographic generator is involved.

>>> import numpy as np
>>> key = derive_mask_key(b"\\x01" * 32, salt=b"round-digest", info=b"example")
>>> m = MaskStream(dim=4, dtype=np.uint16)
>>> acc = np.zeros(4, dtype=np.uint16)
>>> m.apply(acc, key, sign=+1)
>>> m.apply(acc, key, sign=-1)
>>> acc.tolist()
[0, 0, 0, 0]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from privspk.errors import ConfigError

MIN_SEED_BYTES = 16
"""Shortest seed accepted (128 bits)."""

_KEY_BYTES = 32  # AES-256
_IV_BYTES = 16


@dataclass(frozen=True)
class MaskKey:
    """An AES-256 key and initial counter block for one mask (derive with :func:`derive_mask_key`).

    >>> k = derive_mask_key(bytes(16), salt=b"s", info=b"i")
    >>> len(k.key), len(k.iv)
    (32, 16)
    """

    key: bytes
    iv: bytes

    def __repr__(self) -> str:  # never print key material
        return "MaskKey(<secret>)"


def derive_mask_key(seed: bytes, *, salt: bytes, info: bytes) -> MaskKey:
    """HKDF-SHA256 of ``seed`` into a :class:`MaskKey`; refuses seeds under 128 bits.

    ``salt`` binds the round (its public digest), ``info`` the purpose and parties,
    so two masks share a key only if they share seed, round and purpose.

    >>> derive_mask_key(b"short", salt=b"s", info=b"i")
    Traceback (most recent call last):
    ...
    privspk.errors.ConfigError: mask seed is 5 bytes; at least 16 (128 bits) are required
    """
    if not isinstance(seed, (bytes, bytearray)) or len(seed) < MIN_SEED_BYTES:
        n = len(seed) if isinstance(seed, (bytes, bytearray)) else type(seed).__name__
        raise ConfigError(f"mask seed is {n} bytes; at least {MIN_SEED_BYTES} (128 bits) are required")
    out = HKDF(algorithm=hashes.SHA256(), length=_KEY_BYTES + _IV_BYTES, salt=bytes(salt), info=bytes(info)).derive(
        bytes(seed)
    )
    return MaskKey(key=out[:_KEY_BYTES], iv=out[_KEY_BYTES:])


class MaskStream:
    """Generates masks of ``dim`` words of ``dtype`` into one reusable buffer.

    :meth:`mask` returns a read-only view valid until the next call;
    :meth:`apply` adds or subtracts a mask in place modulo ``2**word_bits``.

    >>> ms = MaskStream(dim=3, dtype=np.uint32)
    >>> a = ms.mask(derive_mask_key(bytes(32), salt=b"", info=b"a")).copy()
    >>> b = ms.mask(derive_mask_key(bytes(32), salt=b"", info=b"b"))
    >>> bool((a != b).any()), a.dtype.str
    (True, '<u4')
    """

    def __init__(self, *, dim: int, dtype: type[np.unsignedinteger] | np.dtype) -> None:
        dt = np.dtype(dtype)
        if dt.kind != "u":
            raise ConfigError(f"masks are unsigned words; got dtype {dt}")
        if type(dim) is not int or dim < 1:
            raise ConfigError(f"dim must be a positive int, got {dim!r}")
        self.dim = dim
        self.dtype = dt.newbyteorder("<")
        self._nbytes = dim * dt.itemsize
        self._zeros = bytes(self._nbytes)
        # cryptography's update_into wants room for one extra block minus one byte.
        self._buf = bytearray(self._nbytes + 15)

    def mask(self, key: MaskKey) -> np.ndarray:
        """The mask for ``key`` as little-endian words (a view into the internal buffer)."""
        enc = Cipher(algorithms.AES(key.key), modes.CTR(key.iv)).encryptor()
        n = enc.update_into(self._zeros, self._buf)
        if n != self._nbytes:  # pragma: no cover - a CTR encryptor outputs what it is given
            raise ConfigError(f"keystream came out {n} bytes, wanted {self._nbytes}")
        view = np.frombuffer(self._buf, dtype=self.dtype, count=self.dim)
        view.flags.writeable = False
        return view

    def apply(self, acc: np.ndarray, key: MaskKey, *, sign: int) -> None:
        """``acc += sign * mask(key)`` modulo ``2**word_bits``, in place (``sign`` is +1 or -1)."""
        if acc.shape != (self.dim,) or acc.dtype.itemsize != self.dtype.itemsize or acc.dtype.kind != "u":
            raise ConfigError(f"accumulator must be {self.dim} words of {self.dtype}, got {acc.shape} {acc.dtype}")
        m = self.mask(key)
        if sign == 1:
            np.add(acc, m, out=acc, casting="unsafe")
        elif sign == -1:
            np.subtract(acc, m, out=acc, casting="unsafe")
        else:
            raise ConfigError(f"sign must be +1 or -1, got {sign!r}")
