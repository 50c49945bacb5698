"""Read, check, resample and write audio files.

Everything that comes back from :func:`read_audio` is a 1-D ``float32`` tensor in
[-1, 1], mono, at the sample rate asked for. Every way a file can be bad (missing,
empty, not audio, truncated, no samples, NaN) raises :class:`~privspk.errors.AudioError`
naming the file, before any number reaches the caller.

>>> import tempfile, pathlib, shutil, torch
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> wav = 0.1 * torch.sin(torch.arange(8000) * 0.2)
>>> write_audio(d / "tone.wav", wav, sample_rate=8000)
>>> audio_info(d / "tone.wav").duration
1.0
>>> read_audio(d / "tone.wav", sample_rate=16000).shape
torch.Size([16000])
>>> shutil.rmtree(d)
"""

from __future__ import annotations

import io
import logging
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

from privspk.errors import AudioError, ConfigError

__all__ = ["AUDIO_SUFFIXES", "AudioInfo", "audio_info", "read_audio", "resample", "write_audio"]

logger = logging.getLogger(__name__)

#: File suffixes :func:`read_audio` accepts (anything libsndfile decodes is read,
#: but corpus readers only look at these).
AUDIO_SUFFIXES: tuple[str, ...] = (".wav", ".flac", ".ogg")

_WRITE_FORMATS = {".wav": "WAV", ".flac": "FLAC"}
#: Above this many polyphase kernel coefficients, sinc resampling falls back to FFT resampling.
_MAX_SINC_KERNEL = 1 << 22
#: Zeros appended before FFT resampling, so the circular convolution does not wrap.
_FFT_GUARD = 256
#: Frames read back from the end of a file to prove its data is all there.
_TAIL_FRAMES = 16


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says, after :func:`audio_info` checked it.

    Attributes:
        frames: number of sample frames (samples per channel).
        sample_rate: samples per second, in Hz.
        channels: number of channels.
        format: container, e.g. ``"WAV"`` or ``"FLAC"``.
        subtype: sample encoding, e.g. ``"PCM_16"``.

    >>> AudioInfo(frames=32000, sample_rate=16000, channels=1, format="WAV", subtype="PCM_16").duration
    2.0
    """

    frames: int
    sample_rate: int
    channels: int
    format: str
    subtype: str

    @property
    def duration(self) -> float:
        """Length in seconds.

        >>> AudioInfo(frames=8000, sample_rate=16000, channels=2, format="FLAC", subtype="PCM_16").duration
        0.5
        """
        return self.frames / self.sample_rate


def _check_rate(sample_rate: object, what: str = "sample_rate") -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)):
        raise ConfigError(f"{what} must be an integer number of Hz, got {sample_rate!r}")
    if sample_rate <= 0:
        raise ConfigError(f"{what} must be positive, got {sample_rate} Hz")
    return int(sample_rate)


def _check_file(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.exists():
        raise AudioError(p, "file not found")
    if p.is_dir():
        raise AudioError(p, "is a directory, expected an audio file")
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise AudioError(p, f"cannot stat file ({exc.strerror})") from exc
    if size == 0:
        raise AudioError(p, "file is empty (0 bytes)")
    return p


def _wav_truncation(path: Path) -> str | None:
    """Return why a RIFF/WAVE file is truncated, or None if its data chunk is complete.

    libsndfile silently shortens a WAV whose data chunk claims more bytes than the file
    holds, so the header is checked here. Streaming writers put 0 or 0xFFFFFFFF in the size
    field when they do not know it; such files are not flagged.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            file_size = os.fstat(fh.fileno()).st_size
            pos = 12
            while pos + 8 <= file_size:
                fh.seek(pos)
                chunk_id, size = struct.unpack("<4sI", fh.read(8))
                if chunk_id == b"data":
                    if size in (0, 0xFFFFFFFF):
                        return None
                    available = file_size - pos - 8
                    if size > available:
                        return (
                            f"truncated: the WAV header declares {size} bytes of samples "
                            f"but only {available} are present"
                        )
                    return None
                pos += 8 + size + (size & 1)
    except OSError as exc:
        return f"cannot read WAV header ({exc.strerror})"
    return None


def _decode_error(path: Path, exc: BaseException) -> AudioError:
    return AudioError(
        path,
        f"cannot be decoded as audio ({exc}); expected a WAV, FLAC or OGG file readable by libsndfile",
    )


