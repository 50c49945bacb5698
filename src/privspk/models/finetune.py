"""Parameter-efficient fine-tuning recipes for DP-SGD: choose what trains, freeze the rest.

DP-SGD noise grows with the number of trained coordinates while the clipped signal does not,
so fine-tuning fewer parameters of a publicly pretrained encoder keeps more of what private
training adds. Recipes:

``full``      everything.
``last``      the last SE-Res2Net block, aggregation (mfa), pooling and embedding layer.
``head``      pooling and embedding layer only.
``adapters``  small residual bottleneck adapters after every SE-Res2Net block (up-projection
              zero-initialised, so inserting them leaves the model's function unchanged) and
              the embedding layer; everything else frozen.
``embedding`` the embedding layer only (norm -> linear -> norm after pooling). The whole trunk
              up to the pooled statistics is frozen, so a client can compute the pooled
              statistics of its crops once and train on them (see
              :mod:`privspk.training.trunk`): DP steps then cost microseconds, which buys
              large batches and many steps at the same epsilon.
``embedding_norm`` only the two LayerNorms of the embedding layer (a per-dimension scale and
              shift of the pooled statistics, and of the embedding); the linear map stays as
              pretrained. A channel shift moves the pooled statistics' scale and offset, which
              is what these coordinates can undo, with about 2 % of the embedding layer's
              parameters (so far less DP noise in total). Cut at the pooled statistics like
              ``embedding``.

Apply a recipe *before* handing the model to Opacus, and give the optimizer only the trainable
parameters (``[p for p in model.parameters() if p.requires_grad]``).

>>> from privspk.models.ecapa import ECAPAEncoder
>>> enc = ECAPAEncoder(40, channels=64)
>>> apply_recipe(enc, "head") < apply_recipe(enc, "last") < apply_recipe(enc, "full")
True
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor, nn

from privspk.errors import ConfigError, ModelError

__all__ = [
    "DEFAULT_ADAPTER_RANK",
    "RECIPES",
    "FineTunable",
    "ResidualAdapter",
    "add_adapters",
    "adapter_rank",
    "apply_recipe",
    "count_parameters",
    "trainable_parameters_for",
]

#: Recipe names accepted by :func:`apply_recipe`.
RECIPES: tuple[str, ...] = ("full", "last", "head", "adapters", "embedding", "embedding_norm")
#: Bottleneck width of adapters when none is given.
DEFAULT_ADAPTER_RANK = 8


@runtime_checkable
class FineTunable(Protocol):
    """What a recipe needs from an encoder (``ECAPAEncoder`` has it).

    >>> from privspk.models.ecapa import ECAPAEncoder
    >>> isinstance(ECAPAEncoder(40, channels=64), FineTunable)
    True
    """

    channels: int
    se_blocks: tuple[str, ...]
    adapters: nn.ModuleDict


class ResidualAdapter(nn.Module):
    """``x + up(relu(down(x)))`` on ``(B, C, T)`` with 1x1 convs, ``C -> rank -> C``; ``up`` starts at zero.

    Example:
        >>> import torch
        >>> adapter = ResidualAdapter(16, rank=4)
        >>> x = torch.randn(2, 16, 7)
        >>> bool(torch.equal(adapter(x), x))  # identity until trained
        True
    """

    def __init__(self, channels: int, *, rank: int) -> None:
        super().__init__()
        if type(rank) is not int or rank < 1:
            raise ConfigError(f"adapter rank must be a positive int, got {rank!r}")
        self.down = nn.Conv1d(channels, rank, 1)
        self.act = nn.ReLU()
        self.up = nn.Conv1d(rank, channels, 1)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    @property
    def rank(self) -> int:
        """Bottleneck width.

        >>> ResidualAdapter(16, rank=4).rank
        4
        """
        return self.down.out_channels

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, T) -> (B, C, T)``: the input plus the bottleneck's correction.

        >>> import torch
        >>> tuple(ResidualAdapter(8, rank=2)(torch.randn(1, 8, 5)).shape)
        (1, 8, 5)
        """
        return x + self.up(self.act(self.down(x)))


def _check_encoder(model: object) -> FineTunable:
    if not (isinstance(model, nn.Module) and isinstance(model, FineTunable)):
        raise ModelError(
            f"fine-tuning recipes need an encoder with se_blocks, channels and adapters (ECAPAEncoder), "
            f"got {type(model).__name__}; apply the recipe before wrapping the model (e.g. by Opacus)"
        )
    return model


