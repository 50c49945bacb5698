"""Client-level canary audit: canary clients with random update directions (Andrew et al. 2023).

For client-level DP (``[privacy] client_level = true`` with ``mask``) each client
clips its whole update to L2 ``clip``, quantises it and adds its discrete-Gaussian
(or Skellam) noise share in the integer domain (:class:`~privspk.privacy.distributed.DistributedDP`);
the opened sum holds the noise of the honest shares the accountant counts
(``DistributedDP.mechanism().shares``).

Canary client ``j`` has a fixed random unit direction ``u_j`` in the update space
and submits ``clip * u_j`` whenever it takes part; each canary client is included
(takes part in every round) with probability 1/2. A round's sum is built exactly as
the server opens it: the counted honest clients each submit
``DistributedDP.encode(update)`` (clip, scale, conditional rounding and the noise
share: the code real clients run), and each included canary client's vector goes
through the same clip, scale and conditional rounding without a noise share. That
is sound, and conservative for the auditor's claim: the accountant counts only the
honest shares, and a canary client's share is treated as known to the server (as a
colluder's is) and subtracted, so the attacker sees at least what the ledger's
epsilon assumes it may see. Any bound above the ledger's client-level epsilon is a
bug in the mechanism or its accounting.

Score of canary ``j``: the cosine of ``u_j`` with a round's aggregate delta (decoded
sum) and with the released model's delta (the sum of all rounds' aggregates). Then
(a) the one-run 95 % lower bound (:mod:`privspk.audit.one_run`) with its ceiling and
(b) Andrew et al.'s estimate: cosines of random directions not in the sum are
``N(0, 1/d)``; the included canaries' mean cosine is fitted with the null's spread
(``equal_variance=True``: a fitted spread a few per cent off the null's inflates the
estimate at small delta) and the epsilon between the two Gaussians reported
(:func:`~privspk.audit.one_shot.one_shot_epsilon`), with a bootstrap interval. It is
an estimate, not a bound: only (a) decides the verdict. The same audit without noise shares is the control.

G. Andrew, P. Kairouz, S. Oh, A. Oprea, H. B. McMahan, V. Suriyakumar, "One-shot
Empirical Privacy Estimation for Federated Learning", arXiv:2302.03098 (2023).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from privspk.audit.canary import CanaryRun, CanaryVerdict, bound_views, verdict
from privspk.audit.one_shot import OneShotEstimate, one_shot_epsilon
from privspk.errors import ConfigError

#: canary directions are generated in blocks of this many rows (memory stays ~ block * dim floats)
_BLOCK = 128


def _directions(seed: int, start: int, stop: int, dim: int) -> np.ndarray:
    """Unit directions of canaries ``start..stop-1`` (the same for every call with the same seed)."""
    rows = [np.random.default_rng([seed, 11, j]).standard_normal(dim) for j in range(start, stop)]
    u = np.stack(rows)
    return u / np.linalg.norm(u, axis=1, keepdims=True)


def _quantise(dp, vec: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The quantiser part of ``DistributedDP.encode`` (clip, scale, conditional rounding), no noise share."""
    from privspk.privacy.distributed import clip_update_l2, conditional_round

    clipped = clip_update_l2(np.asarray(vec, dtype=np.float64), clip=dp.clip)
    return conditional_round(clipped * dp.scale, l2_bound=dp.l2_sensitivity, rng=rng)


def synthetic_honest_updates(*, dim: int, clip: float, seed: int) -> Callable[[int, int], np.ndarray]:
    """Honest client ``i``'s update in round ``r``: a random Gaussian vector of L2 norm ``clip``.

    >>> upd = synthetic_honest_updates(dim=10, clip=2.0, seed=0)
    >>> round(float(np.linalg.norm(upd(1, 0))), 6)
    2.0
    """
    def update(r: int, i: int) -> np.ndarray:
        v = np.random.default_rng([seed, 13, r, i]).standard_normal(dim)
        return clip * v / np.linalg.norm(v)

    return update


@dataclass
class ClientCanaryResult:
    """One client-level canary re-run: the one-run bounds per view and Andrew et al.'s estimate."""

    run: CanaryRun
    estimate: OneShotEstimate
    honest_clients: int
    dim: int

    def to_dict(self) -> dict:
        """JSON-able summary."""
        return {**self.run.to_dict(), "andrew_estimate": self.estimate.to_dict(),
                "honest_clients": self.honest_clients, "dim": self.dim}