def audio_info(path: str | os.PathLike[str]) -> AudioInfo:
    """Read and check a file's header cheaply (no full decode).

    Checks that the file exists, is not empty, is decodable audio with at least one
    sample, and that its last frames can be read (catches truncated WAV and FLAC files).

    Args:
        path: the audio file.

    Returns:
        The file's :class:`AudioInfo`.

    Raises:
        AudioError: naming the file and what is wrong with it.

    >>> import tempfile, pathlib, shutil, numpy as np, soundfile as sf
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> sf.write(d / "x.flac", np.zeros((4410, 2)), 44100)
    >>> info = audio_info(d / "x.flac")
    >>> (info.frames, info.sample_rate, info.channels, info.format)
    (4410, 44100, 2, 'FLAC')
    >>> shutil.rmtree(d)
    """
    p = _check_file(path)
    reason = _wav_truncation(p)
    if reason is not None:
        raise AudioError(p, reason)
    try:
        with sf.SoundFile(p) as fh:
            info = AudioInfo(
                frames=int(fh.frames),
                sample_rate=int(fh.samplerate),
                channels=int(fh.channels),
                format=str(fh.format),
                subtype=str(fh.subtype),
            )
            if info.frames > 0:
                start = max(0, info.frames - _TAIL_FRAMES)
                fh.seek(start)
                tail = fh.read(info.frames - start, dtype="float32", always_2d=True)
                if tail.shape[0] != info.frames - start:
                    raise AudioError(
                        p, f"truncated: header declares {info.frames} frames but the data ends early"
                    )
    except AudioError:
        raise
    except (sf.SoundFileError, RuntimeError, ValueError, TypeError, OSError) as exc:
        raise _decode_error(p, exc) from exc
    if info.frames <= 0:
        raise AudioError(p, "contains no samples")
    if info.sample_rate <= 0 or info.channels <= 0:
        raise AudioError(p, f"invalid header: {info.sample_rate} Hz, {info.channels} channels")
    return info


def resample(wav: Tensor, *, orig_freq: int, new_freq: int) -> Tensor:
    """Resample the last dimension of ``wav`` from ``orig_freq`` to ``new_freq`` Hz.

    Uses windowed-sinc resampling (:func:`torchaudio.functional.resample`) when the two
    rates share a large common factor (44.1 kHz -> 16 kHz, 22.05 kHz -> 16 kHz), and FFT
    resampling otherwise, where a polyphase kernel would need gigabytes (e.g. 44101 Hz).

    Args:
        wav: float tensor, time on the last dimension.
        orig_freq: current rate, in Hz.
        new_freq: wanted rate, in Hz.

    Returns:
        A float tensor with ``ceil(T * new_freq / orig_freq)`` samples on the last dimension.

    >>> import torch
    >>> resample(torch.zeros(44100), orig_freq=44100, new_freq=16000).shape
    torch.Size([16000])
    >>> resample(torch.zeros(44101), orig_freq=44101, new_freq=16000).shape
    torch.Size([16000])
    >>> resample(torch.zeros(1000), orig_freq=16001, new_freq=16000).shape
    torch.Size([1000])
    """
    orig = _check_rate(orig_freq, "orig_freq")
    new = _check_rate(new_freq, "new_freq")
    if not isinstance(wav, Tensor) or not wav.is_floating_point():
        raise ConfigError(f"wav must be a floating-point torch.Tensor, got {type(wav).__name__}")
    if orig == new:
        return wav.clone()
    g = math.gcd(orig, new)
    a, b = orig // g, new // g
    if a * b <= _MAX_SINC_KERNEL:
        import torchaudio.functional as taf

        return taf.resample(wav, orig_freq=orig, new_freq=new)
    # FFT resampling on a zero-padded block whose length is a multiple of ``a``, so the output
    # grid is exactly ``new`` Hz; the padding also keeps the end from wrapping onto the start.
    n_in = wav.shape[-1]
    length = -(-(n_in + _FFT_GUARD) // a) * a
    n_block = length // a * b
    spec = torch.fft.rfft(wav.to(torch.float64), n=length, dim=-1)
    keep = min(spec.shape[-1], n_block // 2 + 1)
    out = torch.fft.irfft(spec[..., :keep], n=n_block, dim=-1) * (n_block / length)
    return out[..., : -(-n_in * b // a)].to(wav.dtype)


def read_audio(
    path: str | os.PathLike[str], *, sample_rate: int = 16000, max_seconds: float | None = None
) -> Tensor:
    """Read an audio file as a mono float32 tensor at ``sample_rate``.

    Multi-channel files are downmixed by the mean over channels; files at another rate
    are resampled (:func:`resample`). Samples are clamped to [-1, 1].

    Args:
        path: a WAV, FLAC or OGG file.
        sample_rate: the rate to return, in Hz.
        max_seconds: if set, only the first ``max_seconds`` of the file are decoded (memory
            stays bounded however long the file is).

    Returns:
        1-D ``float32`` tensor in [-1, 1].

    Raises:
        AudioError: missing, empty, undecodable, truncated, sample-less or NaN-holding file.
        ConfigError: ``sample_rate`` is not a positive integer.

    >>> import tempfile, pathlib, shutil, numpy as np, soundfile as sf
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> sf.write(d / "stereo.wav", np.full((4410, 2), 0.25), 44100)
    >>> wav = read_audio(d / "stereo.wav", sample_rate=16000)
    >>> (wav.shape[0], wav.dtype, round(float(wav[800]), 3))
    (1600, torch.float32, 0.25)
    >>> shutil.rmtree(d)
    """
    rate = _check_rate(sample_rate)
    if max_seconds is not None and (
        isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float)) or not 0 < max_seconds < math.inf
    ):
        raise ConfigError(f"max_seconds must be a positive number of seconds or None, got {max_seconds!r}")
    p = _check_file(path)
    reason = _wav_truncation(p)
    if reason is not None:
        raise AudioError(p, reason)
    try:
        frames = -1
        if max_seconds is not None:
            frames = max(1, math.ceil(max_seconds * sf.info(p).samplerate))
        data, file_rate = sf.read(p, frames=frames, dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, ValueError, TypeError, OSError) as exc:
        raise _decode_error(p, exc) from exc
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise AudioError(p, "contains no samples")
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise AudioError(p, f"contains {bad} NaN or infinite samples; re-export it as PCM")
    mono = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1, dtype=np.float32)))
    if int(file_rate) != rate:
        logger.debug("resampling %s from %d Hz to %d Hz", p, file_rate, rate)
        mono = resample(mono, orig_freq=int(file_rate), new_freq=rate)
    return mono.clamp_(-1.0, 1.0).to(torch.float32).contiguous()


