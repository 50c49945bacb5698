"""Enroll speakers and verify claims with a trained encoder: the library's end-user object.

A speaker's template is the re-normalised mean of the unit-length embeddings
of its enrollment recordings; a claim is accepted when the cosine score of
the test recording against the template reaches the threshold. Templates,
threshold and feature settings are saved as ``verifier.json`` +
``templates.npz`` in a folder; the encoder is saved (and passed back) separately.

>>> import math, torch
>>> from privspk.features.config import FeatureConfig
>>> class MeanLinear(torch.nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.embed_dim, self.lin = 8, torch.nn.Linear(40, 8)
...     def forward(self, x):
...         return self.lin(x.mean(dim=1))
>>> _ = torch.manual_seed(0)
>>> v = Verifier(MeanLinear(), FeatureConfig(n_mels=40, cmn=False), threshold=0.9)
>>> tone = lambda hz: torch.sin(2 * math.pi * hz * torch.arange(8000) / 16000) * 0.2
>>> v.enroll("alice", [tone(300), tone(310)])
>>> v.speakers
('alice',)
>>> score, accepted = v.verify("alice", tone(305))
>>> accepted
True
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch

from privspk.errors import CheckpointError, ConfigError
from privspk.evaluation.embed import embed_features, l2_normalise
from privspk.evaluation.metrics import threshold_at_eer, threshold_at_far

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from privspk.features.config import FeatureConfig

__all__ = ["Verifier", "WavInput"]

log = logging.getLogger(__name__)

WavInput = Union[str, "os.PathLike[str]", torch.Tensor]
"""An audio file path, or a 1-D float waveform at the feature config's sample rate."""

_FORMAT = "privspk-verifier"
_VERSION = 1
_JSON_NAME = "verifier.json"
_NPZ_NAME = "templates.npz"
_RULES = ("eer", "far")


