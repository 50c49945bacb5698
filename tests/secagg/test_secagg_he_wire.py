"""Raw ciphertext words: primes as SEAL picks them, exact packing, sums and sketches, TenSEAL round trips."""

from __future__ import annotations

import numpy as np
import pytest
import sympy
from hypothesis import given, settings
from hypothesis import strategies as st

from privspk.errors import ConfigError, ProtocolError
from privspk.secagg.he_wire import (
    SKETCH_ROWS,
    CipherLayout,
    batching_prime,
    is_prime,
    ntt_primes,
    seal_frame,
    vector_bytes,
    vector_words,
)

ts = pytest.importorskip("tenseal")


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 2**64) | st.integers(0, 10_000))
def test_is_prime_matches_sympy(n: int) -> None:
    assert is_prime(n) == sympy.isprime(n)


def test_is_prime_on_carmichael_and_strong_pseudoprimes() -> None:
    for n in (561, 41041, 3215031751, 3825123056546413051):
        assert not is_prime(n), n
    assert is_prime(2**61 - 1) and is_prime(2**31 - 1)
    with pytest.raises(ConfigError, match="beyond the range"):
        is_prime(318665857834031151167461)  # strong pseudoprime to every base up to 37


@pytest.mark.parametrize("chain", [(36, 21), (30, 30, 21), (44, 30), (33, 33, 30), (60, 49)])
def test_ntt_primes_are_the_ones_tenseal_uses(chain: tuple[int, ...]) -> None:
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, 4096, coeff_mod_bit_sizes=list(chain), n_threads=1)
    primes = ntt_primes(4096, chain)
    data = ctx.seal_context().data
    product = int(np.prod(np.array(primes[:-1], dtype=object)))
    assert data.first_context_data().total_coeff_modulus() == product % 2**64
    assert data.first_context_data().total_coeff_modulus_bit_count() == product.bit_length()
    assert data.last_context_data().total_coeff_modulus() == primes[0]
    for p, bits in zip(primes, chain):
        assert sympy.isprime(p) and p.bit_length() == bits and p % 8192 == 1
    assert len(set(primes)) == len(primes)


def test_ntt_primes_refuses_impossible_sizes() -> None:
    with pytest.raises(ConfigError, match="fewer than 1 14-bit primes"):
        ntt_primes(8192, [14])


@settings(max_examples=50, deadline=None)
@given(above=st.integers(1, 2**59), log_n=st.integers(10, 15))
def test_batching_prime_is_the_smallest_above(above: int, log_n: int) -> None:
    n = 1 << log_n
    t = batching_prime(above, n)
    assert t > above and t % (2 * n) == 1 and sympy.isprime(t)
    k = t - 2 * n
    while k > above:  # no batching prime in between
        assert not sympy.isprime(k)
        k -= 2 * n


moduli_st = st.lists(st.integers(3, 2**61), min_size=1, max_size=3)


@settings(max_examples=60, deadline=None)
@given(moduli=moduli_st, log_n=st.integers(2, 6), n_chunks=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))
def test_pack_unpack_round_trip_at_exact_width(moduli: list[int], log_n: int, n_chunks: int, seed: int) -> None:
    layout = CipherLayout(poly_degree=1 << log_n, moduli=tuple(moduli))
    words = layout.random_words(n_chunks, rng=np.random.default_rng(seed))
    words[0, 0, :, 0] = np.array(moduli, dtype=np.uint64) - 1  # extremes
    words[-1, -1, :, -1] = 0
    blob = layout.pack(words)
    bits = sum(q.bit_length() for q in moduli) * 2 * (1 << log_n) * n_chunks
    assert len(blob) == layout.packed_bytes(n_chunks) == bits // 8
    assert np.array_equal(layout.unpack(blob, n_chunks=n_chunks), words)


