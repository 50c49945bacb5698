"""The cross-device round loop: sample phones, train locally, clip + noise share + mask, open the sum.

One round (``[federation] mode = "cross-device"``):

1. **Sample.** ``sampling = "fixed"``: ``K = devices_per_round`` devices without replacement;
   ``"poisson"``: each device with probability ``q = K / population``. The draw comes from the
   OS CSPRNG (``[privacy] randomness = "secret"``) or from the run's seed (``"simulation"``).
2. **Budget.** The device ledger (:mod:`privspk.privacy.device_ledger`) admits a sampled device
   only if its user-level epsilon after this round stays within ``device_epsilon``; the others
   sit out (recorded).
3. **Local training** on each admitted device (:class:`~privspk.crossdevice.device.Device`,
   materialised for this round only): positives-only training of the embedding layer of the
   public pretrained encoder towards the device's secret codeword.
4. **Encode.** The device clips its whole update to ``device_clip`` (L2), quantises it and, under
   DP-FedAvg, adds its discrete-Gaussian noise share
   (:func:`privspk.privacy.user_level.plan_device_noise`).
5. **Secure aggregation.** ``mask`` SecAgg+ over the admitted devices
   (:func:`privspk.secagg.crossdevice.aggregate_round`); ``dropout`` of them drop out after
   sharing keys; the server opens only the sum of the survivors. The neighbourhood graph is
   sized for that rate (:func:`privspk.secagg.graph.degree_for_dropout`, a round that cannot be
   opened at most 1e-4 by a union bound); a round that still cannot be opened releases nothing,
   leaves the model as it was, is recorded with ``failed`` and is charged to its devices.
6. **Server step.** DP-FedAvg: the opened sum / expected K is the noisy mean update. DP-FTRL:
   the sums go into a :class:`~privspk.privacy.ftrl.TreeAggregator`, whose noisy prefix sums
   give the round's noisy sum (their difference). Either goes through the server optimiser
   (momentum or Adam).
7. **Evaluate** the released encoder on the built-in corpus' held-out trials (EER). With a device
   ``[crossdevice] domain`` the devices' audio went through that channel, and the held-out
   speakers are also evaluated in it (:func:`domain_data`): ``final_eval["domains"]`` has the
   in-domain condition ``<domain>`` (enrolment and test through the channel) and the
   cross-channel one ``<domain>/cross`` (clean enrolment), beside the clean EER. Pretraining
   stays on the clean public speakers.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from privspk.config import RunConfig
from privspk.crossdevice.device import CodewordStore, Device, flat_params, set_flat_params, trainable_names
from privspk.crossdevice.objective import HadamardCode, public_projection
from privspk.crossdevice.population import DevicePopulation, builtin_heldout_variants
from privspk.errors import AggregationError, ConfigError

__all__ = ["CrossDeviceResult", "ServerOptimizer", "check_crossdevice_config", "device_domain", "domain_data",
           "population_for", "run_crossdevice", "sample_devices", "validation_evaluator"]

log = logging.getLogger(__name__)

_TAG_SAMPLE, _TAG_DROP, _TAG_LOCAL, _TAG_NOISE = 0x53414D50, 0x44524F50, 0x4C4F4341, 0x4E4F4953
#: seed of the public projection (public: every device and the server know it)
PROJECTION_SEED = 0x50524F4A


def _rng(randomness: str, *words: int) -> np.random.Generator:
    """A generator from the OS CSPRNG (``secret``) or from ``words`` (``simulation``)."""
    if randomness == "secret":
        return np.random.default_rng(secrets.randbits(128))
    return np.random.default_rng(list(words))


def sample_devices(device_ids: tuple[str, ...], *, k: int, sampling: str, rng: np.random.Generator) -> list[str]:
    """This round's sample: ``k`` without replacement (``fixed``) or each with prob. ``k / N`` (``poisson``).

    >>> ids = tuple(f"dev{i:05d}" for i in range(10))
    >>> len(sample_devices(ids, k=4, sampling="fixed", rng=np.random.default_rng(0)))
    4
    >>> s = sample_devices(ids, k=4, sampling="poisson", rng=np.random.default_rng(0)); s == sorted(s)
    True
    """
    n = len(device_ids)
    if sampling == "fixed":
        return sorted(device_ids[i] for i in rng.choice(n, size=k, replace=False))
    if sampling == "poisson":
        return [d for d, u in zip(device_ids, rng.random(n)) if u < k / n]
    raise ConfigError(f"sampling must be fixed|poisson, got {sampling!r}")


class ServerOptimizer:
    """Server-side optimiser on the (noisy) mean update: heavy-ball momentum or Adam.

    >>> opt = ServerOptimizer("momentum", lr=1.0, momentum=0.5)
    >>> theta = torch.zeros(2)
    >>> theta = opt.step(theta, torch.ones(2)); theta = opt.step(theta, torch.ones(2)); theta.tolist()
    [2.5, 2.5]
    """

    def __init__(self, kind: str, *, lr: float, momentum: float = 0.9, betas: tuple[float, float] = (0.9, 0.99),
                 eps: float = 1e-3) -> None:
        if kind not in ("momentum", "adam"):
            raise ConfigError(f"server optimizer must be momentum|adam, got {kind!r}")
        self.kind, self.lr, self.momentum, self.betas, self.eps = kind, float(lr), float(momentum), betas, eps
        self._m: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self._t = 0

    def state_dict(self) -> dict:
        """The optimiser's moments and step count (for a resumable server state).

        >>> opt = ServerOptimizer("adam", lr=0.1); _ = opt.step(torch.zeros(2), torch.ones(2))
        >>> other = ServerOptimizer("adam", lr=0.1); other.load_state_dict(opt.state_dict()); other._t
        1
        """
        return {"kind": self.kind, "t": self._t, "m": self._m, "v": self._v}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s moments (ConfigError for another optimiser kind)."""
        if state.get("kind") != self.kind:
            raise ConfigError(f"server optimizer state is {state.get('kind')!r}, this run uses {self.kind!r}")
        self._t, self._m, self._v = int(state["t"]), state["m"], state["v"]

    def step(self, theta: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """New parameters after applying the mean update ``delta`` (a pseudo-gradient pointing uphill)."""
        self._t += 1
        if self._m is None:
            self._m = torch.zeros_like(delta)
            self._v = torch.zeros_like(delta)
        if self.kind == "momentum":
            self._m = self.momentum * self._m + delta
            return theta + self.lr * self._m
        b1, b2 = self.betas
        self._m = b1 * self._m + (1 - b1) * delta
        self._v = b2 * self._v + (1 - b2) * delta * delta
        m_hat = self._m / (1 - b1 ** self._t)
        v_hat = self._v / (1 - b2 ** self._t)
        return theta + self.lr * m_hat / (v_hat.sqrt() + self.eps)


@dataclass
class CrossDeviceResult:
    """What :func:`run_crossdevice` returns."""

    config: RunConfig
    encoder: nn.Module
    run_dir: Path | None
    rounds: list[dict] = field(default_factory=list)
    pretrain_eval: dict = field(default_factory=dict)
    final_eval: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)


