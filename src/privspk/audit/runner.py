"""Audit a trained run: membership inference, canary lower bound on epsilon, leakage from updates.

``audit_run(run_dir)`` reads the run's ``config.toml``, ``encoder.pt`` and
``ledger.sqlite`` (epsilon is read from the ledger, never recomputed here), prepares
the run's data (cached), and runs the three attacks of :mod:`privspk.audit` (and, for a client-level DP run, the
client-level canary clients of :mod:`privspk.audit.client_canary`). It
writes nothing outside ``out_dir`` (default ``RUN/audit``).

``quick`` (minutes): the re-runs federate only the first client (the canary client)
for one round with 500 canaries; the membership attack takes 10 utterances per
speaker; the leakage attack splits that client's speakers into three clients.
The non-private control of the membership attack is ``RUN_nonprivate`` beside the
run when it exists, else the canary audit's noise-free shadow re-run.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from privspk.errors import ConfigError

log = logging.getLogger(__name__)

#: Threat ids of threat_model/README.md each result bears on.
THREATS = {"membership": ("T19", "T28"), "canary": ("T17", "T29"), "client_canary": ("T29",),
           "leakage": ("T1", "T18", "T30")}


@dataclass(frozen=True)
class AuditSettings:
    """Sizes of the audit (``quick`` = the ``--quick`` preset).

    >>> AuditSettings.preset(quick=True).canaries
    500
    """

    canaries: int = 1000
    canary_rounds: int | None = None  # None: all the run's rounds
    rerun_clients: int | None = None  # None: all the run's clients take part in the re-runs
    mia_utts_per_speaker: int | None = None  # None: all
    probe_utts: int = 5
    bootstrap: int = 1000
    seed: int = 0

    @classmethod
    def preset(cls, *, quick: bool) -> AuditSettings:
        """The full or the quick audit."""
        return (cls(canaries=500, canary_rounds=1, rerun_clients=1, mia_utts_per_speaker=10, bootstrap=300)
                if quick else cls())


@dataclass
class LedgerView:
    """What the audit takes from the ledger: each client's mechanism and the epsilon after each round."""

    dp: dict  # client -> Mechanism (round 1's row; randomness "secret", as the audit re-runs draw)
    epsilon_by_round: list[float]  # max over clients of epsilon_after, per round
    delta: float
    unit: str


def read_ledger(path: Path) -> LedgerView | None:
    """Mechanism and recorded epsilon of a run (None when the run has no ledger: non-private)."""
    from privspk.privacy import Ledger, Mechanism

    if not path.exists():
        return None
    with Ledger(path, readonly=True) as led:
        dp, by_round = {}, {}
        delta, unit = None, None
        for client in led.clients():
            rows = led.rows(client)
            if not rows:
                continue
            first = rows[0]
            dp[client] = dataclasses.replace(Mechanism.from_row(first), randomness="secret")
            delta, unit = first.delta, first.unit
            for r in rows:
                by_round[r.round] = max(by_round.get(r.round, 0.0), r.epsilon_after)
    if not dp:
        return None
    return LedgerView(dp=dp, epsilon_by_round=[by_round[r] for r in sorted(by_round)], delta=float(delta), unit=unit)


@dataclass
class AuditReport:
    """Everything the audit found; :mod:`privspk.audit.report` writes it out."""

    run: str
    settings: AuditSettings
    ledger: LedgerView | None
    membership: dict = field(default_factory=dict)  # "dp"/"control" -> {"utterance": MembershipResult, ...}
    canary: object = None  # CanaryAudit
    client_canary: object = None  # ClientCanaryAudit (client-level DP runs only)
    leakage: dict = field(default_factory=dict)  # view -> Attribution per client
    skipped: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)


