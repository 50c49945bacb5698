"""Issue 19, finding 2: an attacker who knows the run config replays a client's random draws.

The accountant's epsilon assumes that the DP noise, the Poisson batch membership, the speaker
sample and the crop choice are hidden from the adversary. Here the adversary knows everything
in the config, the seed included, and reruns the round on the same public inputs: if its replay
repeats the victim's draws, the noise can be subtracted and the sampling is known, and the
printed epsilon (with amplification by sampling) is not what the run is worth.
"""

from __future__ import annotations

import hashlib

import pytest
import torch

from privspk.features.crops import CropDataset
from privspk.training.data import ClientData
from privspk.privacy import Mechanism
from privspk.training.local import LocalSettings, sample_rate_for, train_local
from privspk.training.randomness import RoundSeeds
from training_support import client_data, state, tiny_net

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")

SEED = 11  # the run's seed: written in the config, known to the attacker
SECRET_NOISE = {"randomness": "secret"}  # the deployment setting, named


def _round(data: ClientData, *, unit: str, sample_rate: float | None = None, seed_offset: int = 0,
           randomness: str = "secret") -> dict[str, torch.Tensor]:
    net = tiny_net(data.n_speakers, freeze_front=True)
    q = sample_rate if sample_rate is not None else sample_rate_for(data, unit=unit, batch_size=4, speaker_batch=2)
    dp = Mechanism(unit=unit, noise_multiplier=1.0, clip=1.0, sample_rate=q, steps=3, delta=1e-5,
                   randomness=randomness)
    train_local(net, data, LocalSettings(batch_size=4, physical_batch=4, lr=1e-2, crop_frames=20, speaker_batch=2),
                dp=dp, seed=SEED + seed_offset)
    return state(net)


def _single_draw_data(unit: str) -> ClientData:
    """Utterances of exactly the crop length (one possible crop); for the speaker unit one utterance
    per speaker (one possible pick). At sample rate 1 every draw is then forced."""
    data = client_data(4, 1 if unit == "speaker" else 3, frames=30, seed=1)  # lengths 23..37 frames
    return ClientData.from_pairs(lambda u: data.getter(u)[:20], zip(data.utt_ids, (data.speakers[i] for i in
                                                                                   data.labels)))


def _draws(monkeypatch, data: ClientData, *, unit: str, **kwargs) -> list[tuple[int, str]]:
    """Every item the round's batches took, in order: (utterance index, digest of its crop).

    That sequence is the round's batch membership, speaker sample and crop choice."""
    seen: list[tuple[int, str]] = []
    original = CropDataset.__getitem__

    def recording(self, index):
        crop, label = original(self, index)
        seen.append((int(index), hashlib.sha256(crop.numpy().tobytes()).hexdigest()))
        return crop, label

    monkeypatch.setattr(CropDataset, "__getitem__", recording)
    _round(data, unit=unit, **kwargs)
    monkeypatch.setattr(CropDataset, "__getitem__", original)
    return seen


@pytest.mark.parametrize("unit", ["utterance", "speaker"])
def test_attacker_cannot_replay_the_default_noise(unit):
    """Every utterance in every batch, a single possible crop and (speaker unit) a single possible
    utterance per speaker: two rounds can differ only by their noise. The attacker's replay with the config's
    seed must not reproduce the victim's noisy update."""
    fixed = _single_draw_data(unit)
    victim, replay = (_round(fixed, unit=unit, sample_rate=1.0) for _ in range(2))
    trainable = [n for n, p in tiny_net(fixed.n_speakers, freeze_front=True).named_parameters() if p.requires_grad]
    same = all(torch.equal(victim[n], replay[n]) for n in trainable)
    assert not same, "the attacker's replay reproduced the victim's noisy update bit for bit (noise known)"


@pytest.mark.parametrize("unit", ["utterance", "speaker"])
@pytest.mark.parametrize("setting", ["default", "secret noise"])
def test_attacker_cannot_replay_batches_speakers_or_crops(unit, setting, monkeypatch):
    """With the default settings, and even with the noise drawn secretly, the attacker's replay
    must not repeat which utterances (speaker unit: which speakers and which of their
    utterances) the victim's batches took, nor their crops."""
    data = client_data(6, 4, frames=30, seed=2)
    kwargs = SECRET_NOISE if setting == "secret noise" else {}
    victim = _draws(monkeypatch, data, unit=unit, **kwargs)
    replay = _draws(monkeypatch, data, unit=unit, **kwargs)
    assert victim, "the round took no item at all"
    assert victim != replay, (f"the attacker's replay repeated all {len(victim)} draws of the victim's round "
                              "(batch membership, speaker sample and crops known)")


@pytest.mark.parametrize("unit", ["utterance", "speaker"])
def test_simulation_randomness_replays_bit_for_bit(unit, monkeypatch):
    """The reproducible mode, named as such, still repeats every draw and the weights exactly."""
    data = client_data(6, 4, frames=30, seed=2)
    first = _draws(monkeypatch, data, unit=unit, randomness="simulation")
    again = _draws(monkeypatch, data, unit=unit, randomness="simulation")
    assert first and first == again
    a, b = (_round(data, unit=unit, randomness="simulation") for _ in range(2))
    assert all(torch.equal(a[n], b[n]) for n in a)
    other = _draws(monkeypatch, data, unit=unit, randomness="simulation", seed_offset=1)
    assert other != first, "another run seed gave the same draws"


def test_cached_trunk_crops_are_secret_by_default():
    """Embedding-recipe runs train on pooled statistics of cached crops: the crop each step takes
    (PooledDataset) comes from the round's secret crop generator too."""
    from privspk.training.trunk import PooledDataset

    pooled = torch.randn(12, 4, 5)
    seeds = [RoundSeeds.draw("secret", seed=SEED).crops for _ in range(2)]
    picks = [[PooledDataset(pooled, [0] * 12, seed=s)[i][0] for i in range(12)] for s in seeds]
    assert any(not torch.equal(x, y) for x, y in zip(*picks))
    sim = [RoundSeeds.draw("simulation", seed=SEED).crops for _ in range(2)]
    assert sim[0] == sim[1]
