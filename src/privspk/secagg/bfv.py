"""``bfv``: quantised updates packed several to a slot and encrypted with TenSEAL BFV.

Each coordinate is clipped and quantised to a signed ``bits``-bit code in ``[-L, L]``
(:class:`~privspk.secagg.quantise.Quantiser`, stochastic rounding), offset to
``u = code + L`` in ``[0, 2L]``, and ``pack`` offsets share one slot as digits in base
``B = max_clients * 2L + 1``: a sum of up to ``max_clients`` such digits never reaches
``B``, so digits never borrow or carry into each other. The plain modulus ``t`` is the
smallest batching prime above ``2 B**pack - 1`` (one spare check bit, :data:`CHECK_BITS`:
an honest sum's slots stay below ``B**pack``, so a decrypted value above it is refused);
the data modulus ``q`` is the smallest that decrypts a sum of ``max_clients`` ciphertexts:

    log2(q / t) >= 7.5 + 0.5 log2(K) + 2 bits of safety.

The rule comes from counting decryption failures (N = 4096, t of 23 and 44 bits,
sums of K random ciphertexts): the smallest failure-free ``log2(q/t)`` was about
7 (K = 1), 9 (K = 10) and 10 (K = 50); the 2 extra bits leave room for noise four times
the largest seen. The special prime's size made no difference (20 or 40 bits).

Bytes per parameter are ``2 * bits(q) / 8 / pack`` (residues packed exactly,
:mod:`privspk.secagg.he_wire`). With K = 50: 16-bit codes pack 2 per slot
(t = 45 bits, q = 57) for 7.125 bytes/param; 12-bit codes pack 3 per slot (t = 54 bits,
q = 34 + 33) for 5.58 (the check bit costs 0.125 and 0.083 bytes/param: 7.0 and 5.5
without it). ``pack=None`` picks the fewest bytes.

>>> cfg = BfvConfig()
>>> plan = cfg.plan
>>> plan.pack, plan.plain_modulus.bit_length(), plan.chain, plan.bytes_per_param
(2, 45, (57, 30), 7.125)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from privspk.errors import ConfigError, ProtocolError
from privspk.secagg.base import register_scheme
from privspk.secagg.he_common import HeCodec, check_context_moduli
from privspk.secagg.he_params import (
    MAX_PRIME_BITS,
    SECURITY_CAP_BITS,
    SPECIAL_PRIME_BITS,
    chain_problems,
    option_problems,
    split_bits,
)
from privspk.secagg.he_scheme import HeScheme
from privspk.secagg.he_wire import (
    CipherLayout,
    SealFrame,
    batching_prime,
    ntt_primes,
    seal_frame,
    vector_bytes,
    vector_words,
)
from privspk.secagg.quantise import Quantiser

NOISE_BITS_BASE = 7.5
"""log2(q/t) a single fresh ciphertext needs (measured, N = 4096)."""
NOISE_SAFETY_BITS = 2.0
"""Margin above the measured failure edge."""
CHECK_BITS = 1
"""Spare bits of the plain modulus above the packed digits: ``t >= 2**CHECK_BITS * radix**pack``.