def _subsample(utts: list[str], utt2spk: dict, per_speaker: int | None, seed: int) -> list[str]:
    if per_speaker is None:
        return utts
    rng = np.random.default_rng(seed)
    by: dict[str, list[str]] = {}
    for u in utts:
        by.setdefault(utt2spk[u], []).append(u)
    out = []
    for spk in sorted(by):
        group = by[spk]
        out += [group[i] for i in sorted(rng.choice(len(group), size=min(per_speaker, len(group)), replace=False))]
    return out


def audit_run(run_dir: str | Path, *, data_dir: str | None = None, out_dir: str | Path | None = None,
              quick: bool = False, progress: bool = True, settings: AuditSettings | None = None) -> AuditReport:
    """Run the three attacks on a trained run (see the module docstring)."""
    from privspk.api import HeldoutEvaluator, pretrained_encoder
    from privspk.audit.canary import canary_audit
    from privspk.audit.membership import membership_attack
    from privspk.config import RunConfig
    from privspk.models.checkpoint import load_encoder
    from privspk.models.finetune import apply_recipe
    from privspk.prepare import prepare_data
    from privspk.training.data import ClientData

    run_dir = Path(run_dir)
    for need in ("config.toml", "encoder.pt"):
        if not (run_dir / need).is_file():
            raise ConfigError(f"{run_dir} is not a finished run: {need} is missing (train it first)")
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "audit"
    out_dir.mkdir(parents=True, exist_ok=True)
    st = settings or AuditSettings.preset(quick=quick)
    cfg = RunConfig.load(run_dir / "config.toml")
    if data_dir:
        cfg = cfg.replace(data_dir=str(data_dir))
    torch.set_num_threads(cfg.threads)
    ledger = read_ledger(run_dir / "ledger.sqlite")
    rep = AuditReport(run=str(run_dir), settings=st, ledger=ledger)
    delta = ledger.delta if ledger else cfg.privacy.delta
    t0 = time.perf_counter()
    data = prepare_data(cfg, progress=progress)
    public, _ = pretrained_encoder(cfg, data, progress=progress)
    released, _ = load_encoder(run_dir / "encoder.pt")
    rep.seconds["data"] = round(time.perf_counter() - t0, 1)

    # ---- shared set-up of the re-runs: the run's clients, recipe and local training
    base = copy.deepcopy(public)
    apply_recipe(base, cfg.train.recipe)
    names = [n for n, p in base.named_parameters() if p.requires_grad]
    clients_data = {f"client{i}": ClientData.from_pairs(data.features.get, data.utterances_of(group))
                    for i, group in enumerate(data.split.clients)}
    rerun = {c: clients_data[c] for c in list(clients_data)[: st.rerun_clients or len(clients_data)]}
    from privspk.api import local_settings, public_basis_for

    local = dataclasses.replace(local_settings(cfg, public_basis=public_basis_for(cfg, data, public)),
                                device="cpu")  # the re-runs train on the CPU, as before
    common = dict(local=local, local_steps=cfg.train.local_steps, trunk_crops=cfg.train.trunk_crops,
                  fixed_head=cfg.train.head == "fixed", client_seed_base=cfg.seed * 1000)

    if cfg.train.trunk_crops and cfg.train.recipe == "embedding":  # the frozen trunk's cache, once per client
        from tqdm import tqdm

        from privspk.training.trunk import pooled_crops

        for i, d in enumerate(tqdm(list(rerun.values()), desc="trunk statistics per client", disable=not progress,
                                   leave=False)):
            pooled_crops(base, d.getter, d.utt_ids, crops=cfg.train.trunk_crops, crop_frames=cfg.train.crop_frames,
                         seed=cfg.seed * 1000 + i)  # memoised: the re-runs' clients find it

    # ---- 1. canary audit (its noise-free shadow re-run is also the membership attack's control)
    t2 = time.perf_counter()
    rounds = min(st.canary_rounds or cfg.federation.rounds, cfg.federation.rounds)
    if ledger is not None and ledger.unit != "utterance":
        rep.skipped["canary"] = f"gradient canaries need utterance-level DP-SGD through Opacus, the run's unit is " \
                                f"{ledger.unit!r}"
    elif cfg.privacy.client_level:
        rep.skipped["canary"] = "gradient canaries are not re-run with client-level DP; see the client-level " \
                                "canary clients (section 2b)"
    else:
        from privspk.training.local import sample_rate_for

        rates = ({c: d.sample_rate for c, d in ledger.dp.items()} if ledger else
                 {c: sample_rate_for(d, unit="utterance", batch_size=cfg.train.batch_size,
                                     speaker_batch=cfg.train.speaker_batch) for c, d in clients_data.items()})
        clip = next(iter(ledger.dp.values())).clip if ledger else cfg.privacy.clip
        rep.canary = canary_audit(base, names, rerun, dp={c: ledger.dp[c] for c in rerun} if ledger else None,
                                  clip=clip, sample_rates=rates, claimed=ledger.epsilon_by_round if ledger else None,
                                  delta=delta, m=st.canaries, rounds=rounds, seed=st.seed, progress=progress,
                                  **common)
    rep.seconds["canary"] = round(time.perf_counter() - t2, 1)
    t2 = time.perf_counter()
    if not cfg.privacy.client_level:
        rep.skipped["client_canary"] = "does not apply: the run has no client-level DP ([privacy] client_level is " \
                                       "false)"
    else:
        rep.client_canary = _client_canary(run_dir / "ledger.sqlite", cfg, st, rounds, rep.skipped)
    rep.seconds["client_canary"] = round(time.perf_counter() - t2, 1)

    # ---- 2. membership inference on the released encoder, and on the non-private control
    t1 = time.perf_counter()
    evaluator = HeldoutEvaluator(data, max_frames=cfg.eval.max_frames, enroll_per_speaker=cfg.eval.enroll_per_speaker,
                                 seed=cfg.seed)
    held = set(data.split.heldout)
    nonmembers = _subsample(sorted(u for u, s in data.utt2spk.items() if s in held), data.utt2spk,
                            st.mia_utts_per_speaker, st.seed)

    def members_of(datas) -> list[str]:
        spk = {s for d in datas for s in d.speakers}
        return _subsample(sorted(u for u, s in data.utt2spk.items() if s in spk), data.utt2spk,
                          st.mia_utts_per_speaker, st.seed)

    members = members_of(clients_data.values())
    control, control_members = None, []
    sibling = run_dir.parent / f"{run_dir.name}_nonprivate" / "encoder.pt"
    if sibling.exists():
        control, control_members = load_encoder(sibling)[0], members
        rep.skipped["control_encoder"] = f"the non-private run {sibling.parent}"
    elif rep.canary is not None:
        from privspk.training.net import unflatten_into

        control = copy.deepcopy(base)
        unflatten_into(control, names, torch.from_numpy(rep.canary.shadow.final_vector), add=False)
        control_members = members_of(rerun.values())
        rep.skipped["control_encoder"] = (f"the canary audit's shadow re-run (noise 0, clipping kept, no canaries) "
                                          f"of {', '.join(rerun)}, {rounds} round(s)")
    utts = sorted(set(members) | set(nonmembers))
    emb_public = evaluator.embeddings(public, utts)
    for label, enc, mem, unit, eps in (("dp", released, members, ledger.unit if ledger else None,
                                        ledger.epsilon_by_round[-1] if ledger else None),
                                       ("control", control, control_members, None, None)):
        if enc is None:
            continue
        emb = evaluator.embeddings(enc, utts)
        rep.membership[label] = membership_attack(emb, emb_public, data.utt2spk, members=mem,
                                                  nonmembers=nonmembers, unit=unit, epsilon=eps, delta=delta,
                                                  resamples=st.bootstrap, seed=st.seed)
    rep.seconds["membership"] = round(time.perf_counter() - t1, 1)

    # ---- 3. leakage from round-1 updates: plain, DP, opened mask sum
    t3 = time.perf_counter()
    if not hasattr(base, "embedding") or "embedding.linear.weight" not in names:
        rep.skipped["leakage"] = f"the probe attack reads the embedding layer's update; recipe {cfg.train.recipe!r} " \
                                 "does not train it"
    else:
        targets = clients_data
        if len(rerun) < 3 and next(iter(rerun.values())).n_speakers < 3:
            targets = {}
            rep.skipped["leakage"] = "quick: the re-run client has fewer than 3 speakers to split into 3 clients"
        elif len(rerun) < 3:  # quick: three clients carved out of the re-run client's speakers
            targets = _split_client(next(iter(rerun.values())), base, cfg, parts=3, seed=cfg.seed * 1000)
            rep.skipped["leakage_clients"] = (f"quick: the three clients are {next(iter(rerun))}'s speakers split in "
                                              f"three; DP update of {next(iter(targets))} only")
        if targets:
            rep.leakage = _leakage(base, names, targets, data, ledger, cfg, st, common, progress,
                                   dp_only_first=len(rerun) < 3)
    rep.seconds["leakage"] = round(time.perf_counter() - t3, 1)
    rep.seconds["total"] = round(time.perf_counter() - t0, 1)
    return rep