def adapter_rank(encoder: nn.Module) -> int | None:
    """Rank of the encoder's adapters, or None when it has none.

    >>> from privspk.models.ecapa import ECAPAEncoder
    >>> enc = ECAPAEncoder(40, channels=64)
    >>> adapter_rank(enc), (add_adapters(enc, rank=4) > 0), adapter_rank(enc)
    (None, True, 4)
    """
    adapters = getattr(encoder, "adapters", None)
    if not isinstance(adapters, nn.ModuleDict) or len(adapters) == 0:
        return None
    return next(iter(adapters.values())).rank


def add_adapters(encoder: nn.Module, *, rank: int = DEFAULT_ADAPTER_RANK) -> int:
    """Insert a :class:`ResidualAdapter` after every SE-Res2Net block; return the parameters added.

    Calling it again with the same rank adds nothing (returns 0); another rank raises
    :class:`~privspk.errors.ModelError`. The encoder's output is unchanged by the insertion.

    Example:
        >>> import torch
        >>> from privspk.models.ecapa import ECAPAEncoder
        >>> enc = ECAPAEncoder(40, channels=64).eval()
        >>> x = torch.randn(2, 30, 40)
        >>> before = enc(x)
        >>> add_adapters(enc, rank=4), add_adapters(enc, rank=4)
        (1740, 0)
        >>> bool(torch.allclose(enc(x), before))
        True
    """
    enc = _check_encoder(encoder)
    existing = adapter_rank(encoder)
    if existing is not None:
        if existing != rank:
            raise ModelError(f"encoder already has rank-{existing} adapters; cannot add rank-{rank} ones")
        return 0
    device = next(encoder.parameters()).device
    added = 0
    for name in enc.se_blocks:
        adapter = ResidualAdapter(enc.channels, rank=rank).to(device)
        enc.adapters[name] = adapter
        added += count_parameters(adapter)
    return added


def _check_recipe(recipe: object) -> None:
    if recipe not in RECIPES:
        raise ConfigError(f"unknown fine-tuning recipe {recipe!r}; choose one of {RECIPES}")


def _selected_prefixes(enc: FineTunable, recipe: str) -> tuple[str, ...] | None:
    """Module-name prefixes that train under ``recipe`` (None = everything)."""
    if recipe == "full":
        return None
    if recipe == "last":
        return (enc.se_blocks[-1], "mfa", "pooling", "embedding")
    if recipe == "head":
        return ("pooling", "embedding")
    if recipe == "embedding":
        return ("embedding",)
    if recipe == "embedding_norm":
        return ("embedding.stats_norm", "embedding.norm")
    return ("adapters", "embedding")


def trainable_parameters_for(model: nn.Module, recipe: str) -> list[tuple[str, nn.Parameter]]:
    """The ``(name, parameter)`` pairs that ``recipe`` trains; changes nothing.

    For ``"adapters"`` the adapters must exist (see :func:`add_adapters` or :func:`apply_recipe`).

    Example:
        >>> from privspk.models.ecapa import ECAPAEncoder
        >>> names = [n for n, _ in trainable_parameters_for(ECAPAEncoder(40, channels=64), "head")]
        >>> sorted({n.split(".")[0] for n in names})
        ['embedding', 'pooling']
    """
    _check_recipe(recipe)
    enc = _check_encoder(model)
    if recipe == "adapters" and adapter_rank(model) is None:
        raise ModelError("recipe 'adapters' needs adapters in the encoder; call apply_recipe(encoder, 'adapters')")
    prefixes = _selected_prefixes(enc, recipe)
    return [
        (name, param)
        for name, param in model.named_parameters()
        if prefixes is None or any(name == p or name.startswith(p + ".") for p in prefixes)
    ]


def apply_recipe(encoder: nn.Module, recipe: str, *, rank: int = DEFAULT_ADAPTER_RANK) -> int:
    """Set ``requires_grad`` as ``recipe`` says (adding adapters for ``"adapters"``); return the trainable count.

    Example:
        >>> from privspk.models.ecapa import ECAPAEncoder
        >>> enc = ECAPAEncoder(40, channels=64)
        >>> n = apply_recipe(enc, "adapters", rank=4)
        >>> n == count_parameters(enc, trainable_only=True) < count_parameters(enc)
        True
        >>> enc.front.conv.weight.requires_grad, enc.adapters["block1"].up.weight.requires_grad
        (False, True)
    """
    _check_recipe(recipe)
    if recipe == "adapters":
        add_adapters(encoder, rank=rank)
    chosen = {id(param) for _, param in trainable_parameters_for(encoder, recipe)}
    for param in encoder.parameters():
        param.requires_grad_(id(param) in chosen)
    return count_parameters(encoder, trainable_only=True)


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of scalar parameters (only those with ``requires_grad`` when ``trainable_only``).

    >>> from torch import nn
    >>> count_parameters(nn.Linear(3, 2))
    8
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)

