"""Neighbourhood graph: degree, symmetry, connectivity, determinism from the public seed; thresholds."""

from __future__ import annotations

import itertools
import math
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privspk.errors import ConfigError
from privspk.secagg.graph import (
    COMPLETE_UP_TO,
    Graph,
    default_degree,
    neighbourhood_graph,
    threshold_for,
    tolerated_colluders,
)


def names(k: int) -> tuple[str, ...]:
    return tuple(f"n{i:03d}" for i in range(k))


def connected_without(g: Graph, removed: set[str]) -> bool:
    left = [c for c in g.clients if c not in removed]
    seen, todo = {left[0]}, deque([left[0]])
    while todo:
        for v in g.neighbours(todo.popleft()):
            if v not in removed and v not in seen:
                seen.add(v)
                todo.append(v)
    return len(seen) == len(left)


@settings(max_examples=60, deadline=None)
@given(k=st.integers(2, 120), data=st.data(), seed=st.binary(min_size=1, max_size=32))
def test_graph_is_regular_symmetric_and_connected(k: int, data: st.DataObject, seed: bytes) -> None:
    degree = data.draw(st.none() | st.integers(2, k + 3).filter(lambda d: d % 2 == 0 or k % 2 == 0 or d >= k - 1))
    g = neighbourhood_graph(names(k), degree=degree, seed=seed)
    d = min(default_degree(k) if degree is None else degree, k - 1)
    assert g.degree == d
    for c in g.clients:
        nb = g.neighbours(c)
        assert len(nb) == d and c not in nb and list(nb) == sorted(set(nb))
        assert all(g.is_edge(v, c) for v in nb)
        assert g.closed(c) == tuple(sorted((*nb, c)))
        assert sorted(g.share_index(c, h) for h in g.closed(c)) == list(range(1, d + 2))
    assert connected_without(g, set())


@pytest.mark.parametrize(("k", "d"), [(7, 2), (8, 3), (9, 4), (10, 4), (11, 6)])
def test_harary_graph_is_d_connected(k: int, d: int) -> None:
    """Removing any d-1 clients leaves the rest connected (exhaustive on small graphs)."""
    g = neighbourhood_graph(names(k), degree=d, seed=b"any")
    for removed in itertools.combinations(g.clients, d - 1):
        assert connected_without(g, set(removed))


def test_complete_graph_for_small_rounds_log_degree_beyond() -> None:
    for k in range(2, COMPLETE_UP_TO + 1):
        assert default_degree(k) == k - 1
    for k in (17, 50, 100, 1000, 10_000):
        assert default_degree(k) == 2 * math.ceil(math.log2(k))
        assert default_degree(k) < k - 1


def test_graph_is_determined_by_the_public_seed() -> None:
    a = neighbourhood_graph(names(40), degree=6, seed=b"round-1")
    b = neighbourhood_graph(tuple(reversed(names(40))), degree=6, seed=b"round-1")
    c = neighbourhood_graph(names(40), degree=6, seed=b"round-2")
    assert a.adjacency == b.adjacency  # order of the client list does not matter
    assert a.adjacency != c.adjacency  # another round, other neighbourhoods


def test_degree_one_is_refused_beyond_two_clients() -> None:
    assert neighbourhood_graph(names(2), degree=1, seed=b"s").degree == 1  # complete
    with pytest.raises(ConfigError, match="isolated pairs"):
        neighbourhood_graph(names(4), degree=1, seed=b"s")


def test_odd_degree_needs_even_client_count() -> None:
    with pytest.raises(ConfigError, match="odd degree"):
        neighbourhood_graph(names(9), degree=3, seed=b"s")
    g = neighbourhood_graph(names(10), degree=3, seed=b"s")
    assert all(len(g.neighbours(c)) == 3 for c in g.clients)


@pytest.mark.parametrize(
    ("clients", "degree", "match"),
    [
        (("a",), None, "at least 2 distinct clients"),
        (("a", "a"), None, "at least 2 distinct clients"),
        (("a", "b", "c"), 0, "degree must be a positive int"),
        (("a", "b", "c"), 2.0, "degree must be a positive int"),
    ],
)
def test_bad_graph_arguments(clients: tuple, degree: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        neighbourhood_graph(clients, degree=degree, seed=b"s")  # type: ignore[arg-type]


def test_unknown_clients_and_non_holders() -> None:
    g = neighbourhood_graph(names(20), degree=4, seed=b"s")
    with pytest.raises(ConfigError, match="not a client of this round"):
        g.neighbours("zz")
    stranger = next(c for c in g.clients if c not in g.closed("n000"))
    with pytest.raises(ConfigError, match="holds no share"):
        g.share_index("n000", stranger)


@settings(max_examples=100, deadline=None)
@given(n=st.integers(2, 500), frac=st.floats(0.5, 0.999))
def test_threshold_is_a_strict_majority(n: int, frac: float) -> None:
    t = threshold_for(n, frac)
    assert 2 <= t <= n
    assert t > frac * n or t == n
    assert 2 * t > n  # two disjoint groups can never both reach it


def test_threshold_needs_two_holders() -> None:
    with pytest.raises(ConfigError, match="at least 2 holders"):
        threshold_for(1, 0.5)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(2, 200), colluders=st.integers(0, 20), frac=st.floats(0.5, 0.999))
def test_threshold_tolerates_the_stated_colluders(n: int, colluders: int, frac: float) -> None:
    """t is the least value with 2t - n > colluders (no client's two secrets both rebuilt) and
    t > frac * n; at least two honest updates in any opened sum; too few holders are refused."""
    if n < colluders + 2:
        with pytest.raises(ConfigError, match="cannot tolerate"):
            threshold_for(n, frac, colluders=colluders)
        return
    t = threshold_for(n, frac, colluders=colluders)
    assert t <= n and 2 * t - n > colluders and t - colluders >= 2
    assert t == n or t - 1 < 2 or 2 * (t - 1) - n <= colluders or t - 1 <= frac * n  # t is the least such
    assert tolerated_colluders(n, t) >= colluders
