"""ECAPA-style TDNN speaker encoder built from GroupNorm, so Opacus can train it with DP-SGD.

BatchNorm mixes the samples of a batch, which breaks per-sample gradients; every normalisation
here is GroupNorm (per sample, over channel groups and time) or LayerNorm (per sample). The
layout follows ECAPA-TDNN (Desplanques et al., 2020): a k=5 convolution, SE-Res2Net blocks with
growing dilation, multi-layer feature aggregation (MFA), attentive statistics pooling with global
context, and a linear embedding layer followed by a norm.

Shapes: features ``(B, T, F)`` in, embeddings ``(B, embed_dim)`` out; inside, ``(B, C, T)``.

>>> import torch
>>> enc = ECAPAEncoder(40, channels=64)
>>> tuple(enc(torch.randn(2, 120, 40)).shape)
(2, 192)
>>> enc.blocks
('front', 'block1', 'block2', 'block3', 'mfa', 'pooling', 'embedding')
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from privspk.errors import ConfigError, ModelError

__all__ = [
    "AttentiveStatsPooling",
    "ECAPAEncoder",
    "EmbeddingLayer",
    "Res2NetBlock",
    "SEBlock",
    "SERes2Block",
    "TDNNBlock",
]

_STD_EPS = 1e-6  # floor on variances before the square root (keeps gradients finite)


_MIN_GROUP_WIDTH = 4  # channels per GroupNorm group, where the layer is wide enough


def _norm_groups(channels: int, wanted: int) -> int:
    """Largest divisor of ``channels`` that is <= ``wanted`` and leaves >= 4 channels per group."""
    limit = max(1, min(wanted, channels // _MIN_GROUP_WIDTH))
    return next(d for d in range(limit, 0, -1) if channels % d == 0)


def _weighted_mean_std(x: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """Weighted mean and std over time; ``weights`` ``(B, 1|C, T)`` sum to 1 over time."""
    mean = (x * weights).sum(dim=2)
    var = (weights * (x - mean.unsqueeze(2)).pow(2)).sum(dim=2)
    return mean, var.clamp(min=_STD_EPS).sqrt()


class TDNNBlock(nn.Module):
    """Conv1d -> ReLU -> GroupNorm on ``(B, C, T)``, length preserving.

    Example:
        >>> import torch
        >>> tuple(TDNNBlock(40, 64, kernel_size=5)(torch.randn(3, 40, 17)).shape)
        (3, 64, 17)
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, kernel_size: int, dilation: int = 1, gn_groups: int = 8
    ) -> None:
        super().__init__()
        self.conv = nn.Conv1d(
            in_channels, out_channels, kernel_size, dilation=dilation, padding=dilation * (kernel_size - 1) // 2
        )
        self.act = nn.ReLU()
        self.norm = nn.GroupNorm(_norm_groups(out_channels, gn_groups), out_channels)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C_in, T) -> (B, C_out, T)``.

        >>> import torch
        >>> tuple(TDNNBlock(4, 8, kernel_size=3)(torch.randn(1, 4, 6)).shape)
        (1, 8, 6)
        """
        return self.norm(self.act(self.conv(x)))


class Res2NetBlock(nn.Module):
    """Res2Net: split channels into ``scale`` parts; part i > 0 goes through a dilated TDNN after
    adding the previous part's output, giving a hierarchy of receptive fields.

    Example:
        >>> import torch
        >>> tuple(Res2NetBlock(64, scale=8, dilation=3)(torch.randn(2, 64, 30)).shape)
        (2, 64, 30)
    """

    def __init__(self, channels: int, *, scale: int, dilation: int, kernel_size: int = 3, gn_groups: int = 8) -> None:
        super().__init__()
        if channels % scale:
            raise ConfigError(f"channels ({channels}) must be divisible by the Res2Net scale ({scale})")
        width = channels // scale
        self.scale = scale
        self.convs = nn.ModuleList(
            TDNNBlock(width, width, kernel_size=kernel_size, dilation=dilation, gn_groups=gn_groups)
            for _ in range(scale - 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, T) -> (B, C, T)``.

        >>> import torch
        >>> tuple(Res2NetBlock(8, scale=4, dilation=2)(torch.randn(1, 8, 5)).shape)
        (1, 8, 5)
        """
        parts = torch.chunk(x, self.scale, dim=1)
        outputs = [parts[0]]
        previous: Tensor | None = None
        for part, conv in zip(parts[1:], self.convs):
            previous = conv(part if previous is None else part + previous)
            outputs.append(previous)
        return torch.cat(outputs, dim=1)


