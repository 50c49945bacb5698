"""Positives-only training: secret codewords keep devices apart; the centroid loss collapses."""

import torch

from privspk.crossdevice.device import Device, flat_params, set_flat_params
from privspk.crossdevice.objective import HadamardCode, public_projection
from privspk.models.ecapa import EmbeddingLayer

N_DEV = 12


def _federated_toy(objective: str, *, rounds: int = 40, seed: int = 0) -> tuple[float, float]:
    """FedAvg over 12 one-"speaker" devices (Gaussian clusters); mean pairwise cosine of device means, before/after."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(N_DEV, 12, generator=g)
    data = [c + 0.3 * torch.randn(8, 1, 12, generator=g) for c in centres]
    torch.manual_seed(seed)
    model = EmbeddingLayer(12, 6)
    book, proj = HadamardCode(32), public_projection(length=32, embed_dim=6, seed=0)
    devices = [Device(f"dev{i:05d}", data[i], codeword=book.codeword(2 * i)) for i in range(N_DEV)]

    def spread() -> float:
        with torch.no_grad():
            m = torch.stack([torch.nn.functional.normalize(model(d[:, 0]), dim=1).mean(0) for d in data])
            m = torch.nn.functional.normalize(m, dim=1)
            s = m @ m.T
            return float(s[~torch.eye(N_DEV, dtype=torch.bool)].mean())

    before = spread()
    for r in range(rounds):
        theta = flat_params(model)
        ups = [d.local_update(model, steps=5, lr=0.5, objective=objective, projection=proj, seed=r) for d in devices]
        set_flat_params(model, theta + torch.stack(ups).mean(0))
    return before, spread()


def test_codewords_keep_devices_apart_where_positives_only_collapses():
    before, codewords = _federated_toy("codewords")
    _, centroid = _federated_toy("centroid")
    assert before < 0.3
    # the positives-only baseline maps every device to (nearly) one direction ...
    assert centroid > 0.7, centroid
    # ... the codeword objective keeps the devices' mean embeddings far apart
    assert codewords < 0.35, codewords


def test_hadamard_code_minimum_distance():
    book = HadamardCode(16)
    words = torch.stack([book.codeword(i) for i in range(book.size)])
    dist = (words.unsqueeze(0) != words.unsqueeze(1)).sum(-1)
    off = dist[~torch.eye(book.size, dtype=torch.bool)]
    assert int(off.min()) == book.min_distance == 8
