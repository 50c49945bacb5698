"""Shamir sharing: any t of n rebuild, fewer fail cleanly, exactly t are used."""

from __future__ import annotations

import itertools
import os

import pytest
from Crypto.Protocol.SecretSharing import Shamir
from hypothesis import given, settings
from hypothesis import strategies as st

from privspk.errors import AggregationError, ConfigError
from privspk.secagg import shamir
from privspk.secagg.shamir import combine_secret, split_secret


@settings(max_examples=25, deadline=None)
@given(blocks=st.integers(1, 3), n=st.integers(2, 9), data=st.data())
def test_any_t_shares_rebuild_the_secret(blocks: int, n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(2, n))
    secret = data.draw(st.binary(min_size=16 * blocks, max_size=16 * blocks))
    shares = split_secret(secret, threshold=t, n_shares=n)
    assert len(shares) == n and all(len(s) == 16 * blocks for s in shares)
    subset = data.draw(st.lists(st.integers(1, n), min_size=t, max_size=n, unique=True))
    assert combine_secret({i: shares[i - 1] for i in subset}, threshold=t) == secret


def test_every_t_subset_works_and_t_minus_1_does_not() -> None:
    secret = os.urandom(32)
    shares = split_secret(secret, threshold=3, n_shares=5)
    for subset in itertools.combinations(range(1, 6), 3):
        assert combine_secret({i: shares[i - 1] for i in subset}, threshold=3) == secret
    for subset in itertools.combinations(range(1, 6), 2):
        with pytest.raises(AggregationError, match="only 2 shares, 3 needed"):
            combine_secret({i: shares[i - 1] for i in subset}, threshold=3, what="the key")
        # Interpolating t-1 shares as if they were enough gives garbage, not the secret.
        assert combine_secret({i: shares[i - 1] for i in subset}, threshold=2) != secret


def test_exactly_t_shares_are_interpolated(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[int]] = []
    real = shamir._combine_block

    def spy(parts):  # noqa: ANN001
        calls.append([i for i, _ in parts])
        return real(parts)

    monkeypatch.setattr(shamir, "_combine_block", spy)
    secret = os.urandom(48)
    shares = split_secret(secret, threshold=4, n_shares=9)
    offered = {i: shares[i - 1] for i in (9, 2, 7, 5, 3, 8)}
    assert combine_secret(offered, threshold=4) == secret
    assert calls == [[2, 3, 5, 7]] * 3  # three blocks, each from the 4 lowest offered indices


@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 12), data=st.data())
def test_shares_interoperate_with_pycryptodome_both_ways(n: int, data: st.DataObject) -> None:
    """Same field, encoding and share format as pycryptodome's Shamir: each side opens the other's shares."""
    t = data.draw(st.integers(2, n))
    block = data.draw(st.binary(min_size=16, max_size=16))
    ours = split_secret(block, threshold=t, n_shares=n)
    subset = data.draw(st.lists(st.integers(1, n), min_size=t, max_size=t, unique=True))
    assert Shamir.combine([(i, ours[i - 1]) for i in subset]) == block
    theirs = dict(Shamir.split(t, n, block))
    assert combine_secret({i: theirs[i] for i in subset}, threshold=t) == block


def test_field_product_matches_pycryptodome() -> None:
    from Crypto.Protocol.SecretSharing import _Element  # the reference field (private name, test only)

    for _ in range(50):
        a, b = (int.from_bytes(os.urandom(16), "big") for _ in range(2))
        assert shamir.gf_mul(a, b) == int(_Element(a) * _Element(b)) == shamir.gf_mul(b, a)
        if a:
            assert shamir.gf_mul(a, shamir._gf_inv(a)) == 1


def test_largest_share_count() -> None:
    secret = os.urandom(16)
    shares = split_secret(secret, threshold=3, n_shares=255)
    assert combine_secret({253: shares[252], 254: shares[253], 255: shares[254]}, threshold=3) == secret
    with pytest.raises(ConfigError, match="at most 255 shares"):
        split_secret(secret, threshold=3, n_shares=256)


def test_single_shares_do_not_depend_on_the_secret() -> None:
    """With t = 2 one share is a uniformly random block whatever the secret: the same share value
    is possible for two different secrets (information-theoretic hiding, spot-checked)."""
    a, b = bytes(16), b"\xff" * 16
    share_a = split_secret(a, threshold=2, n_shares=3)
    share_b = split_secret(b, threshold=2, n_shares=3)
    assert share_a[0] != a and share_b[0] != b
    assert len({split_secret(a, threshold=2, n_shares=2)[0] for _ in range(20)}) == 20  # fresh randomness


@pytest.mark.parametrize(
    ("secret", "t", "n", "match"),
    [
        (b"x" * 15, 2, 3, "multiple of 16 bytes, got 15"),
        (b"", 2, 3, "multiple of 16 bytes, got 0"),
        ("x" * 16, 2, 3, "multiple of 16 bytes, got str"),
        (b"x" * 16, 1, 3, "need 2 <= threshold <= n_shares"),
        (b"x" * 16, 4, 3, "need 2 <= threshold <= n_shares"),
        (b"x" * 16, 2.0, 3, "need 2 <= threshold <= n_shares"),
    ],
)
def test_bad_split_arguments(secret: object, t: object, n: int, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        split_secret(secret, threshold=t, n_shares=n)  # type: ignore[arg-type]


def test_bad_combine_arguments() -> None:
    shares = split_secret(bytes(32), threshold=2, n_shares=3)
    with pytest.raises(AggregationError, match="mixed lengths"):
        combine_secret({1: shares[0], 2: shares[1][:16]}, threshold=2)
    with pytest.raises(AggregationError, match="bad indices"):
        combine_secret({0: shares[0], 2: shares[1]}, threshold=2)
    with pytest.raises(AggregationError, match="not a multiple of 16"):
        combine_secret({1: b"x" * 5, 2: b"y" * 5}, threshold=2)
    with pytest.raises(ConfigError, match="threshold must be an int >= 2"):
        combine_secret({1: shares[0]}, threshold=1)