def _client_canary(ledger_path: Path, cfg, st: AuditSettings, rounds: int, skipped: dict):
    """Client-level canary audit of a client-level DP run, against the ledger's client-level epsilon.

    The encoder is re-planned from the run's configuration (``api.plan_client_level``) and
    must give the mechanism the ledger recorded; honest clients' updates are synthetic
    (random directions at the client clip: only the counted noise shares and the clip
    matter to a canary client's privacy).
    """
    from privspk.api import plan_client_level
    from privspk.audit.client_canary import client_canary_audit
    from privspk.privacy import Ledger

    if not ledger_path.exists():
        skipped["client_canary"] = "the run has no ledger: no client-level epsilon to audit"
        return None
    by_round, mech, rate = {}, None, None
    with Ledger(ledger_path, readonly=True) as led:
        for client in led.clients():
            for row in led.rows(client):
                if row.client_level is None:
                    continue
                mech, rate = row.client_level.mechanism, row.client_level.sample_rate
                by_round[row.round] = max(by_round.get(row.round, 0.0), row.client_level.epsilon_after)
    if mech is None:
        skipped["client_canary"] = "the ledger records no client-level spend"
        return None
    if rate != 1.0:
        skipped["client_canary"] = f"canary clients take part in every round; the ledger's client sampling rate is " \
                                   f"{rate:g} (amplification not modelled here)"
        return None
    dp, _ = plan_client_level(cfg, dim=mech.dim)
    if dp.mechanism() != mech:
        skipped["client_canary"] = f"re-planning the configuration gives {dp.mechanism().to_dict()}, the ledger " \
                                   f"recorded {mech.to_dict()}"
        return None
    claimed = [by_round[r] for r in sorted(by_round)][:rounds]
    return client_canary_audit(dp, m=st.canaries, rounds=len(claimed), claimed=claimed,
                               delta=cfg.privacy.delta, seed=st.seed, bootstrap=st.bootstrap)


