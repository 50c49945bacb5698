"""A population of simulated phones: one speaker (the owner) per device, generated on demand.

Each device's owner is a speaker of the built-in generator (:mod:`privspk.corpus.builtin`):
a voice variant x accent x pitch x range x rate x vocal-tract warp x tilt, drawn from
``np.random.default_rng([seed, TAG, device index])``, so device ``i`` is the same speaker in
every population that has it (a population of 100 is the first 100 of one of 1,000). Voice
variants that the built-in corpus reserves for its held-out speakers are never used, so the
held-out verification trials stay on voices no device owns.

Utterances are rendered with :func:`~privspk.corpus.builtin.render_utterance` and, in a device
``domain`` (``[crossdevice] domain``, e.g. ``"phone"``), passed through
:func:`~privspk.audio.channels.simulate_channel` seeded by (population seed, ``<device>-<utterance
index>``, domain), so a device's channel is the same in every run; then they are turned into
features once. The domain (and the channel version) is part of the population's key, so a clean
and a phone population live in different folders and never mix; each device's features are stored in one file under the population's folder
(written to a temporary name and renamed, so an interrupted build leaves no half file), and the
frozen public trunk's pooled statistics of each device are cached beside them, keyed by the
trunk's fingerprint. Nothing is held in memory for the population as a whole: a device's data is
read only when :class:`~privspk.crossdevice.device.Device` materialises it.

>>> import tempfile
>>> from privspk.features.config import FeatureConfig
>>> with tempfile.TemporaryDirectory() as d:
...     pop = DevicePopulation(d, n_devices=3, utts_per_device=2, seed=0, features=FeatureConfig(n_mels=40))
...     made = pop.build(workers=1, progress=False)
...     feats = pop.features("dev00001")
...     (made, pop.device_ids, len(feats), feats[0].shape[1], pop.build(workers=1, progress=False))
(3, ('dev00000', 'dev00001', 'dev00002'), 2, 40, 0)
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from privspk.corpus.builtin import (
    GENERATOR_VERSION,
    SpeakerProfile,
    draw_voice_settings,
    make_speaker_profiles,
    render_utterance,
)
from privspk.corpus.espeak import ENGLISH_ACCENTS, espeak_version, list_variants
from privspk.errors import ConfigError, CorpusError
from privspk.features.config import FeatureConfig

__all__ = ["DEVICE_PREFIX", "DevicePopulation", "builtin_heldout_variants", "device_profile", "device_utt"]

log = logging.getLogger(__name__)

#: Device ids are ``dev`` + five digits.
DEVICE_PREFIX = "dev"
_TAG_DEVICE = 0x44455643  # "DEVC": the stream of device owners, apart from the built-in corpus' streams
_FORMAT = 1


def _check_int(value: object, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise ConfigError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return int(value)


def device_id(index: int) -> str:
    """The id of device ``index``.

    >>> device_id(7)
    'dev00007'
    """
    return f"{DEVICE_PREFIX}{index:05d}"


def builtin_heldout_variants(*, n_speakers: int, seed: int) -> frozenset[str]:
    """Voice variants of the held-out speakers of the built-in corpus with these settings.

    >>> v = builtin_heldout_variants(n_speakers=200, seed=0)
    >>> 0 < len(v) < len(list_variants())
    True
    """
    return frozenset(p.variant for p in make_speaker_profiles(n_speakers, seed=seed) if p.heldout)


def device_profile(index: int, *, seed: int, exclude_variants: Iterable[str] = ()) -> SpeakerProfile:
    """The owner of device ``index``: a built-in-style speaker whose variant is not in ``exclude_variants``.

    Same parameter ranges as :func:`~privspk.corpus.builtin.make_speaker_profiles`; depends only
    on ``(index, seed, exclude_variants)``.

    >>> p = device_profile(3, seed=0, exclude_variants={"f1"})
    >>> (p.speaker, p.heldout, p.variant != "f1", p == device_profile(3, seed=0, exclude_variants={"f1"}))
    ('dev00003', False, True, True)
    """
    i = _check_int(index, "index", 0, 99_999)
    s = _check_int(seed, "seed", 0, 2**63 - 1)
    excluded = set(exclude_variants)
    variants = [v for v in list_variants() if v not in excluded]
    if not variants:
        raise ConfigError("every voice variant is excluded; no device owner can be drawn")
    rng = np.random.default_rng([s, _TAG_DEVICE, i])
    return SpeakerProfile(
        speaker=device_id(i),
        variant=variants[int(rng.integers(len(variants)))],
        accent=ENGLISH_ACCENTS[int(rng.integers(len(ENGLISH_ACCENTS)))],
        **draw_voice_settings(rng),
        heldout=False,
    )


def _save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def device_utt(device: str, index: int) -> str:
    """The id of utterance ``index`` of ``device`` (seeds its channel draw in a device domain).

    >>> device_utt("dev00007", 3)
    'dev00007-003'
    """
    return f"{device}-{index:03d}"


def _build_device(task: tuple[SpeakerProfile, int, int, dict, str, str | None]) -> str:
    """Worker: render a device's utterances (through its domain's channel), extract features, write ``<device>.npz``."""
    from privspk.features.extract import extract

    profile, n_utts, seed, feat_cfg, out, domain = task
    cfg = FeatureConfig(**feat_cfg)
    torch.set_num_threads(1)
    mats = []
    for j in range(n_utts):
        wav, _ = render_utterance(profile, index=j, seed=seed)
        if domain is not None:
            from privspk.audio.channels import simulate_channel

            wav = simulate_channel(wav, domain=domain, seed=seed, utt_id=device_utt(profile.speaker, j))
        mats.append(extract(wav, cfg).numpy().astype(np.float16))
    lengths = np.array([m.shape[0] for m in mats], dtype=np.int64)
    _save_npz_atomic(Path(out) / f"{profile.speaker}.npz", feats=np.concatenate(mats, axis=0), lengths=lengths)
    return profile.speaker


class DevicePopulation:
    """``n_devices`` simulated phones, each with ``utts_per_device`` utterances of its owner, cached on disk.

    Args:
        root: folder under which the population's own folder (named by :attr:`key`) is made.
        n_devices: devices, 3..99,999.
        utts_per_device: utterances per device, 2..1,000.
        seed: seed of the owners and their utterances.
        features: front end (the run's ``[features]``).
        exclude_variants: voice variants no owner may use (the built-in held-out speakers';
            see :func:`builtin_heldout_variants`).
        domain: channel domain of every device's audio (:data:`privspk.audio.channels.DOMAINS`),
            or ``None`` for clean wideband audio.
    """

    def __init__(self, root: str | os.PathLike[str], *, n_devices: int, utts_per_device: int, seed: int,
                 features: FeatureConfig, exclude_variants: Iterable[str] = (), domain: str | None = None) -> None:
        self.n_devices = _check_int(n_devices, "n_devices", 3, 99_999)
        self.utts_per_device = _check_int(utts_per_device, "utts_per_device", 2, 1000)
        self.seed = _check_int(seed, "seed", 0, 2**63 - 1)
        if not isinstance(features, FeatureConfig):
            raise ConfigError(f"features must be a FeatureConfig, got {type(features).__name__}")
        self.feature_config = features
        self.exclude_variants = frozenset(exclude_variants)
        from privspk.audio.channels import CHANNEL_VERSION, DOMAINS

        if domain is not None and domain not in DOMAINS:
            raise ConfigError(f"unknown device domain {domain!r}; known domains: {', '.join(DOMAINS)} (or None: clean)")
        self.domain = domain
        fields = {"format": _FORMAT, "generator": GENERATOR_VERSION, "espeak": espeak_version(),
                  "utts": self.utts_per_device, "seed": self.seed, "features": features.key(),
                  "exclude": sorted(self.exclude_variants)}
        if domain is not None:  # a clean population keeps the key it had before domains existed
            fields["domain"] = f"{domain}-v{CHANNEL_VERSION}"
        blob = json.dumps(fields, sort_keys=True).encode()
        #: names the population's folder; a device's file depends on this and its index only
        self.key = hashlib.sha256(blob).hexdigest()[:12]
        self.dir = Path(root) / f"pop-{self.key}"

    @property
    def device_ids(self) -> tuple[str, ...]:
        """Every device id, in index order."""
        return tuple(device_id(i) for i in range(self.n_devices))

    def profile(self, device: str) -> SpeakerProfile:
        """The generating parameters of ``device``'s owner."""
        return device_profile(self._index(device), seed=self.seed, exclude_variants=self.exclude_variants)

    def _index(self, device: str) -> int:
        if not (isinstance(device, str) and device.startswith(DEVICE_PREFIX) and device[3:].isdigit()
                and int(device[3:]) < self.n_devices):
            raise ConfigError(f"{device!r} is not a device of this population (dev00000..{device_id(self.n_devices - 1)})")
        return int(device[3:])

    def missing(self) -> list[str]:
        """Devices whose features are not on disk yet."""
        return [d for d in self.device_ids if not (self.dir / f"{d}.npz").is_file()]

    def build(self, *, workers: int = 2, progress: bool = True) -> int:
        """Generate the missing devices (rendering + features); return how many were made.

        ``workers > 1`` uses ``spawn`` processes (scripts need the ``__main__`` guard). Run it
        under ``nice``: 1,000 devices x 20 utterances take minutes on two cores.
        """
        w = _check_int(workers, "workers", 1, 256)
        todo = self.missing()
        if not todo:
            return 0
        self.dir.mkdir(parents=True, exist_ok=True)
        info = self.dir / "population.json"
        if not info.exists():
            info.write_text(json.dumps({"key": self.key, "utts_per_device": self.utts_per_device, "seed": self.seed,
                                        "features": self.feature_config.to_dict(),
                                        "exclude_variants": sorted(self.exclude_variants),
                                        "domain": self.domain}, indent=1) + "\n",
                            encoding="utf-8")
        feat = self.feature_config.to_dict()
        tasks = [(self.profile(d), self.utts_per_device, self.seed, feat, str(self.dir), self.domain) for d in todo]
        from tqdm import tqdm

        with tqdm(total=len(tasks), desc="devices", unit="dev", disable=not progress) as bar:
            if w == 1 or len(tasks) == 1:
                for t in tasks:
                    _build_device(t)
                    bar.update(1)
            else:
                with multiprocessing.get_context("spawn").Pool(min(w, len(tasks))) as pool:
                    for _ in pool.imap_unordered(_build_device, tasks):
                        bar.update(1)
        return len(tasks)

    def features(self, device: str) -> list[Tensor]:
        """``device``'s feature matrices ``(T, F)`` float32, one per utterance (CorpusError if not built)."""
        self._index(device)
        path = self.dir / f"{device}.npz"
        try:
            with np.load(path) as z:
                feats, lengths = z["feats"], z["lengths"]
        except (OSError, KeyError, ValueError) as exc:
            raise CorpusError(f"device {device}: no readable features at {path} ({exc}); run build() first") from exc
        cuts = np.cumsum(lengths)[:-1]
        return [torch.from_numpy(m.astype(np.float32)) for m in np.split(feats, cuts)]

    def pooled(self, device: str, encoder: nn.Module, *, crops: int, crop_frames: int,
               fingerprint: str | None = None) -> Tensor:
        """The frozen trunk's pooled statistics of ``crops`` random crops per utterance: ``(utts, crops, D)``.

        Cached on disk per (trunk fingerprint, crops, crop length); crop ``m`` of utterance ``i``
        is drawn from ``np.random.default_rng([seed, device index, i, m])``. ``fingerprint``:
        :func:`~privspk.training.trunk.trunk_fingerprint` of ``encoder`` when the caller has it
        (a round loop hashes the frozen trunk once, not once per device).
        """
        from privspk.features.crops import random_crop
        from privspk.training.trunk import pooled_utterances, trunk_fingerprint

        idx = self._index(device)
        crops = _check_int(crops, "crops", 1, 64)
        fp = fingerprint if fingerprint is not None else trunk_fingerprint(encoder)
        folder = self.dir / f"pooled-{fp[:16]}-c{crops}f{crop_frames}"
        path = folder / f"{device}.npy"
        if path.is_file():
            return torch.from_numpy(np.load(path))
        feats = self.features(device)
        items = []
        for i, f in enumerate(feats):
            for m in range(crops):
                rng = np.random.default_rng([self.seed, idx, i, m])
                items.append(((i, m), random_crop(f, n_frames=crop_frames, rng=rng)))
        pooled = pooled_utterances(encoder, items)
        out = torch.stack([torch.stack([pooled[(i, m)] for m in range(crops)]) for i in range(len(feats))])
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{device}.{os.getpid()}.npy"
        np.save(tmp, out.numpy())
        os.replace(tmp, path)
        return out