def test_unpack_refuses_wrong_length_and_out_of_range_residues() -> None:
    layout = CipherLayout(poly_degree=8, moduli=(97, 17))
    blob = layout.pack(layout.random_words(2, rng=np.random.default_rng(0)))
    with pytest.raises(ProtocolError, match="truncated") as e:
        layout.unpack(blob[:-1], n_chunks=2, client="c7")
    assert e.value.client == "c7"
    with pytest.raises(ProtocolError, match="oversized"):
        layout.unpack(blob + b"\0", n_chunks=2, client="c7")
    with pytest.raises(ProtocolError, match="truncated"):
        layout.unpack(blob, n_chunks=3, client="c7")
    with pytest.raises(ProtocolError, match="not below the modulus q_0 = 97"):
        layout.unpack(b"\xff" * len(blob), n_chunks=2, client="c7")
    with pytest.raises(ProtocolError, match="positive int"):
        layout.unpack(blob, n_chunks=0)


def test_layout_refuses_bad_parameters() -> None:
    with pytest.raises(ConfigError, match="power of two"):
        CipherLayout(poly_degree=12, moduli=(97,))
    with pytest.raises(ConfigError, match="moduli"):
        CipherLayout(poly_degree=8, moduli=())
    with pytest.raises(ConfigError, match="moduli"):
        CipherLayout(poly_degree=8, moduli=(2**63,))


@settings(max_examples=40, deadline=None)
@given(k=st.integers(1, 6), seed=st.integers(0, 2**32 - 1))
def test_add_is_residue_sum_and_sub_inverts_it(k: int, seed: int) -> None:
    layout = CipherLayout(poly_degree=8, moduli=(2**61 - 1, 97))
    rng = np.random.default_rng(seed)
    parts = [layout.random_words(2, rng=rng) for _ in range(k)]
    acc = layout.zeros(2)
    for p in parts:
        layout.add_into(acc, p)
    ref = sum(p.astype(object) for p in parts)
    ref = ref % np.array(layout.moduli, dtype=object).reshape(1, 1, -1, 1)
    assert np.array_equal(acc.astype(object), ref)
    for p in parts:
        layout.sub_into(acc, p)
    assert not acc.any()


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 5))
def test_sketch_is_linear_and_matches_a_slow_reference(seed: int, k: int) -> None:
    layout = CipherLayout(poly_degree=16, moduli=(2**61 - 1, 12289))
    rng = np.random.default_rng(seed)
    challenge = rng.bytes(32)
    parts = [layout.random_words(3, rng=rng) for _ in range(k)]
    total = layout.zeros(3)
    for p in parts:
        layout.add_into(total, p)
    sk = [layout.sketch(p, challenge) for p in parts]
    summed = [[sum(s[r][l] for s in sk) % q for l, q in enumerate(layout.moduli)] for r in range(SKETCH_ROWS)]
    assert summed == layout.sketch(total, challenge)
    # slow reference: Python integers over the same r
    from privspk.secagg.he_wire import _keystream

    n = 3 * 2 * 16
    r = _keystream(challenge, SKETCH_ROWS * n * 2).view("<u2").reshape(SKETCH_ROWS, n)
    for l, q in enumerate(layout.moduli):
        x = [int(v) for v in np.ascontiguousarray(parts[0][:, :, l, :]).ravel()]
        for row in range(SKETCH_ROWS):
            assert sk[0][row][l] == sum(a * int(b) for a, b in zip(x, r[row])) % q


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), where=st.integers(0, 3 * 2 * 16 - 1), delta=st.integers(1, 2**61 - 2))
def test_sketch_catches_any_changed_residue(seed: int, where: int, delta: int) -> None:
    # one residue off by delta survives only if r_j = 0 in all 4 rows: probability 2**-64
    layout = CipherLayout(poly_degree=16, moduli=(2**61 - 1,))
    rng = np.random.default_rng(seed)
    words = layout.random_words(3, rng=rng)
    forged = words.copy()
    flat = forged.reshape(-1)
    flat[where] = (int(flat[where]) + delta) % (2**61 - 1)
    challenge = rng.bytes(32)
    assert layout.sketch(words, challenge) != layout.sketch(forged, challenge)


def test_sketch_refuses_short_challenge() -> None:
    layout = CipherLayout(poly_degree=8, moduli=(97,))
    with pytest.raises(ProtocolError, match="32 bytes"):
        layout.sketch(layout.zeros(1), b"short")


