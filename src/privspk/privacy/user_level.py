"""User-level (= device-level, client-level) DP for sampled devices, and each device's noise share.

A device holds one speaker: protecting the device's whole contribution is
protecting the user. Each round the server samples devices; every sampled device
clips its whole update to L2 norm ``clip`` and the sum gets Gaussian noise of std
``noise_multiplier * clip`` (centrally, or as integer shares added by the devices
before secure aggregation: :func:`plan_device_noise`).

Sampling and its accounting (:func:`user_epsilon`)
    * ``"poisson"``: each device takes part in a round independently with
      probability ``sample_rate`` (add/remove-one-device adjacency). RDP of the
      Poisson-subsampled Gaussian from Opacus (``opacus.accountants.analysis.rdp``,
      Mironov, Talwar, Zhang 2019), composed over ``rounds``, converted with
      Balle et al. 2020 (Opacus' ``get_privacy_spent``).
    * ``"fixed"``: exactly ``K = sample_rate * population`` devices drawn without
      replacement from ``population``. Accounted with the bound for sampling
      without replacement of Wang, Balle, Kasiviswanathan 2019 ("Subsampled Rényi
      Differential Privacy and Analytical Moments Accountant", AISTATS, Theorem 9),
      which holds under the *replace-one* (substitution) adjacency of a fixed
      population: one device's data is replaced by another's. The base Gaussian
      then has sensitivity ``2 * clip`` (one update out, another in), so its RDP is
      ``eps(a) = 2 a / z^2``; ``eps(inf) = inf`` makes the ``min{2, ...}`` terms 2.
      The bound is evaluated at integer orders and capped by the unsampled RDP.
      So the two variants protect different neighbouring relations: "poisson" a
      device being in or out, "fixed" a device's data being swapped for any other.

Both assume the server's choice of devices is random and hidden from the
adversary (threat model, "Cross-device"); a mechanism that needs no sampling
assumption is DP-FTRL (:mod:`privspk.privacy.ftrl`).

>>> eps = user_epsilon(noise_multiplier=1.0, sample_rate=0.1, rounds=100, delta=1e-5)
>>> 0 < eps < user_epsilon(noise_multiplier=1.0, sample_rate=0.1, rounds=200, delta=1e-5)
True
>>> z = noise_for_user_epsilon(epsilon=eps, delta=1e-5, sample_rate=0.1, rounds=100, tolerance=0.01)
>>> abs(z - 1.0) < 0.05
True
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import numpy as np

from privspk.errors import BudgetExceededError, ConfigError
from privspk.privacy._checks import positive_float, positive_int, probability
from privspk.privacy.distributed import (
    ClientLevelMechanism,
    DistributedDP,
    guaranteed_noise_shares,
    noise_tail_bound,
    rdp_to_epsilon,
)
from privspk.privacy.planner import search_noise_multiplier

__all__ = [
    "NOISE_COUNTINGS",
    "SAMPLINGS",
    "USER_RDP_ORDERS",
    "DeviceNoisePlan",
    "fixed_size_rdp",
    "noise_for_user_epsilon",
    "plan_device_noise",
    "poisson_rdp",
    "user_epsilon",
]

SAMPLINGS: tuple[str, ...] = ("poisson", "fixed")
"""Device sampling schemes with an accountant here."""

USER_RDP_ORDERS: tuple[int, ...] = tuple(range(2, 257))
"""Integer RDP orders used for both sampling schemes (the fixed-size bound needs integers)."""

NOISE_COUNTINGS: tuple[str, ...] = ("protocol", "honest-dropouts")
"""How many devices' noise shares count in an opened sum (see :func:`plan_device_noise`)."""


def _sampling(sampling: object) -> str:
    if sampling not in SAMPLINGS:
        raise ConfigError(f"sampling must be one of {'|'.join(SAMPLINGS)}, got {sampling!r}")
    return str(sampling)


def poisson_rdp(*, noise_multiplier: float, sample_rate: float, rounds: int) -> np.ndarray:
    """RDP at :data:`USER_RDP_ORDERS` of ``rounds`` Poisson-subsampled Gaussian rounds (Opacus).

    >>> r = poisson_rdp(noise_multiplier=2.0, sample_rate=1.0, rounds=1)
    >>> float(r[0]), float(r[1])  # unsampled Gaussian: a / (2 z^2)
    (0.25, 0.375)
    """
    from opacus.accountants.analysis import rdp as rdp_analysis

    z = positive_float("noise_multiplier", noise_multiplier)
    q = probability("sample_rate", sample_rate, allow_one=True)
    t = positive_int("rounds", rounds)
    return np.asarray(rdp_analysis.compute_rdp(q=q, noise_multiplier=z, steps=t, orders=list(USER_RDP_ORDERS)),
                      dtype=float)


