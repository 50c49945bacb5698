"""Who masks with whom: the neighbourhood graph of SecAgg+.

Each client exchanges pairwise masks and secret shares only with its graph
neighbours, so a round costs O(K * degree) instead of O(K^2). Small rounds
(``K <= COMPLETE_UP_TO``) use the complete graph (plain SecAgg). Larger ones use
a Harary graph of degree ``2 * ceil(log2 K)``: clients sit on a ring in an order
drawn from the round's *public* seed, and each is joined to the ``degree / 2``
nearest on either side. A Harary graph of degree ``d`` is ``d``-regular and
``d``-connected, so no small dropout set splits it. Every party derives the same
graph from the same seed; nobody chooses it.

A client's *closed neighbourhood* is its neighbours plus itself; its secrets are
shared among exactly these ``degree + 1`` clients, holder ``i`` getting share
index ``i + 1`` in sorted order.

>>> g = neighbourhood_graph(("a", "b", "c", "d"), degree=None, seed=b"public")
>>> g.degree, g.neighbours("a")
(3, ('b', 'c', 'd'))
>>> g.share_index("c", "a")
1
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from privspk.errors import ConfigError

COMPLETE_UP_TO = 16
"""Rounds with at most this many clients use the complete graph by default."""


def default_degree(n_clients: int) -> int:
    """Degree used when none is configured: complete for small K, else ``2 * ceil(log2 K)``.

    >>> [default_degree(k) for k in (2, 10, 16, 17, 50, 1000)]
    [1, 9, 15, 10, 12, 20]
    """
    if type(n_clients) is not int or n_clients < 2:
        raise ConfigError(f"a masked round needs at least 2 clients, got {n_clients!r}")
    if n_clients <= COMPLETE_UP_TO:
        return n_clients - 1
    return min(n_clients - 1, 2 * math.ceil(math.log2(n_clients)))


@dataclass(frozen=True)
class Graph:
    """An undirected neighbourhood graph over a round's clients (build with :func:`neighbourhood_graph`).

    >>> g = neighbourhood_graph(tuple("abcdefgh"), degree=2, seed=b"s")
    >>> all(len(g.neighbours(c)) == 2 for c in g.clients)
    True
    """

    clients: tuple[str, ...]
    degree: int
    adjacency: Mapping[str, tuple[str, ...]] = field(repr=False)
    _closed: dict[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)
    _index: dict[str, dict[str, int]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        closed = {c: tuple(sorted((*nb, c))) for c, nb in self.adjacency.items()}
        object.__setattr__(self, "_closed", closed)
        object.__setattr__(self, "_index", {c: {h: i + 1 for i, h in enumerate(cl)} for c, cl in closed.items()})

    def neighbours(self, client: str) -> tuple[str, ...]:
        """Sorted neighbours of ``client`` (itself excluded)."""
        try:
            return self.adjacency[client]
        except KeyError:
            raise ConfigError(f"{client!r} is not a client of this round") from None

    def closed(self, client: str) -> tuple[str, ...]:
        """Sorted closed neighbourhood: the neighbours and ``client`` itself (the holders of its shares)."""
        self.neighbours(client)
        return self._closed[client]

    def share_index(self, owner: str, holder: str) -> int:
        """1-based Shamir index of ``holder``'s share of ``owner``'s secrets."""
        self.neighbours(owner)
        idx = self._index[owner].get(holder)
        if idx is None:
            raise ConfigError(f"{holder!r} is not a neighbour of {owner!r}: it holds no share of its secrets")
        return idx

    def is_edge(self, a: str, b: str) -> bool:
        """Whether ``a`` and ``b`` are neighbours."""
        return b in self.neighbours(a)


def _ring_order(clients: tuple[str, ...], seed: bytes) -> list[str]:
    return sorted(clients, key=lambda c: (hashlib.sha256(seed + b"\x00" + c.encode()).digest(), c))


def neighbourhood_graph(clients: tuple[str, ...], *, degree: int | None, seed: bytes) -> Graph:
    """The round's graph: complete when ``degree >= K - 1``, else a Harary graph on a seeded ring.

    ``degree=None`` takes :func:`default_degree`. An odd degree needs an even
    number of clients (each is then also joined to the client opposite it).

    >>> neighbourhood_graph(tuple("abcde"), degree=3, seed=b"s")
    Traceback (most recent call last):
    ...
    privspk.errors.ConfigError: an odd degree (3) needs an even number of clients, got 5; use an even degree
    """
    clients = tuple(sorted(clients))
    k = len(clients)
    if k < 2 or len(set(clients)) != k:
        raise ConfigError(f"a graph needs at least 2 distinct clients, got {clients!r}")
    d = default_degree(k) if degree is None else degree
    if type(d) is not int or d < 1:
        raise ConfigError(f"degree must be a positive int, got {d!r}")
    if d >= k - 1:
        adj = {c: tuple(x for x in clients if x != c) for c in clients}
        return Graph(clients=clients, degree=k - 1, adjacency=adj)
    if d < 2:
        raise ConfigError(f"degree 1 would split {k} clients into isolated pairs; use a degree of at least 2")
    if d % 2 and k % 2:
        raise ConfigError(f"an odd degree ({d}) needs an even number of clients, got {k}; use an even degree")
    ring = _ring_order(clients, bytes(seed))
    sets: dict[str, set[str]] = {c: set() for c in clients}
    offsets = list(range(1, d // 2 + 1)) + ([k // 2] if d % 2 else [])
    for pos, c in enumerate(ring):
        for off in offsets:
            other = ring[(pos + off) % k]
            sets[c].add(other)
            sets[other].add(c)
    adj = {c: tuple(sorted(s)) for c, s in sets.items()}
    return Graph(clients=clients, degree=d, adjacency=adj)


def threshold_for(n_holders: int, fraction: float, *, colluders: int = 0) -> int:
    """Shares needed to rebuild a secret held by ``n_holders``, tolerating ``colluders`` colluding holders.

    ``t`` is the least integer with ``t > fraction * n``, ``2t - n > colluders`` and ``t >= 2``.
    Each honest holder reveals at most one of a client's two secrets (its self-mask
    seed or its mask key), so a server holding both would need ``2t`` shares from
    ``n`` holders of whom only the colluders gave both: ``2t <= n + colluders``. With
    ``2t - n > colluders`` that never happens, whatever survivor sets the server shows.
    Rounds with fewer than ``colluders + 2`` holders are refused: the opened sum would
    then hold a single honest update next to the colluders' own.

    >>> [threshold_for(n, 0.5) for n in (2, 3, 10, 13)]
    [2, 2, 6, 7]
    >>> [threshold_for(n, 0.5, colluders=1) for n in (3, 5, 10, 11, 13)]
    [3, 4, 6, 7, 8]
    >>> threshold_for(2, 0.5, colluders=1)
    Traceback (most recent call last):
    ...
    privspk.errors.ConfigError: secrets held by 2 clients cannot tolerate 1 colluding client(s): that needs at \
