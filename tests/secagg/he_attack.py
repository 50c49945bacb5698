"""Attacker's tooling for the HE collusion tests (issue 19, finding 1): not used by the library.

Everything here is what a server colluding with one registered client can compute from
public data: SEAL's negacyclic NTT (to build chosen ciphertexts in CKKS's NTT form and to
decrypt with a recovered key), the CKKS canonical embedding with generator 3 and the BFV
slot order. :func:`check_tooling` validates each convention against TenSEAL with a key
the test owns, so a failed attack means the attack failed, not that the tooling was wrong.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from privspk.secagg.he_wire import CipherLayout


# --------------------------------------------------------------------------- NTT as SEAL lays it out


def _primitive_root_2n(q: int, n: int) -> int:
    """SEAL's choice: the smallest primitive 2N-th root of unity mod q."""
    m = 2 * n
    for g in range(2, q):
        r = pow(g, (q - 1) // m, q)
        if pow(r, n, q) == q - 1:
            break
    return min(pow(r, k, q) for k in range(1, m, 2))


def _bitrev(n: int) -> list[int]:
    bits = n.bit_length() - 1
    return [int(format(i, f"0{bits}b")[::-1], 2) for i in range(n)]


def _dft(a: list[int], w: int, q: int) -> list[int]:
    """Cyclic DFT ``A[j] = sum_k a_k w^(jk) mod q`` (radix 2, Python ints)."""
    n = len(a)
    if n == 1:
        return list(a)
    even = _dft(a[0::2], w * w % q, q)
    odd = _dft(a[1::2], w * w % q, q)
    out = [0] * n
    x = 1
    for j in range(n // 2):
        t = x * odd[j] % q
        out[j] = (even[j] + t) % q
        out[j + n // 2] = (even[j] - t) % q
        x = x * w % q
    return out


class Ntt:
    """Negacyclic NTT mod a prime ``q`` in SEAL's order: ``out[i] = p(psi^(2 bitrev(i) + 1))``."""

    def __init__(self, q: int, n: int) -> None:
        self.q, self.n = q, n
        self.psi = _primitive_root_2n(q, n)
        self.rev = _bitrev(n)

    def evaluations(self, coeffs: list[int]) -> list[int]:
        """``p(psi^(2j+1))`` for j = 0..N-1 (natural order)."""
        q, psi = self.q, self.psi
        return _dft([c * pow(psi, k, q) % q for k, c in enumerate(coeffs)], psi * psi % q, q)

    def interpolate(self, evals: list[int]) -> list[int]:
        """Inverse of :meth:`evaluations`."""
        q, n = self.q, self.n
        inv_psi = pow(self.psi, -1, q)
        a = _dft(list(evals), inv_psi * inv_psi % q, q)
        n_inv = pow(n, -1, q)
        return [a[k] * n_inv % q * pow(inv_psi, k, q) % q for k in range(n)]

    def forward(self, coeffs: list[int]) -> list[int]:
        ev = self.evaluations([int(c) % self.q for c in coeffs])
        return [ev[self.rev[i]] for i in range(self.n)]

    def inverse(self, ntt: list[int]) -> list[int]:
        ev = [0] * self.n
        for i in range(self.n):
            ev[self.rev[i]] = int(ntt[i])
        return self.interpolate(ev)


def centred(values: list[int], q: int) -> np.ndarray:
    return np.array([v - q if v > q // 2 else v for v in values], dtype=object)


def secret_key_coeffs(ctx: Any, layout: CipherLayout) -> np.ndarray:
    """The key holder's secret key as small integers (for checking a recovery only)."""
    plain = ctx.secret_key().data.data()
    n, q = layout.poly_degree, layout.moduli[0]
    ntt = [plain.data(i) for i in range(n)]  # first prime's residues, NTT form
    return centred(Ntt(q, n).inverse(ntt), q).astype(np.int64)


# --------------------------------------------------------------------------- CKKS


def ckks_exponents(n: int) -> np.ndarray:
    """Slot i holds the evaluation at zeta^(3^i mod 2N) (zeta = exp(i pi / N))."""
    return np.array([pow(3, i, 2 * n) for i in range(n // 2)], dtype=np.int64)


def ckks_decode(coeffs: np.ndarray, *, n: int, scale: float) -> np.ndarray:
    """Real parts of the slots of a plaintext polynomial (coefficients as floats)."""
    zeta = np.exp(1j * np.pi * np.arange(n) / n)
    evals = n * np.fft.ifft(np.asarray(coeffs, dtype=np.float64) * zeta)  # evals[j] = p(zeta^(2j+1))
    return (evals[(ckks_exponents(n) - 1) // 2] / scale).real


def ckks_decrypt(words: np.ndarray, s: np.ndarray, layout: CipherLayout, *, scale: float) -> np.ndarray:
    """Decrypt CKKS ciphertext words (NTT form, one data prime) with key coefficients ``s``."""
    n, q = layout.poly_degree, layout.moduli[0]
    ntt = Ntt(q, n)
    s_ntt = ntt.forward([int(v) for v in s])
    out = []
    for chunk in words:
        c0, c1 = chunk[0, 0].tolist(), chunk[1, 0].tolist()
        m = ntt.inverse([(a + b * k) % q for a, b, k in zip(c0, c1, s_ntt)])
        out.append(ckks_decode(centred(m, q).astype(np.float64), n=n, scale=scale))
    return np.concatenate(out)


def ckks_key_times(s: np.ndarray, *, n: int, a_log2: int = 25, shift: int = 0) -> np.ndarray:
    """Coefficients of ``2^a_log2 X^shift s`` in Z[X]/(X^N + 1) (what a chosen chunk adds to a release)."""
    out = np.zeros(n, dtype=object)
    for k, v in enumerate(np.asarray(s).tolist()):
        j = k + shift
        out[j % n] += (v if j < n else -v) << a_log2
    return out


def ckks_chosen(h: np.ndarray, layout: CipherLayout, *, a_log2: int = 25) -> np.ndarray:
    """The colluder's ciphertext: chunk 0 ``(-c0, A - c1)``, chunk 1 ``(-c0, A X^(N/2) - c1)``."""
    n, q = layout.poly_degree, layout.moduli[0]
    a = 1 << a_log2
    shifted = [0] * n
    shifted[n // 2] = a
    targets = [np.full(n, a % q, dtype=object), np.array(Ntt(q, n).forward(shifted), dtype=object)]
    out = layout.zeros(h.shape[0])
    for c in range(h.shape[0]):
        add = targets[c] if c < 2 else np.zeros(n, dtype=object)
        out[c, 0, 0] = ((-h[c, 0, 0].astype(object)) % q).astype(np.uint64)
        out[c, 1, 0] = ((add - h[c, 1, 0].astype(object)) % q).astype(np.uint64)
    return out


def ckks_recover(release: np.ndarray, *, n: int, scale: float, a_log2: int = 25) -> np.ndarray:
    """Secret key coefficients from a release of the chosen sum (two chunks)."""
    e = ckks_exponents(n)
    k = scale / 2.0**a_log2
    re = release[: n // 2] * k
    # chunk 1 is Re(i^e s(zeta^e)): -Im for e = 1 mod 4, +Im for e = 3 mod 4
    im = np.where(e % 4 == 1, -1.0, 1.0) * release[n // 2 : n] * k
    evals = np.zeros(n, dtype=np.complex128)
    evals[(e - 1) // 2] = re + 1j * im
    evals[(2 * n - e - 1) // 2] = re - 1j * im
    zeta = np.exp(1j * np.pi * np.arange(n) / n)
    coeffs = np.fft.fft(evals) / n / zeta
    return np.rint(coeffs.real).astype(np.int64)


# --------------------------------------------------------------------------- BFV


def _negacyclic_times_small(c: np.ndarray, s: np.ndarray, q: int) -> np.ndarray:
    """``c * s mod (X^N + 1, q)`` for small integer ``s`` (uint64 arithmetic, q < 2^62)."""
    n = c.size
    acc = np.zeros(n, dtype=object)
    c = c.astype(object)
    for k in np.nonzero(s)[0]:
        rolled = np.roll(c, k)
        rolled[:k] = -rolled[:k]
        acc = acc + int(s[k]) * rolled
    return np.mod(acc, q)


def bfv_slot_positions(n: int) -> np.ndarray:
    """Index j (evaluation at psi^(2j+1)) of each of the N slots (generator 3, two rows)."""
    e = np.array([pow(3, i, 2 * n) for i in range(n // 2)], dtype=np.int64)
    return np.concatenate([(e - 1) // 2, (2 * n - e - 1) // 2])


def bfv_plain_to_slots(m: list[int], t: int, n: int) -> np.ndarray:
    ev = Ntt(t, n).evaluations([v % t for v in m])
    return np.array([ev[j] for j in bfv_slot_positions(n)], dtype=object)


def bfv_slots_to_plain(slots: np.ndarray, t: int, n: int) -> list[int]:
    ev = [0] * n
    for i, j in enumerate(bfv_slot_positions(n)):
        ev[j] = int(slots[i]) % t
    return Ntt(t, n).interpolate(ev)


def bfv_decrypt_slots(words: np.ndarray, s: np.ndarray, layout: CipherLayout, *, t: int) -> np.ndarray:
    """Slot values of BFV ciphertext words (coefficient form) under key coefficients ``s``."""
    n = layout.poly_degree
    big_q = int(np.prod([int(q) for q in layout.moduli], dtype=object))
    out = []
    for chunk in words:
        res = [np.mod(chunk[0, l].astype(object) + _negacyclic_times_small(chunk[1, l], s, q), q)
               for l, q in enumerate(layout.moduli)]
        full = np.zeros(n, dtype=object)
        for l, q in enumerate(layout.moduli):  # CRT
            rest = big_q // q
            full = full + res[l] * rest * pow(rest, -1, q)
        full = np.mod(full, big_q)
        m = [((t * int(v) + big_q // 2) // big_q) % t for v in full]
        out.append(bfv_plain_to_slots(m, t, n))
    return np.concatenate(out)


def bfv_chosen(h: np.ndarray, layout: CipherLayout, *, t: int) -> np.ndarray:
    """The colluder's ciphertext ``(-c0, floor(Q/t) - c1)``: the sum is ``(0, floor(Q/t))``."""
    big_q = int(np.prod([int(q) for q in layout.moduli], dtype=object))
    delta = big_q // t
    out = layout.zeros(h.shape[0])
    for l, q in enumerate(layout.moduli):
        target = np.zeros(layout.poly_degree, dtype=object)
        target[0] = delta % q
        for c in range(h.shape[0]):
            out[c, 0, l] = ((-h[c, 0, l].astype(object)) % q).astype(np.uint64)
            out[c, 1, l] = ((target - h[c, 1, l].astype(object)) % q).astype(np.uint64)
    return out


def bfv_recover(release: np.ndarray, *, codec: Any, n_summands: int) -> np.ndarray:
    """Key coefficients from the release of the chosen sum ``(0, floor(Q/t))`` (one chunk)."""
    plan, q = codec.plan, codec.config.quantiser
    n = codec.slots
    sums = np.rint(release[: n * plan.pack] * q.scale + n_summands * q.levels).astype(np.int64)
    planes = sums.reshape(plan.pack, n).astype(object)
    slots = np.zeros(n, dtype=object)
    for j in range(plan.pack - 1, -1, -1):
        slots = slots * plan.radix + planes[j]
    m = bfv_slots_to_plain(slots, plan.plain_modulus, n)
    return centred(m, plan.plain_modulus).astype(np.int64)


# --------------------------------------------------------------------------- validation


def check_tooling(name: str) -> None:
    """Raise AssertionError unless the conventions above match TenSEAL for a key we own."""
    import tenseal as ts

    from privspk.secagg.he_wire import ntt_primes, vector_words

    n = 4096
    rng = np.random.default_rng(0)
    if name == "ckks":
        chain = [45, 30]
        ctx = ts.context(ts.SCHEME_TYPE.CKKS, n, coeff_mod_bit_sizes=chain)
        layout = CipherLayout(poly_degree=n, moduli=ntt_primes(n, chain)[:-1])
        s = secret_key_coeffs(ctx, layout)
        assert set(np.unique(s).tolist()) <= {-1, 0, 1}, "secret key is not ternary: NTT convention wrong"
        x = rng.uniform(-1, 1, n // 2)
        words = vector_words(ts.ckks_vector(ctx, x.tolist(), scale=2.0**37), layout)
        got = ckks_decrypt(words, s, layout, scale=2.0**37)
        assert np.abs(got - x).max() < 1e-5, "CKKS slot order or NTT convention wrong"
    else:
        t, chain = 1032193, [36, 36, 30]
        ctx = ts.context(ts.SCHEME_TYPE.BFV, n, plain_modulus=t, coeff_mod_bit_sizes=chain)
        layout = CipherLayout(poly_degree=n, moduli=ntt_primes(n, chain)[:-1])
        s = secret_key_coeffs(ctx, layout)
        assert set(np.unique(s).tolist()) <= {-1, 0, 1}, "secret key is not ternary: NTT convention wrong"
        x = rng.integers(0, t, n)
        words = vector_words(ts.bfv_vector(ctx, x.tolist()), layout)
        got = bfv_decrypt_slots(words, s, layout, t=t)
        assert [int(v) for v in got] == [int(v) for v in x], "BFV slot order wrong"
