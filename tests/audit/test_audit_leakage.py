"""Leakage from updates: the speakers of a plain update are found; the opened mask sum gives chance."""

import numpy as np
import pytest
import torch

from privspk.audit.leakage import attribution, linear_probe_scores, opened_mask_sum, round_one_updates, tensor_step
from privspk.errors import ConfigError
from privspk.models.ecapa import ECAPAEncoder
from privspk.models.finetune import apply_recipe
from privspk.training.data import ClientData
from privspk.training.local import LocalSettings

IN_DIM, N_CLIENTS, SPK_PER_CLIENT, UTTS = 8, 3, 6, 8
LOCAL = LocalSettings(batch_size=16, physical_batch=64, lr=2e-2, optimizer="adam", momentum=0.9, crop_frames=20,
                      speaker_batch=2, margin=0.2, scale=30.0, ema=0.0)


def federation(seed: int = 0):
    """Three clients with disjoint synthetic speakers; probe utterances are further recordings of each."""
    gen = torch.Generator().manual_seed(seed)
    feats, clients, utt2spk, probes = {}, {}, {}, {}
    for c in range(N_CLIENTS):
        pairs = []
        for s in range(SPK_PER_CLIENT):
            spk = f"c{c}s{s}"
            centre = 1.5 * torch.randn(IN_DIM, generator=gen)
            for u in range(UTTS + 4):
                utt = f"{spk}_{u}"
                feats[utt] = centre + torch.randn(30, IN_DIM, generator=gen)
                if u < UTTS:
                    pairs.append((utt, spk))
                else:  # enrolment audio the server holds for its candidates
                    probes[utt] = spk
        clients[f"client{c}"] = ClientData.from_pairs(feats.__getitem__, pairs)
    torch.manual_seed(seed)
    enc = ECAPAEncoder(IN_DIM, channels=16, embed_dim=16, dilations=(2, 3), attention_channels=8)
    apply_recipe(enc, "embedding")
    names = [n for n, p in enc.named_parameters() if p.requires_grad]

    def probe(step):
        """The server's attack: the embedding layer's update against the probes' layer inputs."""
        enc.eval()
        with torch.no_grad():
            inputs = {u: enc.embedding.stats_norm(enc.pooled(feats[u][None]))[0].numpy() for u in probes}
        shapes = {n: tuple(p.shape) for n, p in enc.named_parameters()}
        dw = tensor_step(names, shapes, step, "embedding.linear.weight")
        return linear_probe_scores(dw, inputs, probes)

    return enc, names, clients, probes, probe


@pytest.fixture(scope="module")
def plain_updates(tmp_path_factory):
    enc, names, clients, probes, probe = federation()
    weights = {c: 1 / N_CLIENTS for c in clients}
    ups = round_one_updates(enc, names, clients, dp=None, weights=weights, local=LOCAL, local_steps=30,
                            trunk_crops=2, store=tmp_path_factory.mktemp("clients"),
                            randomness="simulation")  # the tiny case repeats exactly (the attack is scored on one draw)
    return enc, names, clients, probes, probe, weights, ups


def test_plain_update_reveals_its_speakers(plain_updates):
    enc, names, clients, probes, probe, weights, ups = plain_updates
    for cid in clients:
        scores = probe(ups[cid] / weights[cid])
        res = attribution(scores, set(clients[cid].speakers))
        assert res.chance == pytest.approx(1 / 3)
        assert res.r_precision >= 4 / 6 and res.auc > 0.85  # chance: 2 of 6, AUC 0.5


def test_opened_mask_sum_does_not_beat_chance(plain_updates):
    """The sum opened by the real mask protocol carries no client index: attribution is at chance."""
    enc, names, clients, probes, probe, weights, ups = plain_updates
    total = opened_mask_sum(ups, options={"clip": 0.5})
    assert np.allclose(total, sum(ups.values()), atol=1e-3)  # it is the sum, up to quantisation
    scores = probe(total)
    per_client = [attribution(scores, set(clients[c].speakers)) for c in clients]
    # the server's scores are the same whichever client it targets, so averaged over the clients the
    # precision is exactly the chance level, and no client is singled out
    assert np.mean([r.r_precision for r in per_client]) == pytest.approx(1 / 3)
    assert np.mean([r.auc for r in per_client]) == pytest.approx(0.5, abs=0.01)


def test_attribution_needs_a_proper_subset():
    with pytest.raises(ConfigError, match="proper, non-empty subset"):
        attribution({"a": 1.0}, {"a"})
