"""DP-FTRL: tree-aggregated noisy prefix sums of the round updates, and its accountant.

Kairouz, McMahan, Song, Thakkar, Thakurta, Xu 2021, "Practical and Private (Deep)
Learning without Sampling or Shuffling" (ICML). Each round ``t`` the server has
the sum ``x_t`` of the round's clipped device updates (each device's update has
L2 norm <= ``clip``). Instead of noising ``x_t`` and relying on amplification by
sampling, DP-FTRL releases noisy *prefix sums* ``S_t = x_1 + ... + x_t`` through
the binary-tree mechanism: every dyadic block of rounds (a tree node) gets one
Gaussian draw of std ``sigma = noise_multiplier * clip``, and ``S_t`` is the sum of
the ``popcount(t)`` completed nodes that tile ``[1, t]``. The model is
``theta_t = theta_0 - lr * S_t`` (FTRL with a quadratic regulariser).

Who adds the noise. :class:`TreeAggregator` runs where the per-round sums are
seen: with the ``mask`` scheme that is the server, after unmasking. So the
accounted epsilon protects devices against anyone who sees the released models,
and assumes the server draws the tree noise honestly from secret randomness
(``randomness="secret"``, the default; ``"simulation"`` seeds it from the run's
seed and then the epsilon assumes nothing). It needs no assumption about how
devices were chosen: no amplification is claimed.

Accounting (:func:`ftrl_epsilon`, no amplification, no participation-separation assumed)
    One device's ``k`` participations change at most ``min(k, 2^l)`` leaves under
    each node of level ``l`` (a node of level ``l`` spans ``2^l`` rounds, one
    participation per round), by at most ``clip`` each. Over the nodes of a level
    the squared changes sum to at most ``k * min(k, 2^l) * clip^2`` (the counts are
    at most ``min(k, 2^l)`` each and add up to ``k``), so the whole tree, with
    ``h = ceil(log2 T) + 1`` levels, has squared L2 sensitivity
    ``Delta^2 <= clip^2 * k * sum_{l < h} min(k, 2^l)``: ``h * clip^2`` for one
    participation (the ``ceil(log2 T) + 1`` nodes on a leaf's path), and never more
    than the ``k^2 h clip^2`` of the plain product. The Gaussian mechanism on all
    node values is then ``rho``-zCDP with ``rho = Delta^2 / (2 sigma^2)``, i.e. RDP
    ``a * rho`` at every order ``a`` (adaptively chosen updates do not change this:
    Kairouz et al. 2021, Theorem D.1, following the tree mechanism's adaptive
    analysis), converted to (epsilon, delta) with Opacus' conversion (Balle et al. 2020).
    With restarts every ``R`` rounds each restart is a fresh tree: a device in at
    most ``min(k, number of trees)`` trees, with at most ``min(k, R)``
    participations in each, composes those trees' zCDP; since
    ``f(k) = k * sum_l min(k, 2^l)`` is superadditive, the sum over trees is also at
    most ``f(k)`` of one tree of ``R`` leaves, and the smaller bound is used (both
    conservative; not the paper's tighter bound for separated participations).

>>> agg = TreeAggregator(dim=3, noise_std=0.0, rounds=4, randomness="simulation", seed=0)
>>> [agg.add(np.ones(3)).tolist() for _ in range(3)]
[[1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [3.0, 3.0, 3.0]]
>>> tree_sensitivity_squared(rounds=1024, participations=1)
11.0
>>> e1 = ftrl_epsilon(noise_multiplier=5.0, rounds=1024, max_participations=1, delta=1e-6)
>>> e1 < ftrl_epsilon(noise_multiplier=5.0, rounds=1024, max_participations=2, delta=1e-6)
True
"""

from __future__ import annotations

import math
import secrets

import numpy as np

from privspk.errors import BudgetExceededError, ConfigError
from privspk.privacy._checks import positive_float, positive_int, probability, real
from privspk.privacy.distributed import rdp_to_epsilon
from privspk.privacy.ledger import RANDOMNESS_MODES, SIMULATION_WARNING
from privspk.privacy.planner import search_noise_multiplier

__all__ = [
    "FTRL_RDP_ORDERS",
    "TreeAggregator",
    "ftrl_epsilon",
    "ftrl_rho",
    "noise_for_ftrl_epsilon",
    "tree_height",
    "tree_sensitivity_squared",
]

FTRL_RDP_ORDERS: tuple[float, ...] = tuple([1.0 + x / 10.0 for x in range(1, 100)] + list(range(11, 257)))
"""Orders at which the tree's zCDP (RDP ``a * rho``) is converted to (epsilon, delta)."""


