"""privspk.audio.io: reading, checking, resampling and writing audio files.

References are independent of the code under test: files are written with soundfile
directly, and resampled signals are compared with the analytic sine they must be.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from privspk.audio.io import AudioInfo, audio_info, read_audio, resample, write_audio
from privspk.errors import AudioError, ConfigError



def sine(freq: float, rate: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float64)


# ---------------------------------------------------------------------------- reading


def test_read_pcm16_matches_the_integer_samples(tmp_path: Path) -> None:
    ints = np.array([0, 1, -1, 16384, -16384, 32767, -32768, 1000], dtype=np.int16)
    path = tmp_path / "ints.wav"
    sf.write(path, ints, 16000, subtype="PCM_16")
    wav = read_audio(path, sample_rate=16000)
    assert wav.dtype == torch.float32 and wav.dim() == 1
    np.testing.assert_allclose(wav.numpy(), ints / 32768.0, atol=1e-7)


def test_stereo_44k1_comes_back_16k_mono_mean_of_channels(tmp_path: Path) -> None:
    left = sine(440.0, 44100, 1.0, amp=0.6)
    right = np.zeros_like(left)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 44100, subtype="FLOAT")
    wav = read_audio(path, sample_rate=16000)
    assert wav.shape == (16000,)
    expected = sine(440.0, 16000, 1.0, amp=0.3)  # mean of the two channels
    inner = slice(200, -200)  # away from the filter's edge effects
    np.testing.assert_allclose(wav.numpy()[inner], expected[inner], atol=2e-3)


@pytest.mark.parametrize(("fmt", "subtype", "suffix"), [("FLAC", "PCM_16", ".flac"), ("OGG", "VORBIS", ".ogg")])
def test_flac_and_ogg_are_read(tmp_path: Path, fmt: str, subtype: str, suffix: str) -> None:
    x = sine(300.0, 16000, 0.5)
    path = tmp_path / f"x{suffix}"
    sf.write(path, x, 16000, format=fmt, subtype=subtype)
    wav = read_audio(path)
    assert wav.shape[0] == x.shape[0]
    tol = 1e-4 if fmt == "FLAC" else 0.05  # vorbis is lossy
    assert float(np.abs(wav.numpy() - x).max()) < tol


def test_float_file_beyond_full_scale_is_clamped(tmp_path: Path) -> None:
    path = tmp_path / "hot.wav"
    sf.write(path, np.array([1.5, -2.0, 0.25]), 16000, subtype="FLOAT")
    assert read_audio(path).tolist() == [1.0, -1.0, 0.25]


@pytest.mark.parametrize("bad", [0, -16000, 16000.0, True, "16k"])
def test_bad_sample_rate_is_a_config_error(tmp_path: Path, bad: object) -> None:
    path = tmp_path / "x.wav"
    sf.write(path, np.zeros(10), 16000)
    with pytest.raises(ConfigError, match="sample_rate"):
        read_audio(path, sample_rate=bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- bad files


def _good_wav(path: Path, frames: int = 1600) -> bytes:
    sf.write(path, sine(440.0, 16000, frames / 16000), 16000, subtype="PCM_16")
    return path.read_bytes()


def make_missing(tmp: Path) -> Path:
    return tmp / "nope.wav"


def make_directory(tmp: Path) -> Path:
    (tmp / "dir.wav").mkdir()
    return tmp / "dir.wav"


def make_empty(tmp: Path) -> Path:
    (tmp / "empty.wav").write_bytes(b"")
    return tmp / "empty.wav"


def make_text(tmp: Path) -> Path:
    (tmp / "text.wav").write_text("this is not audio at all\n" * 20)
    return tmp / "text.wav"


def make_truncated_wav(tmp: Path) -> Path:
    data = _good_wav(tmp / "full.wav")
    (tmp / "trunc.wav").write_bytes(data[: len(data) // 2])
    return tmp / "trunc.wav"


def make_header_only_wav(tmp: Path) -> Path:
    data = _good_wav(tmp / "full.wav")
    (tmp / "head.wav").write_bytes(data[:30])
    return tmp / "head.wav"


def make_zero_frames(tmp: Path) -> Path:
    path = tmp / "zero.wav"
    sf.write(path, np.zeros(0), 16000, subtype="PCM_16")
    return path


def make_truncated_flac(tmp: Path) -> Path:
    sf.write(tmp / "full.flac", np.random.default_rng(0).uniform(-0.5, 0.5, 16000), 16000)
    data = (tmp / "full.flac").read_bytes()
    (tmp / "trunc.flac").write_bytes(data[: len(data) * 2 // 3])
    return tmp / "trunc.flac"


def make_nan(tmp: Path) -> Path:
    x = sine(440.0, 16000, 0.1)
    x[17] = np.nan
    sf.write(tmp / "nan.wav", x, 16000, subtype="FLOAT")
    return tmp / "nan.wav"


BAD_FILES = {
    "missing": (make_missing, "not found"),
    "directory": (make_directory, "directory"),
    "empty": (make_empty, "empty"),
    "not audio": (make_text, "cannot be decoded"),
    "truncated wav": (make_truncated_wav, "truncated"),
    "header only": (make_header_only_wav, "cannot be decoded"),
    "zero frames": (make_zero_frames, "no samples"),
    "truncated flac": (make_truncated_flac, "truncated|cannot be decoded"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_raises_audio_error_naming_it(tmp_path: Path, case: str) -> None:
    make, reason = BAD_FILES[case]
    path = make(tmp_path)
    with pytest.raises(AudioError, match=reason) as info:
        read_audio(path)
    assert info.value.path == str(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_audio_info_catches_the_same_bad_files(tmp_path: Path, case: str) -> None:
    make, reason = BAD_FILES[case]
    path = make(tmp_path)
    with pytest.raises(AudioError, match=reason) as info:
        audio_info(path)
    assert info.value.path == str(path)


def test_nan_samples_are_refused_on_read(tmp_path: Path) -> None:
    path = make_nan(tmp_path)
    with pytest.raises(AudioError, match="NaN") as info:
        read_audio(path)
    assert info.value.path == str(path)


def test_streamed_wav_with_unknown_data_size_is_accepted(tmp_path: Path) -> None:
    """Recorders that stream write 0xFFFFFFFF as the data size; that is not truncation."""
    data = bytearray(_good_wav(tmp_path / "x.wav", frames=800))
    pos = data.index(b"data")
    data[pos + 4 : pos + 8] = struct.pack("<I", 0xFFFFFFFF)
    (tmp_path / "stream.wav").write_bytes(bytes(data))
    assert read_audio(tmp_path / "stream.wav").shape[0] == 800


# ---------------------------------------------------------------------------- info


def test_audio_info_reports_the_header(tmp_path: Path) -> None:
    path = tmp_path / "x.flac"
    sf.write(path, np.zeros((22050, 2)), 44100)
    assert audio_info(path) == AudioInfo(frames=22050, sample_rate=44100, channels=2, format="FLAC", subtype="PCM_16")
    assert audio_info(path).duration == 0.5


# ---------------------------------------------------------------------------- resample


@pytest.mark.parametrize(
    ("orig", "new"),
    [(8000, 16000), (44100, 16000), (22050, 16000), (48000, 16000), (44101, 16000), (16000, 16001)],
)
def test_resampled_sine_matches_the_analytic_sine(orig: int, new: int) -> None:
    x = torch.from_numpy(sine(500.0, orig, 0.5)).float()
    y = resample(x, orig_freq=orig, new_freq=new)
    assert y.shape[0] == -(-x.shape[0] * new // orig)
    ref = sine(500.0, new, y.shape[0] / new)
    inner = slice(300, -300)
    np.testing.assert_allclose(y.numpy()[inner], ref[inner], atol=5e-3)


def test_resample_same_rate_is_a_copy() -> None:
    x = torch.randn(100)
    y = resample(x, orig_freq=16000, new_freq=16000)
    assert torch.equal(x, y) and y.data_ptr() != x.data_ptr()


def test_resample_rejects_integers_and_bad_rates() -> None:
    with pytest.raises(ConfigError, match="floating-point"):
        resample(torch.zeros(10, dtype=torch.int16), orig_freq=8000, new_freq=16000)
    with pytest.raises(ConfigError, match="orig_freq"):
        resample(torch.zeros(10), orig_freq=0, new_freq=16000)


# ---------------------------------------------------------------------------- writing


@settings(max_examples=25, deadline=None)
@given(
    samples=st.lists(st.floats(-1.0, 1.0, allow_nan=False, width=32), min_size=1, max_size=400),
    rate=st.sampled_from([8000, 16000, 22050, 44100]),
    suffix=st.sampled_from([".wav", ".flac"]),
)
def test_write_read_round_trip_within_pcm16_quantisation(
    tmp_path_factory: pytest.TempPathFactory, samples: list[float], rate: int, suffix: str
) -> None:
    path = tmp_path_factory.mktemp("rt") / f"x{suffix}"
    x = np.asarray(samples, dtype=np.float32)
    write_audio(path, torch.from_numpy(x), sample_rate=rate)
    info = audio_info(path)
    assert (info.frames, info.sample_rate, info.channels, info.subtype) == (len(x), rate, 1, "PCM_16")
    back = read_audio(path, sample_rate=rate).numpy()
    assert float(np.abs(back - x).max()) <= 1.0 / 32767 + 1e-7


def test_write_creates_parents_clips_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "x.wav"
    write_audio(path, np.array([2.0, -3.0, 0.5]), sample_rate=16000)
    data, _ = sf.read(path)
    np.testing.assert_allclose(data, [32767 / 32768, -1.0, 0.5], atol=1e-4)
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.wav"]


def test_write_two_dimensional_is_channels_first(tmp_path: Path) -> None:
    path = tmp_path / "st.flac"
    write_audio(path, torch.stack([torch.full((50,), 0.5), torch.full((50,), -0.5)]), sample_rate=8000)
    data, rate = sf.read(path)
    assert data.shape == (50, 2) and rate == 8000
    assert data[0].tolist() == [0.5, -0.5]


@pytest.mark.parametrize(
    ("name", "wav", "reason"),
    [
        ("x.mp3", torch.zeros(10), "suffix"),
        ("x.wav", torch.zeros(0), "empty"),
        ("x.wav", torch.tensor([0.0, float("nan")]), "NaN"),
        ("x.wav", torch.zeros(2, 2, 2), "1-D"),
        ("x.wav", [0.0, 0.1], "torch.Tensor or numpy"),
    ],
)
def test_write_refuses_bad_input_naming_the_file(tmp_path: Path, name: str, wav: object, reason: str) -> None:
    with pytest.raises(AudioError, match=reason) as info:
        write_audio(tmp_path / name, wav, sample_rate=16000)  # type: ignore[arg-type]
    assert info.value.path == str(tmp_path / name)
    assert not (tmp_path / name).exists()