def _mechanism_for(ledger: LedgerView, client: str, d, cfg):
    """The ledger's DP-SGD mechanism for ``client``; for a carved-out client, the first client's
    noise and clip at a sampling rate Opacus can realise on its size (the ledger's when it can)."""
    import math

    from privspk.training.local import sample_rate_for

    if client in ledger.dp:
        return ledger.dp[client]
    mech = next(iter(ledger.dp.values()))
    n, batches = len(d), round(1 / mech.sample_rate)
    q = mech.sample_rate
    if math.ceil(n / math.ceil(n / batches)) != batches:
        q = sample_rate_for(d, unit="utterance", batch_size=cfg.train.batch_size, speaker_batch=cfg.train.speaker_batch)
    return dataclasses.replace(mech, sample_rate=q)


def _split_client(d, base, cfg, *, parts: int, seed: int) -> dict:
    """``parts`` clients holding disjoint thirds of ``d``'s speakers, on ``d``'s cached pooled statistics."""
    from privspk.training.data import ClientData
    from privspk.training.trunk import pooled_crops

    pooled = pooled_crops(base, d.getter, d.utt_ids, crops=cfg.train.trunk_crops, crop_frames=cfg.train.crop_frames,
                          seed=seed)
    out = {}
    for k in range(parts):
        labels = set(range(k, d.n_speakers, parts))
        idx = [i for i, lab in enumerate(d.labels) if lab in labels]
        sub = ClientData.from_pairs(d.getter, [(d.utt_ids[i], d.speakers[d.labels[i]]) for i in idx])
        out[f"part{k}"] = sub.with_pooled(pooled[idx])
    return out