def tree_height(rounds: int) -> int:
    """Levels of the binary tree over ``rounds`` leaves: ``ceil(log2 rounds) + 1`` (nodes on a leaf's path).

    >>> [tree_height(t) for t in (1, 2, 3, 4, 1000, 1024, 1025)]
    [1, 2, 3, 3, 11, 11, 12]
    """
    t = positive_int("rounds", rounds)
    return (t - 1).bit_length() + 1


def tree_sensitivity_squared(*, rounds: int, participations: int) -> float:
    """``Delta^2 / clip^2`` of one tree of ``rounds`` leaves for a device taking part ``participations`` times.

    ``k * sum_{l < h} min(k, 2^l)`` (module notes), with ``k = min(participations, rounds)``.

    >>> tree_sensitivity_squared(rounds=8, participations=1), tree_sensitivity_squared(rounds=8, participations=8)
    (4.0, 120.0)
    """
    h = tree_height(rounds)
    k = min(positive_int("participations", participations), int(rounds))
    return float(k * sum(min(k, 1 << lvl) for lvl in range(h)))


def ftrl_rho(*, noise_multiplier: float, rounds: int, max_participations: int,
             restart_every: int | None = None) -> float:
    """zCDP ``rho`` of DP-FTRL over ``rounds`` rounds (tree restarted every ``restart_every`` rounds, if given).

    >>> ftrl_rho(noise_multiplier=1.0, rounds=8, max_participations=1)
    2.0
    >>> ftrl_rho(noise_multiplier=1.0, rounds=8, max_participations=1, restart_every=4)  # a tree of 4: 3 nodes
    1.5
    """
    z = positive_float("noise_multiplier", noise_multiplier)
    t = positive_int("rounds", rounds)
    k = positive_int("max_participations", max_participations)
    if k > t:
        raise ConfigError(f"max_participations={k} exceeds rounds={t}: a device takes part at most once a round")
    if restart_every is None:
        return tree_sensitivity_squared(rounds=t, participations=k) / (2.0 * z * z)
    r = min(positive_int("restart_every", restart_every), t)
    touched = min(k, math.ceil(t / r))
    h = tree_height(r)
    # f(k) = k * sum_l min(k, 2^l) is superadditive, so sum over trees f(k_i) <= f(k); also <= touched * f(min(k, r))
    whole = k * sum(min(k, 1 << lvl) for lvl in range(h))
    return min(float(whole), touched * tree_sensitivity_squared(rounds=r, participations=min(k, r))) / (2.0 * z * z)


def ftrl_epsilon(
    *,
    noise_multiplier: float,
    rounds: int,
    max_participations: int,
    delta: float,
    restart_every: int | None = None,
) -> float:
    """Device-level epsilon at ``delta`` of DP-FTRL (tree noise std ``noise_multiplier * clip``); no amplification.

    ``rounds`` is the planned horizon (the tree's size), ``max_participations`` the most
    rounds one device takes part in.

    >>> round(ftrl_epsilon(noise_multiplier=1.0, rounds=1, max_participations=1, delta=1e-5), 3)  # plain Gaussian
    4.729
    >>> ftrl_epsilon(noise_multiplier=1.0, rounds=4, max_participations=0, delta=1e-5)
    Traceback (most recent call last):
    ...
    privspk.errors.ConfigError: max_participations must be >= 1, got 0
    """
    rho = ftrl_rho(noise_multiplier=noise_multiplier, rounds=rounds, max_participations=max_participations,
                   restart_every=restart_every)
    delta = probability("delta", delta)
    orders = np.asarray(FTRL_RDP_ORDERS, dtype=float)
    return rdp_to_epsilon(orders * rho, orders=FTRL_RDP_ORDERS, delta=delta)


def noise_for_ftrl_epsilon(
    *,
    epsilon: float,
    delta: float,
    rounds: int,
    max_participations: int,
    restart_every: int | None = None,
    tolerance: float = 0.01,
) -> float:
    """Smallest tree noise multiplier with :func:`ftrl_epsilon` <= ``epsilon`` (bisection, within ``tolerance``).

    >>> z = noise_for_ftrl_epsilon(epsilon=8.0, delta=1e-6, rounds=100, max_participations=2)
    >>> 7.99 <= ftrl_epsilon(noise_multiplier=z, rounds=100, max_participations=2, delta=1e-6) <= 8.0
    True
    """
    positive_float("epsilon", epsilon)

    def eps_of(z: float) -> float:
        return ftrl_epsilon(noise_multiplier=z, rounds=rounds, max_participations=max_participations, delta=delta,
                            restart_every=restart_every)

    try:
        z, _ = search_noise_multiplier(eps_of, target_epsilon=epsilon, tolerance=tolerance)
    except BudgetExceededError as exc:
        raise BudgetExceededError(f"DP-FTRL cannot reach epsilon {epsilon:g} ({exc}); raise epsilon") from None
    return z


