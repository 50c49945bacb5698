"""Raw ciphertext words: TenSEAL vectors in and out, bit-exact packing, sums and sketches.

A TenSEAL (SEAL) ciphertext is two polynomials whose coefficients are residues
modulo the primes ``q_l`` of the coefficient modulus. TenSEAL's own serialisation
stores each residue in a 64-bit word and zstd-compresses the lot (11.4 bytes/param
for a 36-bit BFV modulus). Here a ciphertext travels as its residues packed at exactly
``bit_length(q_l)`` bits each (9 bytes/param for that modulus), and the server adds
ciphertexts as numpy arrays modulo ``q_l`` without ever loading them into SEAL: that
is all a homomorphic sum is, and it skips SEAL's deserialisation, which dominates
the server's time otherwise.

Words are ``uint64`` arrays of shape ``(chunks, 2, L, N)``: chunk, polynomial,
prime, coefficient - SEAL's own memory order for a ciphertext.

>>> layout = CipherLayout(poly_degree=8, moduli=(97, 17))
>>> rng = np.random.default_rng(0)
>>> words = layout.random_words(3, rng=rng)
>>> blob = layout.pack(words)
>>> len(blob) == layout.packed_bytes(3)
True
>>> bool((layout.unpack(blob, n_chunks=3) == words).all())
True
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from privspk.errors import ConfigError, ProtocolError

CIPHERTEXT_POLYS = 2
SKETCH_ROWS = 4
"""Independent rows of a sketch; each lets a wrong sum pass with probability <= 2**-16."""
_SKETCH_ENTRY_BITS = 16
_BLOCK = 1 << 20  # sums of 2**20 products of two 16-bit numbers are exact in float64

_SEAL_MAGIC = 0xA15E
_SEAL_HEADER = struct.Struct("<HBBBBHQ")  # magic, header size, major, minor, compression, reserved, size
_COMPR_NONE, _COMPR_ZLIB, _COMPR_ZSTD = 0, 1, 2
# Ciphertext members before the coefficient array (SEAL 4.x): parms_id, is_ntt_form, size,
# poly_modulus_degree, coeff_modulus_size, scale, correction_factor; then the array, itself a
# SEAL-framed blob (header + uint64 count + words).
_CT_MEMBERS = struct.Struct("<4QBQQQdQ")
_COUNT = struct.Struct("<Q")


# --------------------------------------------------------------------------- primes

_MR_EXACT_BELOW = 318665857834031151167461  # smallest strong pseudoprime to the bases 2..37


def is_prime(n: int) -> bool:
    """Deterministic Miller-Rabin with the first 12 prime bases, exact below 3.18e23.

    That covers SEAL's primes (at most 61 bits); larger ``n`` is refused.

    >>> [p for p in range(30) if is_prime(p)]
    [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]
    >>> is_prime(2**61 - 1), is_prime(2**61 + 1)
    (True, False)
    """
    if n >= _MR_EXACT_BELOW:
        raise ConfigError(f"{n} is beyond the range where this primality test is exact (3.18e23)")
    if n < 2:
        return False
    small = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)
    for p in small:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in small:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def ntt_primes(poly_degree: int, bit_sizes: Sequence[int]) -> tuple[int, ...]:
    """The primes SEAL's ``CoeffModulus::Create(N, bit_sizes)`` picks, in the same order.

    For each bit size SEAL walks down from ``2**bits`` through values ``= 1 mod 2N`` and
    hands out the primes it finds from the smallest it needed upwards.

    >>> ntt_primes(4096, [36, 21])
    (68719403009, 2056193)
    """
    factor = 2 * poly_degree
    wanted: dict[int, int] = {}
    for b in bit_sizes:
        wanted[b] = wanted.get(b, 0) + 1
    found: dict[int, list[int]] = {}
    for b, count in wanted.items():
        primes: list[int] = []
        value = ((1 << b) - 1) // factor * factor + 1
        lower = 1 << (b - 1)
        while len(primes) < count and value > lower:
            if is_prime(value):
                primes.append(value)
            value -= factor
        if len(primes) < count:
            raise ConfigError(f"there are fewer than {count} {b}-bit primes = 1 mod {factor}; choose other bit sizes")
        found[b] = primes
    return tuple(found[b].pop() for b in bit_sizes)


def batching_prime(above: int, poly_degree: int) -> int:
    """Smallest prime ``t > above`` with ``t = 1 mod 2N`` (a BFV plain modulus that allows batching).

    >>> batching_prime(2**22, 4096)
    4300801
    """
    factor = 2 * poly_degree
    t = (above // factor) * factor + 1
    if t <= above:
        t += factor
    while not is_prime(t):
        t += factor
    return t


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class CipherLayout:
    """Shape of the ciphertexts of one context: ring degree ``N`` and the data-level primes.

    Args:
        poly_degree: ring degree N (a power of two).
        moduli: primes ``q_l`` of the ciphertexts as encrypted (the key-switching prime
            is not among them).

    >>> CipherLayout(poly_degree=4096, moduli=(68719230977,)).bits_per_chunk
    294912
    """

    poly_degree: int
    moduli: tuple[int, ...]
    widths: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        n = self.poly_degree
        if type(n) is not int or n < 4 or n & (n - 1):
            raise ConfigError(f"poly_degree must be a power of two >= 4, got {n!r}")
        moduli = tuple(self.moduli)
        if not moduli or any(type(q) is not int or not 2 < q < 1 << 62 for q in moduli):
            raise ConfigError(f"moduli must be ints in (2, 2**62), got {self.moduli!r}")
        object.__setattr__(self, "moduli", moduli)
        object.__setattr__(self, "widths", tuple(q.bit_length() for q in moduli))

    @property
    def words_per_chunk(self) -> int:
        """Residues in one ciphertext (2 polynomials x L primes x N)."""
        return CIPHERTEXT_POLYS * len(self.moduli) * self.poly_degree

    @property
    def bits_per_chunk(self) -> int:
        """Bits one ciphertext takes packed."""
        return CIPHERTEXT_POLYS * self.poly_degree * sum(self.widths)

    def packed_bytes(self, n_chunks: int) -> int:
        """Exact length of ``n_chunks`` packed ciphertexts.

        >>> CipherLayout(poly_degree=8, moduli=(97,)).packed_bytes(1)  # 16 x 7 bits
        14
        """
        return n_chunks * CIPHERTEXT_POLYS * self.poly_degree * sum(self.widths) // 8

    def fingerprint(self) -> str:
        """Short hex digest of the layout (not of the key: see :func:`context_fingerprint`)."""
        return hashlib.sha256(repr((self.poly_degree, self.moduli)).encode()).hexdigest()[:16]

    def zeros(self, n_chunks: int) -> np.ndarray:
        """An all-zero word array (the sum of nothing)."""
        return np.zeros((n_chunks, CIPHERTEXT_POLYS, len(self.moduli), self.poly_degree), dtype=np.uint64)

    def random_words(self, n_chunks: int, *, rng: np.random.Generator) -> np.ndarray:
        """Uniform residues (what a ciphertext looks like without the key); for tests.

        >>> w = CipherLayout(poly_degree=4, moduli=(97,)).random_words(2, rng=np.random.default_rng(1))
        >>> w.shape, bool(w.max() < 97)
        ((2, 2, 1, 4), True)
        """
        out = self.zeros(n_chunks)
        for l, q in enumerate(self.moduli):
            out[:, :, l, :] = rng.integers(0, q, size=out[:, :, l, :].shape, dtype=np.uint64)
        return out

    def _q(self) -> np.ndarray:
        return np.asarray(self.moduli, dtype=np.uint64).reshape(1, 1, -1, 1)

    def check(self, words: np.ndarray, *, client: str | None = None) -> np.ndarray:
        """Refuse an array of the wrong shape/dtype or with a residue ``>= q_l``."""
        if not isinstance(words, np.ndarray) or words.dtype != np.uint64 or words.ndim != 4:
            raise ProtocolError("ciphertext words must be a 4-D uint64 array", client=client)
        if words.shape[1:] != (CIPHERTEXT_POLYS, len(self.moduli), self.poly_degree):
            raise ProtocolError(
                f"ciphertext shape {words.shape[1:]} does not match this context "
                f"{(CIPHERTEXT_POLYS, len(self.moduli), self.poly_degree)}",
                client=client,
            )
        bad = words >= self._q()
        if bad.any():
            l = int(np.argwhere(bad)[0][2])
            raise ProtocolError(
                f"{int(bad.sum())} residues are not below the modulus q_{l} = {self.moduli[l]}: "
                "not a ciphertext under this context",
                client=client,
            )
        return words

    def pack(self, words: np.ndarray) -> bytes:
        """Residues of prime ``l`` at ``widths[l]`` bits each, prime after prime, little-endian."""
        self.check(words)
        parts = [_pack_bits(np.ascontiguousarray(words[:, :, l, :]).ravel(), w) for l, w in enumerate(self.widths)]
        return b"".join(parts)

    def unpack(self, blob: bytes, *, n_chunks: int, client: str | None = None) -> np.ndarray:
        """Inverse of :meth:`pack`; a wrong length or a residue ``>= q_l`` -> ProtocolError."""
        if type(n_chunks) is not int or n_chunks < 1:
            raise ProtocolError(f"chunk count must be a positive int, got {n_chunks!r}", client=client)
        want = self.packed_bytes(n_chunks)
        if len(blob) != want:
            raise ProtocolError(
                f"{n_chunks} packed ciphertexts take {want} bytes, got {len(blob)} "
                f"({'truncated' if len(blob) < want else 'oversized'})",
                client=client,
            )
        n = n_chunks * CIPHERTEXT_POLYS * self.poly_degree
        buf = np.zeros(len(blob) + 8, dtype=np.uint8)  # 8 spare bytes: every record is read as a uint64
        buf[: len(blob)] = np.frombuffer(blob, dtype=np.uint8)
        shape = (n_chunks, CIPHERTEXT_POLYS, self.poly_degree)
        if len(self.moduli) == 1:
            out = _unpack_bits(buf, 0, n, self.widths[0]).reshape(n_chunks, CIPHERTEXT_POLYS, 1, self.poly_degree)
        else:
            out = self.zeros(n_chunks)
            pos = 0
            for l, w in enumerate(self.widths):
                out[:, :, l, :] = _unpack_bits(buf, pos, n, w).reshape(shape)
                pos += n * w // 8
        return self.check(out, client=client)

    @property
    def lazy_adds(self) -> int:
        """How many reduced word arrays can be added in uint64 before a reduction is due.

        >>> CipherLayout(poly_degree=8, moduli=(2**61 - 1,)).lazy_adds
        8
        """
        return (2**64 - 1) // max(self.moduli)

    def reduce(self, acc: np.ndarray) -> np.ndarray:
        """``acc mod q_l`` in place (after up to :attr:`lazy_adds` unreduced additions)."""
        np.remainder(acc, self._q(), out=acc)
        return acc

    def add_into(self, acc: np.ndarray, words: np.ndarray) -> np.ndarray:
        """``acc += words`` modulo each ``q_l``, in place (both already reduced)."""
        q = self._q()
        np.add(acc, words, out=acc)
        np.subtract(acc, q, out=acc, where=acc >= q)
        return acc

    def sub_into(self, acc: np.ndarray, words: np.ndarray) -> np.ndarray:
        """``acc -= words`` modulo each ``q_l``, in place (both already reduced)."""
        q = self._q()
        np.add(acc, q - words, out=acc)
        np.subtract(acc, q, out=acc, where=acc >= q)
        return acc

    def sketch(self, words: np.ndarray, challenge: bytes) -> list[list[int]]:
        """``SKETCH_ROWS`` inner products ``<r_k, words_l> mod q_l`` with ``r`` drawn from ``challenge``.

        Linear in ``words`` modulo each prime, so the sketch of a sum is the sum of the
        sketches; a claimed sum that differs from the true one in any residue matches
        with probability at most ``2**-16`` per row when ``challenge`` is secret until
        the sum is fixed (Schwartz-Zippel over F_q with ``r`` from a set of ``2**16``).

        >>> lay = CipherLayout(poly_degree=4, moduli=(97, 89))
        >>> rng = np.random.default_rng(2)
        >>> a, b = lay.random_words(2, rng=rng), lay.random_words(2, rng=rng)
        >>> s = lay.add_into(a.copy(), b)
        >>> ch = bytes(32)
        >>> ka, kb, ks = lay.sketch(a, ch), lay.sketch(b, ch), lay.sketch(s, ch)
        >>> all((x + y) % q == z for ra, rb, rs in zip(ka, kb, ks) for x, y, z, q in zip(ra, rb, rs, lay.moduli))
        True
        """
        if not isinstance(challenge, (bytes, bytearray)) or len(challenge) != 32:
            raise ProtocolError("a sketch challenge must be 32 bytes")
        self.check(words)
        n = words.shape[0] * CIPHERTEXT_POLYS * self.poly_degree
        r = _keystream(bytes(challenge), SKETCH_ROWS * n * 2).view("<u2").reshape(SKETCH_ROWS, n)
        totals = [[0] * len(self.moduli) for _ in range(SKETCH_ROWS)]
        for l in range(len(self.moduli)):
            x = np.ascontiguousarray(words[:, :, l, :]).reshape(n)
            for start in range(0, n, _BLOCK):
                # 16-bit limbs times 16-bit r: block sums stay below 2**52, exact in float64 (BLAS)
                limbs = x[start : start + _BLOCK].view("<u2").reshape(-1, 4).astype(np.float64)
                part = r[:, start : start + _BLOCK].astype(np.float64) @ limbs
                for k in range(SKETCH_ROWS):
                    totals[k][l] += sum(int(part[k, j]) << (16 * j) for j in range(4))
        return [[t % q for t, q in zip(row, self.moduli)] for row in totals]


def _records(n_bytes: int) -> tuple[np.dtype, tuple[int, ...]]:
    """A packed record of ``n_bytes`` little-endian bytes split into u4/u2/u1 fields (byte offsets)."""
    names, formats, offsets = [], [], []
    off = 0
    for size, code in ((4, "<u4"), (2, "<u2"), (1, "u1")):
        while n_bytes - off >= size:
            names.append(f"b{off}")
            formats.append(code)
            offsets.append(off)
            off += size
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": n_bytes}), tuple(offsets)


def _put(values: np.ndarray, n_bytes: int) -> bytes:
    if n_bytes == 0:
        return b""
    dtype, offsets = _records(n_bytes)
    rec = np.empty(values.size, dtype=dtype)
    for off in offsets:
        rec[f"b{off}"] = values >> np.uint64(8 * off) if off else values  # numpy truncates to the field
    return rec.tobytes()


def _read(buf: np.ndarray, n_bytes: int, count: int, offset: int) -> np.ndarray:
    """``count`` little-endian ``n_bytes``-byte records from ``buf`` (uint8, readable 8 bytes past the last)."""
    if n_bytes == 0:
        return np.zeros(count, dtype=np.uint64)
    # overlapping unaligned 8-byte loads every n_bytes bytes, then keep the low n_bytes
    view = np.ndarray(shape=(count,), dtype="<u8", buffer=buf, offset=offset, strides=(n_bytes,))
    return view & np.uint64((1 << (8 * n_bytes)) - 1)


def _pack_bits(values: np.ndarray, width: int) -> bytes:
    """``values`` (< 2**width, count divisible by 8) at ``width`` bits each.

    The low ``width // 8`` whole bytes of each value come first; then the ``r = width % 8``
    leftover high bits, eight values to an ``r``-byte record (value ``j*m + i`` of the
    ``m = n/8`` values of plane ``j`` sits at bits ``r*j`` of record ``i``).
    """
    k, r = divmod(width, 8)
    low = _put(values, k)
    if not r:
        return low
    high = (values >> np.uint64(8 * k)).reshape(8, -1)
    group = high[0].copy()
    for j in range(1, 8):
        group |= high[j] << np.uint64(r * j)
    return low + _put(group, r)


def _unpack_bits(buf: np.ndarray, offset: int, n: int, width: int) -> np.ndarray:
    """Inverse of :func:`_pack_bits` reading at ``offset`` of a padded uint8 buffer."""
    k, r = divmod(width, 8)
    values = _read(buf, k, n, offset)
    if r:
        group = _read(buf, r, n // 8, offset + n * k)
        mask = np.uint64((1 << r) - 1)
        planes = values.reshape(8, -1)
        for j in range(8):
            planes[j] |= ((group >> np.uint64(r * j)) & mask) << np.uint64(8 * k)
    return values


def _keystream(key: bytes, n_bytes: int) -> np.ndarray:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    return np.frombuffer(enc.update(bytes(n_bytes)) + enc.finalize(), dtype=np.uint8)


# --------------------------------------------------------------------------- TenSEAL <-> words


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ProtocolError("malformed protobuf varint in a TenSEAL vector")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _put_varint(out: bytearray, value: int) -> None:
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return


def _proto_fields(buf: bytes) -> dict[int, list[Any]]:
    """Fields of a protobuf message (length-delimited -> bytes, varint -> int, fixed64 -> bytes)."""
    out: dict[int, list[Any]] = {}
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wire_type = key >> 3, key & 7
        if wire_type == 2:
            n, pos = _varint(buf, pos)
            out.setdefault(num, []).append(buf[pos : pos + n])
            pos += n
        elif wire_type == 0:
            v, pos = _varint(buf, pos)
            out.setdefault(num, []).append(v)
        elif wire_type == 1:
            out.setdefault(num, []).append(buf[pos : pos + 8])
            pos += 8
        else:
            raise ProtocolError(f"unexpected protobuf wire type {wire_type} in a TenSEAL vector")
    return out


def _zstd_decompress(payload: bytes, limit: int) -> bytes:
    """Decompress a zstd stream with the PyPI ``zstandard`` binding, reading at most ``limit`` bytes out.

    The bound keeps a hostile peer's stream from expanding without limit; the caller
    checks the length it needs (reading one byte past it tells a longer stream apart).

    >>> import zstandard
    >>> _zstd_decompress(zstandard.ZstdCompressor().compress(b"abc" * 4), 100)
    b'abcabcabcabc'
    """
    import zstandard

    out = bytearray()
    try:
        with zstandard.ZstdDecompressor().stream_reader(payload) as reader:
            while len(out) < limit:
                chunk = reader.read(limit - len(out))
                if not chunk:
                    break
                out += chunk
    except zstandard.ZstdError as exc:
        raise ProtocolError(f"zstd could not decompress a SEAL ciphertext ({exc})") from None
    return bytes(out)


def _seal_members(blob: bytes, expect_len: int) -> np.ndarray:
    """Strip SEAL's frame (and compression) from a serialised SEAL object; uint8 array of its members."""
    if len(blob) < _SEAL_HEADER.size:
        raise ProtocolError("SEAL object shorter than its header")
    magic, hsize, _major, _minor, compr, _res, size = _SEAL_HEADER.unpack_from(blob)
    if magic != _SEAL_MAGIC or hsize != _SEAL_HEADER.size or size != len(blob):
        raise ProtocolError("not a SEAL-framed object (bad magic, header size or length)")
    payload = bytes(blob[_SEAL_HEADER.size :])
    if compr == _COMPR_ZSTD:
        # one spare byte: a longer stream is an error
        members = np.frombuffer(_zstd_decompress(payload, expect_len + 1), dtype=np.uint8)
    elif compr == _COMPR_NONE:
        members = np.frombuffer(payload, dtype=np.uint8)
    elif compr == _COMPR_ZLIB:
        members = np.frombuffer(zlib.decompress(payload), dtype=np.uint8)
    else:
        raise ProtocolError(f"unknown SEAL compression mode {compr}")
    if members.size != expect_len:
        raise ProtocolError(f"SEAL ciphertext holds {members.size} bytes, expected {expect_len}")
    return members


