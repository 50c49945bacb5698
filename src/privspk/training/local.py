"""One client's local training for one round: non-private, utterance-level or speaker-level DP-SGD.

The function trains ``net`` (encoder + the client's own head) in place and says
what was spent; the caller records the spend in the ledger *before* anything
derived from the new weights leaves the client.

Sampling is Poisson in both DP modes: each utterance (or each speaker) joins a
step's batch independently with probability ``sample_rate``; that rate, the noise
multiplier and the number of steps are exactly what the accountant needs.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from privspk.device import torch_device
from privspk.errors import ConfigError
from privspk.features.crops import CropDataset
from privspk.models.heads import aam_softmax_loss
from privspk.privacy.mechanism import SAMPLE_UNITS, Mechanism
from privspk.training.data import ClientData
from privspk.training.randomness import RoundSeeds
from privspk.training.speaker_dp import clip_group_sum

log = logging.getLogger(__name__)

UNITS = SAMPLE_UNITS  # what DP-SGD here protects (the privacy package's list)
GHOST_MIN_BATCH = 32
#: torch warns on every backward pass through Opacus' full backward hooks when the first hooked module's
#: input needs no gradient (features, frozen layers); Opacus reads only output gradients, so it is harmless.
_HOOK_WARNING = "Full backward hook is firing when gradients are computed with respect to module outputs"


def _backward(loss: torch.Tensor) -> None:
    """``loss.backward()`` with exactly the harmless full-backward-hook warning silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_HOOK_WARNING, category=UserWarning)
        loss.backward()