least 3 holders (a complete-graph round of at least 3 clients, or a larger degree); add clients or lower \
[secagg] colluders
    """
    if type(n_holders) is not int or n_holders < 2:
        raise ConfigError(f"secrets need at least 2 holders, got {n_holders!r}")
    if type(colluders) is not int or colluders < 0:
        raise ConfigError(f"colluders must be an int >= 0, got {colluders!r}")
    if n_holders < colluders + 2:
        raise ConfigError(
            f"secrets held by {n_holders} clients cannot tolerate {colluders} colluding client(s): that needs at "
            f"least {colluders + 2} holders (a complete-graph round of at least {colluders + 2} clients, or a "
            "larger degree); add clients or lower [secagg] colluders"
        )
    t = max(2, math.floor(fraction * n_holders) + 1, (n_holders + colluders) // 2 + 1)
    return min(n_holders, t)


def tolerated_colluders(n_holders: int, threshold: int) -> int:
    """Colluding clients (with the server) that a ``threshold``-of-``n_holders`` sharing tolerates.

    Two bounds, the smaller one counts: ``2t - n - 1`` (no client's seed *and* mask key can
    both be rebuilt, see :func:`threshold_for`) and ``t - 2`` (an opened sum holds at least
    ``t`` updates, so at least two honest ones besides the colluders').

    >>> [tolerated_colluders(n, threshold_for(n, 0.5, colluders=1)) for n in (3, 5, 10, 11, 13)]
    [1, 2, 1, 2, 2]
    >>> tolerated_colluders(3, 2), tolerated_colluders(10, 6)
    (0, 1)
    """
    if type(n_holders) is not int or type(threshold) is not int or not 2 <= threshold <= n_holders:
        raise ConfigError(f"need 2 <= threshold <= n_holders, got {threshold!r} of {n_holders!r}")
    return max(0, min(2 * threshold - n_holders - 1, threshold - 2))


def _binom_cdf(k: int, n: int, q: float) -> float:
    """P(Binomial(n, q) <= k), summed in log space (n up to thousands)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if q <= 0.0:
        return 1.0
    if q >= 1.0:
        return 0.0
    lq, lr = math.log(q), math.log1p(-q)
    lg = math.lgamma
    return min(1.0, sum(math.exp(lg(n + 1) - lg(i + 1) - lg(n - i + 1) + i * lq + (n - i) * lr) for i in range(k + 1)))


def check_dropout(dropout: float) -> None:
    """ConfigError unless ``dropout`` is a share in ``[0, 0.5)``."""
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0.0 <= dropout < 0.5:
        raise ConfigError(f"dropout must be a share of the round's clients in [0, 0.5), got {dropout!r}: at half "
                          "or more no strict-majority threshold can be met")


def round_failure_bound(n_clients: int, degree: int, dropout: float, *, fraction: float = 0.5,
                        colluders: int = 1) -> float:
    """Upper bound on the chance that a round cannot be opened when each client drops with probability ``dropout``.

    Clients drop independently before sending their masked update. The round fails when a
    survivor's self-mask seed or a dropped client's mask key keeps fewer than ``t`` holders
    among the survivors (a survivor holds a share of its own seed). Union bound over the
    ``n_clients`` secrets: ``K * ((1 - p) P[Bin(d, 1 - p) <= t - 2] + p P[Bin(d, 1 - p) <= t - 1])``
    with ``d`` the degree and ``t`` the threshold of ``d + 1`` holders.

    >>> round(round_failure_bound(100, 14, 0.1), 3), round_failure_bound(100, 14, 0.0)
    (0.031, 0.0)
    """
    check_dropout(dropout)
    if type(n_clients) is not int or n_clients < 2:
        raise ConfigError(f"a masked round needs at least 2 clients, got {n_clients!r}")
    d = min(int(degree), n_clients - 1)
    t = threshold_for(d + 1, fraction, colluders=colluders)
    q = 1.0 - dropout
    per = (1.0 - dropout) * _binom_cdf(t - 2, d, q) + dropout * _binom_cdf(t - 1, d, q)
    return min(1.0, n_clients * per)


def degree_for_dropout(n_clients: int, dropout: float, *, fraction: float = 0.5, colluders: int = 1,
                       round_failure: float = 1e-4) -> int:
    """The smallest degree, at least :func:`default_degree`, whose :func:`round_failure_bound` is at most ``round_failure``.

    Degrees keep the default's parity (even for ``K > COMPLETE_UP_TO``); when no degree
    below ``K - 1`` meets the target the complete graph is returned (the most a round of
    ``K`` can do). ``dropout = 0`` gives the default degree.

    >>> [degree_for_dropout(1000, p) for p in (0.0, 0.05, 0.1, 0.2)]
    [20, 20, 30, 66]
    >>> degree_for_dropout(100, 0.1, round_failure=1e-6)
    34
    """
    check_dropout(dropout)
    if not isinstance(round_failure, float) or not 0.0 < round_failure < 1.0:
        raise ConfigError(f"round_failure must be a probability in (0, 1), got {round_failure!r}")
    d = default_degree(n_clients)
    while d < n_clients - 1 and round_failure_bound(n_clients, d, dropout, fraction=fraction,
                                                    colluders=colluders) > round_failure:
        d += 2
    return min(d, n_clients - 1)