@dataclass(frozen=True)
class SealFrame:
    """The fixed bytes around a fresh ciphertext's residues, taken from one real encryption.

    ``head`` is everything SEAL writes before the residues of one ciphertext (parameter
    id, NTT flag, size, degree, scale, the inner array's frame); ``version`` is SEAL's
    (major, minor) serialisation version. Rebuilding a ciphertext is ``head + words``.

    >>> import tenseal as ts
    >>> ctx = ts.context(ts.SCHEME_TYPE.BFV, 4096, plain_modulus=1032193, coeff_mod_bit_sizes=[36, 21])
    >>> lay = CipherLayout(poly_degree=4096, moduli=ntt_primes(4096, [36]))
    >>> f = seal_frame(ts.bfv_vector(ctx, [0]), lay)
    >>> len(f.head), f.is_ntt_form, f.scale
    (97, False, 1.0)
    """

    head: bytes
    version: tuple[int, int]
    scale: float
    is_ntt_form: bool


def _split_ciphertext(blob: bytes, layout: CipherLayout) -> tuple[bytes, np.ndarray, tuple[int, int]]:
    """(head bytes, residues ``(2, L, N)`` as a view, SEAL version) of one serialised ciphertext."""
    n_words = layout.words_per_chunk
    head_len = _CT_MEMBERS.size + _SEAL_HEADER.size + _COUNT.size
    members = _seal_members(blob, head_len + 8 * n_words)
    head = members[:head_len].tobytes()
    _magic, _hs, major, minor = _SEAL_HEADER.unpack_from(blob)[:4]
    fields = _CT_MEMBERS.unpack_from(head)
    _ntt, size, degree, n_primes = fields[4:8]
    if (size, degree, n_primes) != (CIPHERTEXT_POLYS, layout.poly_degree, len(layout.moduli)):
        raise ProtocolError(
            f"ciphertext has size {size}, degree {degree}, {n_primes} primes; the layout expects "
            f"{CIPHERTEXT_POLYS}, {layout.poly_degree}, {len(layout.moduli)}"
        )
    inner = _SEAL_HEADER.unpack_from(head, _CT_MEMBERS.size)
    (count,) = _COUNT.unpack_from(head, _CT_MEMBERS.size + _SEAL_HEADER.size)
    if inner[0] != _SEAL_MAGIC or inner[4] != _COMPR_NONE or count != n_words:
        raise ProtocolError("unexpected coefficient array inside a SEAL ciphertext")
    words = members[head_len:].view("<u8")
    return head, words.reshape(CIPHERTEXT_POLYS, len(layout.moduli), layout.poly_degree), (major, minor)