def check_crossdevice_config(cfg: RunConfig) -> None:
    """Refuse settings the cross-device loop cannot run, before anything is computed.

    >>> from privspk.config import FederationSection, CrossDeviceSection, TrainSection
    >>> check_crossdevice_config(RunConfig(federation=FederationSection(mode="cross-device"),
    ...                                    train=TrainSection(recipe="full")))
    Traceback (most recent call last):
    ...
    privspk.errors.ConfigError: cross-device mode trains the embedding layer on the frozen public trunk: set [train] recipe = "embedding", got 'full'
    """
    if cfg.federation.mode != "cross-device":
        raise ConfigError(f'run_crossdevice needs [federation] mode = "cross-device", got {cfg.federation.mode!r}')
    if cfg.train.recipe != "embedding":
        raise ConfigError('cross-device mode trains the embedding layer on the frozen public trunk: set [train] '
                          f'recipe = "embedding", got {cfg.train.recipe!r}')
    if cfg.crossdevice.domain != "none" and cfg.corpus.domains:
        raise ConfigError("cross-device mode puts its devices in [crossdevice] domain; leave [corpus] domains empty "
                          f"(got {list(cfg.corpus.domains)})")
    if cfg.corpus.path:
        raise ConfigError("cross-device mode evaluates on the built-in corpus' held-out speakers; leave [corpus] path "
                          "empty")
    if cfg.privacy.enabled and cfg.secagg.scheme != "mask":
        raise ConfigError(f"cross-device DP adds integer noise shares before masking: it needs [secagg] scheme = "
                          f"\"mask\", got {cfg.secagg.scheme!r}")
    if cfg.secagg.scheme not in ("mask", "plain"):
        raise ConfigError(f"cross-device mode aggregates with scheme mask (or plain for experiments), got "
                          f"{cfg.secagg.scheme!r}")


