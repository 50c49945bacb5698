"""A client's local round: non-private, utterance-level and speaker-level DP-SGD.

Every DP step is checked against a hand-written reference (per-sample or per-speaker
gradients from plain backward passes, clipped and averaged), the step count against
the optimizer's own count, and the noise against its expected size.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import privspk.training.local as local
from privspk.errors import ConfigError
from privspk.features.crops import CropDataset
from privspk.models.heads import aam_softmax_loss
from privspk.training.data import ClientData
from privspk.privacy import Mechanism
from privspk.training.local import LocalSettings, sample_rate_for, train_local
from privspk.training.randomness import RoundSeeds
from training_support import client_data, state, tiny_net

MODES = ("plain", "utterance", "speaker")

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")


def assert_near(got: list[torch.Tensor], want: list[torch.Tensor], names: list[str], *, rel: float = 1e-3) -> None:
    """Relative error over all parameters together, and per tensor against that overall scale
    (float32 sums differ in their last bits between the two paths; some gradients are ~0)."""
    scale = math.sqrt(sum(float((w.double() ** 2).sum()) for w in want))
    assert scale > 0
    for g, w, n in zip(got, want, names):
        err = float((g.double() - w.double()).norm())
        assert err <= rel * scale, f"{n}: |diff| {err:.3g}, |want| {float(w.norm()):.3g}, overall {scale:.3g}"


def _dp(mode: str, data: ClientData, *, batch_size: int, speaker_batch: int, sigma: float = 1.0,
        clip: float = 1.0, steps: int = 2, randomness: str = "secret") -> Mechanism | None:
    if mode == "plain":
        return None
    q = sample_rate_for(data, unit=mode, batch_size=batch_size, speaker_batch=speaker_batch)
    return Mechanism(unit=mode, noise_multiplier=sigma, clip=clip, sample_rate=q, steps=steps, delta=1e-5,
                     randomness=randomness)


def _run(mode, data, *, seed=0, steps=2, batch_size=4, physical_batch=2, speaker_batch=2, freeze_front=True,
         sigma=1.0, clip=1.0, lr=1e-2, optimizer="adam", momentum=0.9, net=None, randomness="simulation"):
    net = net if net is not None else tiny_net(data.n_speakers, freeze_front=freeze_front)
    dp = _dp(mode, data, batch_size=batch_size, speaker_batch=speaker_batch, sigma=sigma, clip=clip, steps=steps,
             randomness=randomness)
    settings = LocalSettings(batch_size=batch_size, physical_batch=physical_batch, lr=lr, optimizer=optimizer,
                             momentum=momentum, crop_frames=20, speaker_batch=speaker_batch)
    res = train_local(net, data, settings, dp=dp, steps=steps, seed=seed, randomness=randomness)
    return net, res


@pytest.fixture(scope="module")
def data() -> ClientData:
    return client_data(4, 4, frames=30, seed=1)  # 16 utterances of 4 speakers


# --------------------------------------------------------------------------- every mode
@pytest.mark.parametrize("mode", MODES)
def test_each_mode_trains_only_the_trainable_parameters_and_is_deterministic(mode, data):
    before = state(tiny_net(data.n_speakers, freeze_front=True))
    net_a, res_a = _run(mode, data, seed=5)
    net_b, res_b = _run(mode, data, seed=5)
    net_c, _ = _run(mode, data, seed=6)
    after_a, after_b, after_c = state(net_a), state(net_b), state(net_c)
    trainable = {n for n, p in net_a.named_parameters() if p.requires_grad}
    frozen = set(before) - trainable
    assert frozen and trainable
    for n in frozen:
        assert torch.equal(after_a[n], before[n]), f"frozen {n} changed"
    changed = [n for n in trainable if not torch.equal(after_a[n], before[n])]
    assert len(changed) == len(trainable), f"unchanged trainable params: {trainable - set(changed)}"
    assert all(torch.equal(after_a[n], after_b[n]) for n in before), "same seed, different result"
    assert any(not torch.equal(after_a[n], after_c[n]) for n in trainable), "another seed, same result"
    assert res_a.steps == 2 and res_a.loss == res_b.loss and math.isfinite(res_a.loss)
    assert res_a.examples > 0 and res_a.seconds > 0 and res_a.step_seconds == pytest.approx(res_a.seconds / 2)
    assert res_a.dp == _dp(mode, data, batch_size=4, speaker_batch=2, randomness="simulation")
    assert not net_a.training  # handed back in eval mode


@pytest.mark.parametrize("mode", ["utterance", "speaker"])
def test_secret_noise_cannot_be_replayed_from_the_seed(mode, data):
    """With ``secret`` randomness the same seed gives other draws each time; with ``simulation``
    the draws are the seed's. At sigma 0 on a single full batch (every item, one possible crop)
    only the noise could differ, and the secret and simulated runs agree."""
    a, b = (state(_run(mode, data, seed=5, randomness="secret")[0]) for _ in range(2))
    seeded = state(_run(mode, data, seed=5)[0])
    trainable = [n for n, p in tiny_net(data.n_speakers, freeze_front=True).named_parameters() if p.requires_grad]
    assert any(not torch.equal(a[n], b[n]) for n in trainable), "two secret draws gave the same noise"
    assert any(not torch.equal(a[n], seeded[n]) for n in trainable), "the secret draw equals the seeded one"
    one = client_data(4, 1, frames=30, seed=1)  # one utterance per speaker, 23..37 frames: one possible pick
    fixed = ClientData.from_pairs(lambda u: one.getter(u)[:20], zip(one.utt_ids, (one.speakers[i] for i in
                                                                                  one.labels)))
    quiet = []
    for flag in ("secret", "simulation"):
        net = tiny_net(fixed.n_speakers, freeze_front=True)
        dp = Mechanism(unit=mode, noise_multiplier=0.0, clip=1.0, sample_rate=1.0, steps=2, delta=1e-5,
                       randomness=flag)
        train_local(net, fixed, LocalSettings(batch_size=4, physical_batch=64, lr=1e-2, crop_frames=20,
                                              speaker_batch=1), dp=dp, seed=5)
        quiet.append(state(net))
    assert all(torch.equal(quiet[0][n], quiet[1][n]) for n in trainable)


class _CountingSGD(torch.optim.SGD):
    calls = 0

    def step(self, closure=None):
        type(self).calls += 1
        return super().step(closure)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("steps", "physical_batch"), [(3, 3)])
def test_step_count_is_the_number_of_optimizer_updates(mode, steps, physical_batch, data, monkeypatch):
    monkeypatch.setattr(local, "_optimizer", lambda params, settings, ema=None: _CountingSGD(params, lr=settings.lr))
    _CountingSGD.calls = 0
    _, res = _run(mode, data, steps=steps, batch_size=8, physical_batch=physical_batch, speaker_batch=2,
                  optimizer="sgd")
    assert _CountingSGD.calls == steps
    assert res.steps == steps
    if mode == "plain":
        assert res.examples == steps * 8


def test_empty_poisson_batches_are_noise_only_steps(monkeypatch):
    """With q = 1/2 over 2 utterances a quarter of the batches are empty; each still is a step."""
    shapes: list[int] = []
    real_loss = local.aam_softmax_loss

    def recording_loss(cos, y, **kw):
        shapes.append(int(cos.shape[0]))
        return real_loss(cos, y, **kw)

    monkeypatch.setattr(local, "aam_softmax_loss", recording_loss)
    monkeypatch.setattr(local, "_optimizer", lambda params, settings, ema=None: _CountingSGD(params, lr=settings.lr))
    _CountingSGD.calls = 0
    small = client_data(2, 1, frames=30, seed=3)
    net, res = _run("utterance", small, steps=12, batch_size=1, physical_batch=1, seed=0, optimizer="sgd")
    assert sample_rate_for(small, unit="utterance", batch_size=1, speaker_batch=1) == 0.5
    assert 0 in shapes, "no empty batch drawn; pick another seed"
    assert _CountingSGD.calls == 12 and res.steps == 12
    assert res.examples == sum(shapes)
    assert math.isfinite(res.loss)
    assert all(bool(torch.isfinite(p).all()) for p in net.parameters())


# --------------------------------------------------------------------------- sampling rates
def test_sample_rate_for_known_values():
    d = ClientData.from_pairs(lambda u: torch.zeros(1, 1), [(f"u{i}", f"s{i % 10}") for i in range(100)])
    assert sample_rate_for(d, unit="utterance", batch_size=10, speaker_batch=4) == 0.1
    assert sample_rate_for(d, unit="utterance", batch_size=30, speaker_batch=4) == 0.25  # 1 / ceil(100 / 30)
    assert sample_rate_for(d, unit="utterance", batch_size=500, speaker_batch=4) == 1.0
    assert sample_rate_for(d, unit="speaker", batch_size=16, speaker_batch=4) == 0.4  # 4 of 10 speakers
    assert sample_rate_for(d, unit="speaker", batch_size=400, speaker_batch=4) == 1.0  # capped
    with pytest.raises(ConfigError, match="privacy unit must be one of"):
        sample_rate_for(d, unit="client", batch_size=16, speaker_batch=4)


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 5000), batch=st.integers(1, 6000))
def test_utterance_rate_is_opacus_rule(n, batch):
    """q = 1 / (number of batches of an epoch): the expected batch n*q never exceeds the asked batch,
    and one batch fewer per epoch would exceed it."""
    d = ClientData.from_pairs(lambda u: torch.zeros(1, 1), [(f"u{i}", "s") for i in range(n)])
    q = sample_rate_for(d, unit="utterance", batch_size=batch, speaker_batch=1)
    k = round(1 / q)
    assert abs(1 / q - k) < 1e-9 and k >= 1
    assert n / k <= batch + 1e-9
    assert k == 1 or n / (k - 1) > batch


@settings(max_examples=50, deadline=None)
@given(n_spk=st.integers(1, 300), batch=st.integers(1, 512), speaker_batch=st.integers(1, 32))
def test_speaker_rate_gives_the_expected_batch(n_spk, batch, speaker_batch):
    d = ClientData.from_pairs(lambda u: torch.zeros(1, 1), [(f"u{i}", f"s{i}") for i in range(n_spk)])
    q = sample_rate_for(d, unit="speaker", batch_size=batch, speaker_batch=speaker_batch)
    assert 0 < q <= 1
    if q < 1:
        assert q * n_spk * speaker_batch == pytest.approx(batch)
    else:
        assert n_spk * speaker_batch <= batch


# --------------------------------------------------------------------------- exact DP steps
def _crops(data, *, epoch=0, seed=0, n_frames=20):
    """The crops a simulated round with run seed ``seed`` takes in ``epoch``."""
    crop_seed = RoundSeeds.draw("simulation", seed=seed).crops
    ds = CropDataset(data.getter, data.utt_ids, data.labels, n_frames=n_frames, seed=crop_seed)
    ds.set_epoch(epoch)
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    return torch.stack(xs), torch.tensor(ys)


def _grads(net, x, y, names, *, reduction="sum"):
    net.zero_grad(set_to_none=True)
    aam_softmax_loss(net(x), y, reduction=reduction).backward()
    params = dict(net.named_parameters())
    return [params[n].grad.detach().clone() for n in names]


def _delta(before, after, names):
    return [after[n] - before[n] for n in names]


@pytest.mark.parametrize("clip", [1e6, 0.02])
def test_one_utterance_dp_step_equals_clipped_per_sample_reference_with_frozen_layers(clip, data):
    """sigma = 0, q = 1 (every utterance in the batch), SGD lr = 1: the update is minus the mean of
    the per-sample gradients, each clipped to ``clip``; physical batches of 3 are accumulated."""
    net = tiny_net(data.n_speakers, seed=3, freeze_front=True)
    ref = tiny_net(data.n_speakers, seed=3, freeze_front=True)
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    before = state(net)
    _run("utterance", data, net=net, steps=1, batch_size=len(data), physical_batch=3, sigma=0.0, clip=clip,
         lr=1.0, optimizer="sgd", momentum=0.0)
    step = _delta(before, state(net), names)
    x, y = _crops(data)
    ref.train()
    per_sample = [_grads(ref, x[i : i + 1], y[i : i + 1], names) for i in range(len(data))]
    norms = [math.sqrt(sum(float((g * g).sum()) for g in gs)) for gs in per_sample]
    if clip < 1:
        assert min(norms) > clip  # every sample is clipped
    expect = [-sum(gs[k] * min(1.0, clip / (nrm + 1e-6)) for gs, nrm in zip(per_sample, norms)) / len(data)
              for k in range(len(names))]
    assert_near(step, expect, names)
    if clip > 1:  # and with no clipping that is the plain mean gradient of the batch
        assert_near(step, [-g for g in _grads(ref, x, y, names, reduction="mean")], names)


@pytest.mark.parametrize("clip", [1e6, 0.05])
def test_one_speaker_dp_step_equals_clipped_per_speaker_reference(clip, data):
    """sigma = 0, every speaker sampled with all 4 of its utterances, SGD lr = 1: the update is minus
    the sum over speakers of each speaker's clipped summed gradient, over the expected speaker count."""
    net = tiny_net(data.n_speakers, seed=4, freeze_front=True)
    ref = tiny_net(data.n_speakers, seed=4, freeze_front=True)
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    before = state(net)
    # physical batch 9 holds two whole speakers (8 utterances): the 4 speakers come in two chunks
    _run("speaker", data, net=net, steps=1, batch_size=16, physical_batch=9, speaker_batch=4, sigma=0.0,
         clip=clip, lr=1.0, optimizer="sgd", momentum=0.0)
    assert sample_rate_for(data, unit="speaker", batch_size=16, speaker_batch=4) == 1.0
    step = _delta(before, state(net), names)
    x, y = _crops(data)
    ref.train()
    per_speaker = [_grads(ref, x[y == s], y[y == s], names) for s in range(data.n_speakers)]
    norms = [math.sqrt(sum(float((g * g).sum()) for g in gs)) for gs in per_speaker]
    if clip < 1:
        assert min(norms) > clip
    expect = [-sum(gs[k] * min(1.0, clip / (nrm + 1e-6)) for gs, nrm in zip(per_speaker, norms)) / data.n_speakers
              for k in range(len(names))]
    assert_near(step, expect, names)