@functools.lru_cache(maxsize=4096)
def _fixed_one_round(z: float, gamma: float) -> np.ndarray:
    from scipy.special import gammaln, logsumexp

    a_all = np.asarray(USER_RDP_ORDERS, dtype=float)
    base = 2.0 * a_all / (z * z)  # replace-one Gaussian, sensitivity 2 * clip
    if gamma >= 1.0:
        base.setflags(write=False)
        return base
    lg = math.log(gamma)
    e2 = 4.0 / (z * z)  # eps(2)
    # j = 2 term: gamma^2 C(a,2) min{4 (e^{eps(2)} - 1), 2 e^{eps(2)}}
    log_t2 = math.log(min(4.0 * math.expm1(e2), 2.0 * math.exp(e2)))
    out = np.empty_like(a_all)
    for i, a in enumerate(USER_RDP_ORDERS):
        terms = [0.0, 2.0 * lg + math.log(a * (a - 1) / 2.0) + log_t2]
        if a >= 3:
            j = np.arange(3, a + 1, dtype=float)
            log_comb = gammaln(a + 1.0) - gammaln(j + 1.0) - gammaln(a - j + 1.0)
            # gamma^j C(a,j) e^{(j-1) eps(j)} * 2, eps(j) = 2 j / z^2
            terms.extend((j * lg + log_comb + (j - 1.0) * 2.0 * j / (z * z) + math.log(2.0)).tolist())
        out[i] = min(float(logsumexp(terms)) / (a - 1.0), float(base[i]))
    out.setflags(write=False)
    return out


def fixed_size_rdp(*, noise_multiplier: float, sample_rate: float, rounds: int) -> np.ndarray:
    """RDP at :data:`USER_RDP_ORDERS` of ``rounds`` rounds sampling a fraction ``sample_rate`` without replacement.

    Wang, Balle, Kasiviswanathan 2019, Theorem 9 (replace-one adjacency), for the
    Gaussian of sensitivity ``2 * clip``; capped by the unsampled RDP.

    >>> full = fixed_size_rdp(noise_multiplier=2.0, sample_rate=1.0, rounds=1)
    >>> float(full[0])  # unsampled replace-one Gaussian: 2 a / z^2
    1.0
    >>> bool((fixed_size_rdp(noise_multiplier=2.0, sample_rate=0.01, rounds=1) < full).all())
    True
    """
    z = positive_float("noise_multiplier", noise_multiplier)
    q = probability("sample_rate", sample_rate, allow_one=True)
    t = positive_int("rounds", rounds)
    return t * _fixed_one_round(z, q)


def user_epsilon(
    *,
    noise_multiplier: float,
    sample_rate: float,
    rounds: int,
    delta: float,
    sampling: str = "poisson",
    population: int | None = None,
) -> float:
    """User-level epsilon at ``delta`` after ``rounds`` rounds of sampled DP-FedAvg (Gaussian noise).

    Args:
        noise_multiplier: std of the sum's Gaussian noise / the per-device L2 clip.
        sample_rate: ``q`` (Poisson) or ``K / population`` (fixed size).
        rounds: rounds the device was *eligible* for (every round counts, sampled or not).
        delta: target delta (e.g. below 1 / population).
        sampling: ``"poisson"`` or ``"fixed"`` (see the module notes).
        population: with ``"fixed"``, the population size N; ``sample_rate * N`` must be a
            whole number K of devices per round.

    >>> user_epsilon(noise_multiplier=1.0, sample_rate=0.1, rounds=10, delta=1e-5, sampling="fixed")
    Traceback (most recent call last):
    ...
    privspk.errors.ConfigError: sampling="fixed" needs population (the number N of devices sampled from)
    >>> e_fixed = user_epsilon(noise_multiplier=1.0, sample_rate=0.1, rounds=10, delta=1e-5, sampling="fixed",
    ...                        population=1000)
    >>> e_fixed > user_epsilon(noise_multiplier=1.0, sample_rate=0.1, rounds=10, delta=1e-5)
    True
    """
    sampling = _sampling(sampling)
    delta = probability("delta", delta)
    if sampling == "poisson":
        rdp = poisson_rdp(noise_multiplier=noise_multiplier, sample_rate=sample_rate, rounds=rounds)
    else:
        if population is None:
            raise ConfigError('sampling="fixed" needs population (the number N of devices sampled from)')
        n = positive_int("population", population)
        q = probability("sample_rate", sample_rate, allow_one=True)
        k = q * n
        if abs(k - round(k)) > 1e-9 * n or round(k) < 1:
            raise ConfigError(f"sample_rate * population = {k:g} is not a whole number of devices; "
                              "pass sample_rate = K / population")
        rdp = fixed_size_rdp(noise_multiplier=noise_multiplier, sample_rate=round(k) / n, rounds=rounds)
    return rdp_to_epsilon(rdp, orders=USER_RDP_ORDERS, delta=delta)