def client_canary_run(dp, *, m: int, rounds: int, claimed: Sequence[float] | None, delta: float, noise: bool = True,
                      honest: Callable[[int, int], np.ndarray] | None = None, seed: int = 0, bootstrap: int = 200,
                      label: str | None = None) -> ClientCanaryResult:
    """Re-run ``rounds`` rounds of ``dp``'s client-level mechanism with ``m`` canary clients (module notes).

    Args:
        dp: the run's :class:`~privspk.privacy.distributed.DistributedDP` encoder.
        m: canary clients (each included with probability 1/2).
        claimed: the ledger's client-level epsilon after each round (None: no claim).
        noise: False gives the noise-free control (or, with a claim, a broken mechanism).
        honest: ``honest(round, i)`` -> float update of honest client ``i`` (default:
            :func:`synthetic_honest_updates`); ``dp.mechanism().shares`` of them take part.

    >>> from privspk.privacy.distributed import DistributedDP
    >>> dp = DistributedDP(clip=1.0, scale=100.0, noise_multiplier=0.01, n_clients=2, dim=2000)
    >>> res = client_canary_run(dp, m=50, rounds=1, claimed=None, delta=1e-5, noise=False, bootstrap=20)
    >>> b = res.run.released.bound   # noise-free: near the ceiling that 50 canaries allow
    >>> b.epsilon >= 0.75 * b.corrected_ceiling
    True
    """
    if type(m) is not int or m < 2:
        raise ConfigError(f"need m >= 2 canary clients, got {m!r}")
    if type(rounds) is not int or rounds < 1:
        raise ConfigError(f"need rounds >= 1, got {rounds!r}")
    if claimed is not None and len(claimed) < rounds:
        raise ConfigError(f"need the ledger's client-level epsilon after each of the {rounds} rounds, got {claimed}")
    dim, shares = dp.dim, dp.mechanism().shares
    honest = honest or synthetic_honest_updates(dim=dim, clip=dp.clip, seed=seed)
    secret = np.random.default_rng()  # noise and rounding: fresh OS entropy, as the real clients draw it
    included = np.random.default_rng([seed, 17]).random(m) < 0.5
    released = np.zeros(dim)
    released_scores, round_scores = [], []
    for r in range(1, rounds + 1):
        total = np.zeros(dim, dtype=np.int64)
        for i in range(shares):  # the counted honest clients, through the real encoder
            upd = honest(r, i)
            total += dp.encode(upd, rng=secret) if noise else _quantise(dp, upd, secret)
        for start in range(0, m, _BLOCK):
            u = _directions(seed, start, min(m, start + _BLOCK), dim)
            for j in np.flatnonzero(included[start:start + len(u)]):
                total += _quantise(dp, dp.clip * u[j], secret)
        agg = dp.decode(total)
        released += agg
        rs, rel = np.empty(m), np.empty(m)
        for start in range(0, m, _BLOCK):
            u = _directions(seed, start, min(m, start + _BLOCK), dim)
            rs[start:start + len(u)] = u @ agg / max(np.linalg.norm(agg), 1e-300)
            rel[start:start + len(u)] = u @ released / max(np.linalg.norm(released), 1e-300)
        round_scores.append(rs)
        released_scores.append(rel)
    run = CanaryRun(label=label or ("client-level DP" if noise else "control (no noise)"),
                    noise="client-level shares" if noise else "none", m=m, included=included,
                    released_scores=released_scores, round_scores=round_scores,
                    insertions=int(included.sum()) * rounds, steps=rounds)
    bound_views(run, claimed=list(claimed)[:rounds] if claimed is not None else None, delta=delta)
    est = one_shot_epsilon(released_scores[-1][included], dim=dim, delta=delta, equal_variance=True,
                           bootstrap=bootstrap, seed=seed)
    return ClientCanaryResult(run=run, estimate=est, honest_clients=shares, dim=dim)


@dataclass
class ClientCanaryAudit:
    """The client-level DP re-run, its noise-free control, and the verdict."""

    dp_run: ClientCanaryResult | None
    control: ClientCanaryResult
    verdict: CanaryVerdict
    claimed: list[float] | None
    delta: float
    honest_updates: str

    def to_dict(self) -> dict:
        """JSON-able summary."""
        return {"verdict": self.verdict.to_dict(), "delta": self.delta, "claimed_epsilon_by_round": self.claimed,
                "honest_updates": self.honest_updates,
                "dp": self.dp_run.to_dict() if self.dp_run is not None else None, "control": self.control.to_dict()}


def client_canary_audit(dp, *, m: int, rounds: int, claimed: Sequence[float] | None, delta: float,
                        noise: bool = True, honest: Callable[[int, int], np.ndarray] | None = None, seed: int = 0,
                        bootstrap: int = 200, honest_updates: str = "synthetic") -> ClientCanaryAudit:
    """Noise-free control and the DP re-run (``noise=False`` audits a broken mechanism that claims ``claimed``).

    Verdict (:func:`privspk.audit.canary.verdict`): FAIL if a bound exceeds the claimed
    client-level epsilon, INCONCLUSIVE if the control stays below 75 % of the ceiling.
    """
    control = client_canary_run(dp, m=m, rounds=rounds, claimed=None, delta=delta, noise=False, honest=honest,
                                seed=seed, bootstrap=bootstrap)
    dp_run = None
    if claimed is not None:
        dp_run = client_canary_run(dp, m=m, rounds=rounds, claimed=claimed, delta=delta, noise=noise, honest=honest,
                                   seed=seed, bootstrap=bootstrap,
                                   label="client-level DP" if noise else "client-level DP (noise OFF)")
    return ClientCanaryAudit(dp_run=dp_run, control=control,
                             verdict=verdict(dp_run.run if dp_run else None, control.run),
                             claimed=list(claimed)[:rounds] if claimed is not None else None, delta=delta,
                             honest_updates=honest_updates)