@pytest.mark.parametrize("mode", ["utterance", "speaker"])
def test_noise_dominates_the_update_and_grows_with_sigma(mode, data):
    """One SGD step: ||update|| = lr * ||sum of clipped grads + N(0, (sigma C)^2 I)|| / E[batch].
    For a large sigma the noise term dominates: its norm is lr sigma C sqrt(d) / E[batch]."""
    lr, clip = 1e-3, 1.0
    norms = {}
    for sigma in (0.0, 100.0, 1000.0):
        net = tiny_net(data.n_speakers, freeze_front=True)
        names = [n for n, p in net.named_parameters() if p.requires_grad]
        before = state(net)
        _run(mode, data, net=net, steps=1, batch_size=8, physical_batch=4, speaker_batch=2, sigma=sigma, clip=clip,
             lr=lr, optimizer="sgd", momentum=0.0)
        delta = _delta(before, state(net), names)
        norms[sigma] = math.sqrt(sum(float((t.double() ** 2).sum()) for t in delta))
    dim = sum(p.numel() for p in tiny_net(data.n_speakers, freeze_front=True).parameters() if p.requires_grad)
    expected_batch = 8 if mode == "utterance" else 8 / 2  # utterances, or speakers (8 / speaker_batch)
    # without noise: at most every sampled unit's clipped gradient (Poisson draws at most all of them)
    units = len(data) if mode == "utterance" else data.n_speakers
    assert norms[0.0] <= lr * clip * units / expected_batch
    for sigma in (100.0, 1000.0):
        assert norms[sigma] == pytest.approx(lr * sigma * clip * math.sqrt(dim) / expected_batch, rel=0.05)
    assert norms[1000.0] / norms[100.0] == pytest.approx(10.0, rel=0.05)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"unit": "client"}, "privacy unit must be one of"),
        ({"noise_multiplier": -0.1}, "noise_multiplier must be >= 0"),
        ({"noise_multiplier": float("nan")}, "noise_multiplier must be >= 0"),
        ({"noise_multiplier": float("inf")}, "noise_multiplier must be >= 0"),
        ({"clip": 0.0}, "clip must be > 0"),
        ({"sample_rate": 0.0}, r"sample_rate must be in \(0, 1\]"),
        ({"sample_rate": 1.5}, r"sample_rate must be in \(0, 1\]"),
    ],
)
def test_dp_settings_refuse_bad_values(kwargs, match):
    args = {"unit": "utterance", "noise_multiplier": 1.0, "clip": 1.0, "sample_rate": 0.1, "steps": 1, "delta": 1e-5,
            **kwargs}
    with pytest.raises(ConfigError, match=match):
        Mechanism(**args)


def test_train_local_refuses_zero_steps_and_a_model_with_nothing_to_train(data):
    net = tiny_net(data.n_speakers)
    with pytest.raises(ConfigError, match="steps must be >= 1, got 0"):
        train_local(net, data, LocalSettings(batch_size=4, physical_batch=4, lr=1e-3), dp=None, steps=0)
    for p in net.parameters():
        p.requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        train_local(net, data, LocalSettings(batch_size=4, physical_batch=4, lr=1e-3), dp=None, steps=1)


def test_unknown_optimizer_is_refused(data):
    with pytest.raises(ConfigError, match="optimizer must be adam or sgd, got 'lbfgs'"):
        _run("plain", data, optimizer="lbfgs")