def population_for(cfg: RunConfig) -> DevicePopulation:
    """The device population ``cfg`` describes (cached under ``data_dir/devices``).

    Owners avoid the voice variants of the built-in corpus' held-out speakers.
    """
    c = cfg.crossdevice
    exclude = builtin_heldout_variants(n_speakers=cfg.corpus.n_speakers, seed=cfg.corpus.seed)
    return DevicePopulation(Path(cfg.data_dir) / "devices", n_devices=c.population, utts_per_device=c.utts_per_device,
                            seed=c.population_seed, features=cfg.features.feature_config(), exclude_variants=exclude,
                            domain=device_domain(cfg))


def device_domain(cfg: RunConfig) -> str | None:
    """The channel domain of the devices' audio (``[crossdevice] domain``), or None for clean audio.

    >>> from privspk.config import CrossDeviceSection
    >>> device_domain(RunConfig()), device_domain(RunConfig(crossdevice=CrossDeviceSection(domain="phone")))
    (None, 'phone')
    """
    from privspk.audio.channels import DOMAINS

    d = cfg.crossdevice.domain
    if d == "none":
        return None
    if d not in DOMAINS:
        raise ConfigError(f"[crossdevice] domain must be none or one of {', '.join(DOMAINS)}, got {d!r}")
    return d


def domain_data(cfg: RunConfig, data, *, speakers, progress: bool = False):
    """``data`` with its trials also evaluated in the device domain (unchanged without one).

    Builds (or reuses) the domain feature cache of ``speakers``' utterances (the corpus'
    :func:`~privspk.corpus.domains.build_domain_caches`, seeded by the corpus seed, beside the
    clean cache) and adds :func:`~privspk.corpus.domains.domain_conditions` of ``data.trials``:
    ``<domain>`` (enrolment and test through the channel) and ``<domain>/cross`` (clean
    enrolment). The result shares ``data.pooled`` (the trunk cache of evaluated utterances).
    """
    import dataclasses

    from privspk.corpus.domains import DomainFeatures, build_domain_caches, domain_conditions

    domain = device_domain(cfg)
    if domain is None:
        return data
    wanted = set(speakers)
    utts = [u for u in data.corpus.utterances if u.speaker in wanted]
    clean = data.features.clean if isinstance(data.features, DomainFeatures) else data.features
    others = dict(data.features.domains) if isinstance(data.features, DomainFeatures) else {}
    caches = build_domain_caches(Path(cfg.data_dir) / "features" / data.corpus_id, cfg.features.feature_config(),
                                 {domain: utts}, seed=cfg.corpus.seed, workers=cfg.threads, progress=progress)
    return dataclasses.replace(data, features=DomainFeatures(clean, {**others, **caches}),
                               domain_trials=domain_conditions(data.trials, [domain]))