@dataclass(frozen=True, kw_only=True)
class LocalSettings:
    """How a client trains locally, apart from the DP mechanism (:class:`~privspk.privacy.Mechanism`).

    ``batch_size`` is the expected logical batch of the non-private and speaker-level paths
    (the utterance-level DP batch follows the mechanism's sample rate); ``physical_batch`` bounds
    what one forward pass holds; ``speaker_batch`` utterances come with each sampled speaker;
    ``ema`` > 0 returns the exponential moving average (that decay) of the round's iterates;
    ``device`` is where the net and the batches go (the DP noise is drawn there too);
    ``public_basis`` (a ``(d, k)`` orthonormal basis computed on public data, or a
    :class:`~privspk.training.subspace.PublicBasis` with an output side too) confines the
    embedding layer's linear map to ``W0 + A P^T`` (``W0 + Q A P^T``) during each round
    (None: the whole map trains).

    >>> LocalSettings(batch_size=64, physical_batch=64, lr=1e-3).optimizer
    'adam'
    >>> LocalSettings(batch_size=0, physical_batch=64, lr=1e-3)
    Traceback (most recent call last):
    ...
    privspk.errors.ConfigError: batch_size must be >= 1, got 0
    """

    batch_size: int
    physical_batch: int
    lr: float
    optimizer: str = "adam"
    momentum: float = 0.9
    crop_frames: int = 200
    speaker_batch: int = 8
    margin: float = 0.2
    scale: float = 30.0
    ema: float = 0.0
    device: str | torch.device = "cpu"
    public_basis: object = field(default=None, compare=False, repr=False)  # Tensor | subspace.PublicBasis | None

    def __post_init__(self) -> None:
        if self.public_basis is not None:
            from privspk.training.subspace import PublicBasis

            inputs = self.public_basis.inputs if isinstance(self.public_basis, PublicBasis) else self.public_basis
            if not isinstance(inputs, torch.Tensor) or inputs.dim() != 2:
                raise ConfigError("public_basis must be a (d, k) tensor or a PublicBasis "
                                  "(see privspk.training.subspace)")
        for name in ("batch_size", "physical_batch", "crop_frames", "speaker_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.optimizer not in ("adam", "sgd"):
            raise ConfigError(f"optimizer must be adam or sgd, got {self.optimizer!r}")


@dataclass
class LocalResult:
    """What a local round did (``dp`` is ``None`` for non-private training)."""

    steps: int
    loss: float
    seconds: float
    step_seconds: float
    examples: int
    dp: Mechanism | None


def sample_rate_for(data: ClientData, *, unit: str, batch_size: int, speaker_batch: int) -> float:
    """Poisson rate giving ``batch_size`` expected utterances per step.

    For the utterance unit it is ``1 / ceil(N / batch_size)`` (Opacus' rule); for the
    speaker unit each sampled speaker brings ``speaker_batch`` utterances, so
    ``batch_size / speaker_batch`` speakers are expected per step.

    >>> import torch
    >>> d = ClientData.from_pairs(lambda u: torch.zeros(1, 1), [(f"u{i}", f"s{i % 10}") for i in range(400)])
    >>> sample_rate_for(d, unit="utterance", batch_size=64, speaker_batch=8)
    0.14285714285714285
    >>> sample_rate_for(d, unit="speaker", batch_size=32, speaker_batch=8)
    0.4
    """
    if unit == "utterance":
        return 1.0 / math.ceil(len(data) / batch_size)
    if unit == "speaker":
        return min(1.0, (batch_size / speaker_batch) / data.n_speakers)
    raise ConfigError(f"privacy unit must be one of {SAMPLE_UNITS}, got {unit!r}")


def _dataset(data: ClientData, *, crop_frames: int, seed: int):
    """Feature crops, or cached pooled statistics when the client has them."""
    if data.pooled is not None:
        from privspk.training.trunk import PooledDataset

        return PooledDataset(data.pooled, data.labels, seed=seed)
    return CropDataset(data.getter, data.utt_ids, data.labels, n_frames=crop_frames, seed=seed)


def _forward_model(net: nn.Module, data: ClientData, public_basis=None):
    """The module DP-SGD runs (the whole net, or embedding layer + head on cached pooled statistics) and,
    with ``public_basis``, the :class:`~privspk.training.subspace.SubspaceEmbedding` to fold afterwards."""
    if data.pooled is None:
        if public_basis is not None:
            raise ConfigError("a public subspace needs the 'embedding' recipe on cached pooled statistics "
                              "(trunk_crops > 0)")
        return net, None
    from privspk.training.net import SpeakerNet
    from privspk.training.trunk import embedding_only

    if not embedding_only(net.encoder):
        raise ConfigError("cached pooled statistics need the 'embedding' recipe (only the embedding layer trains)")
    if public_basis is None:
        return SpeakerNet(net.encoder.embedding, net.head), None
    from privspk.training.subspace import SubspaceEmbedding

    sub = SubspaceEmbedding(net.encoder.embedding, public_basis)
    return SpeakerNet(sub, net.head), sub


class ParamEMA:
    """Exponential moving average of parameters over optimizer steps (post-processing, free under DP).

    Noise-driven DP-SGD iterates wander; their average keeps the drift and cancels much
    of the noise. ``apply()`` writes the averages into the parameters.

    >>> p = nn.Parameter(torch.zeros(1))
    >>> ema = ParamEMA([p], decay=0.5)
    >>> for v in (1.0, 1.0):
    ...     with torch.no_grad():
    ...         _ = p.fill_(v)
    ...     ema.update()
    >>> ema.apply(); round(float(p.detach()), 3)
    0.75
    """

    def __init__(self, params: list[nn.Parameter], *, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"ema decay must be in (0, 1), got {decay}")
        self.params = params
        self.decay = decay
        self.shadow = [p.detach().clone() for p in params]

    def update(self, *_: object) -> None:
        """Fold the current parameters in (usable as an optimizer step post-hook)."""
        with torch.no_grad():
            for s, p in zip(self.shadow, self.params):
                s.mul_(self.decay).add_(p.detach(), alpha=1.0 - self.decay)

    def apply(self) -> None:
        """Replace the parameters by their averages."""
        with torch.no_grad():
            for s, p in zip(self.shadow, self.params):
                p.copy_(s)


def _optimizer(params: list[nn.Parameter], settings: LocalSettings,
               ema: ParamEMA | None = None) -> torch.optim.Optimizer:
    if settings.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=settings.lr)
    elif settings.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum)
    else:
        raise ConfigError(f"optimizer must be adam or sgd, got {settings.optimizer!r}")
    if ema is not None:  # runs after every real step (Opacus' skipped micro-steps never reach it)
        opt.register_step_post_hook(lambda *_: ema.update())
    return opt


