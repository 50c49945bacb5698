"""AAM-softmax (ArcFace) speaker classification head, split into a plain head and a margin loss.

The head maps embeddings to cosines with the class centres and takes no labels, so Opacus can
compute per-sample gradients of it (hooks fall back to functorch for this layer, and a
``forward(x, labels)`` would not fit either mode). The additive angular margin lives in
:func:`aam_softmax_loss`: the target logit becomes ``s * cos(theta + m)``, the others ``s * cos``.

>>> import torch
>>> head = AAMHead(16, 5)
>>> cos = head(torch.randn(4, 16))
>>> tuple(cos.shape), bool((cos.abs() <= 1 + 1e-6).all())
((4, 5), True)
>>> float(aam_softmax_loss(cos, torch.tensor([0, 1, 2, 3])).detach()) > 0
True
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from privspk.errors import ConfigError, ModelError

__all__ = ["AAMHead", "AAMSoftmaxLoss", "aam_softmax_loss"]

_NORM_EPS = 1e-12
_REDUCTIONS = ("mean", "sum", "none")


class AAMHead(nn.Module):
    """Cosine classifier: ``forward(emb (B, E)) -> (B, n_classes)`` cosines in [-1, 1].

    Both the embeddings and the class weight rows are L2-normalised, so the output is the
    cosine similarity of each embedding with each class centre. Speaker heads stay with their
    client (they would reveal its speakers); only the encoder is shared.

    Example:
        >>> import torch
        >>> head = AAMHead(8, 3)
        >>> with torch.no_grad():
        ...     _ = head.weight.copy_(torch.eye(3, 8))
        >>> head(torch.tensor([[2.0, 0, 0, 0, 0, 0, 0, 0]])).tolist()
        [[1.0, 0.0, 0.0]]
    """

    def __init__(self, embed_dim: int, n_classes: int) -> None:
        super().__init__()
        for name, value in (("embed_dim", embed_dim), ("n_classes", n_classes)):
            if type(value) is not int or value < 1:
                raise ConfigError(f"AAMHead {name} must be a positive int, got {value!r}")
        self.embed_dim = embed_dim
        self.n_classes = n_classes
        self.weight = nn.Parameter(torch.empty(n_classes, embed_dim))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, emb: Tensor) -> Tensor:
        """``(B, embed_dim) -> (B, n_classes)`` cosines of each embedding with each class centre.

        >>> import torch
        >>> tuple(AAMHead(4, 3)(torch.randn(2, 4)).shape)
        (2, 3)
        """
        if emb.dim() != 2 or emb.shape[1] != self.embed_dim:
            raise ModelError(f"AAMHead expects embeddings (batch, {self.embed_dim}), got {tuple(emb.shape)}")
        return F.linear(F.normalize(emb, dim=1, eps=_NORM_EPS), F.normalize(self.weight, dim=1, eps=_NORM_EPS))


def aam_softmax_loss(
    cosines: Tensor,
    labels: Tensor,
    *,
    margin: float = 0.2,
    scale: float = 30.0,
    easy_margin: bool = False,
    reduction: str = "mean",
) -> Tensor:
    """Additive angular margin softmax loss (ArcFace) of cosines ``(B, K)`` and labels ``(B,)``.

    The target logit is ``scale * cos(theta + margin)``, computed as
    ``cos*cos(m) - sin*sin(m)`` with ``sin = sqrt(1 - cos^2)`` exact in value and differentiated
    through a floored square root, so gradients stay finite at ``|cos| = 1``. Where ``theta + m`` would pass pi the curve is not monotone any more; there
    the target logit is ``cos - m * sin(m)`` instead (``easy_margin``: keep plain ``cos`` where
    ``cos <= 0``). Non-target logits are ``scale * cos``. Then cross-entropy with ``reduction``.

    ``margin=0`` gives exactly ``cross_entropy(scale * cosines, labels)``.

    Example:
        >>> import torch, torch.nn.functional as F
        >>> cos, y = torch.tensor([[0.5, -0.2], [0.1, 0.7]]), torch.tensor([0, 1])
        >>> bool(torch.isclose(aam_softmax_loss(cos, y, margin=0.0), F.cross_entropy(30 * cos, y)))
        True
        >>> round(float(aam_softmax_loss(cos, y, margin=0.2, scale=10.0)), 4)
        0.0087
    """
    if not isinstance(margin, (int, float)) or isinstance(margin, bool) or not 0.0 <= margin < math.pi / 2:
        raise ConfigError(f"margin must be a number in [0, pi/2) radians, got {margin!r}")
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not 0.0 < scale < float("inf"):
        raise ConfigError(f"scale must be a positive finite number, got {scale!r}")
    if type(easy_margin) is not bool:
        raise ConfigError(f"easy_margin must be True or False, got {easy_margin!r}")
    if reduction not in _REDUCTIONS:
        raise ConfigError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if not isinstance(cosines, Tensor) or cosines.dim() != 2 or not cosines.is_floating_point():
        raise ModelError(f"cosines must be a float (batch, classes) tensor, got {getattr(cosines, 'shape', cosines)!r}")
    if not isinstance(labels, Tensor) or labels.shape != cosines.shape[:1] or labels.is_floating_point():
        raise ModelError(
            f"labels must be an integer ({cosines.shape[0]},) tensor, got {getattr(labels, 'shape', labels)!r}"
        )
    n_classes = cosines.shape[1]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise ModelError(f"labels must lie in [0, {n_classes}), got min {int(labels.min())} max {int(labels.max())}")
    labels = labels.long()
    cos = cosines.clamp(-1.0, 1.0)
    target_cos = cos.gather(1, labels.unsqueeze(1))
    one_minus = (1.0 - target_cos.pow(2)).clamp(min=0.0)
    # sin(theta): the exact value, with the gradient of a floored square root, which stays
    # finite (d sin / d cos = -cos / sin is unbounded at |cos| = 1).
    floored = one_minus.clamp(min=_NORM_EPS).sqrt()
    sin = floored + (one_minus.sqrt() - floored).detach()
    phi = target_cos * math.cos(margin) - sin * math.sin(margin)
    if easy_margin:
        phi = torch.where(target_cos > 0, phi, target_cos)
    else:
        threshold = math.cos(math.pi - margin)
        phi = torch.where(target_cos > threshold, phi, target_cos - math.sin(math.pi - margin) * margin)
    logits = cos.scatter(1, labels.unsqueeze(1), phi) * scale
    return F.cross_entropy(logits, labels, reduction=reduction)


class AAMSoftmaxLoss(nn.Module):
    """:func:`aam_softmax_loss` as a criterion module ``loss(cosines, labels)``.

    Its ``reduction`` attribute is read at every call, so Opacus' fast gradient clipping
    (``grad_sample_mode="ghost"``) can switch it to per-sample losses.

    Example:
        >>> import torch
        >>> crit = AAMSoftmaxLoss(margin=0.2, scale=10.0)
        >>> cos, y = torch.tensor([[0.5, -0.2], [0.1, 0.7]]), torch.tensor([0, 1])
        >>> crit.reduction = "none"
        >>> tuple(crit(cos, y).shape)
        (2,)
    """

    def __init__(self, *, margin: float = 0.2, scale: float = 30.0, reduction: str = "mean") -> None:
        super().__init__()
        self.margin = margin
        self.scale = scale
        self.reduction = reduction

    def forward(self, cosines: Tensor, labels: Tensor) -> Tensor:
        """The AAM-softmax loss with this module's margin, scale and reduction.

        >>> import torch
        >>> round(float(AAMSoftmaxLoss(margin=0.0, scale=1.0)(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))), 4)
        0.3133
        """
        return aam_softmax_loss(cosines, labels, margin=self.margin, scale=self.scale, reduction=self.reduction)
