"""``ckks``: float updates encrypted as batched TenSEAL CKKS vectors, summed by the server.

Parameters are chosen for additions only (no multiplication, so no rescaling chain):
one data prime holds the sum, one special prime serves encryption. Measured here
(K = 50 clients, inputs uniform in [-1, 1], largest error of the sum over 4096
coordinates; bytes per parameter with residues packed exactly, :mod:`privspk.secagg.he_wire`):

==========  ============  =========  ===========  =========
N           scale         q (bits)   bytes/param  max error
==========  ============  =========  ===========  =========
2048        2^30          [38, 14]   19           1.3e-5
2048        2^32          [40, 14]   20           3.2e-6
4096        2^34          [42, 30]   21           1.6e-6
4096        2^36          [44, 30]   22           4.2e-7
4096        2^38          [46, 30]   23           1.2e-7
4096        2^40          [48, 30]   24           2.6e-8
==========  ============  =========  ===========  =========

N = 2048 cannot reach 1e-6 within its 54-bit security bound (a larger scale leaves no
room for the sum), so the default is N = 4096, scale 2^37, q = [45, 30]: 22.5 bytes per
parameter (NVFlare's default costs 58, TenSEAL's own serialisation of [60, 49] 32) and,
at K = 50 over 1M parameters, a largest error of 3.8e-7 including the key holder's
flooding noise. The special prime's size does not change the error (20, 30 or 60 bits
measured alike). Coordinates are clipped to ``[-clip, clip]`` so the sum of
``max_clients`` updates cannot wrap the modulus.

>>> import numpy as np
>>> from privspk.secagg import build_scheme, RoundSpec
>>> from privspk.secagg.simulate import run_round
>>> s = build_scheme("ckks", {"he_trust": "no-client-colludes-with-server"})
>>> spec = RoundSpec(run_id="doc", round_id=0, clients=("a", "b", "c"), dim=4)
>>> eps = {c: s.client(c) for c in spec.clients}
>>> for i, c in enumerate(spec.clients):
...     eps[c].submit(0, np.full(4, 0.1 * (i + 1)))
>>> res = run_round(s, spec, eps)
>>> bool(np.abs(res.total - 0.6).max() < s.sum_tolerance(3)), res.included
(True, ('a', 'b', 'c'))
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from privspk.errors import ConfigError, ProtocolError
from privspk.secagg.base import register_scheme
from privspk.secagg.he_common import HeCodec, check_context_moduli
from privspk.secagg.he_params import SPECIAL_PRIME_BITS, chain_problems, option_problems, split_bits
from privspk.secagg.he_scheme import HeScheme
from privspk.secagg.he_wire import CipherLayout, SealFrame, ntt_primes, seal_frame, vector_bytes, vector_words

@dataclass(frozen=True)
class CkksConfig:
    """Options of the ``ckks`` scheme; every problem is reported at once as a ConfigError.

    Args:
        clip: coordinates are clipped to ``[-clip, clip]`` before encryption.
        max_clients: most updates a sum may hold (sizes the modulus).
        min_clients: fewest updates the key holder opens a sum of.
        poly_modulus_degree: ring degree N (N/2 values per ciphertext).
        scale_bits: CKKS scale 2**scale_bits (sets the error: about ``2 sqrt(K) N / 2**scale_bits``).
        coeff_mod_bit_sizes: prime sizes, data primes then the special prime; ``None`` picks
            ``scale_bits + ceil(log2(max_clients * clip)) + 2`` data bits (split into primes
            of at most 60 bits) and a 30-bit special prime.
        he_trust: must be ``"no-client-colludes-with-server"`` for the scheme to start
            (:func:`privspk.secagg.he_params.trust_problem` says why).

    >>> CkksConfig().chain
    (45, 30)
    >>> try:
    ...     CkksConfig(coeff_mod_bit_sizes=(60, 60))
    ... except ConfigError as exc:
    ...     print(str(exc).split(": ", 1)[1])
    coeff_mod_bit_sizes (60, 60) total 120 bits, more than the 109 that N=4096 allows at 128-bit security
    """

    clip: float = 1.0
    max_clients: int = 50
    min_clients: int = 2
    poly_modulus_degree: int = 4096
    scale_bits: int = 37
    coeff_mod_bit_sizes: tuple[int, ...] | None = None
    he_trust: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.coeff_mod_bit_sizes, list):
            object.__setattr__(self, "coeff_mod_bit_sizes", tuple(self.coeff_mod_bit_sizes))
        problems = option_problems(self.clip, self.max_clients, self.min_clients, self.poly_modulus_degree)
        if type(self.scale_bits) is not int or not 20 <= self.scale_bits <= 58:
            problems.append(f"scale_bits must be an int in [20, 58], got {self.scale_bits!r}")
        if not problems:
            problems += chain_problems(self.chain, self.poly_modulus_degree)
        if not problems:
            data = ntt_primes(self.poly_modulus_degree, self.chain)[:-1]
            worst = 1.1 * self.max_clients * self.clip * 2.0**self.scale_bits + 2.0**20
            if math.prod(data) / 2 <= worst:
                problems.append(
                    f"data primes {self.chain[:-1]} cannot hold a sum of {self.max_clients} values of up to "
                    f"{self.clip} at scale 2^{self.scale_bits}; add data bits or lower scale_bits/clip/max_clients"
                )
        if problems:
            raise ConfigError("bad ckks options: " + "; ".join(problems))

    @property
    def chain(self) -> tuple[int, ...]:
        """Prime bit sizes actually used (data primes, then the special prime)."""
        if self.coeff_mod_bit_sizes is not None:
            return tuple(self.coeff_mod_bit_sizes)
        head = max(0, math.ceil(math.log2(self.max_clients * self.clip)))
        return (*split_bits(self.scale_bits + head + 2), SPECIAL_PRIME_BITS)


_NOISE_PER_SQRT_K = 0.167


def secure_normal(n: int) -> np.ndarray:
    """``n`` standard normal draws from the OS CSPRNG (Box-Muller on ``os.urandom``).

    >>> x = secure_normal(100_000)
    >>> bool(abs(x.mean()) < 0.02 and abs(x.std() - 1) < 0.02)
    True
    """
    raw = np.frombuffer(os.urandom(16 * n), dtype="<u8").reshape(2, n) if n else np.zeros((2, 0), np.uint64)
    u1 = (raw[0] >> np.uint64(11)).astype(np.float64) * 2.0**-53 + 2.0**-54  # in (0, 1): log is finite
    u2 = (raw[1] >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


class CkksCodec(HeCodec):
    """Clip, encrypt ``N/2`` floats per ciphertext, decode a sum (see :class:`CkksConfig`).

    >>> CkksCodec(CkksConfig()).values_per_chunk
    2048
    """

    kind = "ckks"

    def __init__(self, config: CkksConfig) -> None:
        self.config = config
        n = config.poly_modulus_degree
        self.layout = CipherLayout(poly_degree=n, moduli=ntt_primes(n, config.chain)[:-1])
        self.values_per_chunk = n // 2

    def make_context(self) -> Any:
        """Private CKKS context (key holder only)."""
        import tenseal as ts

        ctx = ts.context(ts.SCHEME_TYPE.CKKS, self.config.poly_modulus_degree,
                         coeff_mod_bit_sizes=list(self.config.chain), n_threads=1)
        ctx.global_scale = 2.0**self.config.scale_bits
        return ctx

    def check_context(self, ctx: Any, *, who: str | None = None) -> None:
        """Refuse a context that is not CKKS with this chain and scale."""
        check_context_moduli(ctx, self.layout, who=who)
        try:
            scale = ctx.global_scale
        except ValueError:
            scale = None
        scheme = str(ctx.seal_context().data.first_context_data().parms().scheme())
        if not scheme.endswith("CKKS") or scale != 2.0**self.config.scale_bits:
            raise ProtocolError(f"context is {scheme} with scale {scale}, expected CKKS at 2^{self.config.scale_bits}",
                                client=who)

    def encrypt(self, ctx: Any, update: np.ndarray, *, rng: np.random.Generator) -> np.ndarray:
        """Clip and encrypt ``update`` chunk by chunk; returns ciphertext words."""
        import tenseal as ts

        slots = self.values_per_chunk
        n_chunks = self.n_chunks(update.shape[0])
        x = np.zeros(n_chunks * slots)
        x[: update.shape[0]] = np.clip(update, -self.config.clip, self.config.clip)
        words = self.layout.zeros(n_chunks)
        encrypt = ts._ts_cpp.CKKSVector  # the compiled constructor: skips a PlainTensor copy (~15 % of the time)
        for c in range(n_chunks):
            words[c] = vector_words(encrypt(ctx.data, x[c * slots : (c + 1) * slots].tolist()), self.layout)[0]
        return words

    def frame(self, ctx: Any) -> SealFrame:
        """Frame of a fresh ciphertext of ``ctx``."""
        import tenseal as ts

        return seal_frame(ts.ckks_vector(ctx, [0.0]), self.layout)

    def noise_std(self, n_clients: int) -> float:
        """Standard deviation of the CKKS error of one coordinate of a sum of ``n_clients`` ciphertexts.

        Measured here: ``0.167 sqrt(K) N / scale`` for K = 1..50 at N = 4096.

        >>> f"{CkksCodec(CkksConfig()).noise_std(50):.1e}"
        '3.5e-08'
        """
        return _NOISE_PER_SQRT_K * math.sqrt(max(1, int(n_clients))) * self.config.poly_modulus_degree \
            / 2.0**self.config.scale_bits

    @property
    def flood_std(self) -> float:
        """Standard deviation of the Gaussian noise the key holder adds to every decrypted value.

        A CKKS decryption reveals ``c0 + c1*s`` up to the tiny encryption noise, and the server
        knows ``(c0, c1)`` of the sum it built: an exact release would let it solve for the secret
        key (Li & Micciancio, Eurocrypt 2021) and then decrypt every client's ciphertext. Fresh
        noise as large as the natural error of a full sum (``max_clients`` ciphertexts) turns each
        release into a ring-LWE sample with a larger error than the public key's. Drawn from the
        operating system's CSPRNG.
        """
        return self.noise_std(self.config.max_clients)

    def decrypt(self, ctx: Any, words: np.ndarray, frame: SealFrame, *, dim: int, n_summands: int) -> np.ndarray:
        """Decrypt a sum, check it is plausible, and add the flooding noise (:attr:`flood_std`)."""
        import tenseal as ts

        blob = vector_bytes(words, self.layout, frame, slots=self.values_per_chunk, ckks=True)
        values = np.asarray(ts.ckks_vector_from(ctx, blob).decrypt(), dtype=np.float64)[:dim]
        bound = n_summands * self.config.clip + self.sum_tolerance(n_summands)
        if values.size != dim or not np.all(np.abs(values) <= bound):
            raise ProtocolError(f"decrypted values exceed {n_summands} x clip {self.config.clip}: not a sum of "
                                f"{n_summands} clipped updates (wrong key or corrupted ciphertext)")
        return values + self.flood_std * secure_normal(dim)

    def sum_tolerance(self, n_clients: int) -> float:
        """Bound on the error of one coordinate of an opened sum of ``n_clients`` ciphertexts.

        18 standard deviations of the CKKS error (its largest value over 16k coordinates was
        7-8, a heavier tail than a Gaussian's) plus 10 of the flooding noise.

        >>> CkksCodec(CkksConfig()).sum_tolerance(50) < 1e-6
        True
        """
        return 18.0 * self.noise_std(n_clients) + 10.0 * self.flood_std


@register_scheme("ckks")
class CkksScheme(HeScheme):
    """CKKS aggregation with a separate key holder (see :mod:`privspk.secagg.he_scheme`).

    >>> from privspk.secagg import build_scheme
    >>> type(build_scheme("ckks", {"he_trust": "no-client-colludes-with-server"})).__name__
    'CkksScheme'
    """

    Config = CkksConfig

    def _make_codec(self, config: CkksConfig) -> CkksCodec:
        return CkksCodec(config)
