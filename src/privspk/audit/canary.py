"""Canary audit: re-run a run's federated configuration with gradient canaries, bound epsilon from below.

White-box gradient canaries (Steinke, Nasr & Jagielski 2023, Section 6; Nasr et al.
2023): canary ``j`` is a per-example gradient of the largest norm DP-SGD allows
(the clipping bound ``C``), all of it on one coordinate ``c_j`` of the shared
encoder's largest trainable tensor, with a random sign ``s_j``. Each canary is
included with probability 1/2; an included canary joins each DP-SGD step of the
canary client with that client's Poisson rate ``q`` - exactly like one more
training utterance. It enters the real mechanism: the canary is added to Opacus'
sum of clipped per-example gradients *before* Opacus adds its noise
(:class:`GradientCanaries` wraps ``DPOptimizer.add_noise``), so whatever the
product does after that - noise, scaling, Adam, EMA, FedAvg - applies to it.

The auditor then sees what the server or the public sees: the released encoder
(the global vector after the last round) and each round's aggregate. A canary's
score is ``-s_j * (change of coordinate c_j)``; the one-run bound
(:mod:`privspk.audit.one_run`) turns the scores into a 95 % lower bound on epsilon.
The same re-run with the noise off (clipping kept) is the control: if even it does
not come near the ceiling that ``m`` canaries allow, the attack is too weak to
say anything and the verdict is INCONCLUSIVE; a DP run whose bound exceeds the
ledger's epsilon is a FAIL (a bug in the mechanism or its accounting).

Supported: sample-level DP-SGD through Opacus (``unit = "utterance"``). Speaker-level
DP-SGD adds its noise outside Opacus and has no hook here.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from privspk.audit.one_run import OneRunBound, best_lower_bound
from privspk.errors import ConfigError

if TYPE_CHECKING:
    from privspk.training.local import LocalSettings

log = logging.getLogger(__name__)


class GradientCanaries:
    """Inserts Dirac gradient canaries into one parameter's DP-SGD steps (a context manager).

    Args:
        param: the parameter (of the canary client's model) that receives the canaries.
        m: number of canaries.
        clip: per-example clipping bound: each canary's gradient norm.
        sample_rate: Poisson rate at which an included canary joins a step.
        seed: draws coordinates, signs, inclusion (and the per-step sampling).
        shadow: include no canary (the reference re-run an attacker can make without them).

    >>> p = nn.Parameter(torch.zeros(4, 5))
    >>> can = GradientCanaries(p, m=6, clip=1.0, sample_rate=1.0, seed=0)
    >>> p.summed_grad = torch.zeros(4, 5)
    >>> can.insert(p)   # what the hook does inside a DP step
    >>> float(p.summed_grad.abs().sum()) == float(can.included.sum()), can.insertions == int(can.included.sum())
    (True, True)
    """

    def __init__(self, param: nn.Parameter, *, m: int, clip: float, sample_rate: float, seed: int,
                 shadow: bool = False) -> None:
        if type(m) is not int or not 2 <= m <= param.numel():
            raise ConfigError(f"need 2 <= m <= {param.numel()} canaries (one coordinate each), got {m!r}")
        if clip <= 0 or not 0 < sample_rate <= 1:
            raise ConfigError(f"need clip > 0 and 0 < sample_rate <= 1, got {clip}, {sample_rate}")
        rng = np.random.default_rng([seed, 0xCA])
        self.param = param
        self.m = m
        self.clip = float(clip)
        self.sample_rate = float(sample_rate)
        self.coords = rng.choice(param.numel(), size=m, replace=False)
        self.signs = rng.choice([-1.0, 1.0], size=m)
        self.included = rng.random(m) < 0.5
        if shadow:  # same coordinates and signs, nothing inserted: the attacker's reference run
            self.included = np.zeros(m, dtype=bool)
        self._step_rng = np.random.default_rng([seed, 0xCB])
        self.insertions = 0
        self.steps = 0

    def insert(self, p: torch.Tensor) -> None:
        """Add this step's sampled included canaries to ``p.summed_grad`` (the clipped-gradient sum)."""
        sampled = self.included & (self._step_rng.random(self.m) < self.sample_rate)
        idx = torch.as_tensor(self.coords[sampled], dtype=torch.long)
        vals = torch.as_tensor(self.signs[sampled] * self.clip, dtype=p.summed_grad.dtype)
        flat = p.summed_grad.view(-1)
        flat.index_add_(0, idx, vals)
        self.insertions += int(sampled.sum())
        self.steps += 1

    @contextlib.contextmanager
    def active(self) -> Iterator[GradientCanaries]:
        """Within the block, every Opacus DP step of ``param`` carries the canaries."""
        from opacus.optimizers.optimizer import DPOptimizer
        from opacus.optimizers.optimizer_fast_gradient_clipping import DPOptimizerFastGradientClipping

        originals = {cls: cls.__dict__["add_noise"] for cls in (DPOptimizer, DPOptimizerFastGradientClipping)}
        me = self

        def wrap(original):
            def add_noise(opt) -> None:
                for p in opt.params:
                    if p is me.param:
                        me.insert(p)
                return original(opt)
            return add_noise

        try:
            for cls, original in originals.items():
                cls.add_noise = wrap(original)
            yield self
        finally:
            for cls, original in originals.items():
                cls.add_noise = original


@dataclass(frozen=True)
class CanaryView:
    """The bound from one view (released model after a round, or one round's aggregate)."""

    view: str
    round: int
    bound: OneRunBound
    claimed_epsilon: float | None

    def to_dict(self) -> dict:
        """JSON-able fields."""
        return {"view": self.view, "round": self.round, "claimed_epsilon": self.claimed_epsilon,
                **{k: v for k, v in self.bound.to_dict().items()}}


@dataclass
class CanaryRun:
    """Scores of one canary re-run and the bounds they give, per view."""

    label: str
    noise: str
    m: int
    included: np.ndarray
    released_scores: list[np.ndarray]  # after each round (cumulative delta)
    round_scores: list[np.ndarray]  # each round's aggregate
    insertions: int
    steps: int
    views: list[CanaryView] = field(default_factory=list)
    delta: float = 0.0  # set by bound_views
    final_vector: np.ndarray | None = None  # the shared tensors after the last round

    @property
    def released(self) -> CanaryView:
        """The view of the model released after the last round."""
        return next(v for v in self.views if v.view == "released" and v.round == len(self.released_scores))

    def estimate(self, *, delta: float):
        """Gaussian-fit epsilon estimate (Andrew et al. 2023 style) of the released view, with bootstrap interval."""
        from privspk.audit.one_shot import fitted_epsilon

        scores = self.released_scores[-1]
        return fitted_epsilon(scores[self.included], scores[~self.included], delta=delta)

    @property
    def best_round(self) -> CanaryView:
        """The strongest single-round aggregate (its bound corrected for choosing among rounds)."""
        return next(v for v in self.views if v.view == "best round aggregate")

    def to_dict(self) -> dict:
        """JSON-able summary."""
        return {"label": self.label, "noise": self.noise, "m": self.m, "included": int(self.included.sum()),
                "gaussian_fit_estimate": self.estimate(delta=self.delta).to_dict() if self.delta else None,
                "insertions": self.insertions, "dp_steps": self.steps, "views": [v.to_dict() for v in self.views]}


def _largest_trainable(names: Sequence[str], model: nn.Module) -> tuple[str, int]:
    """The largest shared tensor and its offset in the flattened update vector."""
    params = dict(model.named_parameters())
    sizes = [params[n].numel() for n in names]
    i = int(np.argmax(sizes))
    return names[i], int(sum(sizes[:i]))


def run_with_canaries(
    encoder: nn.Module,
    names: Sequence[str],
    clients_data: Mapping[str, object],
    *,
    dp: Mapping[str, object],
    canary_client: str,
    m: int,
    rounds: int,
    local: LocalSettings,
    trunk_crops: int,
    fixed_head: bool = False,
    seed: int,
    client_seed_base: int = 0,
    label: str = "",
    shadow: bool = False,
    progress: bool = False,
) -> CanaryRun:
    """One federated re-run (plain aggregation) with ``m`` gradient canaries in ``canary_client``'s DP steps.

    ``encoder`` has its recipe applied (``names``: its trainable tensors, the shared part);
    ``dp``: client id -> :class:`~privspk.privacy.Mechanism` (every client trains
    with DP-SGD, as in the run). Returns the canary scores of each view.
    """
    from privspk.federation import ClientRelease, ClientTraining, FederatedClient, FederatedServer, InProcessFederation
    from privspk.secagg import build_scheme

    if canary_client not in clients_data:
        raise ConfigError(f"canary client {canary_client!r} is not one of {sorted(clients_data)}")
    missing = sorted(set(clients_data) - set(dp))
    if missing:
        raise ConfigError(f"no DP settings for clients {missing}: the canary audit re-runs DP-SGD on every client")
    if dp[canary_client].unit != "utterance":
        raise ConfigError(f"gradient canaries need sample-level DP-SGD through Opacus (unit 'utterance'), "
                          f"not {dp[canary_client].unit!r}")
    total = sum(len(d) for d in clients_data.values())
    weights = {cid: len(d) / total for cid, d in clients_data.items()}
    scheme = build_scheme("plain", {}, seed=seed)
    server = FederatedServer(copy.deepcopy(encoder), list(names), run_id=f"audit-{label}", weights=weights)
    tensor_name, offset = _largest_trainable(names, encoder)
    with tempfile.TemporaryDirectory(prefix="privspk-audit-") as tmp:
        clients = {}
        for i, (cid, cdata) in enumerate(clients_data.items()):
            clients[cid] = FederatedClient(
                cid, cdata, copy.deepcopy(encoder), list(names), weight=weights[cid], endpoint=scheme.client(cid),
                guard=None, store=Path(tmp) / cid, release=ClientRelease("plain"),
                training=ClientTraining(local, seed=client_seed_base + i, dp=dp[cid], trunk_crops=trunk_crops,
                                        fixed_head=fixed_head))
        target = clients[canary_client].net.encoder.get_parameter(tensor_name)
        canaries = GradientCanaries(target, m=m, clip=dp[canary_client].clip,
                                    sample_rate=dp[canary_client].sample_rate, seed=seed, shadow=shadow)
        fed = InProcessFederation(server, clients, scheme)
        start = server.global_vector().numpy().copy()
        idx = offset + canaries.coords
        released, per_round = [], []
        prev = start
        bar = _bar(rounds, f"canary re-run {label}", progress)
        with canaries.active():
            for r in range(1, rounds + 1):
                rep = fed.run_round(r)
                if rep.skipped:
                    raise ConfigError(f"canary re-run round {r} was skipped: {rep.skipped}")
                now = server.global_vector().numpy().copy()
                released.append(-canaries.signs * (now - start)[idx])
                per_round.append(-canaries.signs * (now - prev)[idx])
                prev = now
                bar.update(1)
        bar.close()
    if canaries.steps == 0 or (canaries.insertions == 0 and canaries.included.any()):
        raise ConfigError("no canary reached a DP-SGD step: the canary hook did not fire (is the canary client's "
                          "training going through Opacus' DPOptimizer?)")
    noise = f"sigma {dp[canary_client].noise_multiplier:g}"
    return CanaryRun(label=label, noise=noise, m=m, included=canaries.included, released_scores=released,
                     round_scores=per_round, insertions=canaries.insertions, steps=canaries.steps, final_vector=prev)


def _bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


def bound_views(run: CanaryRun, *, claimed: Sequence[float] | None, delta: float,
                significance: float = 0.05) -> CanaryRun:
    """Fill ``run.views``: the released model after each round, and the best single round's aggregate.

    ``claimed``: the ledger's epsilon after each round (None for the non-private control).
    The best-round bound divides the significance by the number of rounds (Bonferroni).
    """
    views = []
    rounds = len(run.released_scores)
    for r in range(1, rounds + 1):
        eps = claimed[r - 1] if claimed is not None else None
        views.append(CanaryView("released", r, best_lower_bound(run.released_scores[r - 1], run.included, delta=delta,
                                                               significance=significance), eps))
    per_round = [CanaryView("round aggregate", r, best_lower_bound(run.round_scores[r - 1], run.included,
                                                                   delta=delta, significance=significance / rounds),
                            claimed[r - 1] if claimed is not None else None)
                 for r in range(1, rounds + 1)]
    views += per_round
    best = max(per_round, key=lambda v: v.bound.epsilon)
    views.append(CanaryView("best round aggregate", best.round, best.bound, best.claimed_epsilon))
    run.views = views
    run.delta = delta
    return run


@dataclass(frozen=True)
class CanaryVerdict:
    """PASS / FAIL / INCONCLUSIVE for a DP run against its non-private control."""

    verdict: str
    reason: str
    ratio: float | None

    def to_dict(self) -> dict:
        """JSON-able fields."""
        return dict(vars(self))


NEAR_CEILING = 0.75


def verdict(dp_run: CanaryRun | None, control: CanaryRun) -> CanaryVerdict:
    """FAIL if a DP bound exceeds the ledger's epsilon; INCONCLUSIVE if the control stays far below its ceiling.

    "Near the ceiling" means at least 75 % of the best bound the search over guess
    counts can give with ``m`` canaries (``corrected_ceiling``).
    """
    ctrl = control.released.bound
    if dp_run is not None:
        for view in (dp_run.released, dp_run.best_round):
            if view.claimed_epsilon is not None and view.bound.epsilon > view.claimed_epsilon:
                return CanaryVerdict("FAIL", f"{view.view} (round {view.round}): lower bound "
                                     f"{view.bound.epsilon:.2f} > ledger epsilon {view.claimed_epsilon:.2f}",
                                     view.bound.epsilon / view.claimed_epsilon)
    if ctrl.epsilon < NEAR_CEILING * ctrl.corrected_ceiling:
        return CanaryVerdict("INCONCLUSIVE", f"the non-private control reached only {ctrl.epsilon:.2f} of the "
                             f"{ctrl.corrected_ceiling:.2f} that {ctrl.m} canaries allow: the attack is too weak",
                             None)
    if dp_run is None:
        return CanaryVerdict("NO CLAIM", "non-private run: nothing to check against", None)
    rel = dp_run.released
    ratio = rel.bound.epsilon / rel.claimed_epsilon if rel.claimed_epsilon else None
    return CanaryVerdict("PASS", f"lower bound {rel.bound.epsilon:.2f} <= ledger epsilon {rel.claimed_epsilon:.2f}; "
                         f"the control reached {ctrl.epsilon:.2f} (ceiling {ctrl.corrected_ceiling:.2f})", ratio)


@dataclass
class CanaryAudit:
    """The DP re-run and the non-private control, each relative to the shadow re-run, and the verdict."""

    dp_run: CanaryRun | None
    control: CanaryRun
    verdict: CanaryVerdict
    claimed: list[float] | None
    delta: float
    shadow: CanaryRun | None = None
    clients: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        """JSON-able summary."""
        return {"verdict": self.verdict.to_dict(), "delta": self.delta, "claimed_epsilon_by_round": self.claimed,
                "clients": list(self.clients),
                "dp": self.dp_run.to_dict() if self.dp_run is not None else None,
                "control": self.control.to_dict()}


def _relative(run: CanaryRun, shadow: CanaryRun) -> CanaryRun:
    run.released_scores = [a - b for a, b in zip(run.released_scores, shadow.released_scores)]
    run.round_scores = [a - b for a, b in zip(run.round_scores, shadow.round_scores)]
    return run


def canary_audit(
    encoder: nn.Module,
    names: Sequence[str],
    clients_data: Mapping[str, object],
    *,
    dp: Mapping[str, object] | None,
    clip: float,
    sample_rates: Mapping[str, float],
    claimed: Sequence[float] | None,
    delta: float,
    m: int,
    rounds: int,
    local_steps: int,
    local: LocalSettings,
    trunk_crops: int,
    fixed_head: bool = False,
    canary_client: str | None = None,
    seed: int = 0,
    client_seed_base: int = 0,
    progress: bool = False,
) -> CanaryAudit:
    """Shadow re-run (no canaries, no noise), control (canaries, no noise) and DP re-run (canaries, ``dp``).

    Scores are taken relative to the shadow run - the attacker re-runs the known
    configuration without canaries and subtracts, which removes what the real data
    did to each canary coordinate. The re-runs draw DP noise from the OS CSPRNG
    (``randomness="secret"``): a DP guarantee assumes noise nobody can regenerate.

    Args:
        dp: client id -> the audited :class:`~privspk.privacy.Mechanism` (from the ledger, its
            randomness ``secret``); ``None`` for a non-private run (only the control is run).
        clip, sample_rates: the per-example clipping bound and each client's Poisson
            rate, used for the noise-free control and shadow runs.
        claimed: the ledger's epsilon after each of the ``rounds`` rounds (None: no claim).
    """
    from privspk.privacy.mechanism import Mechanism

    canary_client = canary_client or next(iter(clients_data))
    free = {cid: Mechanism(noise_multiplier=0.0, sample_rate=sample_rates[cid], steps=local_steps, clip=clip,
                           delta=delta, randomness="secret")
            for cid in clients_data}
    if dp is not None and any(d.randomness != "secret" for d in dp.values()):
        raise ConfigError("the audit's DP re-run draws its noise from the OS CSPRNG: pass mechanisms with "
                          "randomness 'secret'")
    common = dict(canary_client=canary_client, m=m, rounds=rounds, local=local,
                  trunk_crops=trunk_crops, fixed_head=fixed_head, seed=seed,
                  client_seed_base=client_seed_base, progress=progress)
    shadow = run_with_canaries(encoder, names, clients_data, dp=free, label="shadow", shadow=True, **common)
    control = run_with_canaries(encoder, names, clients_data, dp=free, label="control (no noise)", **common)
    bound_views(_relative(control, shadow), claimed=None, delta=delta)
    dp_run = None
    if dp is not None:
        if claimed is None or len(claimed) < rounds:
            raise ConfigError(f"need the ledger's epsilon after each of the {rounds} rounds, got {claimed}")
        dp_run = run_with_canaries(encoder, names, clients_data, dp=dp, label="DP", **common)
        bound_views(_relative(dp_run, shadow), claimed=list(claimed)[:rounds], delta=delta)
    return CanaryAudit(dp_run=dp_run, control=control, verdict=verdict(dp_run, control),
                       claimed=list(claimed)[:rounds] if claimed is not None else None, delta=delta, shadow=shadow,
                       clients=tuple(clients_data))
