"""Masks: AES-256-CTR keystream (checked against pycryptodome), full-length seeds, distinct and uniform."""

from __future__ import annotations

import numpy as np
import pytest
from Crypto.Cipher import AES
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from privspk.errors import ConfigError
from privspk.secagg.prg import MaskKey, MaskStream, derive_mask_key

seeds = st.binary(min_size=16, max_size=48)


def reference_mask(key: MaskKey, dim: int, dtype: type) -> np.ndarray:
    """The same keystream from an independent AES implementation (pycryptodome)."""
    nbytes = dim * np.dtype(dtype).itemsize
    stream = AES.new(key.key, AES.MODE_CTR, nonce=b"", initial_value=key.iv).encrypt(bytes(nbytes))
    return np.frombuffer(stream, dtype=np.dtype(dtype).newbyteorder("<"))


@settings(max_examples=40, deadline=None)
@given(seed=seeds, dim=st.integers(1, 300), dtype=st.sampled_from([np.uint16, np.uint32, np.uint64]))
def test_mask_is_the_aes_ctr_keystream(seed: bytes, dim: int, dtype: type) -> None:
    key = derive_mask_key(seed, salt=b"digest", info=b"purpose")
    got = MaskStream(dim=dim, dtype=dtype).mask(key)
    assert got.tolist() == reference_mask(key, dim, dtype).tolist()


@settings(max_examples=40, deadline=None)
@given(seed=seeds, dim=st.integers(1, 200), dtype=st.sampled_from([np.uint16, np.uint32]),
       sign=st.sampled_from([1, -1]), start=st.integers(0, 2**64 - 1))
def test_apply_adds_modulo_the_word(seed: bytes, dim: int, dtype: type, sign: int, start: int) -> None:
    bits = np.dtype(dtype).itemsize * 8
    rng = np.random.default_rng(start)
    acc = rng.integers(0, 2**bits, dim, dtype=np.uint64).astype(dtype)
    before = [int(v) for v in acc]
    key = derive_mask_key(seed, salt=b"", info=b"x")
    stream = MaskStream(dim=dim, dtype=dtype)
    stream.apply(acc, key, sign=sign)
    mask = [int(v) for v in reference_mask(key, dim, dtype)]
    assert [int(v) for v in acc] == [(a + sign * m) % 2**bits for a, m in zip(before, mask)]
    stream.apply(acc, key, sign=-sign)
    assert [int(v) for v in acc] == before


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.uint64])
def test_many_masks_across_slice_boundaries(dtype: type) -> None:
    """apply_all works slice by slice with all keystreams advancing together: check it against
    whole reference masks on a vector several slices long."""
    bits = np.dtype(dtype).itemsize * 8
    dim = 3 * ((1 << 18) // np.dtype(dtype).itemsize) + 5
    keys = [(derive_mask_key(bytes([i + 1]) * 16, salt=b"s", info=b"i"), 1 if i % 3 else -1) for i in range(4)]
    acc = np.arange(dim, dtype=np.uint64).astype(dtype)
    want = acc.astype(object)
    for key, sign in keys:
        want = (want + sign * reference_mask(key, dim, dtype).astype(object)) % (1 << bits)
    MaskStream(dim=dim, dtype=dtype).apply_all(acc, keys)
    assert (acc.astype(object) == want).all()


@settings(max_examples=60, deadline=None)
@given(a=seeds, b=seeds)
def test_distinct_seeds_give_unrelated_masks(a: bytes, b: bytes) -> None:
    if a == b:
        return
    stream = MaskStream(dim=4096, dtype=np.uint16)
    ma = stream.mask(derive_mask_key(a, salt=b"s", info=b"i")).copy()
    mb = stream.mask(derive_mask_key(b, salt=b"s", info=b"i"))
    # Unrelated uniform 16-bit words agree with probability 2**-16: 4096 * 2**-16 = 1/16 expected matches.
    assert np.count_nonzero(ma == mb) <= 4


def test_salt_and_info_separate_masks() -> None:
    seed = b"\x07" * 32
    keys = {derive_mask_key(seed, salt=s, info=i).key for s in (b"round-1", b"round-2") for i in (b"self", b"pair")}
    assert len(keys) == 4
    assert derive_mask_key(seed, salt=b"a", info=b"b") == derive_mask_key(seed, salt=b"a", info=b"b")


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_masks_are_uniform_chi_square(dtype: type) -> None:
    """Byte-level and top-bits histograms of masks from many seeds fit the uniform law."""
    stream = MaskStream(dim=1 << 14, dtype=dtype)
    words = np.concatenate([stream.mask(derive_mask_key(bytes([i]) * 16, salt=b"u", info=b"u")).copy()
                            for i in range(8)])
    bits = np.dtype(dtype).itemsize * 8
    for values, bins in ((words & 0xFF, 256), ((words >> (bits - 8)) & 0xFF, 256), (words & 0xF, 16)):
        counts = np.bincount(values.astype(np.int64), minlength=bins)
        assert chisquare(counts).pvalue > 1e-4
    # Each output bit is set half the time.
    ones = np.array([((words >> b) & 1).mean() for b in range(bits)])
    assert np.abs(ones - 0.5).max() < 4 * 0.5 / np.sqrt(words.size)


def test_a_biased_generator_fails_the_same_check() -> None:
    """The chi-square check can fail: a Mersenne-Twister 'mask' truncated to 15 bits is caught."""
    words = np.random.RandomState(0).randint(0, 2**15, size=1 << 17).astype(np.uint16)
    counts = np.bincount(((words >> 8) & 0xFF).astype(np.int64), minlength=256)
    assert chisquare(counts).pvalue < 1e-10


@pytest.mark.parametrize("seed", [b"", b"x" * 15, "x" * 32, None])
def test_short_or_non_byte_seeds_are_refused(seed: object) -> None:
    with pytest.raises(ConfigError, match="at least 16 \\(128 bits\\)"):
        derive_mask_key(seed, salt=b"", info=b"")  # type: ignore[arg-type]


def test_bad_stream_arguments() -> None:
    with pytest.raises(ConfigError, match="masks are unsigned words"):
        MaskStream(dim=4, dtype=np.int32)
    with pytest.raises(ConfigError, match="dim must be a positive int"):
        MaskStream(dim=0, dtype=np.uint16)
    stream = MaskStream(dim=4, dtype=np.uint16)
    key = derive_mask_key(bytes(16), salt=b"", info=b"")
    with pytest.raises(ConfigError, match="accumulator must be 4 words"):
        stream.apply(np.zeros(5, dtype=np.uint16), key, sign=1)
    with pytest.raises(ConfigError, match="accumulator must be 4 words"):
        stream.apply(np.zeros(4, dtype=np.uint32), key, sign=1)
    with pytest.raises(ConfigError, match="sign must be"):
        stream.apply(np.zeros(4, dtype=np.uint16), key, sign=0)


def test_keys_do_not_print() -> None:
    key = derive_mask_key(bytes(16), salt=b"", info=b"")
    assert key.key.hex() not in repr(key) and "secret" in repr(key)