class TreeAggregator:
    """Noisy prefix sums by the binary-tree mechanism (DP-FTRL's server side).

    Args:
        dim: length of each round's (summed, clipped) update.
        noise_std: std of each tree node's Gaussian noise, in update units
            (``noise_multiplier * clip``); 0 only for tests.
        rounds: horizon of one tree (the accountant's ``rounds`` or ``restart_every``);
            :meth:`add` refuses more rounds than this unless ``restart`` is set.
        restart: start a fresh tree (prefix sums from zero again, new noise) every
            ``rounds`` rounds; the caller then applies each tree's prefix sums to the
            model it had when that tree started (Kairouz et al. 2021, Section 4 "restarts").
        randomness: ``"secret"`` (node noise from a 128-bit OS CSPRNG seed) or
            ``"simulation"`` (from ``seed``; the epsilon then assumes nothing).
        seed: only with ``"simulation"``.

    Memory: two float64 vectors per tree level (``2 * (ceil(log2 rounds) + 1) * dim`` values).

    >>> agg = TreeAggregator(dim=2, noise_std=0.0, rounds=2, restart=True, randomness="simulation", seed=1)
    >>> [agg.add(np.array([1.0, 2.0])).tolist() for _ in range(3)], agg.tree_round
    ([[1.0, 2.0], [2.0, 4.0], [1.0, 2.0]], 1)
    """

    def __init__(self, *, dim: int, noise_std: float, rounds: int, restart: bool = False,
                 randomness: str = "secret", seed: int | None = None) -> None:
        self.dim = positive_int("dim", dim)
        std = real("noise_std", noise_std)
        if std < 0:
            raise ConfigError(f"noise_std must be >= 0, got {noise_std!r}")
        self.noise_std = std
        self.rounds = positive_int("rounds", rounds)
        if type(restart) is not bool:
            raise ConfigError(f"restart must be True or False, got {restart!r}")
        self.restart = restart
        if randomness not in RANDOMNESS_MODES:
            raise ConfigError(f"randomness must be one of {'|'.join(RANDOMNESS_MODES)}, got {randomness!r}")
        self.randomness = str(randomness)
        if randomness == "secret":
            if seed is not None:
                raise ConfigError('seed is only for randomness="simulation"; secret noise is never seeded')
            self._rng = np.random.Generator(np.random.PCG64(secrets.randbits(128)))
        else:
            if type(seed) is not int or seed < 0:
                raise ConfigError(f'randomness="simulation" needs an int seed >= 0, got {seed!r}')
            self._rng = np.random.default_rng([seed, 0x46545246])
        self.height = tree_height(self.rounds)
        self.trees = 0
        self._reset()

    @property
    def note(self) -> str:
        """Text to print beside an epsilon of this aggregator ('' for secret randomness)."""
        return SIMULATION_WARNING if self.randomness == "simulation" else ""

    def _reset(self) -> None:
        self.tree_round = 0
        self._partial = np.zeros((self.height, self.dim))  # true sums of each level's open node
        self._done = np.zeros((self.height, self.dim))  # noisy value of each level's last completed node
        self.trees += 1

    def add(self, x: np.ndarray) -> np.ndarray:
        """Add round ``t``'s summed update; return the noisy prefix sum ``S_t`` of the current tree."""
        v = np.asarray(x, dtype=np.float64)
        if v.shape != (self.dim,) or not np.all(np.isfinite(v)):
            raise ConfigError(f"a round's update must be {self.dim} finite values, got shape {v.shape}")
        if self.tree_round == self.rounds:
            if not self.restart:
                raise ConfigError(f"the tree holds {self.rounds} rounds and restart is off; plan more rounds "
                                  "(the accountant's horizon) or set restart=True")
            self._reset()
        self.tree_round += 1
        t = self.tree_round
        self._partial += v
        for lvl in range(self.height):
            if t % (1 << lvl):
                break
            noise = self._rng.normal(0.0, self.noise_std, self.dim) if self.noise_std > 0 else 0.0
            self._done[lvl] = self._partial[lvl] + noise
            self._partial[lvl] = 0.0
        out = np.zeros(self.dim)
        for lvl in range(self.height):
            if t >> lvl & 1:
                out += self._done[lvl]
        return out

    def prefix_noise_variance(self, t: int) -> float:
        """Per-coordinate noise variance of the released ``S_t`` (``popcount(t) * noise_std^2``).

        >>> TreeAggregator(dim=1, noise_std=2.0, rounds=8, randomness="simulation", seed=0).prefix_noise_variance(7)
        12.0
        """
        t = positive_int("t", t)
        if t > self.rounds:
            raise ConfigError(f"t={t} is beyond the tree's {self.rounds} rounds")
        return bin(t).count("1") * self.noise_std ** 2