def _leakage(base, names, clients_data, data, ledger, cfg, st: AuditSettings, common: dict, progress: bool, *,
             dp_only_first: bool = False) -> dict:
    from tqdm import tqdm

    from privspk.audit.leakage import (attribution, linear_probe_scores, opened_mask_sum, round_one_updates,
                                       tensor_step)
    from privspk.training.trunk import pooled_utterances

    total = sum(len(d) for d in clients_data.values())
    weights = {cid: len(d) / total for cid, d in clients_data.items()}
    rng = np.random.default_rng([st.seed, 7])
    probes = {}
    for d in clients_data.values():  # enrolment audio of every candidate speaker
        for spk in range(d.n_speakers):
            idx = d.utterances_of(spk)
            for i in rng.choice(idx, size=min(st.probe_utts, len(idx)), replace=False):
                probes[d.utt_ids[int(i)]] = d.speakers[spk]
    from privspk.api import _bucket

    pooled = pooled_utterances(base, ((u, _bucket(data.features.get(u))) for u in sorted(probes)))
    base.eval()
    with torch.no_grad():
        inputs = {u: base.embedding.stats_norm(pooled[u][None])[0].numpy() for u in pooled}
    shapes = {n: tuple(p.shape) for n, p in base.named_parameters()}

    def scores(step):
        dw = tensor_step(names, shapes, step, "embedding.linear.weight")
        return linear_probe_scores(dw, inputs, probes)

    views = {}
    with tempfile.TemporaryDirectory(prefix="privspk-audit-") as tmp:
        bar = tqdm(total=3, desc="leakage: round-1 updates", disable=not progress, leave=False)
        plain = round_one_updates(base, names, clients_data, dp=None, weights=weights, store=f"{tmp}/plain", **common)
        bar.update(1)
        dp = None
        if ledger is not None:
            who = dict(list(clients_data.items())[:1]) if dp_only_first else clients_data
            dp = round_one_updates(base, names, who, dp={c: _mechanism_for(ledger, c, d, cfg) for c, d in who.items()},
                                   weights=weights, store=f"{tmp}/dp", **common)
        bar.update(1)
        options = dict(cfg.secagg.options)
        options.setdefault("clip", cfg.federation.update_clip)
        opened = opened_mask_sum(plain, options=options, run_id="audit", seed=st.seed)
        bar.update(1)
        bar.close()
    held = {cid: set(d.speakers) for cid, d in clients_data.items()}
    views["plain update"] = {cid: attribution(scores(plain[cid] / weights[cid]), held[cid]) for cid in clients_data}
    if dp is not None:
        views["DP update"] = {cid: attribution(scores(dp[cid] / weights[cid]), held[cid]) for cid in dp}
    opened_scores = scores(opened)
    views[f"opened mask sum of {len(plain)} plain updates"] = {cid: attribution(opened_scores, held[cid])
                                                              for cid in clients_data}
    return views
