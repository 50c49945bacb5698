"""Kaldi-compatible fbank / MFCC features of one utterance, with per-utterance mean normalisation.

Waveforms arrive as 1-D float tensors in [-1, 1] (what :mod:`privspk.audio` reads); Kaldi works
on int16 sample values, so they are scaled by 2**15 before ``torchaudio.compliance.kaldi`` sees
them. That keeps the energy floor and the dither amount in the units Kaldi documents.

>>> import torch
>>> wav = torch.sin(torch.arange(16000) * 0.3) * 0.1
>>> feats = extract(wav, FeatureConfig(n_mels=40))
>>> tuple(feats.shape), feats.dtype
((98, 40), torch.float32)
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from privspk.errors import FeatureError
from privspk.features.config import FeatureConfig

__all__ = ["INT16_SCALE", "extract"]

logger = logging.getLogger(__name__)

#: Factor between a float waveform in [-1, 1] and the int16 sample values Kaldi expects.
INT16_SCALE = 32768.0


def _check_waveform(wav: object, cfg: FeatureConfig) -> Tensor:
    if not isinstance(wav, Tensor):
        raise FeatureError(f"waveform must be a torch.Tensor, got {type(wav).__name__}")
    if wav.dim() != 1:
        raise FeatureError(
            f"waveform must be 1-D (mono samples), got shape {tuple(wav.shape)}; downmix it first"
        )
    if not wav.is_floating_point():
        raise FeatureError(f"waveform must be floating point in [-1, 1], got dtype {wav.dtype}")
    if wav.numel() < cfg.window_samples:
        raise FeatureError(
            f"waveform has {wav.numel()} samples, fewer than one {cfg.frame_length_ms} ms frame "
            f"({cfg.window_samples} samples at {cfg.sample_rate} Hz); drop or pad this utterance"
        )
    if not bool(torch.isfinite(wav).all()):
        raise FeatureError("waveform contains NaN or infinite samples")
    return wav


def extract(wav: Tensor, cfg: FeatureConfig) -> Tensor:
    """Features ``(T, F)`` float32 of a 1-D waveform, ``T = cfg.n_frames(len(wav))``, ``F = cfg.dim``.

    fbank: Kaldi log mel energies (povey window, pre-emphasis 0.97, DC removal, power spectrum,
    ``snip_edges``). mfcc: Kaldi MFCC from the same filterbank (orthonormal DCT, lifter 22).
    When ``cfg.cmn`` the per-utterance mean of every column is subtracted.

    Raises :class:`~privspk.errors.FeatureError` for a non-1-D, non-float or non-finite
    waveform, or one shorter than a frame (the message gives the length).

    Example:
        >>> import torch
        >>> feats = extract(torch.randn(8000) * 0.05, FeatureConfig(kind="mfcc", n_mels=40, n_mfcc=20))
        >>> tuple(feats.shape), round(float(feats.mean(0).abs().max()), 4)
        ((48, 20), 0.0)
        >>> extract(torch.zeros(100), FeatureConfig())
        Traceback (most recent call last):
        ...
        privspk.errors.FeatureError: waveform has 100 samples, fewer than one 25.0 ms frame (400 samples at 16000 Hz); drop or pad this utterance
    """
    from torchaudio.compliance import kaldi

    if not isinstance(cfg, FeatureConfig):
        raise FeatureError(f"cfg must be a FeatureConfig, got {type(cfg).__name__}")
    wav = _check_waveform(wav, cfg)
    with torch.no_grad():
        scaled = (wav.detach().to(torch.float32) * INT16_SCALE).unsqueeze(0)
        common = {
            "sample_frequency": float(cfg.sample_rate),
            "frame_length": float(cfg.frame_length_ms),
            "frame_shift": float(cfg.frame_shift_ms),
            "dither": float(cfg.dither),
            "num_mel_bins": cfg.n_mels,
            "snip_edges": True,
        }
        if cfg.kind == "fbank":
            feats = kaldi.fbank(scaled, **common)
        else:
            feats = kaldi.mfcc(scaled, num_ceps=cfg.n_mfcc, **common)
        if cfg.cmn:
            feats = feats - feats.mean(dim=0, keepdim=True)
    return feats.to(torch.float32).contiguous()
