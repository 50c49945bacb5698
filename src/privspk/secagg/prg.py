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

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from privspk.errors import ConfigError

MIN_SEED_BYTES = 16
"""Shortest seed accepted (128 bits)."""

_KEY_BYTES = 32  # AES-256
_IV_BYTES = 16
_SLICE_BYTES = 1 << 18  # accumulator slice that stays in L2 while every mask is added to it


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
    """Generates masks of ``dim`` words of ``dtype`` and adds them into an accumulator.

    :meth:`apply_all` adds or subtracts many masks in place modulo ``2**word_bits``,
    one cache-sized slice at a time with every keystream advancing together, so the
    accumulator slice stays in cache and no full-length mask is ever materialised.
    :meth:`mask` returns one whole mask (a read-only view valid until the next call).

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
        self._step = max(1, _SLICE_BYTES // dt.itemsize)  # words per slice

    def mask(self, key: MaskKey) -> np.ndarray:
        """The whole mask for ``key`` as little-endian words (read-only)."""
        buf = bytearray(self._nbytes + 15)  # update_into wants one block minus one byte of room
        _keystream(key).update_into(bytes(self._nbytes), buf)
        view = np.frombuffer(buf, dtype=self.dtype, count=self.dim)
        view.flags.writeable = False
        return view

    def apply(self, acc: np.ndarray, key: MaskKey, *, sign: int) -> None:
        """``acc += sign * mask(key)`` modulo ``2**word_bits``, in place (``sign`` is +1 or -1)."""
        self.apply_all(acc, [(key, sign)])

    def apply_all(self, acc: np.ndarray, masks: Sequence[tuple[MaskKey, int]]) -> None:
        """``acc += sum(sign * mask(key) for key, sign in masks)`` modulo ``2**word_bits``, in place.

        >>> ks = [derive_mask_key(bytes([i]) * 16, salt=b"", info=b"") for i in range(3)]
        >>> a = np.zeros(5, dtype=np.uint16); b = np.zeros(5, dtype=np.uint16)
        >>> ms = MaskStream(dim=5, dtype=np.uint16)
        >>> ms.apply_all(a, [(ks[0], 1), (ks[1], -1), (ks[2], 1)])
        >>> for k, s in [(ks[0], 1), (ks[1], -1), (ks[2], 1)]:
        ...     ms.apply(b, k, sign=s)
        >>> a.tolist() == b.tolist()
        True
        """
        if acc.shape != (self.dim,) or acc.dtype.itemsize != self.dtype.itemsize or acc.dtype.kind != "u":
            raise ConfigError(f"accumulator must be {self.dim} words of {self.dtype}, got {acc.shape} {acc.dtype}")
        bad = [s for _, s in masks if s not in (1, -1) or type(s) is not int]
        if bad:
            raise ConfigError(f"sign must be +1 or -1, got {bad[0]!r}")
        streams = [(_keystream(key), sign) for key, sign in masks]
        item = self.dtype.itemsize
        zeros = memoryview(bytes(self._step * item))
        buf = bytearray(self._step * item + 15)
        words = np.frombuffer(buf, dtype=self.dtype, count=self._step)
        for start in range(0, self.dim, self._step):
            seg = acc[start : start + self._step]
            n = seg.shape[0]
            mask = words[:n]
            for enc, sign in streams:
                enc.update_into(zeros[: n * item], buf)
                if sign == 1:
                    np.add(seg, mask, out=seg, casting="unsafe")
                else:
                    np.subtract(seg, mask, out=seg, casting="unsafe")


def _keystream(key: MaskKey) -> CipherContext:
    return Cipher(algorithms.AES(key.key), modes.CTR(key.iv)).encryptor()
