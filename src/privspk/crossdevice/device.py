"""One simulated phone: its owner's data and secret codeword stay inside this object.

A :class:`Device` is materialised for the round it is sampled in (its pooled statistics read
from the population cache, its codeword from its own storage) and dropped afterwards. What
leaves it is one vector: the whole local update, clipped in L2 and (under DP) quantised with its
discrete-Gaussian noise share added, which then goes through ``mask`` secure aggregation.

>>> import torch
>>> from privspk.models.ecapa import EmbeddingLayer
>>> from privspk.crossdevice.objective import HadamardCode, public_projection
>>> torch.manual_seed(0); layer = EmbeddingLayer(6, 4)
<torch._C.Generator object at ...>
>>> dev = Device("dev00000", torch.randn(5, 2, 6), codeword=HadamardCode(8).codeword(3))
>>> upd = dev.local_update(layer, steps=3, lr=0.1, objective="codewords",
...                        projection=public_projection(length=8, embed_dim=4, seed=0), seed=0)
>>> (tuple(upd.shape) == (sum(p.numel() for p in layer.parameters()),), bool(upd.abs().sum() > 0))
(True, True)
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from privspk.crossdevice.objective import OBJECTIVES, centroid_loss, codeword_loss
from privspk.errors import ConfigError

__all__ = ["TRAINABLE", "CodewordStore", "Device", "flat_params", "set_flat_params", "trainable_names"]


#: What a device trains of the embedding layer (``[crossdevice] trainable``): parameter name prefixes.
TRAINABLE: dict[str, tuple[str, ...]] = {
    "embedding": ("",),  # every parameter of the layer
    "linear": ("linear.",),
    "norms": ("stats_norm.", "norm.", "linear.bias"),  # the LayerNorm gains/biases and the linear bias
}


def trainable_names(module: nn.Module, which: str = "embedding") -> tuple[str, ...]:
    """Names of the parameters of ``module`` that ``which`` (a key of :data:`TRAINABLE`) trains.

    >>> from privspk.models.ecapa import EmbeddingLayer
    >>> trainable_names(EmbeddingLayer(4, 2), "norms")
    ('stats_norm.weight', 'stats_norm.bias', 'linear.bias', 'norm.weight', 'norm.bias')
    """
    if which not in TRAINABLE:
        raise ConfigError(f"trainable must be one of {sorted(TRAINABLE)}, got {which!r}")
    names = tuple(n for n, _ in module.named_parameters() if any(n.startswith(p) for p in TRAINABLE[which]))
    if not names:
        raise ConfigError(f"trainable={which!r} selects no parameter of {type(module).__name__}")
    return names


def flat_params(module: nn.Module, names: tuple[str, ...] | None = None) -> Tensor:
    """The parameters of ``module`` (only ``names``, in module order, if given) as one float32 vector (a copy).

    >>> flat_params(nn.Linear(2, 3)).shape, flat_params(nn.Linear(2, 3), ("bias",)).shape
    (torch.Size([9]), torch.Size([3]))
    """
    params = [p for n, p in module.named_parameters() if names is None or n in names]
    return torch.nn.utils.parameters_to_vector(params).detach().clone()


def set_flat_params(module: nn.Module, vec: Tensor, names: tuple[str, ...] | None = None) -> None:
    """Load a vector from :func:`flat_params` (same ``names``) back into ``module``.

    >>> m = nn.Linear(2, 3); set_flat_params(m, torch.zeros(9)); float(m.weight.detach().abs().sum())
    0.0
    """
    params = [p for n, p in module.named_parameters() if names is None or n in names]
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(vec.to(torch.float32), params)


class CodewordStore:
    """Each device's codeword index, kept in that device's own file (its secure storage on a phone).

    Only :class:`Device` reads it; the server-side loop never opens it. One small file per device
    (``<device>.codeword``), written atomically on the device's first round.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     s = CodewordStore(d)
    ...     a = s.index("dev00001", size=64, randomness="simulation", seed=0)
    ...     a == s.index("dev00001", size=64, randomness="simulation", seed=0)
    True
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def index(self, device: str, *, size: int, randomness: str, seed: int) -> int:
        """The device's codeword index, drawn and stored on first use."""
        from privspk.crossdevice.objective import draw_codeword_index

        path = self.root / f"{device}.codeword"
        if path.is_file():
            value = int(path.read_text(encoding="ascii").strip())
            if not 0 <= value < size:
                raise ConfigError(f"{path}: codeword index {value} is outside [0, {size}); the code length changed, "
                                  "start the run again in a new directory")
            return value
        value = draw_codeword_index(size, randomness=randomness, seed=seed, device=int(device[3:]))
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part")
        tmp.write_text(f"{value}\n", encoding="ascii")
        tmp.replace(path)
        return value


class Device:
    """A phone holding ``pooled`` ``(utterances, crops, pool_dim)`` of its owner and its codeword.

    The pooled statistics are the frozen public trunk's output on the owner's audio (computed on
    the device); they and the codeword never leave this object.
    """

    def __init__(self, device_id: str, pooled: Tensor, *, codeword: Tensor | None) -> None:
        if pooled.dim() != 3 or pooled.shape[0] < 1:
            raise ConfigError(f"pooled statistics must be (utterances >= 1, crops, dim), got {tuple(pooled.shape)}")
        self.device_id = device_id
        self._pooled = pooled.float()
        self._codeword = codeword

    @property
    def n_utterances(self) -> int:
        """Utterances the device holds."""
        return int(self._pooled.shape[0])

    def local_update(self, model: nn.Module, *, steps: int, lr: float, objective: str, projection: Tensor | None,
                     seed: int, optimizer: str = "sgd", names: tuple[str, ...] | None = None) -> Tensor:
        """Train a copy of ``model`` for ``steps`` full-batch steps; return ``new - old`` parameters (float32).

        Each step takes one cached crop per utterance (chosen by ``seed``, the device's round seed).
        ``objective``: ``"codewords"`` (needs ``projection`` and a codeword) or ``"centroid"``.
        ``names``: train only these parameters (:func:`trainable_names`) and return only their update.
        """
        if objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if objective == "codewords" and (self._codeword is None or projection is None):
            raise ConfigError("the codewords objective needs the device's codeword and the public projection")
        if type(steps) is not int or steps < 1 or not lr > 0:
            raise ConfigError(f"steps must be an int >= 1 and lr > 0, got steps={steps!r}, lr={lr!r}")
        local = copy.deepcopy(model)
        local.train()
        start = flat_params(local, names)
        params = [p for n, p in local.named_parameters() if names is None or n in names]
        for n, p in local.named_parameters():
            p.requires_grad_(names is None or n in names)
        opt = (torch.optim.SGD(params, lr=lr) if optimizer == "sgd" else torch.optim.Adam(params, lr=lr))
        rng = np.random.default_rng(seed)
        n, crops = self._pooled.shape[:2]
        rows = torch.arange(n)
        for _ in range(steps):
            pick = torch.from_numpy(rng.integers(0, crops, size=n))
            emb = local(self._pooled[rows, pick])
            loss = (codeword_loss(emb, self._codeword, projection) if objective == "codewords"
                    else centroid_loss(emb))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return flat_params(local, names) - start