class SEBlock(nn.Module):
    """Squeeze-excitation: rescale channels by a gate computed from their time mean.

    Example:
        >>> import torch
        >>> tuple(SEBlock(64, se_channels=16)(torch.randn(2, 64, 9)).shape)
        (2, 64, 9)
    """

    def __init__(self, channels: int, *, se_channels: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv1d(channels, se_channels, 1)
        self.act = nn.ReLU()
        self.excite = nn.Conv1d(se_channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, T) -> (B, C, T)``, channels scaled by gates in (0, 1).

        >>> import torch
        >>> x = torch.rand(1, 8, 5) + 0.1
        >>> bool(((SEBlock(8, se_channels=2)(x) / x) < 1).all())
        True
        """
        gate = torch.sigmoid(self.excite(self.act(self.squeeze(x.mean(dim=2, keepdim=True)))))
        return x * gate


class SERes2Block(nn.Module):
    """TDNN 1x1 -> Res2Net (dilated) -> TDNN 1x1 -> SE, plus a residual connection.

    Example:
        >>> import torch
        >>> tuple(SERes2Block(64, scale=8, dilation=2, se_channels=16)(torch.randn(2, 64, 25)).shape)
        (2, 64, 25)
    """

    def __init__(self, channels: int, *, scale: int, dilation: int, se_channels: int, gn_groups: int = 8) -> None:
        super().__init__()
        self.tdnn1 = TDNNBlock(channels, channels, kernel_size=1, gn_groups=gn_groups)
        self.res2net = Res2NetBlock(channels, scale=scale, dilation=dilation, gn_groups=gn_groups)
        self.tdnn2 = TDNNBlock(channels, channels, kernel_size=1, gn_groups=gn_groups)
        self.se = SEBlock(channels, se_channels=se_channels)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, T) -> (B, C, T)``: the block's output added to its input.

        >>> import torch
        >>> tuple(SERes2Block(8, scale=4, dilation=3, se_channels=2)(torch.randn(1, 8, 5)).shape)
        (1, 8, 5)
        """
        return x + self.se(self.tdnn2(self.res2net(self.tdnn1(x))))


class AttentiveStatsPooling(nn.Module):
    """Attentive statistics pooling ``(B, C, T) -> (B, 2C)`` (weighted mean, then weighted std).

    Attention logits per channel and frame come from a 1x1 TDNN (on the frames, with the
    utterance mean and std appended when ``global_context``), tanh, and a 1x1 conv; a softmax over
    time turns them into weights. With all-zero logits (zero final conv) the output is the
    plain mean and (population) std over time.

    Example:
        >>> import torch
        >>> pool = AttentiveStatsPooling(32, attention_channels=16)
        >>> tuple(pool(torch.randn(2, 32, 50)).shape)
        (2, 64)
    """

    def __init__(
        self, channels: int, *, attention_channels: int = 64, global_context: bool = True, gn_groups: int = 8
    ) -> None:
        super().__init__()
        self.global_context = global_context
        in_channels = channels * 3 if global_context else channels
        self.tdnn = TDNNBlock(in_channels, attention_channels, kernel_size=1, gn_groups=gn_groups)
        self.tanh = nn.Tanh()
        self.conv = nn.Conv1d(attention_channels, channels, 1)
        self.channels = channels

    @property
    def out_dim(self) -> int:
        """Width of the pooled vector (2 x channels).

        >>> AttentiveStatsPooling(32).out_dim
        64
        """
        return 2 * self.channels

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, T) -> (B, 2C)``: attention-weighted mean, then std, per channel.

        >>> import torch
        >>> tuple(AttentiveStatsPooling(8, attention_channels=4)(torch.randn(2, 8, 7)).shape)
        (2, 16)
        """
        n_frames = x.shape[2]
        if self.global_context:
            uniform = x.new_full((x.shape[0], 1, n_frames), 1.0 / n_frames)
            mean, std = _weighted_mean_std(x, uniform)
            context = torch.cat(
                [x, mean.unsqueeze(2).expand(-1, -1, n_frames), std.unsqueeze(2).expand(-1, -1, n_frames)], dim=1
            )
        else:
            context = x
        logits = self.conv(self.tanh(self.tdnn(context)))
        weights = torch.softmax(logits, dim=2)
        mean, std = _weighted_mean_std(x, weights)
        return torch.cat([mean, std], dim=1)


class EmbeddingLayer(nn.Module):
    """LayerNorm on the pooled statistics -> Linear -> LayerNorm: ``(B, in_dim) -> (B, embed_dim)``.

    Example:
        >>> import torch
        >>> tuple(EmbeddingLayer(128, 192)(torch.randn(4, 128)).shape)
        (4, 192)
    """

    def __init__(self, in_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.stats_norm = nn.LayerNorm(in_dim)
        self.linear = nn.Linear(in_dim, embed_dim)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_dim) -> (B, embed_dim)``.

        >>> import torch
        >>> tuple(EmbeddingLayer(6, 3)(torch.randn(2, 6)).shape)
        (2, 3)
        """
        return self.norm(self.linear(self.stats_norm(x)))