def vector_words(vector: Any, layout: CipherLayout) -> np.ndarray:
    """Residues of every ciphertext of a TenSEAL BFV/CKKS vector, shape ``(chunks, 2, L, N)``.

    >>> import tenseal as ts
    >>> ctx = ts.context(ts.SCHEME_TYPE.BFV, 4096, plain_modulus=1032193, coeff_mod_bit_sizes=[36, 21])
    >>> lay = CipherLayout(poly_degree=4096, moduli=ntt_primes(4096, [36]))
    >>> vector_words(ts.bfv_vector(ctx, [1, 2, 3]), lay).shape
    (1, 2, 1, 4096)
    """
    fields = _proto_fields(vector.serialize())
    blobs = fields.get(2, [])
    if not blobs:
        raise ProtocolError("TenSEAL vector holds no ciphertext")
    out = layout.zeros(len(blobs))
    for i, blob in enumerate(blobs):
        out[i] = _split_ciphertext(bytes(blob), layout)[1]
    return layout.check(out)


def seal_frame(vector: Any, layout: CipherLayout) -> SealFrame:
    """The :class:`SealFrame` of a fresh one-chunk vector (used to rebuild sums).

    >>> import tenseal as ts
    >>> ctx = ts.context(ts.SCHEME_TYPE.CKKS, 4096, coeff_mod_bit_sizes=[45, 30])
    >>> seal_frame(ts.ckks_vector(ctx, [0.0], scale=2.0**37), CipherLayout(poly_degree=4096,
    ...            moduli=ntt_primes(4096, [45]))).is_ntt_form
    True
    """
    fields = _proto_fields(vector.serialize())
    blobs = fields.get(2, [])
    if len(blobs) != 1:
        raise ProtocolError("a frame template must be a one-chunk vector")
    head, _, version = _split_ciphertext(bytes(blobs[0]), layout)
    members = _CT_MEMBERS.unpack_from(head)
    return SealFrame(head=head, version=version, scale=float(members[8]), is_ntt_form=bool(members[4]))