def noise_for_user_epsilon(
    *,
    epsilon: float,
    delta: float,
    sample_rate: float,
    rounds: int,
    sampling: str = "poisson",
    population: int | None = None,
    tolerance: float = 0.01,
    max_sigma: float = 1e3,
) -> float:
    """Smallest noise multiplier (by bisection) whose :func:`user_epsilon` is <= ``epsilon`` (within ``tolerance``).

    >>> z = noise_for_user_epsilon(epsilon=8.0, delta=1e-6, sample_rate=0.5, rounds=50)
    >>> 7.99 <= user_epsilon(noise_multiplier=z, sample_rate=0.5, rounds=50, delta=1e-6) <= 8.0
    True
    """
    positive_float("epsilon", epsilon)
    _sampling(sampling)

    def eps_of(z: float) -> float:
        return user_epsilon(noise_multiplier=z, sample_rate=sample_rate, rounds=rounds, delta=delta,
                            sampling=sampling, population=population)

    try:
        z, _ = search_noise_multiplier(eps_of, target_epsilon=epsilon, tolerance=tolerance, max_sigma=max_sigma)
    except BudgetExceededError as exc:
        raise BudgetExceededError(f"user-level epsilon {epsilon:g} at delta {delta:g} is out of reach for {rounds} "
                                  f"round(s) at sample rate {sample_rate:g} ({exc}); plan fewer rounds, sample "
                                  "fewer devices per round, or raise epsilon") from None
    return z


@dataclass(frozen=True, kw_only=True)
class DeviceNoisePlan:
    """Each sampled device's integer noise share and what the opened sum is guaranteed to carry.

    Built by :func:`plan_device_noise`; ``encoder.encode(update, rng=...)`` gives a
    device's integer codes (clipped, rounded, plus its share).

    Attributes:
        encoder: the :class:`~privspk.privacy.distributed.DistributedDP` every sampled device uses.
        n_sampled: devices sampled in the round (K).
        min_survivors: the fewest devices an opened sum may hold under ``counting``.
        counted_shares: honest shares counted (``min_survivors - colluders``).
        counting: ``"protocol"`` or ``"honest-dropouts"``.
        headroom_bits: the mask scheme's ``noise_headroom_bits`` that hold every code.
    """

    encoder: DistributedDP
    n_sampled: int
    min_survivors: int
    counted_shares: int
    counting: str
    headroom_bits: int

    @property
    def share_sigma(self) -> float:
        """Each device's noise std, integer units."""
        return self.encoder.share_sigma

    @property
    def mechanism(self) -> ClientLevelMechanism:
        """The counted mechanism (what the accountant sees)."""
        return self.encoder.mechanism()

    @property
    def effective_noise_multiplier(self) -> float:
        """Counted central noise std / rounded L2 sensitivity (the accountant's ``z``)."""
        return self.mechanism.noise_multiplier

    @property
    def central_sigma(self) -> float:
        """Std of the counted central noise in update (float) units."""
        return math.sqrt(self.mechanism.sum_variance) / self.encoder.scale

    @property
    def expected_sigma(self) -> float:
        """Std of the noise actually in a sum of ``n_sampled`` shares, update units (>= :attr:`central_sigma`)."""
        return self.share_sigma * math.sqrt(self.n_sampled) / self.encoder.scale