def _bfv_context():
    return ts.context(ts.SCHEME_TYPE.BFV, 4096, plain_modulus=batching_prime(2**20, 4096),
                      coeff_mod_bit_sizes=[40, 30], n_threads=1)


def test_words_round_trip_through_tenseal_and_decrypt_sums() -> None:
    ctx = _bfv_context()
    layout = CipherLayout(poly_degree=4096, moduli=ntt_primes(4096, [40, 30])[:-1])
    rng = np.random.default_rng(0)
    xs = [rng.integers(0, 1000, 4096) for _ in range(3)]
    acc = layout.zeros(1)
    for x in xs:
        layout.add_into(acc, vector_words(ts.bfv_vector(ctx, x.tolist()), layout))
    frame = seal_frame(ts.bfv_vector(ctx, [0]), layout)
    packed = layout.pack(acc)
    back = ts.bfv_vector_from(ctx, vector_bytes(layout.unpack(packed, n_chunks=1), layout, frame, slots=4096,
                                                ckks=False))
    assert back.decrypt() == (xs[0] + xs[1] + xs[2]).tolist()


def test_ckks_words_round_trip() -> None:
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, 4096, coeff_mod_bit_sizes=[45, 30], n_threads=1)
    ctx.global_scale = 2.0**37
    layout = CipherLayout(poly_degree=4096, moduli=ntt_primes(4096, [45, 30])[:-1])
    x = np.random.default_rng(1).uniform(-1, 1, 2048)
    v = ts.ckks_vector(ctx, x.tolist())
    words = vector_words(v, layout)
    frame = seal_frame(v, layout)
    assert frame.is_ntt_form and frame.scale == 2.0**37
    out = ts.ckks_vector_from(ctx, vector_bytes(words, layout, frame, slots=2048, ckks=True)).decrypt()
    assert np.abs(np.array(out) - x).max() < 1e-7


def test_vector_words_refuses_a_ciphertext_of_other_parameters() -> None:
    ctx = _bfv_context()
    other = CipherLayout(poly_degree=4096, moduli=ntt_primes(4096, [36, 21])[:-1])
    with pytest.raises(ProtocolError):
        vector_words(ts.bfv_vector(ctx, [1, 2, 3]), other)


def test_the_tenseal_frame_format_is_the_one_he_wire_parses() -> None:
    """Fails loudly when a TenSEAL/SEAL release changes what he_wire.py reads by hand: the SEAL header
    (magic, size, version, compression) inside TenSEAL's public ``serialize()`` output, and the zstd
    stream the PyPI ``zstandard`` binding decompresses to exactly two polynomials of 64-bit residues."""
    import struct

    import zstandard

    from privspk.secagg import he_wire

    ctx = _bfv_context()
    layout = CipherLayout(poly_degree=4096, moduli=ntt_primes(4096, [40, 30])[:-1])
    blob = ts.bfv_vector(ctx, [1, 2, 3]).serialize()
    at = blob.find(struct.pack("<H", he_wire._SEAL_MAGIC))
    assert at >= 0, f"tenseal {ts.__version__}: no SEAL frame (magic 0xA15E) in a serialised BFV vector"
    magic, hsize, major, minor, compr, _res, size = he_wire._SEAL_HEADER.unpack_from(blob, at)
    assert (hsize, major, compr) == (16, 4, he_wire._COMPR_ZSTD), (
        f"tenseal {ts.__version__} writes SEAL header size {hsize}, version {major}.{minor}, compression {compr}; "
        "secagg/he_wire.py parses header size 16, SEAL 4.x, zstd: check the frame format before upgrading")
    payload = blob[at + hsize: at + size]
    members = zstandard.ZstdDecompressor().stream_reader(payload).read(1 << 22)
    assert len(members) >= 2 * len(layout.moduli) * 4096 * 8
    assert vector_words(ts.bfv_vector(ctx, [1, 2, 3]), layout).shape == (1, 2, len(layout.moduli), 4096)


def test_a_corrupt_zstd_stream_is_a_protocol_error() -> None:
    from privspk.secagg.he_wire import _zstd_decompress

    with pytest.raises(ProtocolError, match="zstd could not decompress"):
        _zstd_decompress(b"\x28\xb5\x2f\xfd" + b"\x00garbage" * 4, 100)
