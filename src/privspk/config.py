"""Typed run configuration, read from and written to TOML.

A :class:`RunConfig` gathers every setting of a run in sections that follow the
data flow: corpus -> split -> features -> model -> pretrain -> train -> privacy ->
secagg -> federation -> eval. Unknown keys and wrong types are refused with the
section and key named, all problems at once.

>>> cfg = RunConfig()
>>> cfg.privacy.epsilon, cfg.secagg.scheme, cfg.federation.n_clients
(8.0, 'plain', 3)
>>> text = cfg.to_toml()
>>> RunConfig.from_toml(text) == cfg
True
>>> RunConfig.from_dict({"privacy": {"epsilonn": 3}})
Traceback (most recent call last):
...
privspk.errors.ConfigError: invalid run config: [privacy] unknown key 'epsilonn' (known: accountant, client_clip, client_epsilon, client_level, client_noise, clip, delta, enabled, epsilon, randomness, unit)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from privspk.errors import ConfigError
from privspk.privacy.mechanism import RANDOMNESS_MODES, SAMPLE_UNITS


#: Client channel domains (equal to ``privspk.audio.channels.DOMAINS``; listed here without importing torch).
CORPUS_DOMAINS: tuple[str, ...] = ("callcentre", "phone", "car", "smarthome")


@dataclass(frozen=True)
class RunSection:
    """Where the run computes: ``device`` is ``cpu`` (default, the CI path), ``cuda`` or ``auto``.

    Public pretraining, local DP-SGD and embedding extraction run on it; ``auto`` takes CUDA
    when torch sees a device, ``cuda`` refuses to start without one (checked when the run
    starts, see :func:`privspk.device.resolve_device`).

    >>> RunSection(device="gpu").check()
    ["device must be auto|cpu|cuda, got 'gpu'"]
    """

    device: str = "cpu"

    def check(self) -> list[str]:
        from privspk.device import DEVICES

        if self.device not in DEVICES:
            return [f"device must be {'|'.join(DEVICES)}, got {self.device!r}"]
        return []


@dataclass(frozen=True)
class CorpusSection:
    """Where the audio comes from.

    ``path`` empty means the built-in synthesised corpus (built under ``data_dir``).
    ``domains``: channel domains dealt to the clients round-robin (see
    :mod:`privspk.corpus.domains`); empty keeps every client clean wideband.
    """

    path: str = ""
    format: str = "auto"
    on_error: str = "raise"
    n_speakers: int = 200
    utts_per_speaker: int = 40
    seed: int = 0
    domains: tuple[str, ...] = ()

    def check(self) -> list[str]:
        errs = []
        if self.format not in ("auto", "folder", "librispeech", "voxceleb", "kaldi"):
            errs.append(f"format must be auto|folder|librispeech|voxceleb|kaldi, got {self.format!r}")
        if self.on_error not in ("raise", "skip"):
            errs.append(f"on_error must be raise|skip, got {self.on_error!r}")
        if self.n_speakers < 8:
            errs.append(f"n_speakers must be >= 8, got {self.n_speakers}")
        if self.utts_per_speaker < 4:
            errs.append(f"utts_per_speaker must be >= 4, got {self.utts_per_speaker}")
        bad = [d for d in self.domains if d not in CORPUS_DOMAINS]
        if bad:
            errs.append(f"domains: unknown {', '.join(map(repr, bad))}; known: {', '.join(CORPUS_DOMAINS)}")
        return errs


@dataclass(frozen=True)
class SplitSection:
    """How speakers are divided: public (pretraining), clients, held-out (trials)."""

    public_fraction: float = 1 / 3
    heldout: int = 40
    skew: float = 0.0
    seed: int = 0

    def check(self) -> list[str]:
        errs = []
        if not 0.0 <= self.public_fraction < 1.0:
            errs.append(f"public_fraction must be in [0, 1), got {self.public_fraction}")
        if self.heldout < 2:
            errs.append(f"heldout must be >= 2 speakers, got {self.heldout}")
        if self.skew < 0:
            errs.append(f"skew must be >= 0, got {self.skew}")
        return errs


@dataclass(frozen=True)
class FeaturesSection:
    """Front end (see :class:`privspk.features.config.FeatureConfig`)."""

    kind: str = "fbank"
    n_mels: int = 40
    n_mfcc: int = 30
    cmn: bool = True

    def check(self) -> list[str]:
        errs = []
        if self.kind not in ("fbank", "mfcc"):
            errs.append(f"kind must be fbank|mfcc, got {self.kind!r}")
        if not 10 <= self.n_mels <= 128:
            errs.append(f"n_mels must be in [10, 128], got {self.n_mels}")
        return errs

    def feature_config(self):  # noqa: ANN201 - lazy import keeps config import-light
        """The :class:`FeatureConfig` these settings describe."""
        from privspk.features.config import FeatureConfig

        return FeatureConfig(kind=self.kind, n_mels=self.n_mels, n_mfcc=self.n_mfcc, cmn=self.cmn)


@dataclass(frozen=True)
class ModelSection:
    """Encoder preset and AAM-softmax head settings."""

    encoder: str = "ecapa_gn_c128"
    margin: float = 0.2
    scale: float = 30.0

    def check(self) -> list[str]:
        errs = []
        if not 0 <= self.margin < 1:
            errs.append(f"margin must be in [0, 1), got {self.margin}")
        if self.scale <= 0:
            errs.append(f"scale must be > 0, got {self.scale}")
        return errs


@dataclass(frozen=True)
class PretrainSection:
    """Non-private pretraining on the public speakers (cached by its settings).

    Its own ``seed`` keeps the public encoder one fixed artefact while the run's seed
    varies the federated training (as a released public model would be).
    """

    enabled: bool = True
    steps: int = 600
    batch_size: int = 64
    lr: float = 2e-3
    crop_frames: int = 200
    seed: int = 0

    def check(self) -> list[str]:
        errs = []
        if self.steps < 0 or self.batch_size < 1 or self.lr <= 0 or self.crop_frames < 20:
            errs.append("steps >= 0, batch_size >= 1, lr > 0 and crop_frames >= 20 are required")
        return errs


# privspk.models.finetune.RECIPES, spelled out so that reading a config (and building the CLI's
# parser) does not import torch; tests/test_config.py checks the two agree
TRAIN_RECIPES: tuple[str, ...] = ("full", "last", "head", "adapters", "embedding", "embedding_norm")

# what DP-SGD training protects, and where its randomness comes from: the privacy package's lists
# (it imports neither torch nor Opacus until an epsilon is computed)
TRAIN_UNITS: tuple[str, ...] = SAMPLE_UNITS
# the names registered in privspk.secagg.registry, spelled out so that reading a config does not
# import the schemes; tests/test_config.py checks they agree
SECAGG_SCHEMES: tuple[str, ...] = ("plain", "mask", "ckks", "bfv")


@dataclass(frozen=True)
class TrainSection:
    """Local training on each client, per round.

    ``recipe`` picks which encoder parameters train (``full``, ``last``, ``head``,
    ``adapters``, ``embedding``, ``embedding_norm``); the rest stay frozen and are not sent. ``batch_size`` is the
    *expected* batch under Poisson sampling; ``physical_batch`` bounds memory. With the
    ``embedding`` recipe and ``trunk_crops > 0`` each client computes the frozen trunk's
    pooled statistics of ``trunk_crops`` random crops per utterance once and trains on them.
    ``head = "fixed"`` keeps each client's speaker centres at their random initialisation
    (nearly orthogonal in the embedding space): no noise is spent on them and the encoder
    learns to map each speaker to its centre from the first step. ``ema`` > 0 sends the
    exponential moving average of each round's local iterates (free post-processing of
    the DP-SGD outputs, which averages much of their noise away) instead of the last one.
    ``public_subspace`` = k > 0 (with the ``embedding`` recipe and the trunk cache) trains the
    embedding layer's linear map only in the top-k principal subspace of its input on the
    public speakers (``W0 + A P^T``, :mod:`privspk.training.subspace`): DP noise on k instead of
    d input directions, the same epsilon; 0 (the default) trains the whole map. ``public_subspace_out``
    = k_out > 0 confines its output side too (``W0 + Q A P^T``, Q from the public pre-norm embeddings).
    """

    # defaults: the best recipe of benchmarks/dp_recipes.py's sweep (embedding layer on the
    # frozen public trunk; lr from the sweep's grid at epsilon 8)
    recipe: str = "embedding"
    local_steps: int = 50
    batch_size: int = 256
    physical_batch: int = 1024
    lr: float = 1e-2
    optimizer: str = "adam"
    momentum: float = 0.9
    crop_frames: int = 200
    speaker_batch: int = 8
    trunk_crops: int = 4
    head: str = "trained"
    ema: float = 0.0
    public_subspace: int = 0
    public_subspace_out: int = 0

    def check(self) -> list[str]:
        errs = []
        if type(self.public_subspace) is not int or self.public_subspace < 0:
            errs.append(f"public_subspace must be an int >= 0 (0 = off), got {self.public_subspace!r}")
        if type(self.public_subspace_out) is not int or self.public_subspace_out < 0:
            errs.append(f"public_subspace_out must be an int >= 0 (0 = all outputs), got {self.public_subspace_out!r}")
        elif self.public_subspace_out and not self.public_subspace:
            errs.append("public_subspace_out needs public_subspace > 0 (it confines the same update's output side)")
        if type(self.public_subspace) is int and self.public_subspace and (self.recipe != "embedding"
                                                                          or self.trunk_crops < 1):
            errs.append(f"public_subspace needs recipe = \"embedding\" and trunk_crops >= 1 (it confines the "
                        f"embedding layer's linear map on cached pooled statistics), got recipe {self.recipe!r}, "
                        f"trunk_crops {self.trunk_crops}")
        if not 0.0 <= self.ema < 1.0:
            errs.append(f"ema must be in [0, 1) (0 = off), got {self.ema}")
        if self.head not in ("trained", "fixed"):
            errs.append(f"head must be trained|fixed, got {self.head!r}")
        if self.recipe not in TRAIN_RECIPES:
            errs.append(f"recipe must be {'|'.join(TRAIN_RECIPES)}, got {self.recipe!r}")
        if self.trunk_crops < 0:
            errs.append(f"trunk_crops must be >= 0 (0 = no frozen-trunk cache), got {self.trunk_crops}")
        if self.optimizer not in ("adam", "sgd"):
            errs.append(f"optimizer must be adam|sgd, got {self.optimizer!r}")
        if self.local_steps < 1 or self.batch_size < 1 or self.physical_batch < 1:
            errs.append("local_steps, batch_size and physical_batch must be >= 1")
        if self.lr <= 0:
            errs.append(f"lr must be > 0, got {self.lr}")
        if self.crop_frames < 20:
            errs.append(f"crop_frames must be >= 20, got {self.crop_frames}")
        if self.speaker_batch < 1:
            errs.append(f"speaker_batch (utterances per sampled speaker) must be >= 1, got {self.speaker_batch}")
        return errs


@dataclass(frozen=True)
class PrivacySection:
    """DP-SGD settings; ``epsilon``/``delta`` is each client's budget for the whole run.

    ``unit`` is what the guarantee protects: one ``utterance`` or one ``speaker``'s
    whole data on a client. ``client_level`` adds distributed DP for whole clients
    (needs the ``mask`` scheme): each client clips its update to ``client_clip`` in L2
    and adds its share of integer ``client_noise`` before masking, so the opened sum
    carries central noise for a ``client_epsilon`` (at ``delta``) per client.
    ``randomness`` says where every random choice the accountant assumes hidden comes
    from (DP noise, Poisson batch membership, speaker sample, crops): ``secret`` (the
    default, a deployment) seeds one generator per use from the operating system's CSPRNG
    each round on the client, so nobody can replay them; ``simulation`` derives them from
    the run's seed (a run repeats bit for bit, and anyone who knows the config can replay
    the noise and the batches: the epsilon then assumes nothing and is printed with
    "simulation randomness: ε assumes nothing, not valid for a deployment"). The former
    ``noise_seed`` key is refused (it hid the noise only, never the sampling).
    """

    enabled: bool = True
    epsilon: float = 8.0
    delta: float = 1e-5
    unit: str = "utterance"
    clip: float = 0.3  # chosen by benchmarks/dp_recipes.py --sweep (0.3 vs 1.0 at lr 1e-2: 6.91 vs 6.94 % EER)
    accountant: str = "rdp"
    client_level: bool = False
    client_epsilon: float = 8.0
    client_clip: float = 0.05
    client_noise: str = "dgauss"
    randomness: str = "secret"

    def check(self) -> list[str]:
        errs = []
        if self.randomness not in RANDOMNESS_MODES:
            errs.append(f"randomness must be {'|'.join(RANDOMNESS_MODES)}, got {self.randomness!r}")
        if self.client_level and not self.enabled:
            errs.append("client_level DP needs enabled = true (sample-level DP-SGD is recorded beside it)")
        if not (math.isfinite(self.client_epsilon) and self.client_epsilon > 0):
            errs.append(f"client_epsilon must be a positive finite number, got {self.client_epsilon}")
        if self.client_clip <= 0:
            errs.append(f"client_clip must be > 0, got {self.client_clip}")
        if self.client_noise not in ("dgauss", "skellam"):
            errs.append(f"client_noise must be dgauss|skellam, got {self.client_noise!r}")
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            errs.append(f"epsilon must be a positive finite number, got {self.epsilon}")
        if not 0 < self.delta < 1:
            errs.append(f"delta must be in (0, 1), got {self.delta}")
        if self.unit not in TRAIN_UNITS:
            errs.append(f"unit must be {'|'.join(TRAIN_UNITS)}, got {self.unit!r}")
        if self.clip <= 0:
            errs.append(f"clip must be > 0, got {self.clip}")
        if self.accountant not in ("rdp", "prv"):
            errs.append(f"accountant must be rdp|prv, got {self.accountant!r}")
        return errs


HE_TRUST = "no-client-colludes-with-server"
"""``[secagg.options] he_trust`` value by which an operator accepts the HE schemes' trust assumption
(the same string as ``privspk.secagg.he_params.HE_TRUST``; kept here so the config check imports no secagg)."""


@dataclass(frozen=True)
class SecAggSection:
    """Aggregation scheme by name, with its own options (see each scheme's ``Config``).

    ``colluders`` is how many clients may collude with the server without letting it
    open any one honest update (``mask``: the Shamir threshold is raised to
    ``2t - n > colluders`` and smaller rounds are refused; default 1, so one client
    run by the server operator is covered). Client-level DP noise accounting does not
    count these clients' noise shares.
    """

    scheme: str = "plain"
    options: dict = field(default_factory=dict)
    colluders: int = 1

    def check(self) -> list[str]:
        errs = []
        if self.scheme not in SECAGG_SCHEMES:
            errs.append(f"scheme must be {'|'.join(SECAGG_SCHEMES)}, got {self.scheme!r}")
        if self.scheme in ("ckks", "bfv") and isinstance(self.options, dict) \
                and self.options.get("he_trust") != HE_TRUST:
            errs.append(f"scheme {self.scheme!r} refuses to start unless the operator accepts that no client colludes "
                        "with the server: one colluding client can make the key holder release the round's secret "
                        "key, hence every update of that round (threat_model/README.md, A2). Use scheme = \"mask\", "
                        f"or set he_trust = \"{HE_TRUST}\" in [secagg.options]")
        if type(self.colluders) is not int or self.colluders < 0:
            errs.append(f"colluders must be an int >= 0, got {self.colluders!r}")
        if "colluders" in self.options:
            errs.append("set the number of colluders as [secagg] colluders, not in [secagg.options]")
        return errs


@dataclass(frozen=True)
class FederationSection:
    """Clients, rounds and the range updates are clipped to before quantisation.

    ``server_optimizer`` (cross-silo): ``"none"`` adds the sample-weighted mean update to the
    global model (FedAvg); ``"momentum"`` (FedAvgM) or ``"adam"`` treat the (noisy) mean update
    as a pseudo-gradient step with ``server_lr`` (and ``server_momentum``). Post-processing of
    the aggregate: it changes no epsilon.
    """

    n_clients: int = 3
    rounds: int = 5
    update_clip: float = 0.5
    mode: str = "cross-silo"
    server_optimizer: str = "none"
    server_lr: float = 1.0
    server_momentum: float = 0.9

    def check(self) -> list[str]:
        errs = []
        if self.server_optimizer not in ("none", "momentum", "adam"):
            errs.append(f"server_optimizer must be none|momentum|adam, got {self.server_optimizer!r}")
        if not (math.isfinite(self.server_lr) and self.server_lr > 0) or not 0.0 <= self.server_momentum < 1.0:
            errs.append(f"server_lr must be > 0 and server_momentum in [0, 1), got {self.server_lr}, "
                        f"{self.server_momentum}")
        if self.mode not in FEDERATION_MODES:
            errs.append(f"mode must be {'|'.join(FEDERATION_MODES)}, got {self.mode!r}")
        if self.n_clients < 1 or self.rounds < 1:
            errs.append("n_clients and rounds must be >= 1")
        if self.update_clip <= 0:
            errs.append(f"update_clip must be > 0, got {self.update_clip}")
        return errs


# federation modes: "cross-silo" (a few clients, every one in every round; the default) and
# "cross-device" (a population of one-speaker phones, a sample per round; see [crossdevice])
FEDERATION_MODES: tuple[str, ...] = ("cross-silo", "cross-device")
CROSSDEVICE_MECHANISMS: tuple[str, ...] = ("dp-fedavg", "dp-ftrl")


@dataclass(frozen=True)
class CrossDeviceSection:
    """The cross-device mode (``[federation] mode = "cross-device"``; :mod:`privspk.crossdevice`).

    ``population`` simulated phones, one speaker each with ``utts_per_device`` utterances
    (generated on demand, cached under ``data_dir``). Each round samples ``devices_per_round``
    of them: ``sampling = "fixed"`` takes exactly that many (without replacement),
    ``"poisson"`` takes each device with probability ``q = devices_per_round / population``.
    ``device_epsilon`` is each device's user-level budget (at ``[privacy] delta``) for the run
    when ``[privacy] enabled``; a device that would exceed it sits out. ``mechanism``:
    ``"dp-fedavg"`` (epsilon amplified by the hidden random sample) or ``"dp-ftrl"`` (tree
    aggregation, no amplification assumed). Each device clips its whole update to
    ``device_clip``; ``dropout`` of the sampled devices drop out after masking (simulation).
    Local training: ``local_steps`` full-batch steps at ``local_lr`` with ``objective``
    ``"codewords"`` (secret per-device codewords, length ``codeword_length``) or
    ``"centroid"`` (positives only, the baseline that collapses). The server applies
    ``server_optimizer`` (``"momentum"`` or ``"adam"``) with ``server_lr`` to the noisy mean.
    ``trainable``: what of the embedding layer the devices train (``"embedding"``: all of it;
    ``"linear"``: its linear map; ``"norms"``: the LayerNorm gains/biases and the linear bias,
    ~1,300 values, so the DP noise, whose norm grows with the square root of the dimension,
    is far smaller). ``max_participations``: DP-FTRL's accounted rounds per device (a device sits out after
    that many). ``dropout_allowance``: the share of sampled devices a round may lose and still
    carry its counted noise (the server aborts a round with more dropouts). ``domain``: the
    channel every device's audio goes through (one of the client domains of
    :mod:`privspk.corpus.domains`, e.g. ``"phone"``: a handset microphone in ordinary rooms),
    drawn per device and utterance; the held-out speakers are then also evaluated in that
    domain. ``"none"`` (the default) keeps the devices' audio clean wideband.
    """

    population: int = 1000
    utts_per_device: int = 16
    population_seed: int = 0
    devices_per_round: int = 100
    sampling: str = "fixed"
    device_epsilon: float = 8.0
    mechanism: str = "dp-fedavg"
    dropout: float = 0.1
    device_clip: float = 0.5
    local_steps: int = 5
    local_lr: float = 0.5
    objective: str = "codewords"
    codeword_length: int = 1024
    server_optimizer: str = "momentum"
    server_lr: float = 1.0
    server_momentum: float = 0.9
    trunk_crops: int = 2
    trainable: str = "embedding"
    max_participations: int = 2
    dropout_allowance: float = 0.2
    domain: str = "none"

    def check(self) -> list[str]:
        errs = []
        if self.domain != "none" and self.domain not in CORPUS_DOMAINS:
            errs.append(f"domain must be none or one of {', '.join(CORPUS_DOMAINS)}, got {self.domain!r}")
        if self.max_participations < 1:
            errs.append(f"max_participations must be >= 1, got {self.max_participations}")
        if not self.dropout <= self.dropout_allowance < 1.0:
            errs.append(f"dropout_allowance must be in [dropout = {self.dropout}, 1), got {self.dropout_allowance}")
        if not 3 <= self.population <= 99_999:
            errs.append(f"population must be in [3, 99999], got {self.population}")
        if not 2 <= self.utts_per_device <= 1000:
            errs.append(f"utts_per_device must be in [2, 1000], got {self.utts_per_device}")
        if self.population_seed < 0:
            errs.append(f"population_seed must be >= 0, got {self.population_seed}")
        if not 2 <= self.devices_per_round <= self.population:
            errs.append(f"devices_per_round must be in [2, population = {self.population}], got "
                        f"{self.devices_per_round}")
        if self.sampling not in ("fixed", "poisson"):
            errs.append(f"sampling must be fixed|poisson, got {self.sampling!r}")
        if not self.device_epsilon > 0:
            errs.append(f"device_epsilon must be > 0, got {self.device_epsilon}")
        if self.mechanism not in CROSSDEVICE_MECHANISMS:
            errs.append(f"mechanism must be {'|'.join(CROSSDEVICE_MECHANISMS)}, got {self.mechanism!r}")
        if not 0.0 <= self.dropout < 0.5:
            errs.append(f"dropout must be in [0, 0.5), got {self.dropout}: at half or more no strict-majority "
                        "SecAgg+ threshold can be met")
        if not (math.isfinite(self.device_clip) and self.device_clip > 0):
            errs.append(f"device_clip must be a positive finite number, got {self.device_clip}")
        if self.local_steps < 1 or not self.local_lr > 0:
            errs.append(f"local_steps must be >= 1 and local_lr > 0, got {self.local_steps}, {self.local_lr}")
        if self.objective not in ("codewords", "centroid"):
            errs.append(f"objective must be codewords|centroid, got {self.objective!r}")
        if self.codeword_length < 4 or self.codeword_length & (self.codeword_length - 1):
            errs.append(f"codeword_length must be a power of two >= 4, got {self.codeword_length}")
        if self.server_optimizer not in ("momentum", "adam"):
            errs.append(f"server_optimizer must be momentum|adam, got {self.server_optimizer!r}")
        if not self.server_lr > 0 or not 0.0 <= self.server_momentum < 1.0:
            errs.append(f"server_lr must be > 0 and server_momentum in [0, 1), got {self.server_lr}, "
                        f"{self.server_momentum}")
        if self.trunk_crops < 1:
            errs.append(f"trunk_crops must be >= 1, got {self.trunk_crops}")
        if self.trainable not in ("embedding", "linear", "norms"):
            errs.append(f"trainable must be embedding|linear|norms, got {self.trainable!r}")
        return errs


@dataclass(frozen=True)
class EvalSection:
    """Verification trials on held-out speakers."""

    target_per_utt: int = 3
    nontarget_per_utt: int = 12
    enroll_per_speaker: int = 3
    max_frames: int = 600

    def check(self) -> list[str]:
        if min(self.target_per_utt, self.nontarget_per_utt, self.enroll_per_speaker) < 1:
            return ["target_per_utt, nontarget_per_utt and enroll_per_speaker must be >= 1"]
        return []


_SECTIONS = {
    "run": RunSection,
    "corpus": CorpusSection,
    "split": SplitSection,
    "features": FeaturesSection,
    "model": ModelSection,
    "pretrain": PretrainSection,
    "train": TrainSection,
    "privacy": PrivacySection,
    "secagg": SecAggSection,
    "federation": FederationSection,
    "eval": EvalSection,
    "crossdevice": CrossDeviceSection,
}


@dataclass(frozen=True)
class RunConfig:
    """Every setting of a run. ``name`` names the run directory under ``out_dir``."""

    name: str = "run"
    seed: int = 0
    threads: int = 2
    data_dir: str = "data"
    out_dir: str = "runs"
    run: RunSection = field(default_factory=RunSection)
    corpus: CorpusSection = field(default_factory=CorpusSection)
    split: SplitSection = field(default_factory=SplitSection)
    features: FeaturesSection = field(default_factory=FeaturesSection)
    model: ModelSection = field(default_factory=ModelSection)
    pretrain: PretrainSection = field(default_factory=PretrainSection)
    train: TrainSection = field(default_factory=TrainSection)
    privacy: PrivacySection = field(default_factory=PrivacySection)
    secagg: SecAggSection = field(default_factory=SecAggSection)
    federation: FederationSection = field(default_factory=FederationSection)
    eval: EvalSection = field(default_factory=EvalSection)
    crossdevice: CrossDeviceSection = field(default_factory=CrossDeviceSection)

    def __post_init__(self) -> None:
        errs = []
        for name in _SECTIONS:
            errs += [f"[{name}] {e}" for e in getattr(self, name).check()]
        if self.threads < 1:
            errs.append(f"threads must be >= 1, got {self.threads}")
        if errs:
            raise ConfigError("invalid run config: " + "; ".join(errs))

    # ---- (de)serialisation -------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (TOML/JSON-able)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Build from a nested dict, refusing unknown keys and wrong types (all reported at once)."""
        if not isinstance(data, dict):
            raise ConfigError(f"run config must be a table, got {type(data).__name__}")
        errs: list[str] = []
        top = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key not in top:
                errs.append(f"unknown top-level key {key!r} (known: {', '.join(sorted(top))})")
            elif key in _SECTIONS:
                section, serrs = _build_section(key, _SECTIONS[key], value)
                errs += serrs
                kwargs[key] = section
            else:
                v, err = _coerce(value, _resolve(cls, key))
                if err:
                    errs.append(f"{key}: {err}")
                kwargs[key] = v
        if errs:  # add the range problems of the values that were well typed: every problem at once
            for key, section in kwargs.items():
                if key in _SECTIONS:
                    errs += [f"[{key}] {e}" for e in section.check()]
            threads = kwargs.get("threads")
            if type(threads) is int and threads < 1:
                errs.append(f"threads must be >= 1, got {threads}")
            raise ConfigError("invalid run config: " + "; ".join(errs))
        return cls(**kwargs)

    def to_toml(self) -> str:
        """TOML text that :meth:`from_toml` reads back to an equal config."""
        import tomli_w

        return tomli_w.dumps(self.to_dict())

    @classmethod
    def from_toml(cls, text: str) -> RunConfig:
        """Parse TOML text."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"run config is not valid TOML: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        """Read a TOML file."""
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        return cls.from_toml(p.read_text(encoding="utf-8"))

    @classmethod
    def preset(cls, name: str) -> RunConfig:
        """A configuration shipped with the package (``demo``).

        >>> RunConfig.preset("demo").name
        'demo'
        """
        from importlib import resources

        res = resources.files("privspk") / "presets" / f"{name}.toml"
        if not res.is_file():
            known = sorted(p.name[:-5] for p in (resources.files("privspk") / "presets").iterdir()
                           if p.name.endswith(".toml"))
            raise ConfigError(f"no preset named {name!r}; known: {known}")
        return cls.from_toml(res.read_text(encoding="utf-8"))

    def replace(self, **sections: Any) -> RunConfig:
        """Copy with whole sections or top-level values replaced."""
        return dataclasses.replace(self, **sections)

    def fingerprint(self, *sections: str) -> str:
        """Short stable hash of the named sections (all when none named).

        >>> RunConfig().fingerprint("privacy") == RunConfig(name="other").fingerprint("privacy")
        True
        """
        d = self.to_dict()
        if not d["corpus"]["domains"]:  # added later: left out when unset, so earlier fingerprints (caches) stay valid
            del d["corpus"]["domains"]
        for key in ("public_subspace", "public_subspace_out"):  # likewise
            if not d["train"][key]:
                del d["train"][key]
        if d["crossdevice"]["domain"] == "none":  # likewise
            del d["crossdevice"]["domain"]
        keys = sections or tuple(sorted(d))
        blob = json.dumps({k: d[k] for k in keys}, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _resolve(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


_RETIRED = {
    ("privacy", "noise_seed"): (
        'noise_seed was replaced by randomness = "secret" | "simulation": "secret" (the default) now hides the '
        'noise and also the batch sampling, speaker sample and crops; "simulation" is the old "run" (reproducible, '
        "epsilon not valid for a deployment). Remove noise_seed and set randomness if needed"
    ),
}


def _build_section(name: str, cls: type, value: Any) -> tuple[Any, list[str]]:
    if not isinstance(value, dict):
        return cls(), [f"[{name}] must be a table, got {type(value).__name__}"]
    known = {f.name for f in dataclasses.fields(cls)}
    errs = [
        f"[{name}] {_RETIRED[name, k]}" if (name, k) in _RETIRED
        else f"[{name}] unknown key {k!r} (known: {', '.join(sorted(known))})" for k in value if k not in known
    ]
    kwargs = {}
    for k, v in value.items():
        if k in known:
            coerced, err = _coerce(v, _resolve(cls, k))
            if err:
                errs.append(f"[{name}] {k}: {err}")
            else:
                kwargs[k] = coerced
    try:  # built from the well-typed values even when others are wrong, so their ranges get checked too
        return cls(**kwargs), errs
    except ConfigError as exc:
        return cls(), errs + [f"[{name}] {exc}"]


def _coerce(value: Any, typ: Any) -> tuple[Any, str | None]:
    """Exact-type check with the one widening TOML needs (int -> float)."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(typ):
            v, err = _coerce(value, arm)
            if err is None:
                return v, None
        return value, f"expected {typ}, got {type(value).__name__} {value!r}"
    if typ is float:
        if type(value) in (int, float):
            return float(value), None
        return value, f"expected a number, got {type(value).__name__} {value!r}"
    if typ in (int, str, bool):
        if type(value) is typ:
            return value, None
        return value, f"expected {typ.__name__}, got {type(value).__name__} {value!r}"
    if typ is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value), None
        return value, f"expected a table, got {type(value).__name__}"
    if origin is tuple and typing.get_args(typ)[1:] == (Ellipsis,):
        if not isinstance(value, (list, tuple)):
            return value, f"expected a list, got {type(value).__name__} {value!r}"
        items = [_coerce(v, typing.get_args(typ)[0]) for v in value]
        errs = [e for _, e in items if e]
        return (tuple(v for v, _ in items), None) if not errs else (value, f"list item: {errs[0]}")
    if typ is type(None):
        return (None, None) if value is None else (value, "expected nothing")
    return value, None
