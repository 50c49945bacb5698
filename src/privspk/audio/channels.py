"""Channel simulations for client domains: call centre, phone, car and smart home.

A *domain* is the channel a client's speech went through before it reached the model.
Public speakers stay clean wideband (16 kHz); a client in a domain only holds that
domain's audio. Each domain is a chain of standard steps whose parameters are drawn per
utterance by :func:`draw_channel` from a generator seeded by (seed, utterance id, domain)
(:func:`channel_rng`), so the same utterance always gets the same channel.

``callcentre`` (telephone line into a bank's call centre)
    resample to 8 kHz (scipy polyphase) -> line noise (white hiss, 20..30 dB SNR) -> telephone band-pass
    300..3400 Hz (8th-order Butterworth, scipy) -> one codec drawn uniformly from
    G.711 mu-law, G.711 A-law, GSM 06.10 full rate (13 kbit/s) and Opus at about 7..12 kbit/s
    (libopus compression level 0.95..1.0), each encoded *and decoded* by libsndfile through
    ``soundfile`` (no codec is written here) -> back to 16 kHz. Above 4.3 kHz the output is at
    least 45 dB below a white input (only resampling images of the codec noise are left).
``phone`` (a handset's own microphone in ordinary rooms)
    microphone response: 2nd-order high-pass at 150..300 Hz, a presence peak of +3..+8 dB
    at 2..4 kHz (scipy ``iirpeak`` resonator added to the dry signal), 4th-order low-pass at
    6..7.5 kHz -> room reverb (RT60 0.2..0.5 s, direct-to-reverberant ratio 2..10 dB) ->
    background pink noise at 20..30 dB SNR -> 1..4 handling bumps (30..150 ms bursts of noise
    low-passed at 250 Hz, Hann envelope, peak level -15..-5 dB relative to the speech RMS).
``car`` (hands-free in a moving car)
    cabin reverb (RT60 0.05..0.12 s, DRR 6..12 dB) -> cabin noise mixed at -5..+5 dB SNR:
    road/engine rumble (white noise through a 4th-order low-pass at 150..400 Hz), engine
    harmonics (firing frequency 40..110 Hz, 4 harmonics at 1/k amplitude) and wind noise
    (pink, 15 dB below the rumble). Almost all noise power lies below 500 Hz.
``smarthome`` (a far-field smart speaker across the room)
    far-field reverb (RT60 0.6..1.2 s, DRR -6..0 dB: more reverberant than direct energy)
    -> distance / air absorption (2nd-order low-pass at 5..7 kHz) -> household noise
    (babble-like or pink) at 10..20 dB SNR.

Every output has the input's length and sample rate (16 kHz in privspk), and is scaled so
that its peak is at most 0.99. SNRs are ratios of mean squares over the whole utterance.

>>> import torch
>>> wav = 0.3 * torch.sin(2 * torch.pi * 440 * torch.arange(16000) / 16000)
>>> out = simulate_channel(wav, domain="callcentre", seed=0, utt_id="spk001-000")
>>> out.shape, out.dtype
(torch.Size([16000]), torch.float32)
>>> torch.equal(out, simulate_channel(wav, domain="callcentre", seed=0, utt_id="spk001-000"))
True
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

from privspk.audio.augment import add_noise, reverberate, synthetic_rir
from privspk.errors import AudioError, ConfigError

__all__ = [
    "CHANNEL_VERSION",
    "CODECS",
    "DOMAINS",
    "ChannelParams",
    "apply_channel",
    "channel_rng",
    "codec_roundtrip",
    "draw_channel",
    "mix_at_snr",
    "simulate_channel",
    "telephone_band",
]

#: The domains this module simulates, in a fixed order.
DOMAINS: tuple[str, ...] = ("callcentre", "phone", "car", "smarthome")
#: Telephone codecs of the call-centre domain (all through libsndfile).
CODECS: tuple[str, ...] = ("ulaw", "alaw", "gsm610", "opus")
#: Bump when a channel changes what it produces; cached domain features name it.
CHANNEL_VERSION = 1
#: Telephone rate, in Hz.
PHONE_RATE = 8000
#: Telephone pass band, in Hz.
PHONE_BAND = (300.0, 3400.0)

# (format, subtype) of each codec in libsndfile
_SNDFILE = {"ulaw": ("WAV", "ULAW"), "alaw": ("WAV", "ALAW"), "gsm610": ("WAV", "GSM610"), "opus": ("OGG", "OPUS")}
_TAG = 0x0D0A1  # stream tag of channel draws
_PEAK = 0.99


@dataclass(frozen=True)
class ChannelParams:
    """One utterance's channel: the domain and every value drawn for it (JSON-able).

    ``None`` switches a step off. ``noise_seed`` seeds the noise and room draws, so
    :func:`apply_channel` is a pure function of (waveform, params).

    >>> p = draw_channel("car", rng=np.random.default_rng(0))
    >>> (p.domain, p.codec, -5.0 <= p.snr_db <= 5.0)
    ('car', None, True)
    >>> ChannelParams(**p.to_dict()) == p
    True
    """

    domain: str
    noise_seed: int
    snr_db: float | None = None
    rt60: float | None = None
    drr_db: float = 0.0
    codec: str | None = None
    opus_level: float = 1.0
    highpass_hz: float | None = None
    lowpass_hz: float | None = None
    peak_hz: float | None = None
    peak_db: float = 0.0
    cutoff_hz: float | None = None
    harmonic_hz: float | None = None
    bumps: int = 0
    bump_db: float = -10.0
    noise_kind: str = "pink"

    def to_dict(self) -> dict:
        """Plain dict of every field.

        >>> draw_channel("phone", rng=np.random.default_rng(1)).to_dict()["domain"]
        'phone'
        """
        return asdict(self)


def _check_domain(domain: object) -> str:
    if domain not in DOMAINS:
        raise ConfigError(f"unknown domain {domain!r}; known domains: {', '.join(DOMAINS)}")
    return str(domain)


def _check_wav(wav: object) -> Tensor:
    if not isinstance(wav, Tensor):
        raise ConfigError(f"wav must be a torch.Tensor, got {type(wav).__name__}")
    if wav.dim() != 1 or wav.numel() == 0 or not wav.is_floating_point():
        raise ConfigError(f"wav must be a non-empty 1-D float tensor, got {wav.dtype} of shape {tuple(wav.shape)}")
    if not bool(torch.isfinite(wav).all()):
        raise ConfigError("wav holds NaN or infinite samples")
    return wav


def _check_rate(sample_rate: object) -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate < 8000:
        raise ConfigError(f"sample_rate must be an integer number of Hz >= 8000, got {sample_rate!r}")
    return int(sample_rate)


def channel_rng(*, seed: int, utt_id: str, domain: str) -> np.random.Generator:
    """The generator of one utterance's channel draws, from (seed, utterance id, domain).

    >>> a = channel_rng(seed=0, utt_id="spk001-000", domain="car").random()
    >>> b = channel_rng(seed=0, utt_id="spk001-000", domain="phone").random()
    >>> a == channel_rng(seed=0, utt_id="spk001-000", domain="car").random(), a == b
    (True, False)
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
    if not isinstance(utt_id, str) or not utt_id:
        raise ConfigError(f"utt_id must be a non-empty string, got {utt_id!r}")
    d = _check_domain(domain)
    key = int.from_bytes(hashlib.sha256(f"{utt_id}\0{d}".encode()).digest()[:8], "little")
    return np.random.default_rng([int(seed), _TAG, DOMAINS.index(d), key])


