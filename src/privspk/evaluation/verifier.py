"""Enroll speakers and verify claims with a trained encoder: the library's end-user object.

A recording is first checked for speech (:mod:`privspk.evaluation.vad`): enrolment needs
``min_speech_seconds`` in every recording and ``min_enroll_seconds`` in all (else
:class:`~privspk.errors.InsufficientSpeechError`); a trial with less speech is rejected with
the reason. Every frame but digital silence is embedded (exact-zero runs cannot move a
score), in windows of at most ``window_seconds`` whose unit embeddings are averaged, and at
most the first ``max_seconds`` of a recording are analysed (a warning says so), so memory stays
bounded however long a file is.

A speaker's template is the re-normalised mean of the unit-length embeddings of its enrollment
recordings. A claim's score is the cosine of template and test embedding, adaptively
S-normalised (AS-norm) against a cohort of public speakers when one is set; it is accepted when
the score reaches the threshold. :meth:`Verifier.calibrate_public` sets the cohort and a threshold
for a stated false-accept rate from public speakers' recordings (never from test trials).
Templates, cohort, threshold, how it was chosen, feature and speech settings and the encoder's
fingerprint are saved as ``verifier.json`` + ``templates.npz``; a store is only ever scored with
the encoder it was enrolled with (:class:`~privspk.errors.CheckpointError` otherwise).

>>> import math, torch
>>> from privspk.features.config import FeatureConfig
>>> class MeanLinear(torch.nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.embed_dim, self.lin = 8, torch.nn.Linear(40, 8)
...     def forward(self, x):
...         return self.lin(x.mean(dim=1))
>>> _ = torch.manual_seed(0)
>>> v = Verifier(MeanLinear(), FeatureConfig(n_mels=40, cmn=False), threshold=0.9, vad=None)
>>> tone = lambda hz: torch.sin(2 * math.pi * hz * torch.arange(8000) / 16000) * 0.2
>>> v.enroll("alice", [tone(300), tone(310)])
>>> v.speakers
('alice',)
>>> v.verify("alice", tone(305)).accepted
True
>>> speechy = Verifier(MeanLinear(), FeatureConfig(n_mels=40, cmn=False), threshold=0.9)
>>> speechy.enroll("alice", [tone(300), tone(310)])
Traceback (most recent call last):
...
privspk.errors.InsufficientSpeechError: recording 1: 0.00 s of speech, need 0.5 s (no speech: no voiced sound above the noise floor); enrol 'alice' from recordings of clear speech
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch

from privspk.errors import CheckpointError, ConfigError, InsufficientSpeechError
from privspk.evaluation.embed import embed_features, l2_normalise
from privspk.evaluation.metrics import eer, threshold_at_eer, threshold_at_far
from privspk.evaluation.scoring import as_norm
from privspk.evaluation.vad import VadConfig, detect_speech

from privspk.features.config import FeatureConfig

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

__all__ = ["Decision", "Verifier", "WavInput", "encoder_fingerprint"]

log = logging.getLogger(__name__)

WavInput = Union[str, "os.PathLike[str]", torch.Tensor]
"""An audio file path, or a 1-D float waveform at the feature config's sample rate."""

_FORMAT = "privspk-verifier"
_VERSION = 2
_JSON_NAME = "verifier.json"
_NPZ_NAME = "templates.npz"
_RULES = ("eer", "far")
_DEFAULT_VAD = VadConfig()