def write_audio(path: str | os.PathLike[str], wav: Tensor | np.ndarray, *, sample_rate: int) -> None:
    """Write a waveform as 16-bit PCM: ``.wav`` (WAV) or ``.flac`` (FLAC) by the suffix.

    Parent folders are created. The file is written under a temporary name and renamed
    into place, so a crash never leaves a half-written file under ``path``. Samples outside
    [-1, 1] are clipped.

    Args:
        path: target file; its suffix picks the container.
        wav: 1-D samples, or 2-D ``(channels, frames)``.
        sample_rate: rate of ``wav``, in Hz.

    Raises:
        AudioError: unsupported suffix, empty or non-finite waveform, or the write failed.
        ConfigError: ``sample_rate`` is not a positive integer.

    >>> import tempfile, pathlib, shutil, torch
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> write_audio(d / "a" / "b" / "x.flac", torch.zeros(160), sample_rate=16000)
    >>> audio_info(d / "a" / "b" / "x.flac").subtype
    'PCM_16'
    >>> shutil.rmtree(d)
    """
    rate = _check_rate(sample_rate)
    p = Path(path)
    fmt = _WRITE_FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise AudioError(p, f"cannot write suffix {p.suffix!r}; use one of {sorted(_WRITE_FORMATS)}")
    if isinstance(wav, Tensor):
        arr = wav.detach().cpu().to(torch.float32).numpy()
    elif isinstance(wav, np.ndarray):
        arr = wav.astype(np.float32, copy=False)
    else:
        raise AudioError(p, f"waveform must be a torch.Tensor or numpy array, got {type(wav).__name__}")
    if arr.ndim == 2:
        arr = arr.T
    elif arr.ndim != 1:
        raise AudioError(p, f"waveform must be 1-D or (channels, frames), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise AudioError(p, "refusing to write an empty waveform")
    if not np.isfinite(arr).all():
        raise AudioError(p, "refusing to write NaN or infinite samples")
    arr = np.clip(arr, -1.0, 1.0)
    p.parent.mkdir(parents=True, exist_ok=True)
    # encode in memory, then write plain bytes: soundfile's close() fsyncs, which costs more
    # than the encoding on a busy disk
    buffer = io.BytesIO()
    try:
        sf.write(buffer, arr, rate, format=fmt, subtype="PCM_16")
    except (sf.SoundFileError, RuntimeError, ValueError) as exc:
        raise AudioError(p, f"cannot encode as {fmt} PCM_16 ({exc})") from exc
    tmp = p.with_name(f".{p.name}.part")
    try:
        tmp.write_bytes(buffer.getvalue())
        os.replace(tmp, p)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise AudioError(p, f"write failed ({exc.strerror})") from exc