def validation_evaluator(cfg: RunConfig, data):
    """An evaluator on the **validation** speakers: the built-in corpus' client speakers.

    The cross-device mode trains on the device population and reports on the held-out
    speakers' trials; the corpus' client speakers take part in neither (nor in pretraining),
    so their trials (drawn like the held-out ones, same counts per utterance) are where
    settings are tuned without touching the test trials.
    """
    import dataclasses

    from privspk.api import HeldoutEvaluator
    from privspk.evaluation.trials import make_trials

    speakers = {s for group in data.split.clients for s in group}
    if len(speakers) < 2:
        raise ConfigError(f"validation needs at least 2 client speakers in the built-in corpus, got {len(speakers)}")
    utt2spk = {u: s for u, s in data.utt2spk.items() if s in speakers}
    trials = make_trials(utt2spk, n_target_per_utt=cfg.eval.target_per_utt,
                         n_nontarget_per_utt=cfg.eval.nontarget_per_utt, seed=cfg.seed)
    vdata = dataclasses.replace(data, trials=trials, domain_trials={})  # shares data.pooled (the trunk cache)
    vdata = domain_data(cfg, vdata, speakers=speakers)  # the validation trials in the device domain too, if any
    evaluator = HeldoutEvaluator(vdata, max_frames=cfg.eval.max_frames, enroll_per_speaker=cfg.eval.enroll_per_speaker,
                                 seed=cfg.seed)
    evaluator.heldout_utt2spk = utt2spk  # top-1 over the validation speakers
    return evaluator


def _plan_noise(cfg: RunConfig, *, dim: int) -> dict[str, Any]:
    """Noise multiplier and accounting for the run (DP-FedAvg or DP-FTRL), or ``{"private": False}``."""
    c, p = cfg.crossdevice, cfg.privacy
    if not p.enabled or math.isinf(c.device_epsilon):
        return {"private": False}
    q = c.devices_per_round / c.population
    rounds = cfg.federation.rounds
    if c.mechanism == "dp-fedavg":
        from privspk.privacy.user_level import noise_for_user_epsilon

        z = noise_for_user_epsilon(epsilon=c.device_epsilon, delta=p.delta, sample_rate=q, rounds=rounds,
                                   sampling=c.sampling, population=c.population)
        return {"private": True, "mechanism": "dp-fedavg", "noise_multiplier": z, "sample_rate": q}
    from privspk.privacy.ftrl import noise_for_ftrl_epsilon

    z = noise_for_ftrl_epsilon(epsilon=c.device_epsilon, delta=p.delta, rounds=rounds,
                               max_participations=c.max_participations)
    return {"private": True, "mechanism": "dp-ftrl", "noise_multiplier": z, "sample_rate": q}