def draw_channel(domain: str, *, rng: np.random.Generator) -> ChannelParams:
    """Draw one utterance's channel parameters in ``domain`` (ranges in the module docstring).

    >>> p = draw_channel("callcentre", rng=np.random.default_rng(3))
    >>> p.codec in CODECS and 20.0 <= p.snr_db <= 30.0
    True
    """
    d = _check_domain(domain)
    if not isinstance(rng, np.random.Generator):
        raise ConfigError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    seed = int(rng.integers(0, 2**62))
    u = rng.uniform
    if d == "callcentre":
        return ChannelParams(d, seed, snr_db=float(u(20.0, 30.0)), codec=CODECS[int(rng.integers(len(CODECS)))],
                             opus_level=float(u(0.95, 1.0)), noise_kind="white")
    if d == "phone":
        return ChannelParams(d, seed, snr_db=float(u(20.0, 30.0)), rt60=float(u(0.2, 0.5)), drr_db=float(u(2.0, 10.0)),
                             highpass_hz=float(u(150.0, 300.0)), lowpass_hz=float(u(6000.0, 7500.0)),
                             peak_hz=float(u(2000.0, 4000.0)), peak_db=float(u(3.0, 8.0)),
                             bumps=int(rng.integers(1, 5)), bump_db=float(u(-15.0, -5.0)), noise_kind="pink")
    if d == "car":
        return ChannelParams(d, seed, snr_db=float(u(-5.0, 5.0)), rt60=float(u(0.05, 0.12)), drr_db=float(u(6.0, 12.0)),
                             cutoff_hz=float(u(150.0, 400.0)), harmonic_hz=float(u(40.0, 110.0)), noise_kind="car")
    kind = "babble-like" if rng.random() < 0.5 else "pink"
    return ChannelParams(d, seed, snr_db=float(u(10.0, 20.0)), rt60=float(u(0.6, 1.2)), drr_db=float(u(-6.0, 0.0)),
                         lowpass_hz=float(u(5000.0, 7000.0)), noise_kind=kind)