def train_local(
    net: nn.Module,
    data: ClientData,
    settings: LocalSettings,
    *,
    dp: Mechanism | None,
    steps: int | None = None,
    seed: int = 0,
    randomness: str | None = None,
) -> LocalResult:
    """Train ``net`` in place on ``data``: one round of ``dp`` (DP-SGD), or ``steps`` non-private steps.

    Only parameters with ``requires_grad`` change. With ``dp`` set, every step is a DP-SGD
    step of that mechanism and the round has ``dp.steps`` of them: the noisy releases the
    accountant charges (``steps``, if given too, must agree). ``randomness`` (see
    :mod:`privspk.training.randomness`) is ``dp.randomness`` for a DP round and this argument
    (default ``secret``) otherwise: ``secret`` draws the round's noise, Poisson batch membership,
    speaker sample and crops from generators seeded by the operating system's CSPRNG, one per
    use (nobody can replay them, ``seed`` only seeds the global torch generator); ``simulation``
    derives them from ``seed`` (a run repeats bit for bit; its epsilon assumes nothing). ``net``
    and the batches go to ``settings.device`` and ``net`` is handed back on the CPU, also when
    training fails.
    """
    steps, randomness = _round_steps(dp, steps, randomness)
    dev = torch_device(settings.device)
    net.to(dev)  # before the subspace wrapper, which makes its layers next to the net's
    try:
        model, sub = _forward_model(net, data, settings.public_basis)
    except BaseException:
        net.to("cpu")
        raise
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        if sub is not None:
            sub.release()
        net.to("cpu")
        raise ConfigError("the model has no trainable parameters (check the fine-tuning recipe)")
    torch.manual_seed(seed)
    model.to(dev)
    net.train()
    start = time.perf_counter()
    done = False
    try:
        averager = ParamEMA(params, decay=settings.ema) if settings.ema else None
        draws = RoundSeeds.draw(randomness, seed=seed)
        # the local training loop of each privacy unit (``None``: non-private)
        run = {None: _train_plain, "utterance": _train_dp_utterance, "speaker": _train_dp_speaker}[
            dp.unit if dp is not None else None]
        losses, n_ex = run(model, data, params, settings, dp=dp, steps=steps, draws=draws, ema=averager, dev=dev)
        if averager is not None:
            averager.apply()
        done = True
    finally:
        if sub is not None:  # W0 + A P^T into the embedding layer (after a failure: A dropped, W unfrozen)
            if done:
                sub.fold()
            else:
                sub.release()
        net.to("cpu")  # results leave on the CPU (staging, ledger digest, secure aggregation)
    seconds = time.perf_counter() - start
    net.eval()
    return LocalResult(steps=steps, loss=float(np.mean(losses)) if losses else float("nan"), seconds=seconds,
                       step_seconds=seconds / steps, examples=n_ex, dp=dp)


def _round_steps(dp: Mechanism | None, steps: int | None, randomness: str | None) -> tuple[int, str]:
    """The round's step count and randomness mode: the mechanism's for a DP round, else the arguments."""
    if dp is not None:
        if not isinstance(dp, Mechanism):
            raise ConfigError(f"dp must be a privspk.privacy.Mechanism, got {type(dp).__name__}")
        if steps is not None and steps != dp.steps:
            raise ConfigError(f"steps={steps} differs from the mechanism's {dp.steps} (the steps the ledger charges)")
        if randomness is not None and randomness != dp.randomness:
            raise ConfigError(f"randomness={randomness!r} differs from the mechanism's {dp.randomness!r}")
        return dp.steps, dp.randomness
    if steps is None or steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    return steps, "secret" if randomness is None else randomness


