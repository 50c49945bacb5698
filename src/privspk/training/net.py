"""Encoder + per-client AAM head as one module, so DP-SGD clips their gradients together.

The head never leaves its client; it is trained with the same noisy gradients as
the encoder, so nothing trained on raw data without noise ever feeds a released
update.

>>> import torch
>>> from torch import nn
>>> from privspk.models.heads import AAMHead
>>> enc = nn.Sequential(nn.Flatten(), nn.Linear(20, 8))
>>> enc.embed_dim = 8
>>> net = SpeakerNet(enc, AAMHead(8, 3))
>>> tuple(net(torch.randn(2, 5, 4)).shape)
(2, 3)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SpeakerNet(nn.Module):
    """``forward(features (B, T, F)) -> cosines (B, n_speakers)``."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        """Cosine of each embedding with each local speaker centre."""
        return self.head(self.encoder(x))


def trainable_state(module: nn.Module) -> dict[str, Tensor]:
    """Detached copies of the parameters that require grad, by name.

    >>> lin = nn.Linear(2, 2); lin.bias.requires_grad_(False)
    Parameter containing:
    ...
    >>> sorted(trainable_state(lin))
    ['weight']
    """
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def flatten(state: dict[str, Tensor], names: list[str]) -> torch.Tensor:
    """Concatenate the named tensors into one float64 vector (in ``names`` order)."""
    return torch.cat([state[n].reshape(-1).to(torch.float64) for n in names]) if names else torch.zeros(0)


def unflatten_into(module: nn.Module, names: list[str], vector: torch.Tensor, *, add: bool) -> None:
    """Write (or add, when ``add``) slices of ``vector`` into the named parameters of ``module``."""
    params = dict(module.named_parameters())
    total = sum(params[n].numel() for n in names)
    if total != vector.numel():  # checked first: nothing is written on a mismatch
        from privspk.errors import ModelError

        raise ModelError(f"vector has {vector.numel()} values, the named parameters {total}")
    offset = 0
    with torch.no_grad():
        for n in names:
            p = params[n]
            chunk = vector[offset : offset + p.numel()].reshape(p.shape).to(p.dtype)
            if add:
                p.add_(chunk)
            else:
                p.copy_(chunk)
            offset += p.numel()