def mix_at_snr(wav: Tensor, noise: np.ndarray | Tensor, *, snr_db: float) -> Tensor:
    """``wav`` plus ``noise`` scaled so that ``10 log10(P_wav / P_noise) == snr_db`` (mean squares).

    A silent ``wav`` or ``noise`` comes back as ``wav`` unchanged.

    >>> import torch
    >>> w = torch.ones(1000) * 0.5
    >>> out = mix_at_snr(w, np.random.default_rng(0).standard_normal(1000), snr_db=6.0)
    >>> round(10 * math.log10(float(w.pow(2).mean() / (out - w).pow(2).mean())), 3)
    6.0
    """
    x = _check_wav(wav)
    n = torch.as_tensor(np.asarray(noise, dtype=np.float64))
    if n.shape != x.shape:
        raise ConfigError(f"noise has shape {tuple(n.shape)}, the waveform {tuple(x.shape)}")
    snr = float(snr_db)
    if not math.isfinite(snr) or not -30.0 <= snr <= 100.0:
        raise ConfigError(f"snr_db must be in [-30, 100] dB, got {snr_db!r}")
    p_x, p_n = float(x.double().pow(2).mean()), float(n.pow(2).mean())
    if p_x == 0.0 or p_n == 0.0:
        return x.clone()
    scale = math.sqrt(p_x / (p_n * 10.0 ** (snr / 10.0)))
    return (x.double() + n * scale).to(x.dtype)


def _sos(kind: str, hz: float | tuple[float, float], *, order: int, sample_rate: int) -> np.ndarray:
    from scipy.signal import butter

    return butter(order, hz, btype=kind, fs=sample_rate, output="sos")


def _filter(x: np.ndarray, sos: np.ndarray) -> np.ndarray:
    from scipy.signal import sosfilt

    return sosfilt(sos, x)


def telephone_band(wav: Tensor, *, sample_rate: int = PHONE_RATE, low_hz: float = PHONE_BAND[0],
                   high_hz: float = PHONE_BAND[1]) -> Tensor:
    """Band-limit to the telephone band: an 8th-order Butterworth band-pass (scipy), causal.

    At 8 kHz the response is -3 dB at 300 and 3400 Hz, -39 dB at 100 Hz, -25 dB at 3.7 kHz, -64 dB at 3.9 kHz.

    >>> import torch
    >>> t = torch.arange(8000) / 8000
    >>> low, mid = torch.sin(2 * torch.pi * 80 * t), torch.sin(2 * torch.pi * 1000 * t)
    >>> [round(float(telephone_band(s)[4000:].pow(2).mean() / s[4000:].pow(2).mean()), 2) for s in (low, mid)]
    [0.0, 1.0]
    """
    x = _check_wav(wav)
    rate = _check_rate(sample_rate)
    lo, hi = float(low_hz), float(high_hz)
    if not 0.0 < lo < hi < rate / 2:
        raise ConfigError(f"need 0 < low_hz < high_hz < sample_rate / 2, got {lo}, {hi} at {rate} Hz")
    out = _filter(x.double().numpy(), _sos("bandpass", (lo, hi), order=4, sample_rate=rate))
    return torch.from_numpy(out).to(x.dtype)


