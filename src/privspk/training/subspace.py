"""A public-data prior for DP-SGD: train the embedding layer's linear map only in a public subspace.

With the ``embedding`` recipe each client trains ``norm(W z + b)`` on ``z = stats_norm(x)``,
the normalised pooled statistics of the frozen public trunk. One example's gradient for ``W``
is ``delta z^T``: its input side lies in the span of the ``z`` the client sees. Clean public
speech and a client's channel share most of that span, so the update can be confined to the
top-``k`` principal subspace of ``z`` computed on the **public** speakers only (the server, which
pretrained the encoder on them, can ship the ``d x k`` basis ``P`` with the model):

    W = W0 + A P^T,   A (embed_dim x k) trained, starting at zero, W0 frozen for the round.

DP-SGD then clips and noises ``A``'s per-example gradients ``delta (P^T z)^T``, which are the
projections ``delta z^T P`` of the full ones (``P`` orthonormal: the same norm as ``delta z^T P P^T``):
the noise lands on ``embed_dim x k`` coordinates instead of ``embed_dim x d``, a ``d / k`` cut in
noise energy, while the clip, sample rate, noise multiplier and steps (everything the accountant
reads) are unchanged. ``P`` is a fixed function of public data, so the privacy guarantee is the
same as without it. The bias and the two LayerNorms still train in full (``2 d + 3 embed_dim``
coordinates); so does the client's head. After the round ``A P^T`` is folded into ``W``: the
released update of ``W`` lies in the subspace, and the model has the same shape and parameter
names as without the prior.

With an output basis ``Q`` too (``[train] public_subspace_out``), both sides are confined:
``W = W0 + Q A P^T`` with ``A`` only ``k_out x k``: ``Q`` holds the top principal directions of the
public speakers' pre-norm embeddings ``y = W0 z + b`` (centred per example, as the LayerNorm after
them does), which is where the embeddings, and the class centres the loss pulls them to, live.

``P`` holds the top-``k`` eigenvectors of the *uncentred* second moment ``E[z z^T]`` over cached
crops of the public utterances (the gradient's input side is ``z`` itself, not ``z - mean``),
each signed so that its largest-magnitude entry is positive, so it is a deterministic function
of the public data and the pretrained encoder.

>>> import torch
>>> z = torch.randn(500, 6) @ torch.diag(torch.tensor([5.0, 4.0, 3.0, 0.1, 0.1, 0.1]))
>>> P = principal_basis(z, 3)
>>> tuple(P.shape), bool(torch.allclose(P.T @ P, torch.eye(3), atol=1e-5))
((6, 3), True)
>>> float(P[3:].abs().max()) < 0.1     # the three high-variance input directions
True
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from privspk.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

#: The seed of the public crops the basis is computed on (fixed: the basis is one public artefact).
PUBLIC_CROP_SEED = 0


class PublicBasis(NamedTuple):
    """The public subspace: ``inputs`` ``(d, k)`` of the linear map's input, optionally ``outputs`` ``(e, k_out)``."""

    inputs: Tensor
    outputs: Tensor | None = None


def principal_basis(z: Tensor, k: int) -> Tensor:
    """``(d, k)`` orthonormal basis of the top-``k`` eigenvectors of ``z^T z / n`` (float32, deterministic signs).

    >>> import torch
    >>> principal_basis(torch.randn(10, 4), 5)
    Traceback (most recent call last):
    ...
    privspk.errors.ConfigError: public_subspace k must be in 1..4 (the input dimension), got 5
    """
    if z.dim() != 2 or z.shape[0] < 1:
        raise ConfigError(f"public statistics must be a non-empty (n, d) matrix, got {tuple(z.shape)}")
    d = z.shape[1]
    if type(k) is not int or not 1 <= k <= d:
        raise ConfigError(f"public_subspace k must be in 1..{d} (the input dimension), got {k!r}")
    z64 = z.detach().to(torch.float64)
    moment = z64.T @ z64 / z64.shape[0]
    _, vecs = torch.linalg.eigh(moment)  # ascending eigenvalues
    top = vecs[:, -k:].flip(1)  # descending
    idx = top.abs().argmax(dim=0)
    signs = torch.sign(top[idx, torch.arange(k)])
    signs[signs == 0] = 1.0
    q, _ = torch.linalg.qr(top * signs)  # re-orthonormalise in float64 (eigh's are already, to rounding)
    q = q * torch.sign(torch.diagonal(q.T @ (top * signs)))  # QR may flip signs: keep eigh's
    return q.to(torch.float32).contiguous()


