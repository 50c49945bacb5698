"""Shamir t-of-n secret sharing of byte strings, block by block (pycryptodome).

A secret of ``16 * m`` bytes is cut into ``m`` blocks; each block is shared with
:class:`Crypto.Protocol.SecretSharing.Shamir` over GF(2^128) (fresh random
coefficients from the OS CSPRNG per block), and holder ``i`` (1-based) gets the
concatenation of its ``m`` block shares. Fewer than ``t`` shares say nothing
about the secret. Reconstruction always uses **exactly** ``t`` shares (the ``t``
lowest indices offered), never all of them: interpolation cost grows with the
number of shares and ``t`` is all it needs.

>>> shares = split_secret(bytes(range(32)), threshold=2, n_shares=3)
>>> [len(s) for s in shares]
[32, 32, 32]
>>> combine_secret({3: shares[2], 1: shares[0]}, threshold=2) == bytes(range(32))
True
"""

from __future__ import annotations

from collections.abc import Mapping

from Crypto.Protocol.SecretSharing import Shamir

from privspk.errors import AggregationError, ConfigError

BLOCK = 16
"""Bytes per Shamir block (one GF(2^128) element)."""


def split_secret(secret: bytes, *, threshold: int, n_shares: int) -> list[bytes]:
    """Shares of ``secret`` for holders ``1..n_shares``; any ``threshold`` of them rebuild it.

    >>> split_secret(b"x" * 10, threshold=2, n_shares=3)
    Traceback (most recent call last):
    ...
    privspk.errors.ConfigError: a shared secret must be a non-empty multiple of 16 bytes, got 10
    """
    if not isinstance(secret, (bytes, bytearray)) or not secret or len(secret) % BLOCK:
        n = len(secret) if isinstance(secret, (bytes, bytearray)) else type(secret).__name__
        raise ConfigError(f"a shared secret must be a non-empty multiple of {BLOCK} bytes, got {n}")
    if type(threshold) is not int or type(n_shares) is not int or not 2 <= threshold <= n_shares:
        raise ConfigError(f"need 2 <= threshold <= n_shares, got threshold={threshold!r}, n_shares={n_shares!r}")
    per_holder: list[list[bytes]] = [[] for _ in range(n_shares)]
    for off in range(0, len(secret), BLOCK):
        for idx, share in Shamir.split(threshold, n_shares, bytes(secret[off : off + BLOCK])):
            per_holder[idx - 1].append(share)
    return [b"".join(parts) for parts in per_holder]


def combine_secret(shares: Mapping[int, bytes], *, threshold: int, what: str = "secret") -> bytes:
    """Rebuild a secret from ``threshold`` of the offered shares (holder index -> share).

    Uses exactly the ``threshold`` lowest indices; fewer than ``threshold`` shares
    raise :class:`~privspk.errors.AggregationError` naming ``what``.

    >>> s = split_secret(bytes(16), threshold=3, n_shares=4)
    >>> combine_secret({1: s[0], 2: s[1]}, threshold=3, what="seed of c1")
    Traceback (most recent call last):
    ...
    privspk.errors.AggregationError: seed of c1: only 2 shares, 3 needed; it cannot be rebuilt
    """
    if type(threshold) is not int or threshold < 2:
        raise ConfigError(f"threshold must be an int >= 2, got {threshold!r}")
    if len(shares) < threshold:
        raise AggregationError(f"{what}: only {len(shares)} shares, {threshold} needed; it cannot be rebuilt")
    chosen = sorted(shares)[:threshold]
    lengths = {len(shares[i]) for i in chosen}
    if len(lengths) != 1 or not all(isinstance(i, int) and i >= 1 for i in chosen):
        raise AggregationError(f"{what}: shares have mixed lengths {sorted(lengths)} or bad indices {chosen}")
    (length,) = lengths
    if length == 0 or length % BLOCK:
        raise AggregationError(f"{what}: share length {length} is not a multiple of {BLOCK}")
    blocks = []
    for off in range(0, length, BLOCK):
        blocks.append(Shamir.combine([(i, bytes(shares[i][off : off + BLOCK])) for i in chosen]))
    return b"".join(blocks)