def _check_threshold(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not np.isfinite(value):
        raise ConfigError(f"threshold must be a finite number (a cosine score), got {value!r}")
    return float(value)


def _check_seconds(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def _write_atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        write(handle)
    os.replace(tmp, path)


@functools.lru_cache(maxsize=8)
def _quantisation_floor(cfg: FeatureConfig) -> torch.Tensor:
    """Mean log-mel energy of 16-bit quantisation noise, per bin: the floor of any real 16-bit recording.

    Bands with no energy at all (exact zeros, a band emptied by resampling) would otherwise give
    log-energies far below anything in training, and swing the embedding; they are clamped up to it.
    """
    from privspk.features.extract import extract

    gen = torch.Generator().manual_seed(0)
    noise = (torch.rand(cfg.sample_rate, generator=gen, dtype=torch.float64) - 0.5) / 32768.0
    return extract(noise.to(torch.float32), cfg).mean(dim=0)


def encoder_fingerprint(encoder: torch.nn.Module) -> str:
    """SHA-256 over the encoder's state dict (names, dtypes, shapes and bytes, in name order).

    Two encoders score alike exactly when their fingerprints agree (same architecture, same weights).

    >>> import torch
    >>> a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    >>> _ = b.load_state_dict(a.state_dict())
    >>> encoder_fingerprint(a) == encoder_fingerprint(b), encoder_fingerprint(a).startswith("sha256:")
    (True, True)
    >>> with torch.no_grad():
    ...     _ = b.bias.add_(1e-6)
    >>> encoder_fingerprint(a) == encoder_fingerprint(b)
    False
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()


@dataclass(frozen=True)
class Decision:
    """The outcome of one claim.

    Attributes:
        score: the (AS-normalised, when a cohort is set) score; NaN when the trial was not scored.
        accepted: whether the claim is accepted.
        reason: one line saying why.
        speech_seconds: seconds of speech found in the test recording.
        raw_score: the plain cosine score (NaN when not scored).

    A decision unpacks and indexes as the pair ``(score, accepted)``, as ``verify`` returned before.

    >>> d = Decision(0.8, True, "score 0.8000 >= threshold 0.5000", 2.1, 0.8)
    >>> score, accepted = d
    >>> (score, accepted)
    (0.8, True)
    """

    score: float
    accepted: bool
    reason: str
    speech_seconds: float
    raw_score: float

    def __iter__(self) -> Iterator[Any]:
        yield self.score
        yield self.accepted

    def __getitem__(self, index: int) -> Any:
        return (self.score, self.accepted)[index]

    def __len__(self) -> int:
        return 2


class Verifier:
    """Speaker verification with speech detection, enrolled templates, cohort normalisation and a threshold.

    Args:
        encoder: maps features ``(B, T, F)`` to embeddings ``(B, D)``; already on ``device``.
        feature_cfg: the :class:`~privspk.features.config.FeatureConfig` the encoder was trained on.
        threshold: accept a claim when its score is ``>=`` this.
        device: where features go for the encoder.
        vad: speech detection and minimum amounts of speech (:class:`~privspk.evaluation.vad.VadConfig`);
            ``None`` embeds every frame and accepts any sound (for synthetic test signals only).
        max_seconds: at most this many seconds of a recording are analysed (the rest is skipped, with a warning).
        window_seconds: speech is embedded in windows of at most this long, and their embeddings averaged.

    Unknown speakers raise :class:`~privspk.errors.ConfigError` listing the
    enrolled names; unreadable audio files raise :class:`~privspk.errors.AudioError`.

    >>> import torch
    >>> from privspk.features.config import FeatureConfig
    >>> # A stand-in encoder: the mean of each of the 40 bins over time, (B, T, 40) -> (B, 40).
    >>> enc = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d((1, 40)), torch.nn.Flatten())
    >>> v = Verifier(enc, FeatureConfig(n_mels=40, cmn=False), threshold=0.5, vad=None)
    >>> v.enroll("bob", [torch.randn(4000) * 0.1])
    >>> v.verify("bob", torch.randn(4000) * 0.1).score > 0.9
    True
    """

    def __init__(
        self,
        encoder: torch.nn.Module,
        feature_cfg: FeatureConfig,
        *,
        threshold: float,
        device: str | torch.device = "cpu",
        vad: VadConfig | None = _DEFAULT_VAD,
        max_seconds: float = 120.0,
        window_seconds: float = 20.0,
    ) -> None:
        from privspk.features.config import FeatureConfig

        if not isinstance(encoder, torch.nn.Module):
            raise ConfigError(f"encoder must be a torch.nn.Module, got {type(encoder).__name__}")
        if not isinstance(feature_cfg, FeatureConfig):
            raise ConfigError(f"feature_cfg must be a FeatureConfig, got {type(feature_cfg).__name__}")
        if vad is not None and not isinstance(vad, VadConfig):
            raise ConfigError(f"vad must be a VadConfig or None, got {type(vad).__name__}")
        self.encoder = encoder
        self.feature_cfg = feature_cfg
        self.device = torch.device(device)
        self.vad = vad
        self.max_seconds = _check_seconds(max_seconds, "max_seconds")
        self.window_seconds = _check_seconds(window_seconds, "window_seconds")
        self._threshold = _check_threshold(threshold)
        self._templates: dict[str, np.ndarray] = {}
        self._cohort: np.ndarray | None = None
        self._top_n: int | None = None
        self._fingerprint = encoder_fingerprint(encoder)
        self.calibration: dict[str, Any] | None = None
        """How the threshold was chosen (rule, false-accept rate, trial counts), or ``None``."""

    # ------------------------------------------------------------------ properties
    @property
    def threshold(self) -> float:
        """The decision threshold on scores (settable; must be finite).

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

    @property
    def fingerprint(self) -> str:
        """The fingerprint (:func:`encoder_fingerprint`) of the encoder the templates belong to.

        >>> import torch
        >>> from privspk.features.config import FeatureConfig
        >>> enc = torch.nn.Linear(40, 8)
        >>> Verifier(enc, FeatureConfig(n_mels=40), threshold=0.5).fingerprint == encoder_fingerprint(enc)
        True
        """
        return self._fingerprint

    @property
    def cohort_size(self) -> int:
        """Number of cohort embeddings used for AS-norm (0: scores are plain cosines).

        >>> import torch
        >>> from privspk.features.config import FeatureConfig
        >>> Verifier(torch.nn.Identity(), FeatureConfig(n_mels=40), threshold=0.5).cohort_size
        0
        """
        return 0 if self._cohort is None else int(self._cohort.shape[0])

    # ------------------------------------------------------------------ audio -> embedding
    def _check_encoder(self) -> None:
        current = encoder_fingerprint(self.encoder)
        if current != self._fingerprint:
            raise CheckpointError(
                f"the encoder's weights changed since the speakers were enrolled (enrolled with {self._fingerprint[:19]}, "
                f"now {current[:19]}); load the encoder they were enrolled with, or enrol them again"
            )

    def _waveform(self, wav: WavInput, label: str) -> torch.Tensor:
        rate = self.feature_cfg.sample_rate
        if isinstance(wav, np.ndarray):
            wav = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))
        if isinstance(wav, torch.Tensor):
            if wav.ndim != 1 or not wav.is_floating_point():
                raise ConfigError(f"{label}: a waveform must be a 1-D float tensor, got {tuple(wav.shape)} {wav.dtype}")
            limit = int(self.max_seconds * rate)
            if wav.shape[0] > limit:
                log.warning("%s: %.1f s long; analysing its first %.1f s only (max_seconds)", label,
                            wav.shape[0] / rate, self.max_seconds)
                wav = wav[:limit]
            return wav
        if isinstance(wav, (str, os.PathLike)):
            from privspk.audio.io import audio_info, read_audio

            info = audio_info(wav)
            if info.duration > self.max_seconds:
                log.warning("%s: %.1f s long; analysing its first %.1f s only (max_seconds)", wav,
                            info.duration, self.max_seconds)
            return read_audio(wav, sample_rate=rate, max_seconds=self.max_seconds)
        raise ConfigError(f"a recording must be a file path or a 1-D waveform tensor, got {type(wav).__name__}")

    def _speech_features(self, wav: WavInput, label: str) -> tuple[torch.Tensor | None, float, str | None]:
        """(features of the frames to embed or None, speech seconds, why there is not enough speech or None)."""
        from privspk.features.extract import extract

        x = self._waveform(wav, label)
        cfg = self.feature_cfg
        if x.shape[0] < cfg.window_samples:
            return None, 0.0, f"too short: {x.shape[0] / cfg.sample_rate:.3f} s, less than one frame"
        n_frames = 1 + (x.shape[0] - cfg.window_samples) // cfg.shift_samples
        if self.vad is not None:
            activity = detect_speech(x, cfg, self.vad)
            seconds = activity.speech_seconds
            if seconds < self.vad.min_speech_seconds or activity.sounding is None:
                why = activity.reason or "too little speech"
                return None, seconds, f"{seconds:.2f} s of speech, need {self.vad.min_speech_seconds:g} s ({why})"
            # embed every frame that is not digital silence, as in training (noisy pauses included):
            # exact-zero runs cannot move the score, and the encoder sees the statistics it was trained on
            mask = activity.sounding
        else:
            mask, seconds = np.ones(n_frames, dtype=bool), n_frames * cfg.shift_samples / cfg.sample_rate
        # Kaldi frames are computed frame by frame, so features of a block of frames equal those rows
        # of the whole matrix: extract in blocks (bounded memory), keep the speech rows, then CMN.
        raw_cfg = replace(cfg, cmn=False)
        block = max(1, int(self.window_seconds * cfg.sample_rate) // cfg.shift_samples)
        kept = []
        for lo in range(0, n_frames, block):
            hi = min(n_frames, lo + block)
            if not mask[lo:hi].any():
                continue
            seg = x[lo * cfg.shift_samples : (hi - 1) * cfg.shift_samples + cfg.window_samples]
            kept.append(extract(seg, raw_cfg)[torch.from_numpy(mask[lo:hi])])
        feats = torch.cat(kept)
        if cfg.kind == "fbank":
            feats = torch.maximum(feats, _quantisation_floor(raw_cfg))
        if cfg.cmn:
            feats = feats - feats.mean(dim=0, keepdim=True)
        return feats, seconds, None

    def _embed_features(self, feats: torch.Tensor) -> np.ndarray:
        """Unit embedding of a feature matrix, averaged over windows of at most ``window_seconds``."""
        per_window = max(1, int(self.window_seconds * 1000.0 / self.feature_cfg.frame_shift_ms))
        n_windows = -(-feats.shape[0] // per_window)
        bounds = np.linspace(0, feats.shape[0], n_windows + 1).round().astype(int)
        parts = [(str(i), feats[a:b]) for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]
        emb = embed_features(self.encoder, parts, batch_size=1, device=self.device)
        weights = np.diff(bounds).astype(np.float64)
        mean = sum(w * emb[str(i)].astype(np.float64) for i, w in enumerate(weights))
        return l2_normalise(np.asarray(mean))

    def embed(self, wav: WavInput) -> np.ndarray:
        """Unit-length embedding of the speech in one recording.

        Raises :class:`~privspk.errors.InsufficientSpeechError` when it holds too little speech.

        >>> import torch
        >>> from privspk.features.config import FeatureConfig
        >>> enc = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d((1, 40)), torch.nn.Flatten())
        >>> v = Verifier(enc, FeatureConfig(n_mels=40, cmn=False), threshold=0.5, vad=None)
        >>> v.embed(torch.randn(4000) * 0.1).shape
        (40,)
        """
        self._check_encoder()
        label = str(wav) if isinstance(wav, (str, os.PathLike)) else "recording"
        feats, _, why = self._speech_features(wav, label)
        if feats is None:
            raise InsufficientSpeechError(label, str(why))
        return self._embed_features(feats)

    def _known(self, name: str) -> np.ndarray:
        if name not in self._templates:
            enrolled = ", ".join(repr(s) for s in self.speakers) or "none"
            raise ConfigError(f"speaker {name!r} is not enrolled; enrolled speakers: {enrolled}")
        return self._templates[name]

    # ------------------------------------------------------------------ enrol / score
    def enroll(self, name: str, wavs: Sequence[WavInput], *, replace: bool = False) -> None:
        """Enroll ``name`` from one or more recordings (the mean of their unit embeddings, re-normalised).

        Every recording needs ``vad.min_speech_seconds`` of speech and all of them together
        ``vad.min_enroll_seconds``; otherwise :class:`~privspk.errors.InsufficientSpeechError`
        names the recording and nothing is enrolled. Enrolling an existing name raises
        ConfigError unless ``replace=True``.

        >>> import torch
        >>> from privspk.features.config import FeatureConfig
        >>> enc = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d((1, 40)), torch.nn.Flatten())
        >>> v = Verifier(enc, FeatureConfig(n_mels=40, cmn=False), threshold=0.5, vad=None)
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
        self._check_encoder()
        embeddings, total = [], 0.0
        for i, wav in enumerate(wavs):
            label = str(wav) if isinstance(wav, (str, os.PathLike)) else f"recording {i + 1}"
            feats, seconds, why = self._speech_features(wav, label)
            if feats is None:
                raise InsufficientSpeechError(label, f"{why}; enrol {name!r} from recordings of clear speech")
            embeddings.append(self._embed_features(feats))
            total += seconds
        if self.vad is not None and total < self.vad.min_enroll_seconds:
            raise InsufficientSpeechError(
                f"enrolment of {name!r}",
                f"{total:.2f} s of speech in {len(wavs)} recording(s), need {self.vad.min_enroll_seconds:g} s; "
                "add longer or more recordings",
            )
        self._templates[name] = l2_normalise(np.mean(embeddings, axis=0))
        log.info("enrolled %r from %d recording(s), %.2f s of speech", name, len(wavs), total)

    def _normalise(self, raw: float, template: np.ndarray, test: np.ndarray) -> float:
        if self._cohort is None:
            return raw
        top_n = self._top_n or self._cohort.shape[0]
        return float(as_norm(np.array([raw]), (self._cohort @ template)[None], (self._cohort @ test)[None], top_n)[0])

    def score(self, name: str, wav: WavInput) -> float:
        """Score of a recording against ``name``'s template (AS-normalised when a cohort is set).

        Raises :class:`~privspk.errors.InsufficientSpeechError` when the recording holds too little
        speech (:meth:`verify` rejects such a claim instead).

        >>> import torch
        >>> from privspk.features.config import FeatureConfig
        >>> enc = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d((1, 40)), torch.nn.Flatten())
        >>> v = Verifier(enc, FeatureConfig(n_mels=40, cmn=False), threshold=0.5, vad=None)
        >>> wav = torch.randn(4000) * 0.1
        >>> v.enroll("bob", [wav])
        >>> round(v.score("bob", wav), 5)
        1.0
        """
        template = self._known(name)
        test = self.embed(wav)
        return self._normalise(float(template @ test), template, test)

    def score_embedding(self, name: str, embedding: ArrayLike) -> float:
        """Score of a unit embedding (from :meth:`embed`) against ``name``'s template, normalised like :meth:`score`.

        >>> import torch
        >>> from privspk.features.config import FeatureConfig
        >>> enc = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d((1, 40)), torch.nn.Flatten())
        >>> v = Verifier(enc, FeatureConfig(n_mels=40, cmn=False), threshold=0.5, vad=None)
        >>> wav = torch.randn(4000) * 0.1
        >>> v.enroll("bob", [wav])
        >>> abs(v.score_embedding("bob", v.embed(wav)) - v.score("bob", wav)) < 1e-9
        True
        """
        template = self._known(name)
        test = l2_normalise(np.asarray(embedding, dtype=np.float64))
        if test.shape != template.shape:
            raise ConfigError(f"embedding has shape {test.shape}, the templates {template.shape}")
        return self._normalise(float(template @ test), template, test)

    def verify(self, name: str, wav: WavInput) -> Decision:
        """Decide a claim that ``wav`` is ``name``: a :class:`Decision` (unpacks as ``score, accepted``).

        A recording with too little speech is rejected (score NaN) with the reason.

        >>> import torch
        >>> from privspk.features.config import FeatureConfig
        >>> enc = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d((1, 40)), torch.nn.Flatten())
        >>> v = Verifier(enc, FeatureConfig(n_mels=40, cmn=False), threshold=0.5)
        >>> v.verify("carol", torch.randn(4000))
        Traceback (most recent call last):
        ...
        privspk.errors.ConfigError: speaker 'carol' is not enrolled; enrolled speakers: none
        """
        template = self._known(name)
        self._check_encoder()
        label = str(wav) if isinstance(wav, (str, os.PathLike)) else "recording"
        feats, seconds, why = self._speech_features(wav, label)
        if feats is None:
            return Decision(math.nan, False, f"rejected: {why}", seconds, math.nan)
        test = self._embed_features(feats)
        raw = float(template @ test)
        value = self._normalise(raw, template, test)
        accepted = value >= self._threshold
        sign = ">=" if accepted else "<"
        reason = f"{'accepted' if accepted else 'rejected'}: score {value:.4f} {sign} threshold {self._threshold:.4f}"
        return Decision(value, accepted, reason, seconds, raw)

    def remove(self, name: str) -> None:
        """Forget an enrolled speaker (ConfigError if unknown).

        >>> import torch
        >>> from privspk.features.config import FeatureConfig
        >>> enc = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d((1, 40)), torch.nn.Flatten())
        >>> v = Verifier(enc, FeatureConfig(n_mels=40, cmn=False), threshold=0.5, vad=None)
        >>> v.enroll("bob", [torch.randn(4000) * 0.1])
        >>> v.remove("bob"); v.speakers
        ()
        """
        self._known(name)
        del self._templates[name]

    # ------------------------------------------------------------------ cohort and threshold
    def set_cohort(self, embeddings: ArrayLike | None, *, top_n: int | None = None) -> None:
        """Use ``(C, D)`` public-speaker embeddings for AS-norm (``None`` removes it: plain cosine scores).

        ``top_n`` is AS-norm's top-N (``None``: the whole cohort, S-norm). A threshold chosen
        before is on another scale, so :attr:`calibration` is cleared.

        >>> import numpy as np, torch
        >>> from privspk.features.config import FeatureConfig
        >>> v = Verifier(torch.nn.Identity(), FeatureConfig(n_mels=40), threshold=0.5)
        >>> v.set_cohort(np.eye(3), top_n=2); v.cohort_size
        3
        """
        if embeddings is None:
            self._cohort, self._top_n, self.calibration = None, None, None
            return
        coh = np.asarray(embeddings, dtype=np.float64)
        if coh.ndim != 2 or coh.shape[0] < 2 or not np.isfinite(coh).all():
            raise ConfigError(f"cohort must be a finite (C, D) matrix with C >= 2, got shape {coh.shape}")
        dims = {t.shape[0] for t in self._templates.values()}
        if dims and dims != {coh.shape[1]}:
            raise ConfigError(f"cohort embeddings have dimension {coh.shape[1]} but the templates have {dims.pop()}")
        if top_n is not None and (type(top_n) is not int or not 2 <= top_n <= coh.shape[0]):
            raise ConfigError(f"top_n must be an int in [2, {coh.shape[0]}] or None, got {top_n!r}")
        self._cohort, self._top_n, self.calibration = l2_normalise(coh), top_n, None

    def calibrate(
        self,
        target: ArrayLike,
        nontarget: ArrayLike,
        *,
        rule: str = "eer",
        far: float = 0.01,
    ) -> float:
        """Set the threshold from scores (on the verifier's scale) and return it.

        ``rule="eer"`` takes the operating point nearest the equal error rate;
        ``rule="far"`` the lowest threshold whose false-accept rate is at most ``far``.
        The scores must not come from the trials the verifier is judged on;
        :meth:`calibrate_public` makes them from public speakers.

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
        self.calibration = {"rule": rule, "far": far if rule == "far" else None, "source": "scores given by the caller",
                            "n_target": int(np.size(target)), "n_nontarget": int(np.size(nontarget))}
        log.info("threshold calibrated by rule %r to %.6f", rule, value)
        return self._threshold

    def calibrate_public(
        self,
        recordings: Mapping[str, Sequence[WavInput]],
        *,
        far: float = 0.01,
        enroll_per_speaker: int = 2,
        cohort_fraction: float = 0.5,
        top_n: int | None = 100,
        seed: int = 0,
    ) -> dict[str, Any]:
        """Set an AS-norm cohort and a threshold for false-accept rate ``far`` from public speakers.

        The speakers of ``recordings`` (name -> recordings; none of them a test speaker) are
        split at random (``seed``): ``cohort_fraction`` of them give the cohort (every usable
        recording's embedding), the others make calibration trials: each enrolled from its
        first ``enroll_per_speaker`` recordings and tested with the rest of every calibration
        speaker's recordings. The threshold is the lowest whose false-accept rate on those
        impostor trials is at most ``far``. Recordings with too little speech are skipped.
        Returns (and keeps in :attr:`calibration`) what was done and the rates reached, with the
        threshold and EER the same trials give on plain cosine scores (for comparison).

        >>> import torch
        >>> from privspk.features.config import FeatureConfig
        >>> enc = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d((1, 40)), torch.nn.Flatten())
        >>> v = Verifier(enc, FeatureConfig(n_mels=40, cmn=False), threshold=0.0, vad=None)
        >>> g = torch.Generator().manual_seed(0)
        >>> pub = {f"p{i}": [torch.randn(4000, generator=g) * (0.05 + 0.01 * i) for _ in range(3)] for i in range(6)}
        >>> info = v.calibrate_public(pub, far=0.1, top_n=None)
        >>> (info["n_cohort_speakers"], info["n_calibration_speakers"], v.cohort_size)
        (3, 3, 9)
        """
        if isinstance(far, bool) or not isinstance(far, (int, float)) or not 0.0 <= far < 1.0:
            raise ConfigError(f"far must be a false-accept rate in [0, 1), got {far!r}")
        if type(enroll_per_speaker) is not int or enroll_per_speaker < 1:
            raise ConfigError(f"enroll_per_speaker must be a positive int, got {enroll_per_speaker!r}")
        if not isinstance(cohort_fraction, (int, float)) or not 0.0 < cohort_fraction < 1.0:
            raise ConfigError(f"cohort_fraction must be in (0, 1), got {cohort_fraction!r}")
        if not isinstance(recordings, Mapping) or len(recordings) < 4:
            raise ConfigError("calibrate_public needs recordings of at least 4 public speakers (name -> recordings)")
        self._check_encoder()
        embedded: dict[str, list[np.ndarray]] = {}
        skipped = 0
        for spk in sorted(recordings):
            for i, wav in enumerate(recordings[spk]):
                feats, _, why = self._speech_features(wav, f"{spk} recording {i + 1}")
                if feats is None:
                    skipped += 1
                    log.info("public speaker %s recording %d skipped: %s", spk, i + 1, why)
                    continue
                embedded.setdefault(spk, []).append(self._embed_features(feats))
        names = sorted(embedded)
        order = np.random.default_rng(seed).permutation(len(names))
        n_cohort = min(len(names) - 2, max(2, int(round(cohort_fraction * len(names)))))
        cohort_spk = sorted(names[i] for i in order[:n_cohort])
        calib_spk = [names[i] for i in sorted(order[n_cohort:])
                     if len(embedded[names[i]]) > enroll_per_speaker]
        if len(calib_spk) < 2:
            raise ConfigError(
                f"too few public speakers with more than {enroll_per_speaker} usable recordings "
                f"({len(calib_spk)} after the cohort took {n_cohort}); give more speakers or recordings"
            )
        cohort = np.stack([e for s in cohort_spk for e in embedded[s]])
        self.set_cohort(cohort, top_n=None if top_n is None else min(top_n, cohort.shape[0]))
        templates = {s: l2_normalise(np.mean(embedded[s][:enroll_per_speaker], axis=0)) for s in calib_spk}
        tests = [(s, e) for s in calib_spk for e in embedded[s][enroll_per_speaker:]]
        target, nontarget, raw_target, raw_nontarget = [], [], [], []
        for claimed, template in templates.items():
            for actual, test in tests:
                raw = float(template @ test)
                value = self._normalise(raw, template, test)
                (target if claimed == actual else nontarget).append(value)
                (raw_target if claimed == actual else raw_nontarget).append(raw)
        self.threshold = threshold_at_far(target, nontarget, far=far)
        tgt, non = np.array(target), np.array(nontarget)
        self.calibration = {
            "rule": "far",
            "far": far,
            "source": "public speakers (never test trials)",
            "n_cohort_speakers": len(cohort_spk),
            "n_cohort_embeddings": int(cohort.shape[0]),
            "top_n": self._top_n,
            "n_calibration_speakers": len(calib_spk),
            "n_target": int(tgt.size),
            "n_nontarget": int(non.size),
            "far_reached": float(np.mean(non >= self._threshold)),
            "frr_reached": float(np.mean(tgt < self._threshold)),
            "eer": float(eer(tgt, non)),
            "cosine_threshold": float(threshold_at_far(raw_target, raw_nontarget, far=far)),
            "cosine_eer": float(eer(raw_target, raw_nontarget)),
            "skipped_recordings": skipped,
            "seed": seed,
        }
        log.info("calibrated on public speakers: threshold %.4f for FAR %g", self._threshold, far)
        return dict(self.calibration)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str], *, encoder_checkpoint: str | None = None) -> None:
        """Write templates, cohort, threshold and its calibration, speech and feature settings to folder ``path``.

        The encoder's fingerprint is recorded; ``encoder_checkpoint`` is only a note for whoever
        loads it (the encoder itself is saved with :mod:`privspk.models`).

        >>> import tempfile, torch
        >>> from privspk.features.config import FeatureConfig
        >>> enc = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d((1, 40)), torch.nn.Flatten())
        >>> v = Verifier(enc, FeatureConfig(n_mels=40, cmn=False), threshold=0.5, vad=None)
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
        dim = dims.pop() if dims else (0 if self._cohort is None else self._cohort.shape[1])
        templates = np.stack([self._templates[n] for n in names]) if names else np.zeros((0, dim))
        cohort = self._cohort if self._cohort is not None else np.zeros((0, dim))
        meta = {
            "format": _FORMAT,
            "version": _VERSION,
            "threshold": self._threshold,
            "calibration": self.calibration,
            "score": "as-norm" if self._cohort is not None else "cosine",
            "top_n": self._top_n,
            "feature_config": self.feature_cfg.to_dict(),
            "vad": None if self.vad is None else self.vad.to_dict(),
            "max_seconds": self.max_seconds,
            "window_seconds": self.window_seconds,
            "speakers": names,
            "embed_dim": dim,
            "encoder_fingerprint": self._fingerprint,
            "encoder_checkpoint": encoder_checkpoint,
        }
        _write_atomic(folder / _NPZ_NAME, lambda fh: np.savez(fh, templates=templates, cohort=cohort))
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

        A missing, corrupt or mismatched folder, or an encoder other than the one the store was
        enrolled with (another fingerprint), raises :class:`~privspk.errors.CheckpointError`.

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
        if isinstance(meta, dict) and meta.get("format") == _FORMAT and meta.get("version") == 1:
            raise CheckpointError(
                f"{json_path}: a version-1 store (no encoder fingerprint, no speech detection, no cohort); "
                "enrol the speakers again with this privspk"
            )
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT or meta.get("version") != _VERSION:
            raise CheckpointError(f"{json_path}: not a {_FORMAT} file of version {_VERSION}")
        try:
            with np.load(npz_path, allow_pickle=False) as data:
                templates = np.asarray(data["templates"], dtype=np.float64)
                cohort = np.asarray(data["cohort"], dtype=np.float64)
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
        if not isinstance(encoder, torch.nn.Module):
            raise CheckpointError(f"encoder must be a torch.nn.Module, got {type(encoder).__name__}")
        recorded, actual = meta.get("encoder_fingerprint"), encoder_fingerprint(encoder)
        if recorded != actual:
            where = meta.get("encoder_checkpoint") or "the checkpoint they were enrolled with"
            raise CheckpointError(
                f"{folder}: the speakers were enrolled with encoder {str(recorded)[:19]}... but this encoder is "
                f"{actual[:19]}...; load {where}, or enrol the speakers again with this encoder"
            )
        try:
            cfg = FeatureConfig.from_dict(meta.get("feature_config"))  # type: ignore[arg-type]
            vad_meta = meta.get("vad")
            vad = None if vad_meta is None else VadConfig.from_dict(vad_meta)
            verifier = cls(encoder, cfg, threshold=meta.get("threshold"), device=device, vad=vad,  # type: ignore[arg-type]
                           max_seconds=meta.get("max_seconds"), window_seconds=meta.get("window_seconds"))  # type: ignore[arg-type]
            if cohort.shape[0]:
                verifier.set_cohort(cohort, top_n=meta.get("top_n"))
        except ConfigError as exc:
            raise CheckpointError(f"{json_path}: {exc}") from exc
        calibration = meta.get("calibration")
        verifier.calibration = calibration if isinstance(calibration, dict) else None
        verifier._templates = {n: l2_normalise(t) for n, t in zip(names, templates)}
        return verifier
