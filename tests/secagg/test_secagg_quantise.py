"""Quantiser: unbiased stochastic rounding, headroom and word-size rule, no wrap, decode accuracy, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privspk.errors import ConfigError, ProtocolError
from privspk.secagg.quantise import Quantiser, auto_bits, headroom_for

FAST = settings(max_examples=60, deadline=None)


def reference_word_bits(bits: int, k: int, extra: int) -> int:
    need = bits + (math.ceil(math.log2(k)) if k > 1 else 0) + extra
    return 16 if need <= 16 else 32 if need <= 32 else 64


@FAST
@given(k=st.integers(1, 5000))
def test_headroom_is_ceil_log2(k: int) -> None:
    h = headroom_for(k)
    assert 2**h >= k
    assert h == 0 or 2 ** (h - 1) < k


@FAST
@given(bits=st.integers(2, 40), k=st.integers(1, 3000), extra=st.integers(0, 12))
def test_word_is_smallest_that_holds_the_sum(bits: int, k: int, extra: int) -> None:
    need = bits + headroom_for(k) + extra
    if need > 64:
        with pytest.raises(ConfigError, match="more than 64"):
            Quantiser(clip=1.0, bits=bits, n_clients=k, headroom_bits=extra)
        return
    q = Quantiser(clip=1.0, bits=bits, n_clients=k, headroom_bits=extra)
    assert q.word_bits == reference_word_bits(bits, k, extra)
    assert q.dtype == {16: np.uint16, 32: np.uint32, 64: np.uint64}[q.word_bits]
    assert q.bytes_per_value == q.word_bits // 8


@pytest.mark.parametrize(("bits", "k", "dtype"), [(12, 16, np.uint16), (12, 17, np.uint32), (16, 1, np.uint16),
                                                  (16, 2, np.uint32), (8, 256, np.uint16), (8, 257, np.uint32),
                                                  (16, 10, np.uint32)])
def test_uint16_exactly_when_b_plus_log2k_fits(bits: int, k: int, dtype: type) -> None:
    assert Quantiser(clip=1.0, bits=bits, n_clients=k).dtype is dtype


def test_auto_bits_fills_a_uint16_word() -> None:
    for k in range(1, 257):
        b = auto_bits(k)
        assert Quantiser(clip=1.0, bits=b, n_clients=k).dtype is np.uint16
        assert b == 16 or Quantiser(clip=1.0, bits=b + 1, n_clients=k).dtype is not np.uint16
    with pytest.raises(ConfigError, match="use a wider word"):
        auto_bits(257)


@settings(max_examples=40, deadline=None)
@given(
    x=st.floats(-1.0, 1.0, allow_nan=False),
    clip=st.sampled_from([0.25, 1.0, 3.0]),
    bits=st.integers(3, 24),
    seed=st.integers(0, 2**32 - 1),
)
def test_stochastic_rounding_is_unbiased(x: float, clip: float, bits: int, seed: int) -> None:
    q = Quantiser(clip=clip, bits=bits)
    value = x * clip
    n = 40_000
    codes = q.to_integers(np.full(n, value), rng=np.random.default_rng(seed))
    y = value * q.scale
    # Each code is one of the two integers around y ...
    assert set(np.unique(codes)) <= {math.floor(y), math.ceil(y)}
    # ... and their mean is y: a Bernoulli(frac) mean, within 6 standard errors (sd <= 1/2).
    assert abs(codes.mean() - y) <= 6 * 0.5 / math.sqrt(n) + 1e-12


def test_rounding_probability_matches_fraction() -> None:
    q = Quantiser(clip=1.0, bits=4)  # 7 levels
    x = np.full(200_000, 0.3 / 7 + 2 / 7)  # y = 2.3: rounds up w.p. 0.3
    codes = q.to_integers(x, rng=np.random.default_rng(0))
    assert set(np.unique(codes)) == {2, 3}
    assert abs((codes == 3).mean() - 0.3) < 0.005


@FAST
@given(k=st.integers(1, 4000), bits=st.integers(2, 30), extra=st.integers(0, 4), sign=st.sampled_from([1, -1]))
def test_no_wrap_for_k_worst_case_inputs(k: int, bits: int, extra: int, sign: int) -> None:
    if bits + headroom_for(k) + extra > 64:
        return
    q = Quantiser(clip=2.0, bits=bits, n_clients=k, headroom_bits=extra)
    rng = np.random.default_rng(0)
    word = q.encode(np.array([sign * 2.0, sign * 5.0, -sign * 1e9]), rng=rng)  # clipped to +-clip
    total = np.zeros(3, dtype=q.dtype)
    # k-fold sum of the extreme word, by repeated doubling (exact modulo 2**word_bits).
    acc, base, n = total, word, k
    while n:
        if n & 1:
            acc = q.add(acc, base)
        base = q.add(base, base)
        n >>= 1
    assert q.unwrap(acc).tolist() == [sign * k * q.levels, sign * k * q.levels, -sign * k * q.levels]
    np.testing.assert_allclose(q.decode_sum(acc, n_summands=k), [sign * 2.0 * k, sign * 2.0 * k, -sign * 2.0 * k])


@FAST
@given(k=st.integers(1, 40), dim=st.integers(1, 50), bits=st.integers(4, 20), seed=st.integers(0, 2**32 - 1))
def test_decoded_sum_within_one_step_per_client(k: int, dim: int, bits: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    clip = 1.5
    q = Quantiser(clip=clip, bits=bits, n_clients=k)
    xs = rng.uniform(-2.0, 2.0, (k, dim))  # some beyond the clip
    total = np.zeros(dim, dtype=q.dtype)
    for x in xs:
        total = q.add(total, q.encode(x, rng=rng))
    want = np.clip(xs, -clip, clip).sum(axis=0)
    assert np.abs(q.decode_sum(total, n_summands=k) - want).max() <= k / q.scale + 1e-9


@FAST
@given(bits=st.integers(2, 30), k=st.integers(1, 100), seed=st.integers(0, 2**32 - 1))
def test_wrap_unwrap_round_trip(bits: int, k: int, seed: int) -> None:
    q = Quantiser(clip=1.0, bits=bits, n_clients=k)
    rng = np.random.default_rng(seed)
    lim = k * q.levels
    ints = rng.integers(-lim, lim, size=64, endpoint=True)
    assert q.unwrap(q.wrap(ints)).tolist() == ints.tolist()
    blob = q.words_to_bytes(q.wrap(ints))
    assert len(blob) == 64 * q.bytes_per_value
    assert q.unwrap(q.words_from_bytes(blob, dim=64)).tolist() == ints.tolist()


def test_words_are_little_endian_twos_complement() -> None:
    q = Quantiser(clip=1.0, bits=8, n_clients=2)  # uint16 words
    assert q.words_to_bytes(q.wrap(np.array([1, -1]))) == b"\x01\x00\xff\xff"


def test_clipping_saturates_at_the_levels() -> None:
    q = Quantiser(clip=0.5, bits=6)
    codes = q.to_integers(np.array([0.5, 7.0, -0.5, -1e300]), rng=np.random.default_rng(1))
    assert codes.tolist() == [31, 31, -31, -31]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"clip": 0.0}, "clip must be a positive finite"),
        ({"clip": -1.0}, "clip must be a positive finite"),
        ({"clip": float("nan")}, "clip must be a positive finite"),
        ({"clip": float("inf")}, "clip must be a positive finite"),
        ({"clip": "1"}, "clip must be a positive finite"),
        ({"clip": 1.0, "bits": 1}, "bits must be an int in"),
        ({"clip": 1.0, "bits": 63}, "bits must be an int in"),
        ({"clip": 1.0, "bits": 16.0}, "bits must be an int in"),
        ({"clip": 1.0, "bits": True}, "bits must be an int in"),
        ({"clip": 1.0, "headroom_bits": -1}, "headroom_bits must be a non-negative int"),
        ({"clip": 1.0, "n_clients": 0}, "n_clients must be a positive int"),
        ({"clip": 1.0, "bits": 60, "n_clients": 64}, "more than 64"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Quantiser(**kwargs)


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (np.array([0.1, np.nan, np.inf]), "2 non-finite values"),
        (np.zeros((2, 2)), r"expected a 1-D update, got shape \(2, 2\)"),
    ],
)
def test_bad_updates_are_refused(x: np.ndarray, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Quantiser(clip=1.0).to_integers(x, rng=np.random.default_rng(0))


def test_wrong_length_words_are_a_protocol_error() -> None:
    q = Quantiser(clip=1.0, bits=16, n_clients=3)
    with pytest.raises(ProtocolError, match=r"expected 4 x 4-byte words \(16 bytes\), got 15 bytes") as e:
        q.words_from_bytes(b"\x00" * 15, dim=4, client="c7")
    assert e.value.client == "c7"


def test_out_of_range_sum_is_detected() -> None:
    q = Quantiser(clip=1.0, bits=8, n_clients=4)
    too_big = q.wrap(np.array([4 * q.levels + 1]))
    with pytest.raises(ProtocolError, match="not a sum of 4 quantised updates"):
        q.decode_sum(too_big, n_summands=4)