Every honest slot value is below ``radix**pack`` (its top remainder is 0), so a sum whose
slots are spread over ``[0, t)`` - what a chosen ciphertext such as ``(0, floor(q/t))``
decrypts to - passes with probability below ``2**-CHECK_BITS`` per slot, ``2**-N`` for
a whole ciphertext. Without them the digit check bounds nothing at ``max_clients``
summands (tests/secagg/test_secagg_he_collusion.py)."""


def noise_bits(n_clients: int, *, poly_degree: int = 4096) -> float:
    """Bits ``log2(q/t)`` must exceed so a sum of ``n_clients`` fresh ciphertexts decrypts (no margin).

    >>> round(noise_bits(50), 2), round(noise_bits(1), 2)
    (10.32, 7.5)
    """
    return NOISE_BITS_BASE + 0.5 * math.log2(max(1, n_clients)) + 0.5 * math.log2(poly_degree / 4096)


@dataclass(frozen=True)
class BfvPlan:
    """The numbers a :class:`BfvConfig` resolves to.

    >>> round(BfvConfig(bits=12).plan.bytes_per_param, 3)
    5.583
    """

    pack: int
    radix: int
    plain_modulus: int
    chain: tuple[int, ...]
    poly_degree: int

    @property
    def bytes_per_param(self) -> float:
        """Upload bytes per update coordinate (excluding headers)."""
        return 2 * sum(self.chain[:-1]) / 8 / self.pack


def _plan_for(pack: int, radix: int, degree: int, max_clients: int) -> BfvPlan | str:
    """The smallest parameters for ``pack`` digits per slot, or why there are none."""
    t = batching_prime((radix**pack << CHECK_BITS) - 1, degree)
    if t.bit_length() > MAX_PRIME_BITS:
        return f"pack={pack} needs a {t.bit_length()}-bit plain modulus (SEAL allows {MAX_PRIME_BITS})"
    # SEAL's b-bit primes lie just below 2**b, so their product falls short of 2**sum(b) by a
    # small fraction of a bit: ask for a little more than the bare requirement.
    need = math.ceil(math.log2(t) + noise_bits(max_clients, poly_degree=degree) + NOISE_SAFETY_BITS + 0.05)
    chain = (*split_bits(need), SPECIAL_PRIME_BITS)
    cap = SECURITY_CAP_BITS[degree]
    if sum(chain) > cap:
        return f"pack={pack} needs {sum(chain)} modulus bits, more than {cap} at N={degree}"
    return BfvPlan(pack=pack, radix=radix, plain_modulus=t, chain=chain, poly_degree=degree)


@dataclass(frozen=True)
class BfvConfig:
    """Options of the ``bfv`` scheme; every problem is reported at once as a ConfigError.

    Args:
        clip: coordinates are clipped to ``[-clip, clip]``.
        bits: width of one quantised code, sign included (2..30).
        max_clients: most updates a sum may hold (sizes t and q).
        min_clients: fewest updates the key holder opens a sum of.
        poly_modulus_degree: ring degree N (N slots per ciphertext).
        pack: codes per slot; ``None`` picks the fewest bytes per parameter.
        coeff_mod_bit_sizes: explicit prime sizes (data primes, then special); ``None`` picks
            the smallest that decrypts. An explicit chain too small to decrypt is refused.
        he_trust: must be ``"no-client-colludes-with-server"`` for the scheme to start
            (:func:`privspk.secagg.he_params.trust_problem` says why).

    >>> BfvConfig(bits=16, pack=3)
    Traceback (most recent call last):
    ...
    privspk.errors.ConfigError: bad bfv options: pack=3 needs a 66-bit plain modulus (SEAL allows 60)
    """

    clip: float = 1.0
    bits: int = 16
    max_clients: int = 50
    min_clients: int = 2
    poly_modulus_degree: int = 4096
    pack: int | None = None
    coeff_mod_bit_sizes: tuple[int, ...] | None = None
    he_trust: str | None = None

    def __post_init__(self) -> None:
        problems = option_problems(self.clip, self.max_clients, self.min_clients, self.poly_modulus_degree)
        if type(self.bits) is not int or not 2 <= self.bits <= 30:
            problems.append(f"bits must be an int in [2, 30], got {self.bits!r}")
        if self.pack is not None and (type(self.pack) is not int or self.pack < 1):
            problems.append(f"pack must be a positive int or None, got {self.pack!r}")
        if problems:
            raise ConfigError("bad bfv options: " + "; ".join(problems))
        levels = (1 << (self.bits - 1)) - 1
        radix = self.max_clients * 2 * levels + 1
        if self.pack is not None:
            tries = [self.pack]
        else:  # every pack whose digits fit a 60-bit plain modulus
            tries = [p for p in range(1, MAX_PRIME_BITS + 1)
                     if p == 1 or radix**p << CHECK_BITS <= 1 << MAX_PRIME_BITS]
        plans = [_plan_for(p, radix, self.poly_modulus_degree, self.max_clients) for p in tries]
        good = [p for p in plans if isinstance(p, BfvPlan)]
        if not good:
            raise ConfigError("bad bfv options: " + "; ".join(str(p) for p in plans[:1]))
        plan = min(good, key=lambda p: (p.bytes_per_param, p.pack))
        if self.coeff_mod_bit_sizes is not None:
            plan = self._explicit(plan)
        object.__setattr__(self, "_plan", plan)

    @property
    def plan(self) -> BfvPlan:
        """Pack, radix, plain modulus and prime chain this configuration resolves to."""
        return self._plan  # type: ignore[attr-defined]

    def _explicit(self, plan: BfvPlan) -> BfvPlan:
        chain = self.coeff_mod_bit_sizes
        problems = chain_problems(chain, self.poly_modulus_degree)
        if not problems:
            data = ntt_primes(self.poly_modulus_degree, chain)[:-1]
            margin = math.log2(math.prod(data)) - math.log2(plan.plain_modulus)
            need = noise_bits(self.max_clients, poly_degree=self.poly_modulus_degree)
            if margin < need:
                problems.append(
                    f"coeff_mod_bit_sizes {chain} leave log2(q/t) = {margin:.1f} bits; a sum of {self.max_clients} "
                    f"ciphertexts needs {need:.1f} (+{NOISE_SAFETY_BITS:g} recommended) to decrypt"
                )
        if problems:
            raise ConfigError("bad bfv options: " + "; ".join(problems))
        return BfvPlan(pack=plan.pack, radix=plan.radix, plain_modulus=plan.plain_modulus, chain=tuple(chain),
                       poly_degree=plan.poly_degree)

    @cached_property
    def quantiser(self) -> Quantiser:
        """The quantiser of the codes (its ``word_bits`` are not used here)."""
        return Quantiser(clip=float(self.clip), bits=self.bits, n_clients=self.max_clients)


def pack_digits(offsets: np.ndarray, *, pack: int, radix: int, slots: int) -> np.ndarray:
    """Offset codes (in ``[0, radix)``) -> slot values, ``pack`` digits per slot, planar.

    Value ``i`` of the update becomes digit ``i // M`` of slot ``i % M`` (``M`` slots in
    all, a multiple of ``slots``); padding digits are 0.

    >>> pack_digits(np.array([1, 2, 3]), pack=2, radix=10, slots=2).tolist()
    [31, 2]
    """
    m = -(-offsets.size // (pack * slots)) * slots
    digits = np.zeros(pack * m, dtype=np.int64)
    digits[: offsets.size] = offsets
    planes = digits.reshape(pack, m)
    values = np.zeros(m, dtype=np.int64)
    for j in range(pack - 1, -1, -1):
        values = values * radix + planes[j]
    return values


def unpack_digits(values: np.ndarray, *, pack: int, radix: int, dim: int) -> np.ndarray:
    """Inverse of :func:`pack_digits` for sums (digits may reach ``radix - 1``).

    A value of ``radix**pack`` or more is no sum of digits: refused (its top remainder
    would otherwise be dropped unseen).

    >>> unpack_digits(np.array([31, 2]), pack=2, radix=10, dim=3).tolist()
    [1, 2, 3]
    >>> unpack_digits(np.array([131, 2]), pack=2, radix=10, dim=3)
    Traceback (most recent call last):
    ...
    privspk.errors.ProtocolError: 1 slot values are radix**pack = 100 or more: not a sum of packed digits
    """
    rest = np.asarray(values, dtype=np.int64).copy()
    planes = np.empty((pack, rest.size), dtype=np.int64)
    for j in range(pack):
        rest, planes[j] = np.divmod(rest, radix)
    if np.any(rest != 0):
        raise ProtocolError(f"{int(np.count_nonzero(rest))} slot values are radix**pack = {radix**pack} or more: "
                            "not a sum of packed digits")
    return planes.reshape(-1)[:dim]


class BfvCodec(HeCodec):
    """Quantise, pack, encrypt N slots per ciphertext; decode exact integer sums.

    >>> BfvCodec(BfvConfig()).values_per_chunk
    8192
    """

    kind = "bfv"

    def __init__(self, config: BfvConfig) -> None:
        self.config = config
        self.plan = config.plan
        n = config.poly_modulus_degree
        self.layout = CipherLayout(poly_degree=n, moduli=ntt_primes(n, self.plan.chain)[:-1])
        self.slots = n
        self.values_per_chunk = n * self.plan.pack

    def make_context(self) -> Any:
        """Private BFV context (key holder only)."""
        import tenseal as ts

        return ts.context(ts.SCHEME_TYPE.BFV, self.config.poly_modulus_degree,
                          plain_modulus=self.plan.plain_modulus, coeff_mod_bit_sizes=list(self.plan.chain),
                          n_threads=1)

    def check_context(self, ctx: Any, *, who: str | None = None) -> None:
        """Refuse a context that is not BFV with this chain and plain modulus."""
        check_context_moduli(ctx, self.layout, who=who)
        first = ctx.seal_context().data.first_context_data()
        scheme = str(first.parms().scheme())
        if not scheme.endswith("BFV") or first.plain_upper_half_threshold() != (self.plan.plain_modulus + 1) // 2:
            raise ProtocolError(f"context is not BFV with plain modulus {self.plan.plain_modulus}", client=who)

    def encode(self, update: np.ndarray, *, rng: np.random.Generator) -> np.ndarray:
        """Slot values (int64, ``< t``) of one update.

        >>> codec = BfvCodec(BfvConfig(bits=4, max_clients=2))
        >>> codec.encode(np.array([1.0, -1.0, 0.0]), rng=np.random.default_rng(0))[:2].tolist()
        [14, 0]
        """
        codes = self.config.quantiser.to_integers(update, rng=rng)
        offsets = codes + self.config.quantiser.levels
        return pack_digits(offsets, pack=self.plan.pack, radix=self.plan.radix, slots=self.slots)

    def encrypt(self, ctx: Any, update: np.ndarray, *, rng: np.random.Generator) -> np.ndarray:
        """Encode and encrypt ``update``; returns ciphertext words."""
        import tenseal as ts

        values = self.encode(update, rng=rng)
        n_chunks = values.size // self.slots
        words = self.layout.zeros(n_chunks)
        encrypt = ts._ts_cpp.BFVVector  # the compiled constructor: skips a PlainTensor copy
        for c in range(n_chunks):
            words[c] = vector_words(encrypt(ctx.data, values[c * self.slots : (c + 1) * self.slots].tolist()),
                                    self.layout)[0]
        return words

    def frame(self, ctx: Any) -> SealFrame:
        """Frame of a fresh ciphertext of ``ctx``."""
        import tenseal as ts

        return seal_frame(ts.bfv_vector(ctx, [0]), self.layout)

    def decode(self, values: np.ndarray, *, dim: int, n_summands: int) -> np.ndarray:
        """Slot values of a sum of ``n_summands`` encodings -> float64 sum of the clipped updates.

        >>> codec = BfvCodec(BfvConfig(bits=4, max_clients=2))
        >>> rng = np.random.default_rng(0)
        >>> s = codec.encode(np.array([1.0, -1.0, 0.5]), rng=rng) + codec.encode(np.array([1.0, 1.0, 0.5]), rng=rng)
        >>> np.round(codec.decode(s, dim=3, n_summands=2), 2).tolist()
        [2.0, 0.0, 1.0]
        """
        q = self.config.quantiser
        t = self.plan.plain_modulus
        try:  # every slot is checked, padding included: padding digits of a sum are 0
            digits = unpack_digits(np.mod(values, t), pack=self.plan.pack, radix=self.plan.radix, dim=values.size
                                   * self.plan.pack)
        except ProtocolError as exc:
            raise ProtocolError(f"{exc}; not a sum of {n_summands} quantised updates (wrong key, wrong members, "
                                "or a chosen ciphertext)") from None
        planes = digits.reshape(self.plan.pack, -1)
        m = planes.shape[1]
        sums = planes.reshape(-1)[:dim]
        pad = np.ones(planes.size, dtype=bool)
        pad[:dim] = False
        top = n_summands * 2 * q.levels
        if sums.size != dim or sums.min() < 0 or sums.max() > top or np.any(digits[pad] != 0) or m % self.slots:
            raise ProtocolError(f"decrypted digits exceed {n_summands} x {2 * q.levels} (or padding digits are not 0): "
                                f"not a sum of {n_summands} quantised updates (wrong key, wrong members, or corrupted "
                                "ciphertext)")
        return (sums - n_summands * q.levels).astype(np.float64) / q.scale

    def decrypt(self, ctx: Any, words: np.ndarray, frame: SealFrame, *, dim: int, n_summands: int) -> np.ndarray:
        """Decrypt a sum of ciphertexts and decode it."""
        import tenseal as ts

        blob = vector_bytes(words, self.layout, frame, slots=self.slots, ckks=False)
        values = np.asarray(ts.bfv_vector_from(ctx, blob).decrypt(), dtype=np.int64)
        return self.decode(values, dim=dim, n_summands=n_summands)

    def sum_tolerance(self, n_clients: int) -> float:
        """Quantisation error bound: each client's code is within one step of its clipped value.

        >>> BfvCodec(BfvConfig(bits=16)).sum_tolerance(10) == 10 / 32767
        True
        """
        return max(1, int(n_clients)) / self.config.quantiser.scale


@register_scheme("bfv")
class BfvScheme(HeScheme):
    """BFV aggregation with a separate key holder (see :mod:`privspk.secagg.he_scheme`).

    >>> from privspk.secagg import build_scheme
    >>> type(build_scheme("bfv", {"he_trust": "no-client-colludes-with-server"})).__name__
    'BfvScheme'
    """

    Config = BfvConfig

    def _make_codec(self, config: BfvConfig) -> BfvCodec:
        return BfvCodec(config)