def public_statistics(encoder: nn.Module, getter: Callable[[str], Tensor], utt_ids: Sequence[str], *, crops: int,
                      crop_frames: int, device: str | torch.device = "cpu", outputs: bool = False) -> Tensor:
    """``z = embedding.stats_norm(pooled)`` of ``crops`` cached crops of each public utterance: ``(N * crops, d)``;
    with ``outputs``, the pre-norm embeddings ``y = linear(z)`` centred per example: ``(N * crops, e)``."""
    from privspk.training.trunk import pooled_crops

    if not hasattr(encoder, "embedding") or not hasattr(encoder.embedding, "stats_norm"):
        raise ModelError(f"a public subspace needs an encoder with an embedding layer (ECAPAEncoder), "
                         f"got {type(encoder).__name__}")
    pooled = pooled_crops(encoder, getter, list(utt_ids), crops=crops, crop_frames=crop_frames,
                          seed=PUBLIC_CROP_SEED, device=device)
    with torch.no_grad():
        z = encoder.embedding.stats_norm(pooled.reshape(-1, pooled.shape[-1]).float()).detach()
        if not outputs:
            return z
        y = encoder.embedding.linear(z)
        return (y - y.mean(dim=1, keepdim=True)).detach()


_MEMO: dict[str, Tensor] = {}


