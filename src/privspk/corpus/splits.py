"""Deterministic speaker partitions: across clients, and into public / clients / held-out.

Both functions sort their input first, so the result depends only on the *set* of
speakers and the seed, never on the order the speakers were listed in.

>>> spk = [f"s{i:02d}" for i in range(12)]
>>> split = split_speakers(spk, public_fraction=0.25, heldout=3, n_clients=3, seed=0)
>>> (len(split.public), [len(c) for c in split.clients], len(split.heldout))
(3, [2, 2, 2], 3)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from privspk.corpus.types import SpeakerSplit
from privspk.errors import ConfigError

__all__ = ["client_sizes", "partition_speakers", "split_speakers"]

#: Smallest client when sizes are skewed.
MIN_SKEWED_CLIENT = 2


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _check_n_clients(n_clients: object) -> int:
    if isinstance(n_clients, bool) or not isinstance(n_clients, (int, np.integer)) or n_clients < 1:
        raise ConfigError(f"n_clients must be a positive integer, got {n_clients!r}")
    return int(n_clients)


def _check_skew(skew: object) -> float:
    if isinstance(skew, bool) or not isinstance(skew, (int, float, np.integer, np.floating)):
        raise ConfigError(f"skew must be a number >= 0, got {skew!r}")
    s = float(skew)
    if not math.isfinite(s) or s < 0:
        raise ConfigError(f"skew must be finite and >= 0 (0 = equal sizes), got {s}")
    return s


def _unique_sorted(speakers: Sequence[str]) -> list[str]:
    if isinstance(speakers, str):
        raise ConfigError("speakers must be a sequence of speaker ids, not one string")
    pool = list(speakers)
    for s in pool:
        if not isinstance(s, str) or not s:
            raise ConfigError(f"speaker ids must be non-empty strings, got {s!r}")
    if len(set(pool)) != len(pool):
        dup = sorted({s for s in pool if pool.count(s) > 1})
        raise ConfigError(f"speaker ids must be unique; repeated: {dup[:5]}")
    return sorted(pool)


def client_sizes(n_speakers: int, *, n_clients: int, skew: float = 0.0) -> tuple[int, ...]:
    """How many speakers each client gets, largest first.

    ``skew == 0`` gives sizes that differ by at most one. ``skew > 0`` gives each client
    at least 2 speakers and shares the rest in proportion to a Zipf law ``(k + 1) ** -skew``
    (largest remainder rounding), so larger skews make the first clients larger.

    Raises:
        ConfigError: too few speakers for ``n_clients`` (1 each, or 2 each when skewed).

    >>> client_sizes(10, n_clients=3)
    (4, 3, 3)
    >>> client_sizes(30, n_clients=3, skew=1.0)
    (15, 9, 6)
    """
    k = _check_n_clients(n_clients)
    s = _check_skew(skew)
    if isinstance(n_speakers, bool) or not isinstance(n_speakers, (int, np.integer)) or n_speakers < 0:
        raise ConfigError(f"n_speakers must be a non-negative integer, got {n_speakers!r}")
    n = int(n_speakers)
    if s == 0.0:
        if n < k:
            raise ConfigError(f"{n} speakers cannot fill {k} clients; each client needs at least 1 speaker")
        base, extra = divmod(n, k)
        return tuple(base + (1 if i < extra else 0) for i in range(k))
    floor_total = MIN_SKEWED_CLIENT * k
    if n < floor_total:
        raise ConfigError(
            f"{n} speakers cannot fill {k} skewed clients; skew > 0 needs at least "
            f"{MIN_SKEWED_CLIENT} speakers per client ({floor_total} in all)"
        )
    weights = np.arange(1, k + 1, dtype=float) ** -s
    share = (n - floor_total) * weights / weights.sum()
    sizes = np.floor(share).astype(int)
    left = (n - floor_total) - int(sizes.sum())
    order = np.argsort(-(share - sizes), kind="stable")
    sizes[order[:left]] += 1
    return tuple(sorted((int(x) + MIN_SKEWED_CLIENT for x in sizes), reverse=True))


def partition_speakers(
    speakers: Sequence[str], *, n_clients: int, skew: float = 0.0, seed: int
) -> tuple[tuple[str, ...], ...]:
    """Deal speakers into ``n_clients`` disjoint sets that together cover them all.

    Sizes come from :func:`client_sizes`; who goes where is a seeded shuffle. Each set is
    sorted; client 0 is the largest.

    Args:
        speakers: distinct speaker ids (any order).
        n_clients: number of clients.
        skew: 0 for equal sizes, > 0 for Zipf-like unequal sizes (each client >= 2).
        seed: the shuffle's seed.

    >>> partition_speakers(["a", "b", "c", "d", "e"], n_clients=2, seed=1)
    (('a', 'b', 'c'), ('d', 'e'))
    """
    pool = _unique_sorted(speakers)
    sizes = client_sizes(len(pool), n_clients=n_clients, skew=skew)
    rng = np.random.default_rng([_check_seed(seed), 0x9A27])
    order = rng.permutation(len(pool))
    out: list[tuple[str, ...]] = []
    start = 0
    for size in sizes:
        out.append(tuple(sorted(pool[i] for i in order[start : start + size])))
        start += size
    return tuple(out)


def split_speakers(
    speakers: Sequence[str],
    *,
    public_fraction: float,
    heldout: int | Sequence[str],
    n_clients: int,
    skew: float = 0.0,
    seed: int,
) -> SpeakerSplit:
    """Split speakers into public, per-client and held-out sets, deterministically from ``seed``.

    Held-out speakers are chosen first (``heldout`` speakers drawn at random, or exactly the
    ids given), then ``round(public_fraction * len(speakers))`` public speakers from the rest,
    and the remainder is dealt to the clients by :func:`partition_speakers`.

    Args:
        speakers: distinct speaker ids.
        public_fraction: share of *all* speakers usable for non-private pretraining, in [0, 1).
        heldout: how many speakers to hold out, or the held-out ids themselves
            (e.g. the speakers whose voices no trained speaker shares).
        n_clients: number of clients.
        skew: client size skew (see :func:`client_sizes`).
        seed: seed of every draw.

    Raises:
        ConfigError: bad fraction or count, unknown held-out ids, or too few speakers left
            for the clients.

    >>> s = split_speakers(list("abcdefgh"), public_fraction=0.25, heldout=["h"], n_clients=2, seed=3)
    >>> (s.heldout, len(s.public), sorted(len(c) for c in s.clients))
    (('h',), 2, [2, 3])
    """
    pool = _unique_sorted(speakers)
    rng_seed = _check_seed(seed)
    if isinstance(public_fraction, bool) or not isinstance(public_fraction, (int, float, np.floating)):
        raise ConfigError(f"public_fraction must be a number in [0, 1), got {public_fraction!r}")
    frac = float(public_fraction)
    if not (0.0 <= frac < 1.0):
        raise ConfigError(f"public_fraction must be in [0, 1), got {frac}")
    k = _check_n_clients(n_clients)
    rng = np.random.default_rng([rng_seed, 0x5B17])
    if isinstance(heldout, (int, np.integer)) and not isinstance(heldout, bool):
        n_held = int(heldout)
        if not 1 <= n_held < len(pool):
            raise ConfigError(f"heldout must be between 1 and {len(pool) - 1} speakers, got {n_held}")
        held = sorted(pool[i] for i in rng.choice(len(pool), size=n_held, replace=False))
    elif isinstance(heldout, Sequence) and not isinstance(heldout, str):
        held = _unique_sorted(heldout)
        unknown = sorted(set(held).difference(pool))
        if unknown:
            raise ConfigError(f"held-out speakers not among the speakers: {unknown[:5]}")
        if not held:
            raise ConfigError("heldout must name at least one speaker")
    else:
        raise ConfigError(f"heldout must be a count or a list of speaker ids, got {heldout!r}")
    held_set = set(held)
    rest = [s for s in pool if s not in held_set]
    n_public = round(frac * len(pool))
    if len(rest) - n_public < 1:
        raise ConfigError(
            f"{len(pool)} speakers minus {len(held)} held out minus {n_public} public leave none for the "
            f"{k} clients; lower public_fraction or heldout"
        )
    pick = rng.permutation(len(rest))
    public = sorted(rest[i] for i in pick[:n_public])
    remaining = [rest[i] for i in pick[n_public:]]
    clients = partition_speakers(remaining, n_clients=k, skew=skew, seed=rng_seed)
    return SpeakerSplit(public=tuple(public), clients=clients, heldout=tuple(held))
