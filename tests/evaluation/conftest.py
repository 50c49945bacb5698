"""Stand-ins shared by the evaluation tests: a tiny encoder and synthetic speakers."""

from __future__ import annotations

import math

import pytest
import torch


class MeanStdEncoder(torch.nn.Module):
    """(B, T, F) -> (B, D): mean and std over time, each centred over the bins (a level-free spectral
    shape), then a fixed random linear map; dropout is there to test that embedding runs in eval mode."""

    def __init__(self, n_bins: int, embed_dim: int = 8, *, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.embed_dim = embed_dim
        self.proj = torch.nn.Linear(2 * n_bins, embed_dim)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(embed_dim, 2 * n_bins, generator=gen) / math.sqrt(2 * n_bins))
            self.proj.bias.zero_()
        self.dropout = torch.nn.Dropout(p=0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = x.mean(dim=1), x.std(dim=1, unbiased=False)
        stats = torch.cat([mean - mean.mean(dim=1, keepdim=True), std - std.mean(dim=1, keepdim=True)], dim=1)
        return self.proj(self.dropout(stats))


def tone_family(fundamental: float, *, seconds: float, seed: int, sample_rate: int = 16000) -> torch.Tensor:
    """A "speaker": a harmonic tone near ``fundamental`` with random jitter, phases and a little noise."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * sample_rate), dtype=torch.float64) / sample_rate
    f0 = fundamental * (1.0 + 0.03 * (torch.rand(1, generator=gen).item() - 0.5))
    wav = torch.zeros_like(t)
    for harmonic in range(1, 6):
        phase = 2 * math.pi * torch.rand(1, generator=gen).item()
        wav += torch.sin(2 * math.pi * harmonic * f0 * t + phase) / harmonic
    wav += 0.01 * torch.randn(t.shape, generator=gen, dtype=torch.float64)
    return (0.2 * wav / wav.abs().max()).to(torch.float32)


@pytest.fixture
def mean_std_encoder() -> type[MeanStdEncoder]:
    return MeanStdEncoder


@pytest.fixture
def make_tone():
    return tone_family