def vector_bytes(words: np.ndarray, layout: CipherLayout, frame: SealFrame, *, slots: int, ckks: bool) -> bytes:
    """Serialise words as a TenSEAL vector (uncompressed SEAL frames) for ``ts.*_vector_from``.

    >>> import tenseal as ts
    >>> ctx = ts.context(ts.SCHEME_TYPE.BFV, 4096, plain_modulus=1032193, coeff_mod_bit_sizes=[36, 21])
    >>> lay = CipherLayout(poly_degree=4096, moduli=ntt_primes(4096, [36]))
    >>> v = ts.bfv_vector(ctx, [1, 2, 3])
    >>> w = vector_words(v, lay)
    >>> two = lay.add_into(w.copy(), w)
    >>> ts.bfv_vector_from(ctx, vector_bytes(two, lay, seal_frame(v, lay), slots=3, ckks=False)).decrypt()
    [2, 4, 6]
    """
    layout.check(words)
    out = bytearray()
    sizes = bytearray()
    for _ in range(words.shape[0]):
        _put_varint(sizes, slots)
    _put_varint(out, (1 << 3) | 2)
    _put_varint(out, len(sizes))
    out += sizes
    for i in range(words.shape[0]):
        members = frame.head + np.ascontiguousarray(words[i], dtype="<u8").tobytes()
        seal = _SEAL_HEADER.pack(_SEAL_MAGIC, _SEAL_HEADER.size, frame.version[0], frame.version[1],
                                 _COMPR_NONE, 0, _SEAL_HEADER.size + len(members)) + members
        _put_varint(out, (2 << 3) | 2)
        _put_varint(out, len(seal))
        out += seal
    if ckks:
        _put_varint(out, (3 << 3) | 1)
        out += struct.pack("<d", frame.scale)
    return bytes(out)
