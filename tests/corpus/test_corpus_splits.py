"""privspk.corpus.splits: invariants of speaker partitions, drawn with hypothesis."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from privspk.corpus.splits import MIN_SKEWED_CLIENT, client_sizes, partition_speakers, split_speakers
from privspk.errors import ConfigError

SPEAKERS = st.lists(st.text("abcdefghij0123456789", min_size=1, max_size=6), min_size=1, max_size=60, unique=True)


def shuffled(items: list[str], seed: int) -> list[str]:
    return [items[i] for i in np.random.default_rng(seed).permutation(len(items))]


# ---------------------------------------------------------------------------- client_sizes


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 500), k=st.integers(1, 12), skew=st.floats(0.0, 4.0))
def test_client_sizes_cover_all_speakers(n: int, k: int, skew: float) -> None:
    need = k if skew == 0 else MIN_SKEWED_CLIENT * k
    if n < need:
        with pytest.raises(ConfigError, match="cannot fill"):
            client_sizes(n, n_clients=k, skew=skew)
        return
    sizes = client_sizes(n, n_clients=k, skew=skew)
    assert len(sizes) == k and sum(sizes) == n
    assert list(sizes) == sorted(sizes, reverse=True)
    if skew == 0:
        assert max(sizes) - min(sizes) <= 1
    else:
        assert min(sizes) >= MIN_SKEWED_CLIENT
        # largest remainder: each size is within one of its exact Zipf share
        w = np.arange(1, k + 1, dtype=float) ** -skew
        exact = MIN_SKEWED_CLIENT + (n - MIN_SKEWED_CLIENT * k) * w / w.sum()
        assert np.all(np.abs(np.asarray(sizes) - exact) < 1.0 + 1e-9)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(30, 400), k=st.integers(2, 8), skew=st.floats(0.5, 3.0))
def test_skew_makes_the_largest_client_larger(n: int, k: int, skew: float) -> None:
    assume(n >= MIN_SKEWED_CLIENT * k)
    equal = client_sizes(n, n_clients=k)
    skewed = client_sizes(n, n_clients=k, skew=skew)
    assert skewed[0] >= equal[0] and skewed[-1] <= equal[-1]
    assert client_sizes(n, n_clients=k, skew=skew + 1.0)[0] >= skewed[0] - 1


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "3"])
def test_client_sizes_rejects_bad_client_counts(bad: object) -> None:
    with pytest.raises(ConfigError, match="n_clients"):
        client_sizes(10, n_clients=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "1", True])
def test_client_sizes_rejects_bad_skew(bad: object) -> None:
    with pytest.raises(ConfigError, match="skew"):
        client_sizes(10, n_clients=2, skew=bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- partition_speakers


@settings(max_examples=100, deadline=None)
@given(speakers=SPEAKERS, k=st.integers(1, 6), skew=st.sampled_from([0.0, 0.7, 1.5]), seed=st.integers(0, 2**31))
def test_partition_is_disjoint_covering_deterministic_and_order_free(
    speakers: list[str], k: int, skew: float, seed: int
) -> None:
    assume(len(speakers) >= (k if skew == 0 else MIN_SKEWED_CLIENT * k))
    parts = partition_speakers(speakers, n_clients=k, skew=skew, seed=seed)
    flat = [s for p in parts for s in p]
    assert sorted(flat) == sorted(speakers) and len(flat) == len(set(flat))
    assert tuple(len(p) for p in parts) == client_sizes(len(speakers), n_clients=k, skew=skew)
    assert all(list(p) == sorted(p) for p in parts)
    assert partition_speakers(speakers, n_clients=k, skew=skew, seed=seed) == parts
    assert partition_speakers(shuffled(speakers, seed % 1000), n_clients=k, skew=skew, seed=seed) == parts


@settings(max_examples=30, deadline=None)
@given(n=st.integers(8, 60), seed=st.integers(0, 2**20))
def test_partition_depends_on_the_seed(n: int, seed: int) -> None:
    speakers = [f"s{i}" for i in range(n)]
    results = {partition_speakers(speakers, n_clients=2, seed=seed + j) for j in range(5)}
    assert len(results) > 1


def test_partition_refuses_duplicates_and_strings() -> None:
    with pytest.raises(ConfigError, match=r"repeated: \['a'\]"):
        partition_speakers(["a", "b", "a"], n_clients=1, seed=0)
    with pytest.raises(ConfigError, match="not one string"):
        partition_speakers("abc", n_clients=1, seed=0)
    with pytest.raises(ConfigError, match="seed"):
        partition_speakers(["a"], n_clients=1, seed=-1)


# ---------------------------------------------------------------------------- split_speakers


@settings(max_examples=100, deadline=None)
@given(
    speakers=SPEAKERS.filter(lambda s: len(s) >= 3),
    skew=st.sampled_from([0.0, 1.0]),
    seed=st.integers(0, 2**31),
    data=st.data(),
)
def test_split_invariants(speakers: list[str], skew: float, seed: int, data: st.DataObject) -> None:
    n = len(speakers)
    per_client = 1 if skew == 0 else MIN_SKEWED_CLIENT
    k = data.draw(st.integers(1, max(1, (n - 1) // per_client)), label="n_clients")
    held = data.draw(st.integers(1, n - per_client * k), label="heldout")
    n_public = data.draw(st.integers(0, n - held - per_client * k), label="public")
    frac = n_public / n
    split = split_speakers(speakers, public_fraction=frac, heldout=held, n_clients=k, skew=skew, seed=seed)
    assert len(split.heldout) == held and len(split.public) == n_public and split.n_clients == k
    assert split.speakers == tuple(sorted(speakers))  # covers, and the constructor proved disjointness
    assert split_speakers(
        shuffled(speakers, 7), public_fraction=frac, heldout=held, n_clients=k, skew=skew, seed=seed
    ) == split


@settings(max_examples=50, deadline=None)
@given(n=st.integers(6, 40), seed=st.integers(0, 2**31), data=st.data())
def test_explicit_heldout_speakers_are_kept_exactly(n: int, seed: int, data: st.DataObject) -> None:
    speakers = [f"spk{i:02d}" for i in range(n)]
    held = data.draw(st.lists(st.sampled_from(speakers), min_size=1, max_size=n - 3, unique=True))
    k = 2 if n - len(held) >= 2 else 1
    split = split_speakers(speakers, public_fraction=0.0, heldout=held, n_clients=k, seed=seed)
    assert split.heldout == tuple(sorted(held))
    assert split.public == ()


def test_default_like_split_of_200() -> None:
    speakers = [f"spk{i:03d}" for i in range(200)]
    s = split_speakers(speakers, public_fraction=1 / 3, heldout=40, n_clients=3, seed=0)
    assert (len(s.public), [len(c) for c in s.clients], len(s.heldout)) == (67, [31, 31, 31], 40)
    other = split_speakers(speakers, public_fraction=1 / 3, heldout=40, n_clients=3, seed=1)
    assert other != s


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"public_fraction": 1.0}, r"public_fraction must be in \[0, 1\)"),
        ({"public_fraction": -0.1}, "public_fraction"),
        ({"public_fraction": "0.3"}, "public_fraction"),
        ({"heldout": 0}, "heldout must be between 1 and 9"),
        ({"heldout": 10}, "heldout must be between 1 and 9"),
        ({"heldout": ["zz"]}, r"held-out speakers not among the speakers: \['zz'\]"),
        ({"heldout": []}, "at least one"),
        ({"heldout": "s1"}, "count or a list"),
        ({"public_fraction": 0.8, "heldout": 2}, "leave none for the"),
        ({"n_clients": 9}, "cannot fill"),
        ({"seed": -3}, "seed"),
    ],
)
def test_split_errors(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"public_fraction": 0.2, "heldout": 2, "n_clients": 2, "seed": 0}
    args.update(kwargs)
    with pytest.raises(ConfigError, match=match):
        split_speakers([f"s{i}" for i in range(10)], **args)  # type: ignore[arg-type]