def public_subspace(encoder: nn.Module, getter: Callable[[str], Tensor], utt_ids: Sequence[str], *, k: int,
                    crops: int, crop_frames: int, cache_dir: str | Path | None = None, data_key: str = "",
                    device: str | torch.device = "cpu", outputs: bool = False) -> Tensor:
    """The ``(d, k)`` public basis of ``encoder``'s embedding input (``outputs``: ``(e, k)`` of its pre-norm
    output), computed once and cached.

    Keyed by the encoder (trunk, ``stats_norm`` and, for ``outputs``, ``linear``), ``data_key`` (what identifies the features
    behind ``getter``, e.g. the corpus fingerprint), the public utterance ids, ``k`` and the crop
    settings: memoised in this process and, with ``cache_dir``, kept there on disk.
    """
    from privspk.training.trunk import trunk_fingerprint

    h = hashlib.sha256()
    h.update(trunk_fingerprint(encoder).encode())
    for name, t in sorted(getattr(encoder, "embedding", nn.Module()).state_dict().items()):
        if name.startswith("stats_norm.") or (outputs and name.startswith("linear.")):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(f"{data_key}\n".encode())
    h.update("\n".join(utt_ids).encode())
    h.update(f"{k}|{crops}|{crop_frames}|{PUBLIC_CROP_SEED}".encode() + (b"|outputs" if outputs else b""))
    key = h.hexdigest()[:24]
    if key in _MEMO:
        return _MEMO[key]
    path = Path(cache_dir) / f"public_subspace_{key}.pt" if cache_dir is not None else None
    basis = None
    if path is not None and path.is_file():
        try:
            basis = torch.load(path, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a damaged cache (any unpickling error) is recomputed, not trusted
            log.warning("public subspace cache %s unreadable (%s); recomputing", path, exc)
            basis = None
        if basis is not None and (basis.dim() != 2 or basis.shape[1] != k):
            basis = None
    if basis is None:
        z = public_statistics(encoder, getter, utt_ids, crops=crops, crop_frames=crop_frames, device=device,
                              outputs=outputs)
        basis = principal_basis(z, k)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save(basis, tmp)
            tmp.replace(path)
    _MEMO[key] = basis
    return basis


class SubspaceEmbedding(nn.Module):
    """An :class:`~privspk.models.ecapa.EmbeddingLayer` whose linear map trains only as ``W0 + A P^T``.

    Shares ``stats_norm``, ``norm`` and the linear layer's bias with ``layer`` (they train in
    place); freezes the linear weight while it exists and adds ``down`` (``z -> P^T z``, fixed)
    and ``up`` (``A``, zero at the start), plain ``nn.Linear`` layers, so Opacus computes their
    per-example gradients as usual. :meth:`fold` writes ``W0 + A P^T`` into ``layer`` and
    unfreezes its weight again.

    >>> import torch
    >>> from privspk.models.ecapa import EmbeddingLayer
    >>> layer = EmbeddingLayer(6, 3)
    >>> sub = SubspaceEmbedding(layer, principal_basis(torch.randn(50, 6), 2))
    >>> x = torch.randn(4, 6)
    >>> bool(torch.allclose(sub(x), layer(x)))       # A = 0: the same function
    True
    >>> [n for n, p in sub.named_parameters() if p.requires_grad]
    ['stats_norm.weight', 'stats_norm.bias', 'linear.bias', 'norm.weight', 'norm.bias', 'up.weight']
    >>> sub.fold(); layer.linear.weight.requires_grad
    True
    """

    def __init__(self, layer: nn.Module, basis: Tensor | PublicBasis) -> None:
        super().__init__()
        basis, out_basis = (basis.inputs, basis.outputs) if isinstance(basis, PublicBasis) else (basis, None)
        lin = getattr(layer, "linear", None)
        if not isinstance(lin, nn.Linear) or not hasattr(layer, "stats_norm") or not hasattr(layer, "norm"):
            raise ModelError("a public subspace needs the embedding layer (stats_norm -> linear -> norm)")
        d = lin.in_features
        if basis.dim() != 2 or basis.shape[0] != d or not 1 <= basis.shape[1] <= d:
            raise ConfigError(f"public basis must be (d={d}, k) with 1 <= k <= d, got {tuple(basis.shape)}")
        self.layer = [layer]  # not a submodule: its modules are registered below, once each
        self.stats_norm, self.linear, self.norm = layer.stats_norm, lin, layer.norm
        self._weight_trained = lin.weight.requires_grad
        e = lin.out_features
        if out_basis is not None and (out_basis.dim() != 2 or out_basis.shape[0] != e
                                      or not 1 <= out_basis.shape[1] <= e):
            raise ConfigError(f"public output basis must be (e={e}, k_out) with 1 <= k_out <= e, "
                              f"got {tuple(out_basis.shape)}")
        k = basis.shape[1]
        k_out = e if out_basis is None else out_basis.shape[1]
        dev, dtype = lin.weight.device, lin.weight.dtype
        self.down = nn.Linear(d, k, bias=False).to(dev, dtype)
        self.up = nn.Linear(k, k_out, bias=False).to(dev, dtype)
        self.back = None if out_basis is None else nn.Linear(k_out, e, bias=False).to(dev, dtype)
        with torch.no_grad():
            self.down.weight.copy_(basis.T.to(dev, dtype))
            self.up.weight.zero_()
            if self.back is not None:
                self.back.weight.copy_(out_basis.to(dev, dtype))
        self.down.weight.requires_grad_(False)
        if self.back is not None:
            self.back.weight.requires_grad_(False)
        self.up.weight.requires_grad_(self._weight_trained)
        lin.weight.requires_grad_(False)
        self._folded = False

    def forward(self, x: Tensor) -> Tensor:
        """``(B, d) -> (B, embed_dim)``: ``norm(W0 z + b + A P^T z)`` with ``z = stats_norm(x)``."""
        z = self.stats_norm(x)
        low = self.up(self.down(z))
        return self.norm(self.linear(z) + (low if self.back is None else self.back(low)))

    @torch.no_grad()
    def fold(self) -> None:
        """``W <- W0 + A P^T`` (``W0 + Q A P^T``) and the weight trainable again (once; later calls do nothing)."""
        if self._folded:
            return
        delta = self.up.weight @ self.down.weight
        self.linear.weight.add_(delta if self.back is None else self.back.weight @ delta)
        self.linear.weight.requires_grad_(self._weight_trained)
        self._folded = True

    def release(self) -> None:
        """Unfreeze the wrapped weight without folding (a failed round leaves the layer as it found it)."""
        if not self._folded:
            self.linear.weight.requires_grad_(self._weight_trained)
            self._folded = True