class ECAPAEncoder(nn.Module):
    """ECAPA-style speaker encoder with GroupNorm: features ``(B, T, F)`` -> embeddings ``(B, embed_dim)``.

    Arguments:
        in_dim: feature width ``F`` (for example 40 or 80 fbank bins).
        channels: width ``C`` of the TDNN trunk.
        embed_dim: embedding size.
        scale: Res2Net scale (``channels`` must be divisible by it).
        dilations: one SE-Res2Net block per entry, with that dilation.
        se_channels: squeeze width of the SE gates (default ``C // 4``).
        attention_channels: hidden width of the attentive pooling.
        mfa_channels: width after multi-layer aggregation (default ``C * len(dilations)``).
        gn_groups: GroupNorm groups at most (fewer where a layer is narrow: each group keeps
            at least 4 channels, and the count divides the layer's width).

    ``forward(feats)`` takes equal-length items (crops, or one utterance at a time): there is
    no padding mask, because GroupNorm statistics over time would still see the padding. Every
    normalisation is per sample, so an item's embedding does not depend on the rest of its batch.

    Attributes ``in_dim``, ``embed_dim``, ``channels``, ``blocks`` (child names in forward
    order, for freezing), ``se_blocks`` (names of the SE-Res2Net blocks) and ``adapters``
    (a ModuleDict, empty until :func:`privspk.models.finetune.add_adapters` fills it; an
    adapter stored under a block's name runs right after that block).

    Example:
        >>> import torch
        >>> enc = ECAPAEncoder(80, channels=64, embed_dim=128, dilations=(2, 3))
        >>> emb = enc(torch.randn(3, 40, 80))
        >>> tuple(emb.shape), enc.se_blocks
        ((3, 128), ('block1', 'block2'))
    """

    def __init__(
        self,
        in_dim: int,
        *,
        channels: int = 128,
        embed_dim: int = 192,
        scale: int = 8,
        dilations: Sequence[int] = (2, 3, 4),
        se_channels: int | None = None,
        attention_channels: int = 64,
        mfa_channels: int | None = None,
        gn_groups: int = 8,
    ) -> None:
        super().__init__()
        dilations = tuple(dilations)
        se_channels = max(1, channels // 4) if se_channels is None else se_channels
        mfa_channels = channels * len(dilations) if mfa_channels is None else mfa_channels
        sizes = {
            "in_dim": in_dim,
            "channels": channels,
            "embed_dim": embed_dim,
            "scale": scale,
            "se_channels": se_channels,
            "attention_channels": attention_channels,
            "mfa_channels": mfa_channels,
            "gn_groups": gn_groups,
        }
        problems = [f"{k} must be a positive int, got {v!r}" for k, v in sizes.items() if type(v) is not int or v < 1]
        if not dilations or any(type(d) is not int or d < 1 for d in dilations):
            problems.append(f"dilations must be a non-empty sequence of positive ints, got {dilations!r}")
        if not problems and channels % scale:
            problems.append(f"channels ({channels}) must be divisible by scale ({scale})")
        if problems:
            raise ConfigError("invalid ECAPAEncoder: " + "; ".join(problems))
        self.in_dim = in_dim
        self.embed_dim = embed_dim
        self.channels = channels
        self.front = TDNNBlock(in_dim, channels, kernel_size=5, gn_groups=gn_groups)
        names = []
        for number, dilation in enumerate(dilations, start=1):
            name = f"block{number}"
            block = SERes2Block(channels, scale=scale, dilation=dilation, se_channels=se_channels, gn_groups=gn_groups)
            self.add_module(name, block)
            names.append(name)
        self.se_blocks: tuple[str, ...] = tuple(names)
        self.mfa = TDNNBlock(channels * len(dilations), mfa_channels, kernel_size=1, gn_groups=gn_groups)
        self.pooling = AttentiveStatsPooling(mfa_channels, attention_channels=attention_channels, gn_groups=gn_groups)
        self.embedding = EmbeddingLayer(self.pooling.out_dim, embed_dim)
        self.blocks: tuple[str, ...] = ("front", *self.se_blocks, "mfa", "pooling", "embedding")
        self.adapters = nn.ModuleDict()

    def forward(self, feats: Tensor) -> Tensor:
        """``(B, T, in_dim)`` features -> ``(B, embed_dim)`` embeddings; ModelError for another shape.

        >>> import torch
        >>> ECAPAEncoder(20, channels=32)(torch.randn(1, 9, 21))
        Traceback (most recent call last):
        ...
        privspk.errors.ModelError: features must be (batch, frames >= 1, 20), got (1, 9, 21)
        """
        if not isinstance(feats, Tensor) or feats.dim() != 3 or feats.shape[2] != self.in_dim or feats.shape[1] < 1:
            shape = tuple(feats.shape) if isinstance(feats, Tensor) else type(feats).__name__
            raise ModelError(f"features must be (batch, frames >= 1, {self.in_dim}), got {shape}")
        return self.embedding(self.pooled(feats))

    def pooled(self, feats: Tensor) -> Tensor:
        """The trunk alone: ``(B, T, in_dim)`` -> pooled statistics ``(B, pool_dim)`` (before ``embedding``).

        >>> import torch
        >>> enc = ECAPAEncoder(20, channels=32, embed_dim=8)
        >>> x = torch.randn(2, 30, 20)
        >>> bool(torch.allclose(enc.embedding(enc.pooled(x)), enc(x)))
        True
        """
        if not isinstance(feats, Tensor) or feats.dim() != 3 or feats.shape[2] != self.in_dim or feats.shape[1] < 1:
            shape = tuple(feats.shape) if isinstance(feats, Tensor) else type(feats).__name__
            raise ModelError(f"features must be (batch, frames >= 1, {self.in_dim}), got {shape}")
        x = self.front(feats.transpose(1, 2))
        outputs = []
        for name in self.se_blocks:
            x = self.get_submodule(name)(x)
            if name in self.adapters:
                x = self.adapters[name](x)
            outputs.append(x)
        x = self.mfa(torch.cat(outputs, dim=1))
        return self.pooling(x)
