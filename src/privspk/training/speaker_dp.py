"""Speaker-level (user-level) DP-SGD: clip each sampled speaker's summed gradient.

With utterance-level DP-SGD the guarantee covers one recording; a speaker with 40
recordings is then protected only at roughly 40x the epsilon. Here the unit is the
speaker: speakers are Poisson-sampled, each sampled speaker contributes the *sum*
of its utterances' gradients, that sum is clipped to ``clip`` in L2 norm (over all
trainable parameters together), the clipped sums are added, Gaussian noise of
standard deviation ``noise_multiplier * clip`` is added, and the result is divided
by the expected number of speakers. Per-sample gradients come from Opacus'
``GradSampleModule``; the grouping, clipping and noise are ours.

>>> import torch
>>> g = [torch.tensor([[3.0, 0.0], [0.0, 4.0], [1.0, 1.0]])]   # 3 samples, 1 param of size 2
>>> groups = torch.tensor([0, 0, 1])                             # samples 0,1 -> speaker 0
>>> summed, norms = clip_group_sum(g, groups, n_groups=2, clip=1.0)
>>> [round(v, 4) for v in summed[0].tolist()], [round(v, 4) for v in norms.tolist()]
([1.3071, 1.5071], [5.0, 1.4142])
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from privspk.errors import ConfigError


def clip_group_sum(
    grad_samples: list[Tensor], groups: Tensor, *, n_groups: int, clip: float
) -> tuple[list[Tensor], Tensor]:
    """Sum per-sample gradients by group, clip each group's sum, and add the clipped sums.

    Args:
        grad_samples: one tensor per parameter, shaped ``(B, *param.shape)``.
        groups: ``(B,)`` int tensor, the group (speaker) of each sample, in ``0..n_groups-1``.
        n_groups: number of groups (groups with no sample contribute nothing).
        clip: L2 bound on each group's summed gradient, over all parameters together.

    Returns:
        ``(clipped_sum_per_param, group_norms_before_clipping)``.
    """
    if clip <= 0:
        raise ConfigError(f"clip must be > 0, got {clip}")
    if groups.dim() != 1:
        raise ConfigError(f"groups must be 1-D, got shape {tuple(groups.shape)}")
    if groups.numel() and (int(groups.min()) < 0 or int(groups.max()) >= n_groups):
        raise ConfigError(f"group ids must lie in 0..{n_groups - 1}")
    for g in grad_samples:
        if g.shape[0] != groups.shape[0]:
            raise ConfigError(f"grad sample batch {g.shape[0]} != {groups.shape[0]} group ids")
    per_group = []
    for g in grad_samples:
        flat = g.reshape(g.shape[0], math.prod(g.shape[1:]))  # explicit width: a batch of 0 is allowed
        acc = torch.zeros(n_groups, flat.shape[1], dtype=flat.dtype, device=flat.device)
        acc.index_add_(0, groups, flat)
        per_group.append(acc)
    sq = sum((acc.pow(2).sum(1) for acc in per_group), torch.zeros(n_groups, dtype=per_group[0].dtype, device=per_group[0].device))
    norms = sq.sqrt()
    factor = (clip / (norms + 1e-6)).clamp(max=1.0)
    summed = [
        (acc * factor[:, None]).sum(0).reshape(g.shape[1:]) for acc, g in zip(per_group, grad_samples)
    ]
    return summed, norms