def plan_device_noise(
    *,
    n_sampled: int,
    noise_multiplier: float,
    clip: float,
    dim: int,
    colluders: int,
    dropout_allowance: float,
    counting: str,
    secagg_threshold: int | None = None,
    bits: int = 16,
    noise: str = "dgauss",
    failure_prob: float = 1e-12,
) -> DeviceNoisePlan:
    """Noise shares for ``n_sampled`` devices so the counted noise has multiplier ``noise_multiplier``.

    Reuses :class:`~privspk.privacy.distributed.DistributedDP` (its clipping, conditional
    rounding, discrete Gaussian / Skellam shares and its accountant): the counted
    shares are ``min_survivors - colluders`` (:func:`~privspk.privacy.distributed.guaranteed_noise_shares`),
    and the encoder's shares are scaled up so those alone give ``noise_multiplier``
    relative to the *rounded* L2 sensitivity.

    ``counting`` says which survivors are guaranteed:

    * ``"protocol"``: ``min_survivors = secagg_threshold`` (``t`` of the mask scheme,
      ``MaskConfig.shares_needed(K)``): the fewest survivors a SecAgg+ round can open
      with, whatever the server claims dropped. Devices can enforce it
      (``MaskClient.submit_integers(..., min_survivors=...)``). With a sparse graph ``t`` is
      small (12 at K = 1,000), so each share is large.
    * ``"honest-dropouts"``: ``min_survivors = ceil((1 - dropout_allowance) * K)``: assumes
      the server reports dropouts truthfully and aborts a round with fewer survivors
      (:func:`privspk.secagg.crossdevice.aggregate_round` does, given ``min_survivors``).
      Not enforceable by devices under SecAgg+.

    The integer scale is the mask quantiser's: ``(2**(bits-1) - 1) / clip``;
    :attr:`DeviceNoisePlan.headroom_bits` is the ``noise_headroom_bits`` the mask
    scheme needs so every code (rounded update + share, up to ``failure_prob``) fits.

    >>> p = plan_device_noise(n_sampled=100, noise_multiplier=1.0, clip=1.0, dim=1000, colluders=1,
    ...                       dropout_allowance=0.1, counting="honest-dropouts")
    >>> p.min_survivors, p.counted_shares, round(p.effective_noise_multiplier, 6)
    (90, 89, 1.0)
    >>> q = plan_device_noise(n_sampled=100, noise_multiplier=1.0, clip=1.0, dim=1000, colluders=1,
    ...                       dropout_allowance=0.1, counting="protocol", secagg_threshold=9)
    >>> q.counted_shares, q.share_sigma > p.share_sigma
    (8, True)
    """
    k = positive_int("n_sampled", n_sampled, minimum=2)
    z = positive_float("noise_multiplier", noise_multiplier)
    clip = positive_float("clip", clip)
    dim = positive_int("dim", dim)
    if type(colluders) is not int or colluders < 0:
        raise ConfigError(f"colluders must be an int >= 0, got {colluders!r}")
    a = float(dropout_allowance) if isinstance(dropout_allowance, (int, float)) and not isinstance(
        dropout_allowance, bool) else -1.0
    if not 0.0 <= a < 1.0:
        raise ConfigError(f"dropout_allowance must be a fraction in [0, 1), got {dropout_allowance!r}")
    if counting not in NOISE_COUNTINGS:
        raise ConfigError(f"counting must be one of {'|'.join(NOISE_COUNTINGS)}, got {counting!r}")
    if type(bits) is not int or not 4 <= bits <= 32:
        raise ConfigError(f"bits must be an int in [4, 32], got {bits!r}")
    if counting == "protocol":
        if secagg_threshold is None:
            raise ConfigError('counting="protocol" needs secagg_threshold (MaskConfig.shares_needed(K))')
        min_surv = positive_int("secagg_threshold", secagg_threshold)
    else:
        min_surv = max(1, math.ceil((1.0 - a) * k - 1e-9))
    if min_surv > k:
        raise ConfigError(f"min_survivors {min_surv} exceeds the {k} sampled devices")
    counted = guaranteed_noise_shares(min_survivors=min_surv, colluders=colluders)
    scale = ((1 << (bits - 1)) - 1) / clip
    probe = DistributedDP(clip=clip, scale=scale, noise_multiplier=1.0, n_clients=k, dim=dim, noise=noise,
                          counted_shares=counted, colluders=colluders)
    # share_sigma = z_enc * clip * scale / sqrt(K); counted std = sqrt(counted) * share_sigma = z * l2_sensitivity
    z_enc = z * probe.l2_sensitivity / (clip * scale) * math.sqrt(k / counted)
    enc = replace(probe, noise_multiplier=z_enc)
    need = math.floor(enc.l2_sensitivity) + noise_tail_bound(noise=noise, sum_variance=enc.share_sigma ** 2,
                                                              dim=dim, failure_prob=failure_prob)
    headroom = max(0, math.ceil(math.log2(need + 1)) - (bits - 1))
    return DeviceNoisePlan(encoder=enc, n_sampled=k, min_survivors=min_surv, counted_shares=counted,
                           counting=str(counting), headroom_bits=headroom)