def run_crossdevice(
    cfg: RunConfig,
    *,
    progress: bool = True,
    overwrite: bool = False,
    on_round: Callable[[dict], None] | None = None,
    eval_every: int = 1,
    data=None,
    write: bool = True,
    evaluate_on: str = "test",
) -> CrossDeviceResult:
    """Run a cross-device job end to end (see the module notes); report under ``out_dir/name``.

    Args:
        cfg: a run config with ``[federation] mode = "cross-device"``.
        progress: progress bars on stderr.
        overwrite: replace an existing run directory of the same name.
        on_round: called with each round's summary.
        eval_every: evaluate every this many rounds (and after the last); 0 = only at the end.
        data: prepared built-in corpus data (:func:`privspk.prepare.prepare_data`), to reuse.
        write: write the run directory (report, ledger, checkpoint); False keeps the device
            stores and ledger in a temporary folder (benchmark sweeps).
        evaluate_on: ``"test"`` (the held-out speakers' trials) or ``"validation"`` (the
            corpus' client speakers, :func:`validation_evaluator`: for tuning settings).
    """
    import shutil
    import tempfile

    from privspk.api import HeldoutEvaluator, pretrained_encoder
    from privspk.models.finetune import apply_recipe
    from privspk.prepare import prepare_data

    check_crossdevice_config(cfg)
    if evaluate_on not in ("test", "validation"):
        raise ConfigError(f"evaluate_on must be test|validation, got {evaluate_on!r}")
    c, p = cfg.crossdevice, cfg.privacy
    torch.set_num_threads(cfg.threads)
    t_start = time.perf_counter()
    tmp = None
    if write:
        run_dir = Path(cfg.out_dir) / cfg.name
        if run_dir.exists():
            if not overwrite:
                raise ConfigError(f"run directory {run_dir} exists; pass overwrite=True or choose another name")
            shutil.rmtree(run_dir)
    else:
        tmp = tempfile.mkdtemp(prefix="privspk-xdev-")
        run_dir = Path(tmp) / cfg.name
    data = data if data is not None else prepare_data(cfg, progress=progress)
    population = population_for(cfg)
    population.build(workers=cfg.threads, progress=progress)
    base, pretrain_info = pretrained_encoder(cfg, data, progress=progress)
    base.eval()
    evaluator = (HeldoutEvaluator(domain_data(cfg, data, speakers=data.split.heldout, progress=progress),
                                  max_frames=cfg.eval.max_frames, enroll_per_speaker=cfg.eval.enroll_per_speaker,
                                  seed=cfg.seed) if evaluate_on == "test" else validation_evaluator(cfg, data))
    pretrain_eval = evaluator.evaluate(base)
    encoder = copy.deepcopy(base)
    layer_dim = apply_recipe(encoder, "embedding")
    layer = encoder.embedding
    if flat_params(layer).numel() != layer_dim:
        raise ConfigError(f"embedding layer has {flat_params(layer).numel()} parameters, recipe says {layer_dim}")
    theta = flat_params(layer, trainable_names(layer, c.trainable))
    dim = theta.numel()
    plan = _plan_noise(cfg, dim=dim)
    try:
        run_dir.mkdir(parents=True)
        (run_dir / "config.toml").write_text(cfg.to_toml(), encoding="utf-8")
        result = _rounds(cfg, run_dir=run_dir, population=population, base=base, encoder=encoder, theta=theta,
                         plan=plan, evaluator=evaluator, eval_every=eval_every, on_round=on_round,
                         progress=progress)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    rounds, final_eval, ledger_summary = result
    report = {
        "run": cfg.name, "mode": "cross-device", "config": cfg.to_dict(),
        "population": {"devices": c.population, "utts_per_device": c.utts_per_device, "key": population.key,
                       "domain": population.domain},
        "heldout": {"speakers": len(data.split.heldout), "trials": len(data.trials)},
        "evaluated_on": evaluate_on, "eval_trials": len(evaluator.data.trials),
        "pretrain": pretrain_info, "pretrain_eval": pretrain_eval, "trainable_parameters": dim,
        "privacy": {**plan, "device_epsilon": c.device_epsilon if plan["private"] else None,
                    "delta": p.delta if plan["private"] else None, "sampling": c.sampling,
                    "randomness": p.randomness, **ledger_summary},
        "rounds": rounds, "final_eval": final_eval,
        "seconds": {"total": round(time.perf_counter() - t_start, 1)},
    }
    if write:
        from privspk.models.checkpoint import save_encoder

        in_dim = cfg.features.n_mels if cfg.features.kind == "fbank" else cfg.features.n_mfcc
        save_encoder(run_dir / "encoder.pt", encoder, name=cfg.model.encoder, in_dim=in_dim,
                     extra={"run": cfg.name, "recipe": "embedding", "mode": "cross-device"})
        (run_dir / "report.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    return CrossDeviceResult(config=cfg, encoder=encoder, run_dir=run_dir if write else None, rounds=rounds,
                             pretrain_eval=pretrain_eval, final_eval=final_eval, report=report)


# --------------------------------------------------------------------------- one round's pieces
QUANT_BITS = 16
ROUND_FAILURE = 1e-4
"""Bound on the chance that a round at the configured dropout rate cannot be opened (sizes the SecAgg+ graph)."""


