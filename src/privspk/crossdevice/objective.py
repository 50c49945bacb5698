"""Training without negatives: FedUV-style secret codewords (Hosseini et al. 2021).

A phone holds only its owner's utterances, so a softmax over "its" speakers has one class and
nothing to push against; a positives-only loss that only pulls a device's embeddings together
lets the shared model map every voice to one point (collapse). FedUV's answer, followed here:
each device draws a **secret codeword** ``c`` from an error-correcting code once, keeps it on
the device, and trains the shared encoder so that its owner's embeddings, seen through a fixed
**public projection** ``P`` (``L x embed_dim``, the same on every device, drawn from a public
seed), point at ``c``:

    loss(x) = 1 - cos(P normalise(f(x)), c)

The code is the Hadamard code of length ``L`` (a power of two) with its complements: ``2L``
codewords, any two distinct ones at Hamming distance ``>= L/2`` (a row and its complement at
``L``); in the embedding space the targets ``P^T c`` of different devices are therefore far
apart, which is what keeps devices apart without ever seeing another device's data. The server
never sees a codeword (it stays in the device's own storage) nor an embedding: it only opens
the masked sum of clipped, noised model updates. Codeword index: ``secrets.randbelow(2L)`` with
``secret`` randomness, or a draw from the run's seed with ``simulation`` randomness. Two devices
may draw the same codeword (birthday bound, about ``K^2 / 4L`` pairs among ``K`` devices);
they then share a target, which costs some separation but no privacy.

The positives-only alternative measured against it (``"centroid"``): pull each embedding to the
device's mean embedding, ``1 - cos(f(x), mean f)``.

>>> import torch
>>> book = HadamardCode(8)
>>> (book.size, book.min_distance, book.codeword(0).tolist() == [1.0] * 8)
(16, 4, True)
>>> P = public_projection(length=8, embed_dim=4, seed=0)
>>> emb = torch.randn(5, 4)
>>> float(codeword_loss(emb, book.codeword(3), P)) >= 0.0
True
"""

from __future__ import annotations

import secrets

import numpy as np
import torch
from torch import Tensor

from privspk.errors import ConfigError

__all__ = ["OBJECTIVES", "HadamardCode", "centroid_loss", "codeword_loss", "draw_codeword_index",
           "public_projection"]

#: Local objectives a device can train with.
OBJECTIVES: tuple[str, ...] = ("codewords", "centroid")
_TAG_CODEWORD = 0x434F4445  # "CODE"


class HadamardCode:
    """Rows of the Sylvester-Hadamard matrix of order ``length`` and their negations, as +-1 vectors.

    ``size = 2 * length`` codewords; minimum Hamming distance ``length // 2``.

    >>> HadamardCode(12)
    Traceback (most recent call last):
    ...
    privspk.errors.ConfigError: codeword length must be a power of two >= 4, got 12
    """

    def __init__(self, length: int) -> None:
        if isinstance(length, bool) or not isinstance(length, int) or length < 4 or length & (length - 1):
            raise ConfigError(f"codeword length must be a power of two >= 4, got {length!r}")
        from scipy.linalg import hadamard

        self.length = length
        self._rows = torch.from_numpy(hadamard(length).astype(np.float32))

    @property
    def size(self) -> int:
        """Number of codewords (rows and their complements)."""
        return 2 * self.length

    @property
    def min_distance(self) -> int:
        """Smallest Hamming distance between two distinct codewords."""
        return self.length // 2

    def codeword(self, index: int) -> Tensor:
        """Codeword ``index`` in ``[0, size)``: row ``index`` or, past ``length``, its complement.

        >>> c = HadamardCode(4)
        >>> (c.codeword(1) * c.codeword(5)).tolist()
        [-1.0, -1.0, -1.0, -1.0]
        """
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < self.size:
            raise ConfigError(f"codeword index must be an int in [0, {self.size}), got {index!r}")
        row = self._rows[index % self.length]
        return row.clone() if index < self.length else -row


def draw_codeword_index(size: int, *, randomness: str, seed: int, device: int) -> int:
    """A device's codeword index: from the OS CSPRNG (``secret``) or from ``(seed, device)`` (``simulation``).

    >>> draw_codeword_index(64, randomness="simulation", seed=1, device=5) == draw_codeword_index(
    ...     64, randomness="simulation", seed=1, device=5)
    True
    >>> 0 <= draw_codeword_index(64, randomness="secret", seed=0, device=0) < 64
    True
    """
    if randomness == "secret":
        return secrets.randbelow(size)
    if randomness != "simulation":
        raise ConfigError(f"randomness must be secret|simulation, got {randomness!r}")
    return int(np.random.default_rng([seed, _TAG_CODEWORD, device]).integers(size))


def public_projection(*, length: int, embed_dim: int, seed: int) -> Tensor:
    """The fixed, public ``(length, embed_dim)`` projection: i.i.d. N(0, 1/embed_dim) entries from ``seed``.

    >>> tuple(public_projection(length=16, embed_dim=4, seed=0).shape)
    (16, 4)
    """
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn(length, embed_dim, generator=g) / float(embed_dim) ** 0.5


def codeword_loss(emb: Tensor, codeword: Tensor, projection: Tensor) -> Tensor:
    """Mean of ``1 - cos(P normalise(e), c)`` over the batch ``emb`` ``(B, embed_dim)``.

    >>> import torch
    >>> P = torch.eye(4); c = torch.tensor([1.0, -1.0, 1.0, -1.0])
    >>> round(float(codeword_loss(c.unsqueeze(0), c, P)), 6)
    0.0
    """
    z = torch.nn.functional.normalize(emb, dim=1) @ projection.T
    return (1.0 - torch.nn.functional.cosine_similarity(z, codeword.unsqueeze(0).expand_as(z), dim=1)).mean()


def centroid_loss(emb: Tensor) -> Tensor:
    """Positives only, no codeword: mean of ``1 - cos(e, mean of the batch)`` (collapses; the baseline).

    >>> import torch
    >>> round(float(centroid_loss(torch.ones(3, 4))), 6)
    0.0
    """
    e = torch.nn.functional.normalize(emb, dim=1)
    centre = e.mean(dim=0, keepdim=True)
    return (1.0 - torch.nn.functional.cosine_similarity(e, centre.expand_as(e), dim=1)).mean()