def codec_roundtrip(wav: Tensor, *, codec: str, sample_rate: int = PHONE_RATE, opus_level: float = 1.0) -> Tensor:
    """Encode and decode ``wav`` with a telephone codec through libsndfile (``soundfile``), in memory.

    ``ulaw`` / ``alaw``: G.711 (8 bits per sample); ``gsm610``: GSM 06.10 full rate, 13 kbit/s
    at 8 kHz; ``opus``: Opus in Ogg, ``opus_level`` being libsndfile's compression level
    (1.0 is the lowest bit rate, about 7 kbit/s; 0.95 about 12 kbit/s). The input is clipped
    to [-1, 1]; the output is cut or zero-padded to the input's length (GSM pads its last
    160-sample frame, Opus its pre-skip is removed by the decoder).

    >>> import torch
    >>> x = 0.3 * torch.sin(2 * torch.pi * 440 * torch.arange(8000) / 8000)
    >>> y = codec_roundtrip(x, codec="alaw")
    >>> y.shape, float(torch.corrcoef(torch.stack([x, y]))[0, 1]) > 0.99
    (torch.Size([8000]), True)
    """
    import soundfile as sf

    x = _check_wav(wav)
    rate = _check_rate(sample_rate)
    if codec not in _SNDFILE:
        raise ConfigError(f"unknown codec {codec!r}; known codecs: {', '.join(CODECS)}")
    level = float(opus_level)
    if not 0.0 <= level <= 1.0:
        raise ConfigError(f"opus_level must be in [0, 1], got {opus_level!r}")
    if codec == "gsm610" and rate != PHONE_RATE:
        raise ConfigError(f"GSM 06.10 is defined at {PHONE_RATE} Hz, got sample_rate {rate}; resample first")
    if codec == "opus" and rate not in (8000, 12000, 16000, 24000, 48000):
        raise ConfigError(f"Opus takes 8, 12, 16, 24 or 48 kHz, got sample_rate {rate}")
    fmt, subtype = _SNDFILE[codec]
    data = x.clamp(-1.0, 1.0).to(torch.float32).numpy()
    buf = io.BytesIO()
    try:
        extra = {"compression_level": level} if codec == "opus" else {}
        sf.write(buf, data, rate, format=fmt, subtype=subtype, **extra)
        buf.seek(0)
        decoded, got_rate = sf.read(buf, dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioError(f"<{codec} round trip>", f"libsndfile failed: {exc}; check soundfile / libsndfile "
                         "(soundfile.available_subtypes)") from exc
    if got_rate != rate:
        raise AudioError(f"<{codec} round trip>", f"decoded at {got_rate} Hz, encoded at {rate} Hz")
    out = np.zeros(data.shape[0], dtype=np.float32)
    n = min(out.shape[0], decoded.shape[0])
    out[:n] = decoded[:n]
    return torch.from_numpy(out).to(x.dtype)


def _resample_poly(x: Tensor, orig: int, new: int) -> Tensor:
    """Polyphase resampling (scipy ``resample_poly``, its default Kaiser FIR: images about 50 dB down)."""
    from scipy.signal import resample_poly

    if orig == new:
        return x
    g = math.gcd(orig, new)
    return torch.from_numpy(resample_poly(x.double().numpy(), new // g, orig // g)).to(x.dtype)


def _car_noise(n: int, p: ChannelParams, rate: int, rng: np.random.Generator) -> np.ndarray:
    rumble = _filter(rng.standard_normal(n), _sos("lowpass", p.cutoff_hz, order=4, sample_rate=rate))
    t = np.arange(n) / rate
    f0 = float(p.harmonic_hz)
    # slow RPM wander (+-3 %) so the harmonics are not pure tones
    wander = 1.0 + 0.03 * np.sin(2 * np.pi * rng.uniform(0.05, 0.3) * t + rng.uniform(0, 2 * np.pi))
    phase = 2 * np.pi * f0 * np.cumsum(wander) / rate
    engine = sum(np.sin(k * phase + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 5))
    rms = lambda v: math.sqrt(float(np.mean(v**2))) or 1.0  # noqa: E731
    engine = engine * (rms(rumble) / rms(engine)) * 0.7
    from scipy.fft import irfft, next_fast_len, rfft, rfftfreq

    m = next_fast_len(n, real=True)
    spec = rfft(rng.standard_normal(m))
    freqs = rfftfreq(m)
    spec[1:] /= np.sqrt(freqs[1:])
    spec[0] = 0.0
    wind = irfft(spec, n=m)[:n]
    wind = wind * (rms(rumble) / rms(wind)) * 10.0 ** (-15.0 / 20.0)
    return rumble + engine + wind


def _bumps(n: int, p: ChannelParams, rate: int, speech_rms: float, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(n)
    sos = _sos("lowpass", 250.0, order=4, sample_rate=rate)
    for _ in range(p.bumps):
        length = min(n, max(2, int(rng.uniform(0.03, 0.15) * rate)))
        start = int(rng.integers(0, n - length + 1))
        burst = _filter(rng.standard_normal(length), sos) * np.hanning(length)
        peak = float(np.abs(burst).max()) or 1.0
        out[start:start + length] += burst / peak * speech_rms * 10.0 ** (p.bump_db / 20.0)
    return out


def _peak_eq(x: np.ndarray, p: ChannelParams, rate: int) -> np.ndarray:
    from scipy.signal import iirpeak, lfilter

    b, a = iirpeak(p.peak_hz, Q=1.5, fs=rate)
    return x + (10.0 ** (p.peak_db / 20.0) - 1.0) * lfilter(b, a, x)


def apply_channel(wav: Tensor, params: ChannelParams, *, sample_rate: int = 16000) -> Tensor:
    """Pass ``wav`` through the channel ``params`` describes (a pure function of both).

    Returns a float32 waveform of the input's length at ``sample_rate``, peak at most 0.99.

    >>> import torch
    >>> wav = 0.3 * torch.sin(2 * torch.pi * 300 * torch.arange(16000) / 16000)
    >>> p = draw_channel("smarthome", rng=np.random.default_rng(0))
    >>> out = apply_channel(wav, p)
    >>> out.shape, float(out.abs().max()) <= 0.99
    (torch.Size([16000]), True)
    """
    x = _check_wav(wav).to(torch.float32)
    rate = _check_rate(sample_rate)
    if not isinstance(params, ChannelParams):
        raise ConfigError(f"params must be a ChannelParams (draw_channel), got {type(params).__name__}")
    _check_domain(params.domain)
    rng = np.random.default_rng(params.noise_seed)
    n = x.shape[0]
    speech_rms = math.sqrt(float(x.double().pow(2).mean()))
    y = x
    if params.domain == "callcentre":
        narrow = _resample_poly(x, rate, PHONE_RATE)
        if params.snr_db is not None:
            narrow = mix_at_snr(narrow, rng.standard_normal(narrow.shape[0]), snr_db=params.snr_db)
        narrow = telephone_band(narrow, sample_rate=PHONE_RATE)
        peak = float(narrow.abs().max())
        if peak > 0.9:
            narrow = narrow * (0.9 / peak)
        if params.codec is not None:
            narrow = codec_roundtrip(narrow, codec=params.codec, sample_rate=PHONE_RATE, opus_level=params.opus_level)
        y = _resample_poly(narrow, PHONE_RATE, rate)
        y = torch.nn.functional.pad(y[:n], (0, max(0, n - y.shape[0])))
    else:
        a = x.double().numpy()
        if params.highpass_hz is not None:
            a = _filter(a, _sos("highpass", params.highpass_hz, order=2, sample_rate=rate))
        if params.peak_hz is not None and params.peak_db:
            a = _peak_eq(a, params, rate)
        if params.domain == "phone" and params.lowpass_hz is not None:
            a = _filter(a, _sos("lowpass", min(params.lowpass_hz, 0.45 * rate), order=4, sample_rate=rate))
        y = torch.from_numpy(a).to(torch.float32)
        if params.rt60 is not None:
            y = reverberate(y, synthetic_rir(sample_rate=rate, rt60=params.rt60, rng=rng, drr_db=params.drr_db))
        if params.domain == "smarthome" and params.lowpass_hz is not None:
            y = torch.from_numpy(_filter(y.double().numpy(), _sos("lowpass", min(params.lowpass_hz, 0.45 * rate),
                                                                   order=2, sample_rate=rate))).to(torch.float32)
        if params.snr_db is not None:
            if params.noise_kind == "car":
                y = mix_at_snr(y, _car_noise(n, params, rate, rng), snr_db=params.snr_db)
            else:
                y = add_noise(y, snr_db=params.snr_db, rng=rng, kind=params.noise_kind, sample_rate=rate)
        if params.bumps:
            y = y + torch.from_numpy(_bumps(n, params, rate, speech_rms, rng)).to(y.dtype)
    y = y.to(torch.float32)
    peak = float(y.abs().max())
    if peak > _PEAK:
        y = y * (_PEAK / peak)
    return y


def simulate_channel(wav: Tensor, *, domain: str, seed: int, utt_id: str, sample_rate: int = 16000) -> Tensor:
    """``wav`` as heard through ``domain``: :func:`draw_channel` from :func:`channel_rng`, then :func:`apply_channel`.

    >>> import torch
    >>> wav = 0.3 * torch.sin(2 * torch.pi * 200 * torch.arange(8000) / 16000)
    >>> simulate_channel(wav, domain="phone", seed=1, utt_id="u1").shape
    torch.Size([8000])
    """
    params = draw_channel(domain, rng=channel_rng(seed=seed, utt_id=utt_id, domain=domain))
    return apply_channel(wav, params, sample_rate=sample_rate)