def _scale(clip: float) -> float:
    """Integer units per update unit of the 16-bit mask quantiser (``(2^15 - 1) / clip``)."""
    return ((1 << (QUANT_BITS - 1)) - 1) / clip


def _encode_plain(update: torch.Tensor, *, clip: float, rng: np.random.Generator) -> np.ndarray:
    """No DP noise: clip to ``clip`` (L2) and stochastically round to the 16-bit quantiser's integers."""
    from privspk.privacy.distributed import clip_update_l2

    v = clip_update_l2(update.double().numpy(), clip=clip) * _scale(clip)
    low = np.floor(v)
    return (low + (rng.random(v.shape) < v - low)).astype(np.int64)


def _secure_sum(codes: dict[str, np.ndarray], *, dropped: set[str], cfg: RunConfig, round_id: int,
                headroom_bits: int, min_survivors: int | None
                ) -> tuple[np.ndarray, tuple[str, ...], dict[str, float], dict[str, int]]:
    """Masked SecAgg+ round over ``codes``; ``dropped`` stop after sharing keys.

    Returns (integer sum, included, seconds per phase, the graph's ``degree`` and ``threshold``).
    """
    ids = tuple(sorted(codes))
    if cfg.secagg.scheme == "plain":
        t0 = time.perf_counter()
        included = tuple(d for d in ids if d not in dropped)
        total = np.sum([codes[d] for d in included], axis=0)
        return total, included, {"masking": 0.0, "aggregation": time.perf_counter() - t0, "unmasking": 0.0}, {}
    from privspk.secagg.crossdevice import aggregate_round
    from privspk.secagg.mask_protocol import MaskConfig

    # the graph is sized for the fleet's dropout rate: a round at that rate fails with probability <= 1e-4
    config = MaskConfig(clip=cfg.crossdevice.device_clip, bits=QUANT_BITS, noise_headroom_bits=headroom_bits,
                        colluders=cfg.secagg.colluders, dropout=cfg.crossdevice.dropout, round_failure=ROUND_FAILURE)
    res = aggregate_round(codes, config=config, dropped={d: "collect" for d in dropped}, min_survivors=min_survivors,
                          run_id=cfg.name, round_id=round_id)
    t = res.timings
    seconds = {"key_agreement": t.get("key_agreement", 0.0), "masking": t.get("masking", 0.0),
               "aggregation": t.get("aggregation", 0.0), "unmasking": t.get("unmasking", 0.0)}
    return (np.asarray(res.total, dtype=np.int64), tuple(res.included), seconds,
            {"degree": res.degree, "threshold": res.threshold})


