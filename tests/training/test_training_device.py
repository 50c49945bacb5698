"""``[run] device``: resolved once, refused clearly when CUDA is asked for and absent, and every
training/embedding path hands its results back on the CPU.

The CUDA comparisons run only where torch sees a CUDA device (they are skipped on CPU-only CI);
they check that a round trained on the GPU matches the CPU round within a float tolerance when no
noise is drawn (the batches and crops come from the same CPU generators on both devices).
"""

from __future__ import annotations

import math

import pytest
import torch

import privspk.device as device_mod
from privspk.api import check_run_config
from privspk.config import RunConfig, RunSection
from privspk.device import DEVICES, on_device, resolve_device, torch_device
from privspk.errors import ConfigError
from privspk.evaluation.embed import embed_features
from privspk.privacy import Mechanism
from privspk.training.local import LocalSettings, sample_rate_for, train_local
from privspk.training.pretrain import pretrain
from training_support import client_data, state, tiny_encoder, tiny_net

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")
HAS_CUDA = torch.cuda.is_available()
MODES = ("plain", "utterance", "speaker")


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_config_accepts_the_three_devices_and_refuses_others():
    assert RunConfig().run.device == "cpu"  # the default: CI and published results stay on the CPU
    for name in DEVICES:
        assert RunConfig.from_toml(f'[run]\ndevice = "{name}"\n').run.device == name
    with pytest.raises(ConfigError, match=r"\[run\] device must be auto\|cpu\|cuda, got 'gpu'"):
        RunConfig.from_toml('[run]\ndevice = "gpu"\n')
    with pytest.raises(ConfigError, match=r"\[run\] unknown key 'devices'"):
        RunConfig.from_toml('[run]\ndevices = "cpu"\n')
    cfg = RunConfig(run=RunSection(device="auto"))
    assert RunConfig.from_toml(cfg.to_toml()) == cfg


def test_cuda_without_a_cuda_device_is_a_clear_config_error(no_cuda):
    with pytest.raises(ConfigError, match=r'device = "cuda" but torch sees no CUDA device.*set device = "cpu"'):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="no CUDA device"):  # a run is refused before any work
        check_run_config(RunConfig(run=RunSection(device="cuda")))
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_auto_follows_what_torch_sees(monkeypatch):
    assert resolve_device("auto").type == ("cuda" if HAS_CUDA else "cpu")  # on this machine
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda") == torch.device("cuda")


def test_device_names_torch_does_not_know_are_refused():
    with pytest.raises(ConfigError, match="device must be one of auto|cpu|cuda"):
        resolve_device("tpu")
    with pytest.raises(ConfigError, match="must name a torch device"):
        torch_device("gpu0")
    data = client_data(2, 2, frames=30)
    with pytest.raises(ConfigError, match="must name a torch device"):
        pretrain(tiny_encoder(), data, steps=1, batch_size=2, lr=1e-3, crop_frames=20, seed=0, device="gpu0")


def test_on_device_puts_the_module_back_where_it_was_also_on_error():
    lin = torch.nn.Linear(2, 1)
    with pytest.raises(ValueError):
        with on_device(lin, "cpu"):
            raise ValueError("boom")
    assert lin.weight.device.type == "cpu"
    assert device_mod.__all__ == ["DEVICES", "on_device", "resolve_device", "torch_device"]


def _dp(mode, data, sigma):
    if mode == "plain":
        return None
    q = sample_rate_for(data, unit=mode, batch_size=4, speaker_batch=2)
    return Mechanism(unit=mode, noise_multiplier=sigma, clip=1.0, sample_rate=q, steps=2, delta=1e-5,
                     randomness="simulation")


def _local(mode, data, *, device, sigma=1.0):
    net = tiny_net(data.n_speakers, freeze_front=True)
    settings = LocalSettings(batch_size=4, physical_batch=2, lr=1e-2, crop_frames=20, speaker_batch=2, device=device)
    res = train_local(net, data, settings, dp=_dp(mode, data, sigma), steps=2, seed=3, randomness="simulation")
    return net, res


@pytest.mark.parametrize("mode", MODES)
def test_cpu_device_is_the_default_path_bit_for_bit(mode):
    data = client_data(4, 4, frames=30, seed=1)
    net_a, res_a = _local(mode, data, device="cpu")
    net_b = tiny_net(data.n_speakers, freeze_front=True)
    res_b = train_local(net_b, data, LocalSettings(batch_size=4, physical_batch=2, lr=1e-2, crop_frames=20,
                                                   speaker_batch=2), dp=_dp(mode, data, 1.0), steps=2, seed=3,
                        randomness="simulation")
    a, b = state(net_a), state(net_b)
    assert all(torch.equal(a[n], b[n]) for n in a) and res_a.loss == res_b.loss
    assert all(p.device.type == "cpu" for p in net_a.parameters())


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device: the GPU path is checked by benchmarks/gpu_speedup.py "
                                          "and this test on a machine with one")
@pytest.mark.parametrize("mode", MODES)
def test_a_cuda_round_matches_the_cpu_round_without_noise_and_comes_back_on_the_cpu(mode):
    data = client_data(4, 4, frames=30, seed=1)
    net_c, res_c = _local(mode, data, device="cpu", sigma=0.0)
    net_g, res_g = _local(mode, data, device="cuda", sigma=0.0)
    assert all(p.device.type == "cpu" for p in net_g.parameters())
    c, g = state(net_c), state(net_g)
    for n in c:  # float32 kernels differ between devices: a stated tolerance, not bits
        assert torch.allclose(c[n], g[n], rtol=1e-3, atol=1e-4), n
    assert math.isclose(res_c.loss, res_g.loss, rel_tol=1e-3)
    _, res_noisy = _local(mode, data, device="cuda", sigma=1.0)  # the noise is drawn on the GPU
    assert math.isfinite(res_noisy.loss)


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_cuda_pretraining_and_embedding_hand_back_cpu_results():
    data = client_data(3, 3, frames=30)
    enc_c, enc_g = tiny_encoder(0), tiny_encoder(0)
    rc = pretrain(enc_c, data, steps=3, batch_size=4, lr=1e-3, crop_frames=20, seed=7)
    rg = pretrain(enc_g, data, steps=3, batch_size=4, lr=1e-3, crop_frames=20, seed=7, device="cuda")
    assert all(p.device.type == "cpu" for p in enc_g.parameters())
    assert rg.losses == pytest.approx(rc.losses, rel=1e-3)
    feats = {"a": torch.randn(40, 8), "b": torch.randn(30, 8)}
    with on_device(enc_g, "cuda") as dev:
        emb_g = embed_features(enc_g, feats, device=dev)
    emb_c = embed_features(enc_g, feats)
    for u in feats:
        assert emb_g[u] == pytest.approx(emb_c[u], abs=1e-4)
