"""Shamir t-of-n secret sharing of byte strings, block by block, over GF(2^128).

A secret of ``16 * m`` bytes is cut into ``m`` blocks; each block is the constant term of a
random polynomial of degree ``t - 1`` over GF(2^128) (coefficients from the OS CSPRNG, fresh
per block), and holder ``i`` (1-based) gets the concatenation of its ``m`` evaluations at
``x = i``. Fewer than ``t`` shares say nothing about the secret. Reconstruction always uses
**exactly** ``t`` shares (the ``t`` lowest indices offered), never all of them.

The field, the element encoding and the share format are those of pycryptodome's
:class:`Crypto.Protocol.SecretSharing.Shamir` (irreducible polynomial
``x^128 + x^7 + x^2 + x + 1``, a 16-byte block read big-endian as the coefficient bits, the
least significant bit the constant term): a share made here opens with pycryptodome's
``Shamir.combine`` and the other way round (``tests/secagg/test_secagg_shamir.py`` checks
both directions). What differs is speed, which the cross-device round needs (thousands of
secrets per round): pycryptodome multiplies bit by bit with string conversions
(~100 us a product); here a product is a carry-less multiplication four bits at a time on
Python integers plus the two-step reduction (~5 us), the Lagrange coefficients at 0 of an
index set are computed once and reused (in a SecAgg+ round most secrets are rebuilt from the
same share positions), and one block costs ``t`` products to rebuild. Nothing here is a new
primitive: it is Shamir's scheme in pycryptodome's field, cross-checked against it.

>>> shares = split_secret(bytes(range(32)), threshold=2, n_shares=3)
>>> [len(s) for s in shares]
[32, 32, 32]
>>> combine_secret({3: shares[2], 1: shares[0]}, threshold=2) == bytes(range(32))
True
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence

from privspk.errors import AggregationError, ConfigError

__all__ = ["BLOCK", "MAX_SHARES", "combine_secret", "gf_mul", "split_secret"]

BLOCK = 16
"""Bytes per Shamir block (one GF(2^128) element)."""

MAX_SHARES = 255
"""Most holders of one secret (share indices 1..255)."""

_BITS = 128
_MASK = (1 << _BITS) - 1
_R = 0x87  # x^7 + x^2 + x + 1: x^128 reduces to this


def gf_mul(a: int, b: int) -> int:
    """Product of two GF(2^128) elements (ints < 2^128, bit i = coefficient of x^i).

    >>> gf_mul(2, 1 << 127) == 0x87  # x * x^127 = x^128 = x^7 + x^2 + x + 1
    True
    >>> gf_mul(0x1234, 1) == 0x1234 and gf_mul(5, 3) == 15  # (x^2+1)(x+1) = x^3+x^2+x+1
    True
    """
    # carry-less a * b, four bits of b at a time, from a table of a * (0..15)
    t = [0] * 16
    for i in range(1, 16):
        t[i] = (t[i >> 1] << 1) ^ (a if i & 1 else 0)
    z = 0
    for shift in range(_BITS - 4, -4, -4):
        z = (z << 4) ^ t[(b >> shift) & 15]
    # reduce modulo x^128 + x^7 + x^2 + x + 1 (twice: the first fold can spill 7 bits back over)
    for _ in range(2):
        h = z >> _BITS
        z = (z & _MASK) ^ h ^ (h << 1) ^ (h << 2) ^ (h << 7)
    return z


def _gf_mul_small(a: int, x: int) -> int:
    """``a * x`` for a share index ``x`` < 256 (at most 8 shifts; one fold reduces it).

    >>> all(_gf_mul_small(a, x) == gf_mul(a, x) for a in (1, 3, (1 << 128) - 1, 0x87 << 120) for x in (1, 2, 255))
    True
    """
    z, s = 0, 0
    while x:
        if x & 1:
            z ^= a << s
        x >>= 1
        s += 1
    h = z >> _BITS  # at most 7 bits: h << 7 stays below x^128
    return (z & _MASK) ^ h ^ (h << 1) ^ (h << 2) ^ (h << 7)


def _gf_inv(a: int) -> int:
    """``a^(2^128 - 2)``, the inverse of a non-zero element (square and multiply)."""
    if a == 0:
        raise ArithmeticError("0 has no inverse")
    result, base, e = 1, a, (1 << _BITS) - 2
    while e:
        if e & 1:
            result = gf_mul(result, base)
        base = gf_mul(base, base)
        e >>= 1
    return result


@functools.lru_cache(maxsize=4096)
def _lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Coefficients ``l_i = prod_{j != i} x_j / (x_j - x_i)`` (subtraction is XOR in GF(2^m))."""
    out = []
    for i, xi in enumerate(xs):
        num = den = 1
        for j, xj in enumerate(xs):
            if j != i:
                num = gf_mul(num, xj)
                den = gf_mul(den, xj ^ xi)
        out.append(gf_mul(num, _gf_inv(den)))
    return tuple(out)


def _split_block(block: bytes, threshold: int, n_shares: int) -> list[int]:
    """Evaluations at ``x = 1..n_shares`` of a random degree ``threshold - 1`` polynomial with constant ``block``."""
    rand = os.urandom(BLOCK * (threshold - 1))
    coeffs = [int.from_bytes(rand[k : k + BLOCK], "big") for k in range(0, len(rand), BLOCK)]
    secret = int.from_bytes(block, "big")
    out = []
    for x in range(1, n_shares + 1):
        acc = 0
        for c in reversed(coeffs):  # Horner: ((c_{t-1} x + c_{t-2}) x + ...) x + secret
            acc = _gf_mul_small(acc ^ c, x)
        out.append(acc ^ secret)
    return out


def _combine_block(parts: Sequence[tuple[int, bytes]]) -> bytes:
    """The constant term of the polynomial through ``parts`` (``(index, 16-byte value)``, all of them used)."""
    lam = _lagrange_at_zero(tuple(i for i, _ in parts))
    acc = 0
    for li, (_, y) in zip(lam, parts):
        acc ^= gf_mul(li, int.from_bytes(y, "big"))
    return acc.to_bytes(BLOCK, "big")


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
    if n_shares > MAX_SHARES:
        raise ConfigError(f"at most {MAX_SHARES} shares per secret, got n_shares={n_shares}")
    per_holder: list[list[bytes]] = [[] for _ in range(n_shares)]
    for off in range(0, len(secret), BLOCK):
        for holder, value in zip(per_holder, _split_block(bytes(secret[off : off + BLOCK]), threshold, n_shares)):
            holder.append(value.to_bytes(BLOCK, "big"))
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
    if len(lengths) != 1 or not all(type(i) is int and 1 <= i <= MAX_SHARES for i in chosen):
        raise AggregationError(f"{what}: shares have mixed lengths {sorted(lengths)} or bad indices {chosen}")
    (length,) = lengths
    if length == 0 or length % BLOCK:
        raise AggregationError(f"{what}: share length {length} is not a multiple of {BLOCK}")
    blocks = []
    for off in range(0, length, BLOCK):
        blocks.append(_combine_block([(i, bytes(shares[i][off : off + BLOCK])) for i in chosen]))
    return b"".join(blocks)