def _train_plain(net, data, params, settings: LocalSettings, *, dp: None, steps: int, draws: RoundSeeds,
                 ema: ParamEMA | None = None, dev: torch.device | None = None):
    batch_size = settings.batch_size
    opt = _optimizer(params, settings, ema=ema)
    ds = _dataset(data, crop_frames=settings.crop_frames, seed=draws.crops)
    rng = draws.numpy("sampling")
    losses, n_ex = [], 0
    order = np.array([], dtype=np.int64)
    epoch = 0
    for _ in range(steps):
        if order.size < min(batch_size, len(ds)):
            ds.set_epoch(epoch)
            epoch += 1
            order = np.concatenate([order, rng.permutation(len(ds))])
        idx, order = order[:batch_size], order[batch_size:]
        x, y = _batch(ds, idx, dev)
        loss = aam_softmax_loss(net(x), y, margin=settings.margin, scale=settings.scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        n_ex += len(idx)
    return losses, n_ex


def _batch(ds: CropDataset, idx, dev: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(ds[int(i)] for i in idx))
    return torch.stack(xs).to(dev), torch.tensor(ys, dtype=torch.long).to(dev)


def _train_dp_utterance(net, data, params, settings: LocalSettings, *, dp: Mechanism, steps: int, draws: RoundSeeds,
                        ema: ParamEMA | None = None, dev: torch.device | None = None):
    """Opacus PrivacyEngine, Poisson sampling, flat per-sample clipping, hooks mode.

    Opacus' Poisson sampler takes the loader's own generator (else torch's global one)."""
    from opacus import PrivacyEngine
    from opacus.utils.batch_memory_manager import BatchMemoryManager
    from torch.utils.data import DataLoader

    from privspk.models.heads import AAMSoftmaxLoss

    ds = _dataset(data, crop_frames=settings.crop_frames, seed=draws.crops)
    n_batches = round(1.0 / dp.sample_rate)
    loader = DataLoader(ds, batch_size=math.ceil(len(ds) / n_batches), generator=draws.torch("sampling"))
    opt = _optimizer(params, settings, ema=ema)
    engine = PrivacyEngine(accountant="rdp")
    gen = draws.torch("noise", device=dev or "cpu")  # Opacus draws the noise on the parameters' device
    # Fast gradient clipping ("ghost": per-sample norms without per-sample gradients) needs
    # non-empty batches; below an expected batch of 32 an empty Poisson batch is plausible,
    # so small batches use per-sample-gradient hooks, which handle it.
    mode = "ghost" if data.pooled is not None and dp.sample_rate * len(ds) >= GHOST_MIN_BATCH else "hooks"
    criterion = AAMSoftmaxLoss(margin=settings.margin, scale=settings.scale)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        made = engine.make_private(
            module=net, optimizer=opt, data_loader=loader, noise_multiplier=dp.noise_multiplier,
            max_grad_norm=dp.clip, poisson_sampling=True, noise_generator=gen, grad_sample_mode=mode,
            criterion=criterion,
        )
    if mode == "ghost":
        model_p, opt_p, criterion, loader_p = made
    else:
        model_p, opt_p, loader_p = made
    if getattr(loader_p.batch_sampler, "generator", None) is not loader.generator:  # pragma: no cover - Opacus API
        raise ConfigError("Opacus' Poisson sampler does not use the round's sampling generator")
    if abs(loader_p.sample_rate - dp.sample_rate) > 1e-9:
        raise ConfigError(f"Opacus sampled at q={loader_p.sample_rate}, the plan says {dp.sample_rate}")
    losses, n_ex, done, epoch = [], 0, 0, 0
    try:
        with BatchMemoryManager(data_loader=loader_p, max_physical_batch_size=settings.physical_batch,
                                optimizer=opt_p) as mem_loader:
            while done < steps:
                ds.set_epoch(epoch)
                epoch += 1
                for x, y in mem_loader:
                    x, y = x.to(dev), y.to(dev)
                    # An empty Poisson batch still costs a (pure-noise) step: it goes through the model
                    # too, so that Opacus sees empty per-sample gradients (a sum, as a mean of nothing is NaN).
                    if mode == "ghost":
                        loss = criterion(model_p(x), y)
                    else:
                        loss = aam_softmax_loss(model_p(x), y, margin=settings.margin, scale=settings.scale,
                                                reduction="mean" if x.shape[0] else "sum")
                    _backward(loss)
                    opt_p.step()
                    opt_p.zero_grad(set_to_none=True)
                    n_ex += int(x.shape[0])
                    if not opt_p._is_last_step_skipped:
                        if x.shape[0]:
                            losses.append(float(loss.detach()))
                        done += 1
                        if done >= steps:
                            break
    finally:
        model_p._close()
    return losses, n_ex


def _train_dp_speaker(net, data, params, settings: LocalSettings, *, dp: Mechanism, steps: int, draws: RoundSeeds,
                      ema: ParamEMA | None = None, dev: torch.device | None = None):
    """Speaker-level DP-SGD: Poisson over speakers, per-speaker clipping of summed gradients."""
    from opacus.grad_sample import GradSampleModule

    speaker_batch = settings.speaker_batch
    opt = _optimizer(params, settings, ema=ema)
    ds = _dataset(data, crop_frames=settings.crop_frames, seed=draws.crops)
    rng = draws.numpy("sampling")
    gen = draws.torch("noise", device=dev or "cpu")
    expected_speakers = dp.sample_rate * data.n_speakers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gsm = GradSampleModule(net, batch_first=True, loss_reduction="sum")
    losses, n_ex = [], 0
    try:
        for step in range(steps):
            ds.set_epoch(step)
            chosen = np.flatnonzero(rng.random(data.n_speakers) < dp.sample_rate)
            items, groups = [], []
            for g, spk in enumerate(chosen):
                pool = data.utterances_of(int(spk))
                pick = rng.choice(pool, size=speaker_batch, replace=len(pool) < speaker_batch)
                items += [int(i) for i in pick]
                groups += [g] * speaker_batch
            total = [torch.zeros_like(p) for p in params]
            step_loss = 0.0
            # physical batches hold whole speakers, so each speaker's gradient is summed before clipping
            per_chunk = max(1, settings.physical_batch // speaker_batch) * speaker_batch
            for lo in range(0, len(items), per_chunk):
                idx = items[lo : lo + per_chunk]
                grp = (torch.tensor(groups[lo : lo + per_chunk]) - groups[lo]).to(dev)
                x, y = _batch(ds, idx, dev)
                loss = aam_softmax_loss(gsm(x), y, margin=settings.margin, scale=settings.scale, reduction="sum")
                _backward(loss)
                gs = [p.grad_sample for p in params]
                summed, _ = clip_group_sum(gs, grp, n_groups=int(grp.max()) + 1, clip=dp.clip)
                for acc, s in zip(total, summed):
                    acc.add_(s)
                for p in params:
                    p.grad_sample = None
                    p.grad = None
                step_loss += float(loss.detach())
                n_ex += len(idx)
            for p, acc in zip(params, total):
                noise = torch.normal(0.0, dp.noise_multiplier * dp.clip, size=p.shape, generator=gen,
                                     device=p.device)
                p.grad = (acc + noise) / expected_speakers
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(step_loss / max(1, len(items)))
    finally:
        gsm._close()
    return losses, n_ex
