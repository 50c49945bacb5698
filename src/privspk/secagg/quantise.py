"""Clip, quantise with stochastic rounding, and decode sums of quantised vectors.

Values are clipped to ``[-clip, clip]`` and mapped to signed integers in
``[-L, L]`` with ``L = 2**(bits-1) - 1``. Stochastic rounding keeps the code
unbiased (``E[q] = x * L / clip``). Integers are stored modulo ``2**word_bits``
(two's complement), where ``word_bits`` is the smallest of 16, 32 or 64 that holds
a sum over ``n_clients`` values plus ``headroom_bits`` of slack (for distributed-DP
noise), so the sum can never wrap. Masks and BFV work on these words.

>>> import numpy as np
>>> q = Quantiser(clip=1.0, bits=12, n_clients=10)
>>> q.word_bits, q.dtype.__name__
(16, 'uint16')
>>> rng = np.random.default_rng(0)
>>> x = np.array([0.5, -0.25, 1.0, -1.0])
>>> words = [q.encode(x, rng=rng) for _ in range(10)]
>>> total = np.zeros(4, dtype=q.dtype)
>>> for w in words:
...     total = q.add(total, w)
>>> bool(np.abs(q.decode_sum(total, n_summands=10) - 10 * x).max() < 10 / q.levels)
True
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np

from privspk.errors import ConfigError, ProtocolError

_WORDS = {16: np.uint16, 32: np.uint32, 64: np.uint64}
_CHUNK = 1 << 15  # values per step of encode(): float64 temporaries stay in cache


def _checked(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 1:
        raise ConfigError(f"expected a 1-D update, got shape {x.shape}")
    if x.dtype.kind not in "fiub":
        raise ConfigError(f"expected a numeric update, got dtype {x.dtype}")
    if not np.all(np.isfinite(x)):
        bad = int(np.count_nonzero(~np.isfinite(x)))
        raise ConfigError(f"update has {bad} non-finite values (NaN/inf); refusing to quantise it")
    return x


def headroom_for(n_clients: int) -> int:
    """Bits a sum over ``n_clients`` values needs beyond one value.

    >>> [headroom_for(k) for k in (1, 2, 3, 10, 16, 17)]
    [0, 1, 2, 4, 4, 5]
    """
    if type(n_clients) is not int or n_clients < 1:
        raise ConfigError(f"n_clients must be a positive int, got {n_clients!r}")
    return math.ceil(math.log2(n_clients)) if n_clients > 1 else 0


def auto_bits(n_clients: int, *, word_bits: int = 16, minimum: int = 8) -> int:
    """Largest value width whose K-fold sum still fits a ``word_bits`` word.

    >>> auto_bits(10), auto_bits(3), auto_bits(50, word_bits=32)
    (12, 14, 26)
    """
    bits = word_bits - headroom_for(n_clients)
    if bits < minimum:
        raise ConfigError(
            f"{n_clients} clients leave only {bits} bits per value in a {word_bits}-bit word "
            f"(minimum {minimum}); use a wider word"
        )
    return bits


@dataclass(frozen=True)
class Quantiser:
    """Signed fixed-point code for sums of ``n_clients`` vectors clipped to ``[-clip, clip]``.

    Args:
        clip: coordinate range; values beyond it are clipped.
        bits: width of one value, sign included (2..62).
        n_clients: most summands a sum will have (sets the headroom).
        headroom_bits: extra bits, e.g. for distributed-DP integer noise.

    >>> Quantiser(clip=0.5, bits=16, n_clients=3).word_bits
    32
    """

    clip: float
    bits: int = 16
    n_clients: int = 1
    headroom_bits: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.clip, (int, float)) and math.isfinite(self.clip) and self.clip > 0):
            raise ConfigError(f"clip must be a positive finite number, got {self.clip!r}")
        if type(self.bits) is not int or not 2 <= self.bits <= 62:
            raise ConfigError(f"bits must be an int in [2, 62], got {self.bits!r}")
        if type(self.headroom_bits) is not int or self.headroom_bits < 0:
            raise ConfigError(f"headroom_bits must be a non-negative int, got {self.headroom_bits!r}")
        need = self.bits + headroom_for(self.n_clients) + self.headroom_bits
        if need > 64:
            raise ConfigError(
                f"a sum of {self.n_clients} {self.bits}-bit values with {self.headroom_bits} headroom bits "
                f"needs {need} bits, more than 64; lower bits"
            )

    @property
    def levels(self) -> int:
        """Largest magnitude of one code, ``2**(bits-1) - 1``.

        >>> q = Quantiser(clip=2.0, bits=8, n_clients=3)
        >>> q.levels
        127
        """
        return (1 << (self.bits - 1)) - 1

    @property
    def scale(self) -> float:
        """Integer units per unit of the input.

        >>> q = Quantiser(clip=2.0, bits=8, n_clients=3)
        >>> q.scale
        63.5
        """
        return self.levels / float(self.clip)

    @property
    def word_bits(self) -> int:
        """Width of the storage word: 16, 32 or 64.

        >>> q = Quantiser(clip=2.0, bits=8, n_clients=3)
        >>> q.word_bits, Quantiser(clip=1.0, bits=20, n_clients=3).word_bits
        (16, 32)
        """
        need = self.bits + headroom_for(self.n_clients) + self.headroom_bits
        return next(w for w in (16, 32, 64) if w >= need)

    @property
    def dtype(self) -> type[np.unsignedinteger]:
        """Numpy unsigned dtype of the words.

        >>> q = Quantiser(clip=2.0, bits=8, n_clients=3)
        >>> q.dtype.__name__
        'uint16'
        """
        return _WORDS[self.word_bits]

    @property
    def bytes_per_value(self) -> int:
        """Bytes one quantised value takes on the wire.

        >>> q = Quantiser(clip=2.0, bits=8, n_clients=3)
        >>> q.bytes_per_value
        2
        """
        return self.word_bits // 8

    def to_integers(self, x: np.ndarray, *, rng: np.random.Generator) -> np.ndarray:
        """Clip and stochastically round to signed int64 codes in ``[-levels, levels]``.

        >>> q = Quantiser(clip=1.0, bits=4)
        >>> q.to_integers(np.array([2.0, -1.0, 0.0]), rng=np.random.default_rng(0)).tolist()
        [7, -7, 0]
        """
        return self._round(_checked(x), rng)

    def _round(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        y = np.clip(np.asarray(x, dtype=np.float64), -self.clip, self.clip)
        y *= self.scale
        # floor(y + u) with u ~ U[0, 1) rounds up with probability frac(y): the same law as
        # floor(y) + [u < frac(y)], in fewer passes over the vector.
        y += rng.random(y.shape[0])
        np.floor(y, out=y)
        q = y.astype(np.int64)
        return np.clip(q, -self.levels, self.levels, out=q)  # y + u may round up to levels + 1

    def wrap(self, ints: np.ndarray) -> np.ndarray:
        """Signed integers -> words modulo ``2**word_bits`` (two's complement; integer casts wrap).

        >>> q = Quantiser(clip=2.0, bits=8, n_clients=3)
        >>> q.wrap(np.array([1, -1])).tolist()
        [1, 65535]
        """
        return np.asarray(ints, dtype=np.int64).astype(self.dtype)

    def _signed(self, words: np.ndarray) -> np.ndarray:
        # Two's complement: the same bits read as a signed word of the same width (no copy).
        return np.asarray(words, dtype=self.dtype).view(f"int{self.word_bits}")

    def unwrap(self, words: np.ndarray) -> np.ndarray:
        """Words -> signed int64, reading the top half of the ring as negative.

        >>> q = Quantiser(clip=2.0, bits=8, n_clients=3)
        >>> q.unwrap(q.wrap(np.array([5, -7]))).tolist()
        [5, -7]
        """
        return self._signed(words).astype(np.int64)

    def encode(self, x: np.ndarray, *, rng: np.random.Generator) -> np.ndarray:
        """Clip, round stochastically and wrap into words of :attr:`dtype`.

        Equal to ``wrap(to_integers(x, rng=rng))`` (same draws, same words), computed in
        cache-sized chunks so no full-length float64/int64 temporaries are made.

        >>> q = Quantiser(clip=1.0, bits=8, n_clients=2)
        >>> x = np.linspace(-1, 1, 100_001)
        >>> bool((q.encode(x, rng=np.random.default_rng(3)) ==
        ...       q.wrap(q.to_integers(x, rng=np.random.default_rng(3)))).all())
        True
        """
        x = _checked(x)
        out = np.empty(x.shape[0], dtype=self.dtype)
        for start in range(0, x.shape[0], _CHUNK):
            out[start : start + _CHUNK] = self._round(x[start : start + _CHUNK], rng)
        return out

    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Sum of two word vectors modulo ``2**word_bits`` (numpy unsigned overflow wraps).

        >>> q = Quantiser(clip=2.0, bits=8, n_clients=3)
        >>> q.unwrap(q.add(q.wrap(np.array([-3])), q.wrap(np.array([5])))).tolist()
        [2]
        """
        return np.add(a, b, dtype=self.dtype)

    def decode_sum(self, words: np.ndarray, *, n_summands: int) -> np.ndarray:
        """Float64 estimate of the sum of ``n_summands`` clipped inputs.

        ``n_summands`` only bounds-checks (when there is no noise headroom): a value
        outside ``n_summands * levels`` means the words were not a sum of this many
        codes (a wrong key, wrong members, or a corrupted word).

        >>> q = Quantiser(clip=2.0, bits=8, n_clients=3)
        >>> q.decode_sum(q.wrap(np.array([127, -254])), n_summands=2).tolist()
        [2.0, -4.0]
        >>> q.decode_sum(q.wrap(np.array([300])), n_summands=2)
        Traceback (most recent call last):
        ...
        privspk.errors.ProtocolError: decoded sum exceeds 2 x 127: the words are not a sum of 2 quantised updates (wrong key, wrong members, or overflow)
        """
        s = self._signed(words)
        limit = n_summands * self.levels
        if self.headroom_bits == 0 and s.size and (int(s.max()) > limit or int(s.min()) < -limit):
            raise ProtocolError(
                f"decoded sum exceeds {n_summands} x {self.levels}: the words are not a sum of "
                f"{n_summands} quantised updates (wrong key, wrong members, or overflow)"
            )
        return s.astype(np.float64) / self.scale

    def words_to_bytes(self, words: np.ndarray) -> bytes:
        """Little-endian wire form of a word vector.

        >>> q = Quantiser(clip=2.0, bits=8, n_clients=3)
        >>> q.words_to_bytes(q.wrap(np.array([1, -1])))
        b'\\x01\\x00\\xff\\xff'
        """
        return np.ascontiguousarray(words, dtype=np.dtype(self.dtype).newbyteorder("<")).tobytes()

    def words_from_bytes(self, blob: bytes, *, dim: int, client: str | None = None) -> np.ndarray:
        """Parse a word vector of exactly ``dim`` values; wrong length -> ProtocolError.

        >>> q = Quantiser(clip=2.0, bits=8, n_clients=3)
        >>> q.unwrap(q.words_from_bytes(b"\\x01\\x00\\xff\\xff", dim=2)).tolist()
        [1, -1]
        """
        want = dim * self.bytes_per_value
        if len(blob) != want:
            raise ProtocolError(
                f"expected {dim} x {self.bytes_per_value}-byte words ({want} bytes), got {len(blob)} bytes",
                client=client,
            )
        return np.frombuffer(blob, dtype=np.dtype(self.dtype).newbyteorder("<")).astype(self.dtype)


class RoundingRandomness:
    """One client's stochastic-rounding randomness: an independent generator per (run, round).

    With a ``seed`` the generator of a round depends only on (seed, run, round, client), never
    on what the process did before - so a run resumed after a crash rounds each round's update
    exactly as an uninterrupted run does. Without a seed every round draws fresh OS entropy.
    The draws only decide rounding (unbiased either way), never keys or masks.

    >>> r = RoundingRandomness(7, "c0")
    >>> a = r.for_round("run", 2).random(); _ = r.for_round("run", 1).random()
    >>> a == r.for_round("run", 2).random(), a != RoundingRandomness(7, "c1").for_round("run", 2).random()
    (True, True)
    """

    def __init__(self, seed: int | None, client_id: str) -> None:
        self.seed = seed
        self.client_id = client_id

    def for_round(self, run_id: str, round_id: int) -> np.random.Generator:
        """The generator of this client's update in ``round_id`` of ``run_id``."""
        if self.seed is None:
            return np.random.default_rng()
        label = json.dumps([run_id, int(round_id), self.client_id]).encode("utf-8")
        words = np.frombuffer(hashlib.sha256(b"privspk/rounding/v1" + label).digest(), dtype="<u8")
        return np.random.default_rng([int(self.seed), *(int(w) for w in words)])


def rng_for_round(rng: np.random.Generator | RoundingRandomness, *, run_id: str,
                  round_id: int) -> np.random.Generator:
    """``rng`` itself when it is a generator, else its generator for (run, round).

    >>> isinstance(rng_for_round(RoundingRandomness(1, "a"), run_id="r", round_id=1), np.random.Generator)
    True
    """
    return rng.for_round(run_id, round_id) if isinstance(rng, RoundingRandomness) else rng
