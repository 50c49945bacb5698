"""The library entry point: ``train(config, budget=...)`` runs a whole federated job.

>>> from privspk.config import RunConfig
>>> cfg = RunConfig()
>>> cfg.federation.rounds, cfg.privacy.unit
(5, 'utterance')

A run goes: prepare data (corpus, split, features, trials) -> public pretraining
(cached) -> federated rounds (local DP-SGD, spend recorded, secure aggregation,
FedAvg) with the held-out EER after each -> final evaluation, checkpoint and a
JSON run report under ``out_dir/name``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from privspk.config import RunConfig
from privspk.errors import BudgetExceededError, ConfigError
from privspk.prepare import PreparedData, prepare_data

log = logging.getLogger(__name__)

#: the server's record of the signed ledger chain heads it aggregated (``privspk ledger --check`` reads it)
AGGREGATED_HEADS = "aggregated_heads.json"
#: one JSON line per completed round, so that a resumed run's report lists every round
ROUNDS_LOG = "rounds.jsonl"


# --------------------------------------------------------------------------- evaluation
BUCKET_FRAMES = 25


def _bucket(feats: torch.Tensor) -> torch.Tensor:
    """Trim to a multiple of 25 frames (at most 0.24 s) so utterances batch by length."""
    n = feats.shape[0]
    return feats[: n - n % BUCKET_FRAMES] if n >= 2 * BUCKET_FRAMES else feats

class HeldoutEvaluator:
    """Embeds the held-out utterances and scores the trials (EER, minDCF, top-1)."""

    def __init__(self, data: PreparedData, *, max_frames: int, enroll_per_speaker: int, seed: int,
                 device: str | torch.device = "cpu") -> None:
        self.device = device  # where the encoder embeds (it is moved there and back)
        self.data = data
        self.max_frames = max_frames
        self.enroll_per_speaker = enroll_per_speaker
        self.seed = seed
        held = set(data.split.heldout)
        self.utts = sorted({t.enroll for t in data.trials} | {t.test for t in data.trials})
        self.heldout_utt2spk = {u: s for u, s in data.utt2spk.items() if s in held}
        # shared through the data: runs on the same data (a sweep, the demo's --reference) pay the trunk once
        self._pooled: dict[str, dict[str, torch.Tensor]] = getattr(data, "pooled", {})

    def embeddings(self, encoder: nn.Module, utts=None) -> dict:
        """Unit-length embeddings of the given (default: trial) utterances.

        When the encoder exposes its trunk (``pooled``), the pooled statistics are cached
        by the trunk's fingerprint, so re-evaluating an encoder whose trunk did not change
        (the ``embedding`` recipe) only runs the embedding layer.
        """
        from privspk.device import on_device

        with on_device(encoder, self.device) as dev:
            return self._embeddings(encoder, self.utts if utts is None else utts, dev)

    def _embeddings(self, encoder: nn.Module, utts, dev: torch.device) -> dict:
        from privspk.evaluation.embed import embed_features

        if hasattr(encoder, "pooled") and hasattr(encoder, "embedding"):
            from privspk.training.trunk import pooled_utterances, trunk_fingerprint

            key = trunk_fingerprint(encoder)
            cache = self._pooled.setdefault(key, {})
            missing = [u for u in utts if u not in cache]
            if missing:
                cache.update(pooled_utterances(encoder, ((u, _bucket(self.data.features.get(u))) for u in missing),
                                               device=dev))
            was_training = encoder.training
            encoder.eval()
            try:
                with torch.no_grad():
                    out = encoder.embedding(torch.stack([cache[u] for u in utts]).to(dev)).cpu()
            finally:
                encoder.train(was_training)
            out = torch.nn.functional.normalize(out, dim=1).numpy()
            return dict(zip(utts, out))
        return embed_features(encoder, ((u, _bucket(self.data.features.get(u))) for u in utts),
                              batch_size=64, max_frames=self.max_frames, device=dev)

    def evaluate_domains(self, encoder: nn.Module) -> dict[str, dict[str, float]]:
        """EER and minDCF per channel-domain condition (``<domain>``: in-domain, ``<domain>/cross``: clean enrolment).

        Empty without ``[corpus] domains``.
        """
        import numpy as np

        from privspk.evaluation.scoring import cosine_scores, evaluate_scores

        conds = self.data.domain_trials
        if not conds:
            return {}
        utts = sorted({u for trials in conds.values() for t in trials for u in (t.enroll, t.test)})
        emb = self.embeddings(encoder, utts)
        out = {}
        for name, trials in conds.items():
            res = evaluate_scores(cosine_scores(emb, trials), np.array([t.target for t in trials], dtype=bool),
                                  p_targets=(0.01, 0.05))
            out[name] = {"eer": res.eer, "min_dcf_0.01": res.min_dcf[0.01], "min_dcf_0.05": res.min_dcf[0.05],
                         "n_target": res.n_target, "n_nontarget": res.n_nontarget}
        return out

    def evaluate(self, encoder: nn.Module, *, top1: bool = False, write_to: Path | None = None) -> dict[str, Any]:
        """EER and minDCF on the trials; closed-set top-1 on all held-out utterances when asked.

        ``write_to``: a folder that receives ``trials`` and ``scores`` in Kaldi's formats
        (used later to calibrate a :class:`~privspk.evaluation.Verifier`).
        """
        import numpy as np

        from privspk.evaluation.scoring import closed_set_top1, cosine_scores, evaluate_scores
        from privspk.evaluation.trials import write_scores, write_trials

        t0 = time.perf_counter()
        if top1:
            emb = self.embeddings(encoder, sorted(self.heldout_utt2spk))
        else:
            emb = self.embeddings(encoder)
        scores = cosine_scores(emb, self.data.trials)
        res = evaluate_scores(scores, np.array([t.target for t in self.data.trials], dtype=bool),
                              p_targets=(0.01, 0.05))
        if write_to is not None:
            write_trials(Path(write_to) / "trials", self.data.trials)
            write_scores(Path(write_to) / "scores", self.data.trials, scores)
        out = {"eer": res.eer, "min_dcf_0.01": res.min_dcf[0.01], "min_dcf_0.05": res.min_dcf[0.05],
               "n_target": res.n_target, "n_nontarget": res.n_nontarget, "threshold_eer": res.threshold_eer}
        if self.data.domain_trials:
            out["domains"] = self.evaluate_domains(encoder)
        if top1:
            out["top1"] = closed_set_top1(emb, self.heldout_utt2spk, enroll_per_speaker=self.enroll_per_speaker,
                                          seed=self.seed)
        out["seconds"] = time.perf_counter() - t0
        return out


# --------------------------------------------------------------------------- pretraining
def _device(cfg: RunConfig) -> torch.device:
    """The torch device ``[run] device`` resolves to here (ConfigError for ``cuda`` without CUDA)."""
    from privspk.device import resolve_device

    return resolve_device(cfg.run.device)


def pretrained_encoder(cfg: RunConfig, data: PreparedData, *, progress: bool = True) -> tuple[nn.Module, dict]:
    """The encoder pretrained (non-privately) on the public speakers, cached by its settings."""
    from privspk.models import build_encoder
    from privspk.models.checkpoint import load_encoder, save_encoder
    from privspk.training.data import ClientData
    from privspk.training.pretrain import pretrain

    in_dim = encoder_in_dim(cfg)
    seed = cfg.pretrain.seed
    if not cfg.pretrain.enabled or cfg.pretrain.steps == 0:
        torch.manual_seed(seed)
        return build_encoder(cfg.model.encoder, in_dim=in_dim), {"enabled": False}
    # public speakers stay clean whatever [corpus] domains says: the key leaves the domains out
    key = RunConfig(corpus=dataclasses.replace(cfg.corpus, domains=()), split=cfg.split, features=cfg.features,
                    model=cfg.model, pretrain=cfg.pretrain).fingerprint("corpus", "split", "features", "model",
                                                                        "pretrain")
    path = Path(cfg.data_dir) / "pretrained" / f"{data.corpus_id}_{key}.pt"
    if path.exists():
        encoder, meta = load_encoder(path)
        info = dict(meta.get("extra", {}))
        info.update({"cached": True, "path": str(path)})
        return encoder, info
    torch.manual_seed(seed)
    encoder = build_encoder(cfg.model.encoder, in_dim=in_dim)
    public = ClientData.from_pairs(data.features.get, data.utterances_of(data.split.public))
    rep = pretrain(encoder, public, steps=cfg.pretrain.steps, batch_size=cfg.pretrain.batch_size,
                   lr=cfg.pretrain.lr, crop_frames=cfg.pretrain.crop_frames, seed=seed,
                   margin=cfg.model.margin, scale=cfg.model.scale, progress=progress,
                   device=_device(cfg))
    info = {"enabled": True, "steps": rep.steps, "seconds": round(rep.seconds, 1),
            "final_loss": rep.losses[-1] if rep.losses else None, "train_accuracy": rep.train_accuracy,
            "public_speakers": len(data.split.public)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_encoder(path, encoder, name=cfg.model.encoder, in_dim=in_dim, extra=info)
    info.update({"cached": False, "path": str(path)})
    return encoder, info


# --------------------------------------------------------------------------- the run
@dataclass
class TrainResult:
    """What :func:`train` returns (``rounds``: the rounds this call ran; ``report["rounds"]``: all of the run's)."""

    config: RunConfig
    encoder: nn.Module
    run_dir: Path
    rounds: list[dict] = field(default_factory=list)
    pretrain_eval: dict | None = None
    final_eval: dict = field(default_factory=dict)
    epsilon: dict[str, float] = field(default_factory=dict)
    report: dict = field(default_factory=dict)


def _scheme_options(cfg: RunConfig) -> dict:
    opts = dict(cfg.secagg.options)
    if cfg.secagg.scheme in ("mask", "bfv", "ckks") and "clip" not in opts:
        opts["clip"] = cfg.federation.update_clip
    if cfg.secagg.scheme == "mask":
        opts["colluders"] = cfg.secagg.colluders
    return opts


# --------------------------------------------------------------------------- privacy: the config's side
def ledger_settings(cfg: RunConfig) -> dict:
    """The privacy-relevant settings a resumed run must keep (stored in the ledger)."""
    p = cfg.privacy
    return {
        "epsilon": p.epsilon, "delta": p.delta, "unit": p.unit, "clip": p.clip, "accountant": p.accountant,
        "rounds": cfg.federation.rounds, "local_steps": cfg.train.local_steps,
        "batch_size": cfg.train.batch_size, "speaker_batch": cfg.train.speaker_batch,
        "scheme": cfg.secagg.scheme, "recipe": cfg.train.recipe,
        "client_level": p.client_level, "client_epsilon": p.client_epsilon, "client_clip": p.client_clip,
        "client_noise": p.client_noise,
        "randomness": p.randomness, "colluders": cfg.secagg.colluders,
    } | ({"public_subspace": cfg.train.public_subspace, "public_subspace_out": cfg.train.public_subspace_out}
         if cfg.train.public_subspace else {})


def open_run_ledger(path: str | Path, cfg: RunConfig):
    """The run's ledger, opened or created; a ledger of the same run with other privacy settings is refused.

    >>> import tempfile, pathlib
    >>> with open_run_ledger(pathlib.Path(tempfile.mkdtemp()) / "l.sqlite", RunConfig()) as led:
    ...     led.run_id, led.settings["unit"]
    ('run', 'utterance')
    """
    from privspk.privacy import Ledger

    return Ledger(path, run_id=cfg.name, settings=ledger_settings(cfg), create_if_missing=True)


def client_budget(cfg: RunConfig):
    """Each client's sample-level budget, from ``[privacy]``."""
    from privspk.privacy import PrivacyBudget

    p = cfg.privacy
    return PrivacyBudget(epsilon=p.epsilon, delta=p.delta, unit=p.unit)


def plan_client_mechanism(cfg: RunConfig, data) -> Any:
    """The :class:`~privspk.privacy.Mechanism` of one client's rounds: its sample rate, the run's steps and
    clip, and the noise that keeps all ``[federation] rounds`` within its budget."""
    from privspk.privacy import plan_mechanism
    from privspk.training.local import sample_rate_for

    p = cfg.privacy
    q = sample_rate_for(data, unit=p.unit, batch_size=cfg.train.batch_size, speaker_batch=cfg.train.speaker_batch)
    return plan_mechanism(budget=client_budget(cfg), sample_rate=q, steps=cfg.train.local_steps, clip=p.clip,
                          rounds=cfg.federation.rounds, accountant=p.accountant, randomness=p.randomness)


def plan_mechanisms(cfg: RunConfig, clients_data: dict) -> dict:
    """Every client's mechanism (empty without DP); a budget no noise can meet names the client."""
    if not cfg.privacy.enabled:
        return {}
    out = {}
    for cid, cdata in clients_data.items():
        try:
            out[cid] = plan_client_mechanism(cfg, cdata)
        except (ConfigError, BudgetExceededError) as exc:
            raise type(exc)(f"no noise plan for {cid}: {exc}. Nothing was written (no run directory)") from None
    return out


def plan_client_level(cfg: RunConfig, *, dim: int):
    """Distributed-DP encoder for client-level DP, and the mask options that carry its noise.

    ``[privacy]`` and ``[secagg]`` read into :func:`privspk.privacy.distributed.plan_client_level`
    (which says how the noise is planned).
    """
    from privspk.privacy import PrivacyBudget
    from privspk.privacy.distributed import plan_client_level as plan

    p = cfg.privacy
    if cfg.secagg.scheme != "mask":
        raise ConfigError(f"client-level DP adds integer noise before masking: it needs secagg scheme 'mask', "
                          f"not {cfg.secagg.scheme!r}")
    return plan(_scheme_options(cfg), n_clients=cfg.federation.n_clients, colluders=cfg.secagg.colluders,
                budget=PrivacyBudget(epsilon=p.client_epsilon, delta=p.delta, unit="client"),
                rounds=cfg.federation.rounds, clip=p.client_clip, noise=p.client_noise, dim=dim)


def local_settings(cfg: RunConfig, *, public_basis=None):
    """How every client trains locally (:class:`~privspk.training.local.LocalSettings`) under ``cfg``.

    ``public_basis``: the ``[train] public_subspace`` basis (:func:`public_basis_for`); required when
    that option is on, refused when it is off.
    """
    from privspk.training.local import LocalSettings

    t = cfg.train
    if bool(t.public_subspace) != (public_basis is not None):
        raise ConfigError("[train] public_subspace = k > 0 needs its public basis (privspk.api.public_basis_for), "
                          "and a basis needs public_subspace > 0")
    if public_basis is not None:
        from privspk.training.subspace import PublicBasis

        inputs, outputs = (public_basis.inputs, public_basis.outputs) if isinstance(public_basis, PublicBasis) \
            else (public_basis, None)
        if inputs.shape[1] != t.public_subspace or (0 if outputs is None else outputs.shape[1]) != t.public_subspace_out:
            raise ConfigError(f"public basis has {inputs.shape[1]} input and "
                              f"{0 if outputs is None else outputs.shape[1]} output directions, [train] "
                              f"public_subspace says {t.public_subspace}, public_subspace_out {t.public_subspace_out}")
    return LocalSettings(batch_size=t.batch_size, physical_batch=t.physical_batch, lr=t.lr, optimizer=t.optimizer,
                         momentum=t.momentum, crop_frames=t.crop_frames, speaker_batch=t.speaker_batch,
                         margin=cfg.model.margin, scale=cfg.model.scale, ema=t.ema, device=_device(cfg),
                         public_basis=public_basis)


def public_basis_for(cfg: RunConfig, data: PreparedData, encoder: nn.Module):  # noqa: ANN201 - PublicBasis | None
    """The :class:`~privspk.training.subspace.PublicBasis` of ``[train] public_subspace`` (and
    ``public_subspace_out``); None when ``public_subspace`` is 0.

    Computed from the **public** speakers' utterances only (clean, as pretraining saw them) through
    ``encoder``, the pretrained encoder the server ships, and cached next to the pretrained checkpoint
    (``<data_dir>/pretrained``). Every client derives the same basis; no client data goes in.
    """
    k = cfg.train.public_subspace
    if not k:
        return None
    from privspk.training.subspace import PublicBasis, public_subspace

    utts = [u for u, _ in data.utterances_of(data.split.public)]
    common = dict(crops=cfg.train.trunk_crops, crop_frames=cfg.train.crop_frames,
                  cache_dir=Path(cfg.data_dir) / "pretrained", data_key=data.corpus_id, device=_device(cfg))
    k_out = cfg.train.public_subspace_out
    return PublicBasis(public_subspace(encoder, data.features.get, utts, k=k, **common),
                       public_subspace(encoder, data.features.get, utts, k=k_out, outputs=True, **common)
                       if k_out else None)


def _append_round(path: Path, row: dict) -> None:
    """Append one round's summary to the run's round log (flushed to disk: a resume reads it back)."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _earlier_rounds(path: Path, last_done: int) -> list[dict]:
    """The summaries of rounds 1..last_done from the round log (a resumed run's report keeps every round).

    A round whose summary was lost (the process stopped between saving the round and logging it) is
    listed with a note instead of its figures; a torn last line is ignored.
    """
    rows: dict[int, dict] = {}
    if last_done and path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("round"), int) and row["round"] <= last_done:
                rows[row["round"]] = row
    return [rows.get(r, {"round": r, "lost": "the process stopped before this round's summary was logged"})
            for r in range(1, last_done + 1)]


def check_run_config(cfg: RunConfig) -> None:
    """What can be refused before any data is read: the aggregation scheme's options and its client count.

    (Each section's ranges are checked when the config is built; the noise plans, which need
    the clients' data sizes, are checked by :func:`train` before it creates the run directory.)

    >>> from privspk.config import FederationSection, SecAggSection
    >>> check_run_config(RunConfig(secagg=SecAggSection(scheme="mask"), federation=FederationSection(n_clients=1)))
    Traceback (most recent call last):
    ...
    privspk.errors.ConfigError: [secagg] scheme 'mask' cannot run with [federation] n_clients = 1: a masked round needs at least 2 clients, got 1
    """
    from privspk.secagg import build_scheme

    _device(cfg)  # "cuda" without a CUDA device is refused before any work
    if cfg.name.strip() in ("", ".", "..") or any(c in cfg.name for c in "/\\"):
        raise ConfigError(f"run name {cfg.name!r} must name one folder under out_dir (not empty, no '/')")
    k = cfg.federation.n_clients
    scheme = build_scheme(cfg.secagg.scheme, _scheme_options(cfg), seed=cfg.seed)
    try:
        need = scheme.min_survivors(k)
    except ConfigError as exc:
        raise ConfigError(f"[secagg] scheme {cfg.secagg.scheme!r} cannot run with [federation] n_clients = {k}: "
                          f"{exc}") from None
    if need > k:
        raise ConfigError(f"[secagg] scheme {cfg.secagg.scheme!r} needs at least {need} clients per round, "
                          f"[federation] n_clients = {k}; add clients or use scheme 'plain'")
    if cfg.privacy.enabled and cfg.privacy.client_level:
        if cfg.secagg.scheme != "mask":
            raise ConfigError(f"client-level DP adds integer noise before masking: it needs secagg scheme 'mask', "
                              f"not {cfg.secagg.scheme!r}")
        if k < 2:
            raise ConfigError("client-level DP needs at least 2 clients")


def _replace_dir(run_dir: Path) -> None:
    """Delete an old run directory for ``overwrite``: renamed aside first (one step), so a refusal leaves it whole."""
    import tempfile

    aside = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.old-", dir=run_dir.parent))
    try:
        run_dir.rename(aside / run_dir.name)
    except OSError:
        aside.rmdir()
        raise
    shutil.rmtree(aside, ignore_errors=True)


def train(
    config: RunConfig,
    *,
    budget=None,
    progress: bool = True,
    resume: bool = False,
    overwrite: bool = False,
    on_round: Callable[[dict], None] | None = None,
    eval_every: int = 1,
    data: PreparedData | None = None,
) -> TrainResult:
    """Run a federated training job end to end.

    Everything that can be refused is refused before the run directory is created (the
    config, the scheme's client count, every client's noise plan). If the job then fails
    before any privacy spend is recorded (a full or read-only disk, an interrupt), the run
    directory this call made is removed again, so nothing half written blocks the next try;
    once a spend is recorded the directory is kept for ``resume``.

    Args:
        config: the run configuration.
        budget: a :class:`privspk.privacy.PrivacyBudget` overriding ``config.privacy``'s
            epsilon/delta/unit (each client's budget).
        progress: progress bars on stderr.
        resume: continue a crashed run in the same run directory (same privacy settings).
        overwrite: delete an existing run directory of the same name first.
        on_round: called after each round with that round's metrics.
        eval_every: evaluate the held-out EER every this many rounds (and always after the last).
        data: already prepared data (saves re-loading when running several configs).
    """
    made: list[Path] = []  # the run directory once this call has created it
    try:
        return _train(config, budget=budget, progress=progress, resume=resume, overwrite=overwrite,
                      on_round=on_round, eval_every=eval_every, data=data, made=made)
    except BaseException:
        # _train has closed the ledger by now, so SQLite leaves no -wal/-shm files behind
        if made and made[0].is_dir() and not _has_spends(made[0]):
            shutil.rmtree(made[0], ignore_errors=True)
        raise


def _has_spends(run_dir: Path) -> bool:
    """Whether the run directory's ledger holds a spend (then it must be kept); True when unsure."""
    from privspk.errors import PrivspkError
    from privspk.privacy import Ledger

    path = run_dir / "ledger.sqlite"
    if not path.exists():
        return False
    try:
        with Ledger(path, readonly=True) as led:
            return bool(led.rows())
    except (PrivspkError, OSError):
        return True


def build_federated_client(cfg: RunConfig, *, client_id: str, index: int, data, encoder: nn.Module,
                           names: list[str], weight: float, endpoint, run_dir: Path, ledger, mechanism,
                           client_dp=None, options: dict, identity=None, public_basis=None) -> Any:
    """One :class:`~privspk.federation.FederatedClient` as every runtime builds it.

    ``identity`` (an :class:`~privspk.secagg.keys.IdentityKey`) signs the ledger's chain
    heads; without it the client's own key in its store does (a deployed node passes
    the identity key bound to its Flower node).

    The in-process runtime (:func:`train`) and a deployed node
    (:mod:`privspk.runtimes.flower`) both call this, so a client trains, spends, signs its
    ledger chain and binds its endpoint to the run the same way in both. ``mechanism`` is the
    client's planned :class:`~privspk.privacy.Mechanism` (``None`` without DP); ``options`` are
    the scheme's options (their ``clip`` bounds the update); ``public_basis`` is
    :func:`public_basis_for`'s (with ``[train] public_subspace``).
    """
    from privspk.federation import ClientRelease, ClientTraining, FederatedClient

    privacy = cfg.privacy
    store = run_dir / "clients" / client_id
    guard = None
    if privacy.enabled:
        from privspk.federation.guard import LedgerGuard, client_identity
        from privspk.privacy import PrivacyBudget

        if identity is None:
            identity = client_identity(store / "identity.key")
        client_level = {}
        if client_dp is not None:
            client_level = dict(client_budget=PrivacyBudget(epsilon=privacy.client_epsilon, delta=privacy.delta,
                                                            unit="client"),
                                client_mechanism=client_dp.mechanism())  # the guaranteed honest shares
        guard = LedgerGuard(ledger, client_id, client_budget(cfg), accountant=privacy.accountant, identity=identity,
                            **client_level)
    training = ClientTraining(
        local_settings(cfg, public_basis=public_basis), seed=cfg.seed * 1000 + index,
        dp=mechanism if privacy.enabled else None,
        local_steps=None if privacy.enabled else cfg.train.local_steps,
        randomness=None if privacy.enabled else privacy.randomness,
        trunk_crops=cfg.train.trunk_crops, fixed_head=cfg.train.head == "fixed",
    )
    release = ClientRelease(
        cfg.secagg.scheme, run_id=cfg.name, client_dp=client_dp,
        update_clip=options.get("clip") if client_dp is None and cfg.secagg.scheme != "plain" else None,
    )
    return FederatedClient(client_id, data, copy.deepcopy(encoder), names, weight=weight, endpoint=endpoint,
                           guard=guard, store=store, training=training, release=release)


def encoder_in_dim(cfg: RunConfig) -> int:
    """The encoder's input dimension: the feature vector's size under ``[features]``.

    >>> encoder_in_dim(RunConfig())
    40
    """
    return cfg.features.n_mels if cfg.features.kind == "fbank" else cfg.features.n_mfcc


def _with_budget(config: RunConfig, budget) -> RunConfig:
    """``config`` with ``[privacy]`` epsilon/delta/unit replaced by ``budget`` (a PrivacyBudget) when given."""
    from privspk.privacy import PrivacyBudget

    if budget is None:
        return config
    if not isinstance(budget, PrivacyBudget):
        raise ConfigError(f"budget must be a PrivacyBudget, got {type(budget).__name__}")
    return config.replace(privacy=dataclasses.replace(config.privacy, epsilon=budget.epsilon, delta=budget.delta,
                                                      unit=budget.unit))


def _check_start(cfg: RunConfig, run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse a run that cannot start: a bad config, or a run directory in the way."""
    check_run_config(cfg)
    if run_dir.exists() and not resume and not overwrite:
        raise ConfigError(f"run directory {run_dir} exists; pass resume=True to continue it, "
                          f"overwrite=True to start again, or choose another name")
    if resume and run_dir.exists() and not cfg.privacy.enabled and (run_dir / "ledger.sqlite").exists():
        raise ConfigError(f"{run_dir} is a differentially private run (it has a privacy ledger); resume it "
                          "with the same privacy settings, never without privacy")


def _make_run_dir(run_dir: Path, *, resume: bool, made: list | None) -> None:
    """The run directory, emptied unless resumed (``made`` learns of one this call creates)."""
    if run_dir.exists() and not resume:
        _replace_dir(run_dir)
    if not run_dir.exists():
        run_dir.mkdir(parents=True)
        if made is not None:
            made.append(run_dir)


@dataclass
class _Federation:
    """What :func:`_setup_federation` builds: the in-process federation and what its report names."""

    fed: Any
    server: Any
    clients: dict
    evaluator: HeldoutEvaluator
    client_dp: Any
    options: dict
    n_trainable: int
    pretrain_info: dict
    pretrain_eval: dict
    t_pretrained: float


def _setup_federation(cfg: RunConfig, data: PreparedData, clients_data: dict, mechanisms: dict, ledger,
                      run_dir: Path, *, progress: bool) -> _Federation:
    """Pretrained encoder and its held-out score, the fine-tuning recipe, the scheme, server and clients."""
    from privspk.federation import FederatedServer, InProcessFederation
    from privspk.models.finetune import apply_recipe
    from privspk.secagg import build_scheme

    base, pretrain_info = pretrained_encoder(cfg, data, progress=progress)
    t_pretrained = time.perf_counter()
    evaluator = HeldoutEvaluator(data, max_frames=cfg.eval.max_frames,
                                 enroll_per_speaker=cfg.eval.enroll_per_speaker, seed=cfg.seed,
                                 device=_device(cfg))
    pretrain_eval = evaluator.evaluate(base, top1=True)
    public_basis = public_basis_for(cfg, data, base)
    encoder = copy.deepcopy(base)
    n_trainable = apply_recipe(encoder, cfg.train.recipe)
    names = [n for n, p in encoder.named_parameters() if p.requires_grad]
    total = sum(len(d) for d in clients_data.values())
    weights = {cid: len(d) / total for cid, d in clients_data.items()}
    options = _scheme_options(cfg)
    client_dp = None
    if cfg.privacy.enabled and cfg.privacy.client_level:
        client_dp, options = plan_client_level(cfg, dim=n_trainable)
    scheme = build_scheme(cfg.secagg.scheme, options, seed=cfg.seed)
    server = FederatedServer(encoder, names, run_id=cfg.name, weights=weights,
                             optimizer=server_optimizer_for(cfg.federation))
    if ledger is not None:
        from privspk.privacy.ledger import AggregatedHeads

        server.heads = AggregatedHeads(run_dir / AGGREGATED_HEADS, run_id=cfg.name)
    clients = {
        cid: build_federated_client(cfg, client_id=cid, index=i, data=cdata, encoder=encoder, names=names,
                                    weight=weights[cid], endpoint=scheme.client(cid), run_dir=run_dir,
                                    ledger=ledger, mechanism=mechanisms.get(cid), client_dp=client_dp,
                                    options=options, public_basis=public_basis)
        for i, (cid, cdata) in enumerate(clients_data.items())
    }

    def aggregated(round_id: int, included) -> None:
        if ledger is not None:
            ledger.mark_aggregated(round_id, list(included))

    fed = InProcessFederation(server, clients, scheme, state_path=run_dir / "server_state.pt",
                              on_aggregated=aggregated)
    return _Federation(fed=fed, server=server, clients=clients, evaluator=evaluator, client_dp=client_dp,
                       options=options, n_trainable=n_trainable, pretrain_info=pretrain_info,
                       pretrain_eval=pretrain_eval, t_pretrained=t_pretrained)


def server_optimizer_for(federation):  # noqa: ANN201 - a ServerOptimizer or None
    """The server-side optimiser a ``[federation]`` section asks for (None: plain FedAvg).

    >>> from privspk.config import FederationSection
    >>> server_optimizer_for(FederationSection()) is None
    True
    >>> server_optimizer_for(FederationSection(server_optimizer="momentum", server_lr=0.5)).lr
    0.5
    """
    if federation.server_optimizer == "none":
        return None
    from privspk.crossdevice.loop import ServerOptimizer

    return ServerOptimizer(federation.server_optimizer, lr=federation.server_lr, momentum=federation.server_momentum)


def _run_rounds(cfg: RunConfig, f: _Federation, run_dir: Path, *, first: int, eval_every: int,
                on_round: Callable[[dict], None] | None) -> list[dict]:
    """Rounds ``first`` .. ``[federation] rounds``: each one's summary logged (fsync'ed) and handed to ``on_round``."""
    from privspk.federation.runtime import round_row

    privacy = cfg.privacy
    rounds: list[dict] = []
    for r in range(first, cfg.federation.rounds + 1):
        row = round_row(f.fed.run_round(r), privacy, epsilon={cid: c.epsilon() for cid, c in f.clients.items()},
                        client_epsilon=({cid: c.guard.client_epsilon() for cid, c in f.clients.items()}
                                        if f.client_dp is not None else None))
        if eval_every and (r % eval_every == 0 or r == cfg.federation.rounds):
            row["eval"] = f.evaluator.evaluate(f.server.encoder)
        rounds.append(row)
        _append_round(run_dir / ROUNDS_LOG, row)
        if on_round is not None:
            on_round(row)
    return rounds


def _privacy_report(cfg: RunConfig, f: _Federation, mechanisms: dict, eps: dict) -> dict:
    """The report's ``privacy`` section: budget, each client's mechanism and what it spent."""
    from privspk.training.randomness import randomness_note

    privacy = cfg.privacy
    if not privacy.enabled:
        return {"enabled": False}
    cl = f.client_dp
    return {"epsilon_budget": privacy.epsilon, "delta": privacy.delta, "unit": privacy.unit,
            "accountant": privacy.accountant, "clip": privacy.clip,
            "randomness": privacy.randomness,
            "randomness_warning": randomness_note(privacy.randomness) or None,
            "noise_multiplier": {c: m.noise_multiplier for c, m in mechanisms.items()},
            "sample_rate": {c: m.sample_rate for c, m in mechanisms.items()},
            "epsilon_spent": eps,
            "client_level": ({"noise": cl.noise, "noise_multiplier": cl.noise_multiplier,
                              "counted_shares": cl.mechanism().shares, "colluders": cl.colluders,
                              "required_survivors": cl.required_survivors,
                              "clip": cl.clip, "epsilon_budget": privacy.client_epsilon,
                              "epsilon_spent": {c: k.guard.client_epsilon() for c, k in f.clients.items()}}
                             if cl is not None else None)}


def _run_report(cfg: RunConfig, data: PreparedData, f: _Federation, mechanisms: dict, eps: dict, *, rounds: list,
                final_eval: dict, resumed_after: int | None, seconds: dict) -> dict:
    """The run's ``report.json``: config, corpus, pretraining, privacy, scheme, every round, final scores."""
    return {
        "run": cfg.name,
        "config": cfg.to_dict(),
        "corpus": {"id": data.corpus_id, "utterances": len(data.corpus), "speakers": len(data.corpus.speakers),
                   "public": len(data.split.public), "clients": [len(g) for g in data.split.clients],
                   "heldout": len(data.split.heldout), "trials": len(data.trials)},
        "pretrain": f.pretrain_info,
        "pretrain_eval": f.pretrain_eval,
        "trainable_parameters": f.n_trainable,
        "privacy": _privacy_report(cfg, f, mechanisms, eps),
        "secagg": {"scheme": cfg.secagg.scheme, "options": f.options},
        "rounds": rounds,
        "resumed_after_round": resumed_after,
        "final_eval": final_eval,
        "seconds": seconds,
    }


def _train(
    config: RunConfig,
    *,
    budget=None,
    progress: bool = True,
    resume: bool = False,
    overwrite: bool = False,
    on_round: Callable[[dict], None] | None = None,
    eval_every: int = 1,
    data: PreparedData | None = None,
    made: list | None = None,
) -> TrainResult:
    """The body of :func:`train` (same arguments; ``made`` receives the run directory when this call creates it).

    The ledger is closed when this returns or raises.
    """
    from privspk.models.checkpoint import save_encoder
    from privspk.training.data import ClientData

    cfg = _with_budget(config, budget)
    torch.set_num_threads(cfg.threads)
    t_start = time.perf_counter()
    run_dir = Path(cfg.out_dir) / cfg.name
    _check_start(cfg, run_dir, resume=resume, overwrite=overwrite)
    with contextlib.ExitStack() as closing:
        ledger = None
        if resume and run_dir.exists() and cfg.privacy.enabled:
            # opened first: a resume with other privacy settings is refused before anything is written or computed
            ledger = closing.enter_context(open_run_ledger(run_dir / "ledger.sqlite", cfg))
        data = data if data is not None else prepare_data(cfg, progress=progress)
        t_data = time.perf_counter()
        clients_data = {f"client{i}": ClientData.from_pairs(data.features.get, data.utterances_of(group))
                        for i, group in enumerate(data.split.clients)}
        # every client's mechanism before the run directory exists: an unreachable budget fails here, in
        # seconds, and leaves nothing behind that would block the next try
        mechanisms = plan_mechanisms(cfg, clients_data)
        _make_run_dir(run_dir, resume=resume, made=made)
        if cfg.privacy.enabled and ledger is None:
            ledger = closing.enter_context(open_run_ledger(run_dir / "ledger.sqlite", cfg))
        (run_dir / "config.toml").write_text(cfg.to_toml(), encoding="utf-8")
        f = _setup_federation(cfg, data, clients_data, mechanisms, ledger, run_dir, progress=progress)
        last_done = f.fed.last_completed_round() if resume else 0
        earlier = _earlier_rounds(run_dir / ROUNDS_LOG, last_done)
        rounds = _run_rounds(cfg, f, run_dir, first=last_done + 1, eval_every=eval_every, on_round=on_round)
        t_fed = time.perf_counter()
        final_eval = f.evaluator.evaluate(f.server.encoder, top1=True, write_to=run_dir)
        save_encoder(run_dir / "encoder.pt", f.server.encoder, name=cfg.model.encoder, in_dim=encoder_in_dim(cfg),
                     extra={"run": cfg.name, "recipe": cfg.train.recipe})
        eps = {cid: c.epsilon() for cid, c in f.clients.items()}
        seconds = {"data": round(t_data - t_start, 1), "pretrain": round(f.t_pretrained - t_data, 1),
                   "federated": round(t_fed - f.t_pretrained, 1), "total": round(time.perf_counter() - t_start, 1)}
        report = _run_report(cfg, data, f, mechanisms, eps, rounds=earlier + rounds, final_eval=final_eval,
                             resumed_after=last_done if resume else None, seconds=seconds)
        (run_dir / "report.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    return TrainResult(config=cfg, encoder=f.server.encoder, run_dir=run_dir, rounds=rounds,
                       pretrain_eval=f.pretrain_eval, final_eval=final_eval, epsilon=eps, report=report)


def train_crossdevice(config: RunConfig, **kwargs: Any):
    """Run a cross-device job (``[federation] mode = "cross-device"``); see :func:`privspk.crossdevice.run_crossdevice`.

    >>> RunConfig.preset("phones").crossdevice.population
    1000
    """
    from privspk.crossdevice import run_crossdevice

    return run_crossdevice(config, **kwargs)
