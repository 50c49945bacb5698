"""Audio in and out: read any WAV/FLAC/OGG as 16 kHz mono float32, write PCM, augment.

>>> import tempfile, pathlib, shutil, numpy as np, torch
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> write_audio(d / "x.wav", 0.1 * torch.randn(1600).clamp(-1, 1), sample_rate=16000)
>>> wav = add_noise(read_audio(d / "x.wav"), snr_db=20.0, rng=np.random.default_rng(0))
>>> wav.shape
torch.Size([1600])
>>> shutil.rmtree(d)
"""

from __future__ import annotations

from privspk.audio.augment import (
    NoiseKind,
    add_noise,
    random_gain,
    reverberate,
    speed_perturb,
    synthetic_rir,
)
from privspk.audio.io import AUDIO_SUFFIXES, AudioInfo, audio_info, read_audio, resample, write_audio

__all__ = [
    "AUDIO_SUFFIXES",
    "AudioInfo",
    "NoiseKind",
    "add_noise",
    "audio_info",
    "random_gain",
    "read_audio",
    "resample",
    "reverberate",
    "speed_perturb",
    "synthetic_rir",
    "write_audio",
]
