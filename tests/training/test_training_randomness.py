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
from privspk.training.local import DPSettings, sample_rate_for, train_local
from training_support import client_data, state, tiny_net

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")

SEED = 11  # the run's seed: written in the config, known to the attacker
SECRET_NOISE = {"secret_noise": True}  # the strongest setting this code offers for a deployment


def _round(data: ClientData, *, unit: str, sample_rate: float | None = None, **kwargs) -> dict[str, torch.Tensor]:
    net = tiny_net(data.n_speakers, freeze_front=True)
    q = sample_rate if sample_rate is not None else sample_rate_for(data, unit=unit, batch_size=4, speaker_batch=2)
    dp = DPSettings(unit=unit, noise_multiplier=1.0, clip=1.0, sample_rate=q)
    train_local(net, data, steps=3, batch_size=4, physical_batch=4, lr=1e-2, crop_frames=20, speaker_batch=2,
                dp=dp, seed=SEED, **kwargs)
    return state(net)


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
    """Every utterance in every batch and a single possible crop (utterances of exactly the crop
    length): two rounds can differ only by their noise. The attacker's replay with the config's
    seed must not reproduce the victim's noisy update."""
    data = client_data(4, 3, frames=20, seed=1)
    fixed = ClientData.from_pairs(lambda u: data.getter(u)[:20], zip(data.utt_ids, (data.speakers[i] for i in
                                                                                    data.labels)))
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