def _check_threshold(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not np.isfinite(value):
        raise ConfigError(f"threshold must be a finite number (a cosine score), got {value!r}")
    return float(value)


def _write_atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        write(handle)
    os.replace(tmp, path)


class Verifier:
    """Speaker verification with enrolled templates and one decision threshold.

    Args:
        encoder: maps features ``(B, T, F)`` to embeddings ``(B, D)``; already on ``device``.
        feature_cfg: the :class:`~privspk.features.config.FeatureConfig` the encoder was trained on.
        threshold: accept a claim when its cosine score is ``>=`` this.
        device: where features go for the encoder.

    Unknown speakers raise :class:`~privspk.errors.ConfigError` listing the
    enrolled names; unreadable audio files raise :class:`~privspk.errors.AudioError`.

    >>> import torch
    >>> from privspk.features.config import FeatureConfig
    >>> # A stand-in encoder: the mean of each of the 40 bins over time, (B, T, 40) -> (B, 40).
    >>> enc = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d((1, 40)), torch.nn.Flatten())
    >>> v = Verifier(enc, FeatureConfig(n_mels=40, cmn=False), threshold=0.5)
    >>> v.enroll("bob", [torch.randn(4000) * 0.1])
    >>> v.verify("bob", torch.randn(4000) * 0.1)[0] > 0.9
    True
    """

    def __init__(
        self,
        encoder: torch.nn.Module,
        feature_cfg: FeatureConfig,
        *,
        threshold: float,
        device: str | torch.device = "cpu",
    ) -> None:
        from privspk.features.config import FeatureConfig

        if not isinstance(encoder, torch.nn.Module):
            raise ConfigError(f"encoder must be a torch.nn.Module, got {type(encoder).__name__}")
        if not isinstance(feature_cfg, FeatureConfig):
            raise ConfigError(f"feature_cfg must be a FeatureConfig, got {type(feature_cfg).__name__}")
        self.encoder = encoder
        self.feature_cfg = feature_cfg
        self.device = torch.device(device)
        self._threshold = _check_threshold(threshold)
        self._templates: dict[str, np.ndarray] = {}

    @property
    def threshold(self) -> float:
        """The decision threshold on cosine scores (settable; must be finite).

        >>> import torch
        >>> from privspk.features.config import FeatureConfig
        >>> v = Verifier(torch.nn.Identity(), FeatureConfig(n_mels=40, cmn=False), threshold=0.5)
        >>> v.threshold = 0.7
        >>> v.threshold
        0.7
        """
        return self._threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        self._threshold = _check_threshold(value)

    @property
    def speakers(self) -> tuple[str, ...]:
        """Enrolled speaker names, sorted.

        >>> import torch
        >>> from privspk.features.config import FeatureConfig
        >>> Verifier(torch.nn.Identity(), FeatureConfig(n_mels=40, cmn=False), threshold=0.5).speakers
        ()
        """
        return tuple(sorted(self._templates))

    def _waveform(self, wav: WavInput) -> torch.Tensor:
        if isinstance(wav, torch.Tensor):
            return wav
        if isinstance(wav, np.ndarray):
            return torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))
        if isinstance(wav, (str, os.PathLike)):
            from privspk.audio.io import read_audio

            return read_audio(wav, sample_rate=self.feature_cfg.sample_rate)
        raise ConfigError(f"a recording must be a file path or a 1-D waveform tensor, got {type(wav).__name__}")

    def _embed_many(self, wavs: Sequence[WavInput]) -> np.ndarray:
        from privspk.features.extract import extract

        feats = [(str(i), extract(self._waveform(w), self.feature_cfg)) for i, w in enumerate(wavs)]
        emb = embed_features(self.encoder, feats, batch_size=8, device=self.device)
        return np.stack([emb[str(i)] for i in range(len(wavs))]).astype(np.float64)

    def embed(self, wav: WavInput) -> np.ndarray:
        """Unit-length embedding of one recording.

        >>> import torch
        >>> from privspk.features.config import FeatureConfig
        >>> enc = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d((1, 40)), torch.nn.Flatten())
        >>> v = Verifier(enc, FeatureConfig(n_mels=40, cmn=False), threshold=0.5)
        >>> v.embed(torch.randn(4000) * 0.1).shape
        (40,)
        """
        return self._embed_many([wav])[0]

    def _known(self, name: str) -> np.ndarray:
        if name not in self._templates:
            enrolled = ", ".join(repr(s) for s in self.speakers) or "none"
            raise ConfigError(f"speaker {name!r} is not enrolled; enrolled speakers: {enrolled}")
        return self._templates[name]

    def enroll(self, name: str, wavs: Sequence[WavInput], *, replace: bool = False) -> None:
        """Enroll ``name`` from one or more recordings (the mean of their unit embeddings, re-normalised).

        Enrolling an existing name raises ConfigError unless ``replace=True``.

        >>> import torch
        >>> from privspk.features.config import FeatureConfig
        >>> enc = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d((1, 40)), torch.nn.Flatten())
        >>> v = Verifier(enc, FeatureConfig(n_mels=40, cmn=False), threshold=0.5)
        >>> v.enroll("bob", [torch.randn(4000) * 0.1, torch.randn(5000) * 0.1])
        >>> v.speakers
        ('bob',)
        """
        if not isinstance(name, str) or not name:
            raise ConfigError(f"speaker name must be a non-empty string, got {name!r}")
        if isinstance(wavs, (str, os.PathLike, torch.Tensor)) or not isinstance(wavs, Sequence) or not wavs:
            raise ConfigError(f"enroll {name!r} from a non-empty list of recordings, got {type(wavs).__name__}")
        if name in self._templates and not replace:
            raise ConfigError(f"speaker {name!r} is already enrolled; pass replace=True or remove() it first")
        embeddings = self._embed_many(wavs)
        self._templates[name] = l2_normalise(embeddings.mean(axis=0))
        log.info("enrolled %r from %d recording(s)", name, len(wavs))

    def score(self, name: str, wav: WavInput) -> float:
        """Cosine score of a recording against ``name``'s template.

        >>> import torch
        >>> from privspk.features.config import FeatureConfig
        >>> enc = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d((1, 40)), torch.nn.Flatten())
        >>> v = Verifier(enc, FeatureConfig(n_mels=40, cmn=False), threshold=0.5)
        >>> wav = torch.randn(4000) * 0.1
        >>> v.enroll("bob", [wav])
        >>> round(v.score("bob", wav), 5)
        1.0
        """
        template = self._known(name)
        return float(template @ self.embed(wav))

    def verify(self, name: str, wav: WavInput) -> tuple[float, bool]:
        """Score a claim that ``wav`` is ``name`` and decide it: ``(score, score >= threshold)``.

        >>> import torch
        >>> from privspk.features.config import FeatureConfig
        >>> enc = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d((1, 40)), torch.nn.Flatten())
        >>> v = Verifier(enc, FeatureConfig(n_mels=40, cmn=False), threshold=0.5)
        >>> v.verify("carol", torch.randn(4000))
        Traceback (most recent call last):
        ...
        privspk.errors.ConfigError: speaker 'carol' is not enrolled; enrolled speakers: none
        """
        value = self.score(name, wav)
        return value, value >= self._threshold

    def remove(self, name: str) -> None:
        """Forget an enrolled speaker (ConfigError if unknown).

        >>> import torch
        >>> from privspk.features.config import FeatureConfig
        >>> enc = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d((1, 40)), torch.nn.Flatten())
        >>> v = Verifier(enc, FeatureConfig(n_mels=40, cmn=False), threshold=0.5)
        >>> v.enroll("bob", [torch.randn(4000) * 0.1])
        >>> v.remove("bob"); v.speakers
        ()
        """
        self._known(name)
        del self._templates[name]

    def calibrate(
        self,
        target: ArrayLike,
        nontarget: ArrayLike,
        *,
        rule: str = "eer",
        far: float = 0.01,
    ) -> float:
        """Set the threshold from evaluation scores and return it.

        ``rule="eer"`` takes the operating point nearest the equal error rate;
        ``rule="far"`` the lowest threshold whose false-accept rate is at most ``far``.

        >>> import torch
        >>> from privspk.features.config import FeatureConfig
        >>> v = Verifier(torch.nn.Identity(), FeatureConfig(n_mels=40, cmn=False), threshold=0.0)
        >>> v.calibrate([0.9, 0.8, 0.6], [0.7, 0.2, 0.1], rule="far", far=0.0)  # midway from 0.7 to 0.8
        0.75
        """
        if rule not in _RULES:
            raise ConfigError(f"rule must be one of {_RULES}, got {rule!r}")
        value = threshold_at_eer(target, nontarget) if rule == "eer" else threshold_at_far(target, nontarget, far=far)
        self.threshold = value
        log.info("threshold calibrated by rule %r to %.6f", rule, value)
        return self._threshold

    def save(self, path: str | os.PathLike[str], *, encoder_checkpoint: str | None = None) -> None:
        """Write templates, threshold and feature settings to folder ``path``.

        ``encoder_checkpoint`` is only recorded (as a note for whoever loads it);
        the encoder itself is saved with :mod:`privspk.models`.

        >>> import tempfile, torch
        >>> from privspk.features.config import FeatureConfig
        >>> enc = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d((1, 40)), torch.nn.Flatten())
        >>> v = Verifier(enc, FeatureConfig(n_mels=40, cmn=False), threshold=0.5)
        >>> v.enroll("bob", [torch.randn(4000) * 0.1])
        >>> with tempfile.TemporaryDirectory() as d:
        ...     v.save(d)
        ...     Verifier.load(d, enc).speakers
        ('bob',)
        """
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        names = list(self.speakers)
        dims = {t.shape[0] for t in self._templates.values()}
        dim = dims.pop() if dims else 0
        templates = np.stack([self._templates[n] for n in names]) if names else np.zeros((0, dim))
        meta = {
            "format": _FORMAT,
            "version": _VERSION,
            "threshold": self._threshold,
            "feature_config": self.feature_cfg.to_dict(),
            "speakers": names,
            "embed_dim": dim,
            "encoder_checkpoint": encoder_checkpoint,
        }
        _write_atomic(folder / _NPZ_NAME, lambda fh: np.savez(fh, templates=templates))
        _write_atomic(folder / _JSON_NAME, lambda fh: fh.write(json.dumps(meta, indent=2).encode("utf-8")))

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        encoder: torch.nn.Module,
        *,
        device: str | torch.device = "cpu",
    ) -> Verifier:
        """Rebuild a verifier saved by :meth:`save`, with ``encoder`` (loaded separately).

        A missing, corrupt or mismatched folder raises :class:`~privspk.errors.CheckpointError`.

        >>> import torch
        >>> Verifier.load("no/such/folder", torch.nn.Identity())
        Traceback (most recent call last):
        ...
        privspk.errors.CheckpointError: no/such/folder/verifier.json: missing; save a Verifier there first
        """
        from privspk.features.config import FeatureConfig

        folder = Path(path)
        json_path, npz_path = folder / _JSON_NAME, folder / _NPZ_NAME
        for p in (json_path, npz_path):
            if not p.is_file():
                raise CheckpointError(f"{p}: missing; save a Verifier there first")
        try:
            meta = json.loads(json_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{json_path}: not valid JSON ({exc}); save the Verifier again") from exc
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT or meta.get("version") != _VERSION:
            raise CheckpointError(f"{json_path}: not a {_FORMAT} file of version {_VERSION}")
        try:
            with np.load(npz_path, allow_pickle=False) as data:
                templates = np.asarray(data["templates"], dtype=np.float64)
        except (OSError, ValueError, KeyError, EOFError) as exc:
            raise CheckpointError(f"{npz_path}: unreadable templates ({exc}); save the Verifier again") from exc
        names = meta.get("speakers")
        if (
            not isinstance(names, list)
            or not all(isinstance(n, str) and n for n in names)
            or len(set(names)) != len(names)
            or templates.ndim != 2
            or templates.shape[0] != len(names)
            or not np.isfinite(templates).all()
        ):
            raise CheckpointError(
                f"{folder}: speakers list and templates of shape {templates.shape} do not match; "
                "the files come from different saves"
            )
        expected = getattr(encoder, "embed_dim", None)
        if names and isinstance(expected, int) and expected != templates.shape[1]:
            raise CheckpointError(
                f"{folder}: templates are {templates.shape[1]}-dimensional but the encoder's embed_dim is "
                f"{expected}; load the encoder these templates were enrolled with"
            )
        try:
            cfg = FeatureConfig.from_dict(meta.get("feature_config"))  # type: ignore[arg-type]
            verifier = cls(encoder, cfg, threshold=meta.get("threshold"), device=device)  # type: ignore[arg-type]
        except ConfigError as exc:
            raise CheckpointError(f"{json_path}: {exc}") from exc
        verifier._templates = {n: l2_normalise(t) for n, t in zip(names, templates)}
        return verifier