def _rounds(cfg: RunConfig, *, run_dir: Path, population: DevicePopulation, base: nn.Module, encoder: nn.Module,
            theta: torch.Tensor, plan: dict, evaluator, eval_every: int, on_round, progress: bool):
    c, p = cfg.crossdevice, cfg.privacy
    layer = encoder.embedding
    names = trainable_names(layer, c.trainable)
    dim = theta.numel()
    code = HadamardCode(c.codeword_length)
    projection = public_projection(length=c.codeword_length, embed_dim=encoder.embed_dim, seed=PROJECTION_SEED)
    store = CodewordStore(run_dir / "devices")  # stands for each phone's own storage: the server never reads it
    opt = ServerOptimizer(c.server_optimizer, lr=c.server_lr, momentum=c.server_momentum)
    private = plan["private"]
    mechanism = plan.get("mechanism")
    z = plan.get("noise_multiplier")
    tree = None
    if private and mechanism == "dp-ftrl":
        from privspk.privacy.ftrl import TreeAggregator

        tree = TreeAggregator(dim=dim, noise_std=z * c.device_clip, rounds=cfg.federation.rounds,
                              randomness=p.randomness, seed=cfg.seed if p.randomness == "simulation" else None)
    prev_prefix = np.zeros(dim)
    if private:
        from privspk.privacy.device_ledger import DeviceLedger
    ledger = (DeviceLedger(run_dir / "device_ledger.sqlite", run_id=cfg.name, accountant=_accountant(cfg, plan),
                           budget=c.device_epsilon) if private else None)
    rounds: list[dict] = []
    scale = _scale(c.device_clip)
    from privspk.training.trunk import trunk_fingerprint

    fingerprint = trunk_fingerprint(base)  # the public trunk is frozen for the whole run
    for r in range(1, cfg.federation.rounds + 1):
        t0 = time.perf_counter()
        c0 = time.process_time()  # this process's CPU time: the round's cost when the machine is shared
        # devices over budget sit out: they are not eligible, so they cannot be sampled
        if ledger is not None:
            admission = ledger.admit(population.device_ids)
            eligible, sat_out = admission.admitted, admission.sat_out
        else:
            eligible, sat_out = population.device_ids, ()
        k = min(c.devices_per_round, len(eligible))
        admitted = sample_devices(tuple(eligible), k=k, sampling=c.sampling,
                                  rng=_rng(p.randomness, cfg.seed, _TAG_SAMPLE, r)) if k else []
        sampled = admitted
        row: dict[str, Any] = {"round": r, "eligible": len(eligible), "sampled": len(sampled), "sat_out": len(sat_out)}
        need = 2 if cfg.secagg.scheme == "plain" else cfg.secagg.colluders + 2
        if len(admitted) < need:
            row["skipped"] = f"{len(admitted)} devices sampled, a round needs at least {need}"
            rounds.append(row)
            continue
        noise_plan = None
        if private and mechanism == "dp-fedavg":
            from privspk.privacy.user_level import plan_device_noise

            noise_plan = plan_device_noise(n_sampled=len(admitted), noise_multiplier=z, clip=c.device_clip, dim=dim,
                                           colluders=cfg.secagg.colluders, dropout_allowance=c.dropout_allowance,
                                           counting="honest-dropouts", bits=QUANT_BITS)
        codes: dict[str, np.ndarray] = {}
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # one phone's tiny model: extra threads only add overhead
        for d in admitted:
            idx = int(d[3:])
            device = Device(d, population.pooled(d, base, crops=c.trunk_crops, crop_frames=cfg.train.crop_frames,
                                                 fingerprint=fingerprint),
                            codeword=code.codeword(store.index(d, size=code.size, randomness=p.randomness,
                                                               seed=cfg.seed)))
            local_seed = (secrets.randbits(63) if p.randomness == "secret"
                          else int(np.random.SeedSequence([cfg.seed, _TAG_LOCAL, r, idx]).generate_state(1)[0]))
            update = device.local_update(layer, steps=c.local_steps, lr=c.local_lr, objective=c.objective,
                                         projection=projection, seed=local_seed, names=names)
            noise_rng = _rng(p.randomness, cfg.seed, _TAG_NOISE, r, idx)
            codes[d] = (noise_plan.encoder.encode(update.double().numpy(), rng=noise_rng) if noise_plan is not None
                        else _encode_plain(update, clip=c.device_clip, rng=noise_rng))
            del device
        torch.set_num_threads(threads)
        t_local = time.perf_counter() - t0
        c_local = time.process_time() - c0
        n_drop = int(round(c.dropout * len(admitted)))
        drop_rng = np.random.default_rng([cfg.seed, _TAG_DROP, r])  # the network's failures (simulated)
        dropped = set(sorted(admitted)[i] for i in drop_rng.choice(len(admitted), size=n_drop, replace=False))
        try:
            total, included, secagg_seconds, graph = _secure_sum(
                codes, dropped=dropped, cfg=cfg, round_id=r,
                headroom_bits=noise_plan.headroom_bits if noise_plan is not None else 0,
                min_survivors=noise_plan.min_survivors if noise_plan is not None else None)
            failure = None
        except AggregationError as exc:  # nothing was opened: the model stays, the round is charged anyway
            failure = exc
        del codes
        if failure is not None:
            _failed_round(row, failure, ledger=ledger, round_id=r, eligible=eligible, admitted=admitted,
                          dropped=dropped, run_dir=run_dir, t0=t0)
            rounds.append(row)
            if on_round is not None:
                on_round(row)
            continue
        t1 = time.perf_counter()
        summed = total.astype(np.float64) / (noise_plan.encoder.scale if noise_plan is not None else scale)
        if tree is not None:
            prefix = tree.add(summed)
            summed, prev_prefix = prefix - prev_prefix, prefix
        mean = torch.from_numpy(summed / c.devices_per_round).to(torch.float32)
        theta = opt.step(theta, mean)
        set_flat_params(layer, theta, names)
        t_server = time.perf_counter() - t1
        if ledger is not None:  # every sampled device counts as a participant, dropped ones included
            rec = ledger.record_round(r, eligible=eligible, participants=admitted)
            row["central_epsilon"] = rec.central_epsilon
        row.update({"admitted": len(admitted), "dropped": len(dropped), "included": len(included), **graph,
                    "update_norm": float(mean.norm()),
                    "seconds": {"local_training": round(t_local, 3),
                                **{k: round(v, 3) for k, v in secagg_seconds.items()},
                                "server_step": round(t_server, 3), "round": round(time.perf_counter() - t0, 3),
                                "round_cpu": round(time.process_time() - c0, 3), "local_training_cpu": round(c_local, 3)}})
        if eval_every and (r % eval_every == 0 or r == cfg.federation.rounds):
            row["eval"] = evaluator.evaluate(encoder)
        rounds.append(row)
        with open(run_dir / "rounds.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, default=str) + "\n")
        if on_round is not None:
            on_round(row)
        if progress:
            ev = f" EER {row['eval']['eer'] * 100:.2f} %" if "eval" in row else ""
            log.info("round %d: %d sampled, %d sat out, %d in the sum%s", r, len(sampled), len(sat_out),
                     len(included), ev)
    final_eval = evaluator.evaluate(encoder, top1=True, write_to=run_dir)
    summary = {}
    if ledger is not None:
        summary = {"central_epsilon": ledger.central_epsilon(), "ledger_rounds_verified": ledger.verify(),
                   "accountant": _accountant(cfg, plan).to_dict()}
        ledger.close()
    return rounds, final_eval, summary


def _failed_round(row: dict, exc: AggregationError, *, ledger, round_id: int, eligible, admitted, dropped,
                  run_dir: Path, t0: float) -> None:
    """Record a round whose sum could not be opened (too few holders or survivors).

    Nothing was released, so the model and the DP-FTRL tree are left as they were. The
    sampled devices are still charged in the ledger: they ran their local step and sent
    masked, noised codes, and charging a round that released nothing only over-counts.
    """
    log.warning("round %d could not be opened (nothing released; the devices are charged): %s", round_id, exc)
    row.update({"failed": str(exc), "admitted": len(admitted), "dropped": len(dropped), "included": 0,
                "seconds": {"round": round(time.perf_counter() - t0, 3)}})
    if ledger is not None:
        row["central_epsilon"] = ledger.record_round(round_id, eligible=eligible, participants=admitted).central_epsilon
    with open(run_dir / "rounds.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, default=str) + "\n")


def _accountant(cfg: RunConfig, plan: dict):
    """The device ledger's accountant for the run's mechanism."""
    from privspk.privacy.device_ledger import FtrlAccountant, SampledGaussianAccountant

    c = cfg.crossdevice
    if plan["mechanism"] == "dp-ftrl":
        return FtrlAccountant(noise_multiplier=plan["noise_multiplier"], rounds=cfg.federation.rounds,
                              delta=cfg.privacy.delta)
    return SampledGaussianAccountant(noise_multiplier=plan["noise_multiplier"], sample_rate=plan["sample_rate"],
                                     delta=cfg.privacy.delta, sampling=c.sampling,
                                     population=c.population if c.sampling == "fixed" else None)
