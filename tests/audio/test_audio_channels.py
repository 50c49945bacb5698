"""Channel simulations of the client domains, checked on synthetic tones and sweeps.

Bounds are stated with each test; they hold on any x86 CPU (no test depends on a float's last bit:
determinism is checked by running the same path twice).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from privspk.audio.channels import (
    CODECS,
    DOMAINS,
    PHONE_RATE,
    ChannelParams,
    apply_channel,
    channel_rng,
    codec_roundtrip,
    draw_channel,
    mix_at_snr,
    simulate_channel,
    telephone_band,
)
from privspk.config import CORPUS_DOMAINS
from privspk.errors import ConfigError

RATE = 16000


def tone(hz: float, *, seconds: float = 1.0, rate: int = RATE, amp: float = 0.3) -> torch.Tensor:
    t = torch.arange(int(seconds * rate), dtype=torch.float64) / rate
    return (amp * torch.sin(2 * math.pi * hz * t)).to(torch.float32)


def sweep(lo: float, hi: float, *, seconds: float = 2.0, rate: int = RATE, amp: float = 0.3) -> torch.Tensor:
    """Exponential sine sweep from lo to hi Hz."""
    t = np.arange(int(seconds * rate)) / rate
    k = math.log(hi / lo) / seconds
    return torch.from_numpy((amp * np.sin(2 * np.pi * lo * (np.exp(k * t) - 1) / k)).astype(np.float32))


def band_power(x: torch.Tensor, lo: float, hi: float, *, rate: int = RATE) -> float:
    spec = np.abs(np.fft.rfft(x.double().numpy())) ** 2
    f = np.fft.rfftfreq(x.shape[0], d=1.0 / rate)
    return float(spec[(f >= lo) & (f < hi)].sum())


def snr(clean: torch.Tensor, noisy: torch.Tensor) -> float:
    return 10 * math.log10(float(clean.double().pow(2).mean() / (noisy.double() - clean.double()).pow(2).mean()))


def test_the_config_lists_the_same_domains():
    assert CORPUS_DOMAINS == DOMAINS


# ---------------------------------------------------------------- call centre: band limit and codecs
@pytest.mark.parametrize("codec", CODECS)
def test_callcentre_removes_everything_above_4khz_and_attenuates_below_300hz(codec):
    """White noise in: 4.3-8 kHz at least 45 dB down (what is left are resampling images of the codec's
    noise); 50-150 Hz at least 25 dB below the 0.5-3 kHz band through G.711, 10 dB through GSM and Opus
    (their coding noise is not band-limited: measured 12.7 and 18.4 dB)."""
    x = torch.from_numpy((0.1 * np.random.default_rng(0).standard_normal(2 * RATE)).astype(np.float32))
    p = dataclasses.replace(draw_channel("callcentre", rng=np.random.default_rng(1)), codec=codec, snr_db=None)
    y = apply_channel(x, p, sample_rate=RATE)
    assert y.shape == x.shape
    per_hz = lambda s, lo, hi: band_power(s, lo, hi) / (hi - lo)  # noqa: E731
    assert per_hz(y, 4300, 8000) < 10 ** -4.5 * per_hz(x, 4300, 8000)
    assert 10 * math.log10(per_hz(y, 500, 3000) / per_hz(y, 50, 150)) > (25.0 if codec in ("ulaw", "alaw") else 10.0)
    # the pass band survives: its power within 6 dB of the input's
    assert abs(10 * math.log10(per_hz(y, 500, 3000) / per_hz(x, 500, 3000))) < 6.0


def test_telephone_band_edges_on_tones():
    """At 8 kHz: 1 kHz passes (within 0.5 dB), 100 Hz is down > 30 dB, 3.9 kHz > 50 dB."""
    def gain_db(hz):
        x = tone(hz, seconds=1.0, rate=PHONE_RATE)
        y = telephone_band(x)
        return 10 * math.log10(float(y[2000:].pow(2).mean() / x[2000:].pow(2).mean()))

    assert abs(gain_db(1000)) < 0.5
    assert gain_db(100) < -30 and gain_db(3900) < -50


# correlation of the decoded 300-3000 Hz sweep with the input: G.711 is near transparent,
# GSM 06.10 and Opus at ~7-12 kbit/s are lossy but keep the waveform
_CORR = {"ulaw": 0.999, "alaw": 0.999, "gsm610": 0.9, "opus": 0.8}


@pytest.mark.parametrize("codec", CODECS)
def test_each_codec_round_trips_through_soundfile(codec):
    x = sweep(300, 3000, seconds=1.0, rate=PHONE_RATE)
    y = codec_roundtrip(x, codec=codec, sample_rate=PHONE_RATE, opus_level=1.0)
    assert y.shape == x.shape and y.dtype == torch.float32 and bool(torch.isfinite(y).all())
    r = float(np.corrcoef(x.numpy(), y.numpy())[0, 1])
    assert r > _CORR[codec], f"{codec}: correlation {r:.4f}"
    if codec != "ulaw" and codec != "alaw":
        assert not torch.equal(x, y)  # a lossy codec changed the samples


def test_the_lossy_codecs_lose_more_than_g711():
    x = sweep(300, 3000, seconds=1.0, rate=PHONE_RATE)
    err = {c: float((codec_roundtrip(x, codec=c) - x).pow(2).mean()) for c in CODECS}
    assert max(err["ulaw"], err["alaw"]) < min(err["gsm610"], err["opus"])


def test_codec_errors_are_config_errors():
    x = tone(440, rate=PHONE_RATE)
    with pytest.raises(ConfigError, match="unknown codec 'amr'"):
        codec_roundtrip(x, codec="amr")
    with pytest.raises(ConfigError, match="GSM 06.10 is defined at 8000 Hz"):
        codec_roundtrip(tone(440), codec="gsm610", sample_rate=RATE)
    with pytest.raises(ConfigError, match="opus_level"):
        codec_roundtrip(x, codec="opus", opus_level=2.0)


# ---------------------------------------------------------------- noise domains: SNR and spectra
@pytest.mark.parametrize("domain", ["phone", "car", "smarthome"])
def test_noise_is_mixed_at_the_drawn_snr(domain):
    """Reverb, EQ and bumps off: output - input is the noise alone, at the drawn SNR within 0.05 dB."""
    x = tone(500, seconds=2.0, amp=0.02)  # quiet, so the final peak limit never rescales
    for k in range(3):
        p = draw_channel(domain, rng=np.random.default_rng(k))
        p = dataclasses.replace(p, rt60=None, highpass_hz=None, peak_hz=None, lowpass_hz=None, bumps=0)
        y = apply_channel(x, p)
        assert float(y.abs().max()) < 0.99
        assert abs(snr(x, y) - p.snr_db) < 0.05, (domain, p.snr_db, snr(x, y))


def test_car_noise_is_low_frequency_heavy_and_loud():
    x = tone(1000, seconds=2.0, amp=0.02)
    p = dataclasses.replace(draw_channel("car", rng=np.random.default_rng(5)), rt60=None)
    assert -5.0 <= p.snr_db <= 5.0
    noise = apply_channel(x, p) - x
    assert band_power(noise, 0, 500) > 0.9 * band_power(noise, 0, RATE / 2)


def test_smarthome_is_far_field_and_phone_has_a_mic_response():
    """Smart home: an impulse comes back with most energy after 5 ms (DRR <= 0 dB) and a 60 dB tail
    over 0.6 s or more; phone: an 80 Hz tone is attenuated > 10 dB while 1 kHz is not."""
    imp = torch.zeros(RATE * 2)
    imp[100] = 0.5
    p = dataclasses.replace(draw_channel("smarthome", rng=np.random.default_rng(2)), snr_db=None, lowpass_hz=None)
    assert 0.6 <= p.rt60 <= 1.2 and p.drr_db <= 0.0
    y = apply_channel(imp, p).double()
    direct = float(y[95:105].pow(2).sum())
    late = float(y[100 + int(0.005 * RATE):].pow(2).sum())
    assert late >= direct
    ph = dataclasses.replace(draw_channel("phone", rng=np.random.default_rng(2)), rt60=None, snr_db=None, bumps=0,
                             peak_hz=None)
    low, mid = tone(80, amp=0.1), tone(1000, amp=0.1)
    gain = lambda s: 10 * math.log10(float(apply_channel(s, ph)[4000:].pow(2).mean() / s[4000:].pow(2).mean()))  # noqa: E731
    assert gain(low) < -10 and abs(gain(mid)) < 1.5


@pytest.mark.parametrize("domain", DOMAINS)
def test_every_domain_keeps_length_and_bounds_on_a_sweep(domain):
    x = sweep(100, 7000, seconds=2.0)
    y = simulate_channel(x, domain=domain, seed=0, utt_id="spk000-001")
    assert y.shape == x.shape and y.dtype == torch.float32
    assert bool(torch.isfinite(y).all()) and float(y.abs().max()) <= 0.99
    assert not torch.equal(x, y)


# ---------------------------------------------------------------- determinism
@pytest.mark.parametrize("domain", DOMAINS)
def test_channels_are_deterministic_in_seed_utterance_and_domain(domain):
    x = sweep(100, 7000, seconds=1.0)
    a = simulate_channel(x, domain=domain, seed=3, utt_id="spk001-004")
    assert torch.equal(a, simulate_channel(x, domain=domain, seed=3, utt_id="spk001-004"))
    assert not torch.equal(a, simulate_channel(x, domain=domain, seed=4, utt_id="spk001-004"))
    assert not torch.equal(a, simulate_channel(x, domain=domain, seed=3, utt_id="spk001-005"))


def test_draws_depend_on_the_domain_and_are_json_able():
    ps = {d: draw_channel(d, rng=channel_rng(seed=0, utt_id="u", domain=d)) for d in DOMAINS}
    assert len({p.noise_seed for p in ps.values()}) == len(DOMAINS)
    for p in ps.values():
        assert ChannelParams(**p.to_dict()) == p


# ---------------------------------------------------------------- bad input
def test_bad_input_is_a_config_error():
    x = tone(440)
    with pytest.raises(ConfigError, match="unknown domain 'radio'; known domains: callcentre, phone, car, smarthome"):
        simulate_channel(x, domain="radio", seed=0, utt_id="u")
    with pytest.raises(ConfigError, match="NaN"):
        simulate_channel(torch.full((100,), float("nan")), domain="car", seed=0, utt_id="u")
    with pytest.raises(ConfigError, match="1-D"):
        simulate_channel(x.reshape(2, -1), domain="car", seed=0, utt_id="u")
    with pytest.raises(ConfigError, match="seed"):
        simulate_channel(x, domain="car", seed=-1, utt_id="u")
    with pytest.raises(ConfigError, match="utt_id"):
        simulate_channel(x, domain="car", seed=0, utt_id="")
    with pytest.raises(ConfigError, match="sample_rate"):
        simulate_channel(x, domain="car", seed=0, utt_id="u", sample_rate=4000)
    with pytest.raises(ConfigError, match="ChannelParams"):
        apply_channel(x, {"domain": "car"})
    with pytest.raises(ConfigError, match="snr_db"):
        mix_at_snr(x, np.ones(x.shape[0]), snr_db=float("nan"))
    with pytest.raises(ConfigError, match="shape"):
        mix_at_snr(x, np.ones(3), snr_db=10.0)
