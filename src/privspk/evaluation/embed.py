"""Turn feature matrices into L2-normalised speaker embeddings with a trained encoder.

Utterances are embedded whole (optionally cut to their middle ``max_frames``
frames). Only utterances of exactly equal length share a batch, so no padding
ever reaches the encoder and each embedding equals the one computed alone.

>>> import torch
>>> class MeanLinear(torch.nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.embed_dim, self.lin = 3, torch.nn.Linear(4, 3)
...     def forward(self, x):
...         return self.lin(x.mean(dim=1))
>>> feats = {"u1": torch.randn(50, 4), "u2": torch.randn(70, 4)}
>>> emb = embed_features(MeanLinear(), feats, batch_size=8)
>>> sorted(emb), emb["u1"].shape, round(float((emb["u2"] ** 2).sum()), 5)
(['u1', 'u2'], (3,), 1.0)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Union

import numpy as np
import torch

from privspk.device import torch_device
from privspk.errors import ConfigError, FeatureError, ModelError

__all__ = ["FeatureSource", "embed_features", "l2_normalise"]

log = logging.getLogger(__name__)

FeatureSource = Union[Mapping[str, "torch.Tensor | np.ndarray"], Iterable[tuple[str, "torch.Tensor | np.ndarray"]]]
"""Features by utterance id: a mapping, or an iterable of ``(utt_id, (T, F) matrix)`` pairs."""

_EPS = 1e-12


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Scale each row (or a single vector) to unit length; all-zero rows stay zero.

    >>> l2_normalise(np.array([[3.0, 4.0], [0.0, 0.0]])).tolist()
    [[0.6, 0.8], [0.0, 0.0]]
    """
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, _EPS)


def _items(feats: FeatureSource) -> list[tuple[str, torch.Tensor]]:
    pairs = feats.items() if isinstance(feats, Mapping) else feats
    out: list[tuple[str, torch.Tensor]] = []
    seen: set[str] = set()
    n_bins: int | None = None
    for pair in pairs:
        if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str)):
            raise ConfigError(f"features must be a mapping or (utt_id, matrix) pairs, got an item {pair!r:.80}")
        utt, mat = pair
        if utt in seen:
            raise ConfigError(f"utterance {utt!r} appears twice in the features; ids must be unique")
        seen.add(utt)
        tensor = torch.as_tensor(mat, dtype=torch.float32)
        if tensor.ndim != 2 or tensor.shape[0] < 1 or tensor.shape[1] < 1:
            raise FeatureError(
                f"features of {utt!r} must be a non-empty (frames, bins) matrix, got {tuple(tensor.shape)}"
            )
        if n_bins is None:
            n_bins = tensor.shape[1]
        elif tensor.shape[1] != n_bins:
            raise FeatureError(f"features of {utt!r} have {tensor.shape[1]} bins but earlier ones have {n_bins}")
        if not torch.isfinite(tensor).all():
            raise FeatureError(f"features of {utt!r} contain NaN/inf; rebuild its features")
        out.append((utt, tensor))
    return out


def _middle(mat: torch.Tensor, max_frames: int | None) -> torch.Tensor:
    if max_frames is None or mat.shape[0] <= max_frames:
        return mat
    start = (mat.shape[0] - max_frames) // 2
    return mat[start : start + max_frames]


def _check_device(encoder: torch.nn.Module, device: torch.device) -> None:
    param = next(encoder.parameters(), None)
    if param is not None and param.device.type != device.type:
        raise ConfigError(
            f"the encoder's weights are on {param.device} but device={str(device)!r}; "
            f"move it with encoder.to({str(device)!r}) or pass device={str(param.device)!r}"
        )


def embed_features(
    encoder: torch.nn.Module,
    feats: FeatureSource,
    *,
    batch_size: int = 32,
    max_frames: int | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, np.ndarray]:
    """Embed each utterance's ``(T, F)`` features; return unit-length float32 vectors by id.

    Runs under ``torch.no_grad()`` in eval mode; each submodule's train/eval
    mode is restored afterwards, also when the encoder fails.

    Args:
        encoder: maps ``(B, T, F)`` float32 features to ``(B, D)`` embeddings.
        feats: features by utterance id (see :data:`FeatureSource`).
        batch_size: the most utterances (of one length) per forward pass.
        max_frames: if set, longer utterances are cut to their middle ``max_frames`` frames.
        device: where the batches go; the encoder must already be there.

    >>> import torch
    >>> enc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 2))
    >>> out = embed_features(enc, [("a", torch.ones(3, 2))], max_frames=3)
    >>> out["a"].dtype, round(float(np.linalg.norm(out["a"])), 5)
    (dtype('float32'), 1.0)
    """
    if type(batch_size) is not int or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
    if max_frames is not None and (type(max_frames) is not int or max_frames < 1):
        raise ConfigError(f"max_frames must be a positive int or None, got {max_frames!r}")
    dev = torch_device(device)
    _check_device(encoder, dev)
    items = [(utt, _middle(mat, max_frames)) for utt, mat in _items(feats)]

    by_length: dict[int, list[tuple[str, torch.Tensor]]] = {}
    for utt, mat in items:
        by_length.setdefault(mat.shape[0], []).append((utt, mat))

    modes = {module: module.training for module in encoder.modules()}
    out: dict[str, np.ndarray] = {}
    encoder.eval()
    try:
        with torch.no_grad():
            for length in sorted(by_length):
                group = by_length[length]
                for start in range(0, len(group), batch_size):
                    chunk = group[start : start + batch_size]
                    batch = torch.stack([mat for _, mat in chunk]).to(dev)
                    emb = encoder(batch)
                    if not isinstance(emb, torch.Tensor) or emb.ndim != 2 or emb.shape[0] != len(chunk):
                        shape = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
                        raise ModelError(
                            f"encoder must map (B, T, F) to (B, D); got {shape} for a batch of {len(chunk)}"
                        )
                    vecs = emb.detach().to("cpu", torch.float64).numpy()
                    for (utt, _), vec in zip(chunk, vecs):
                        if not np.isfinite(vec).all():
                            raise ModelError(f"encoder produced a non-finite embedding for {utt!r}")
                        if not vec.any():
                            log.warning("encoder produced an all-zero embedding for %r", utt)
                        out[utt] = l2_normalise(vec).astype(np.float32)
    finally:
        for module, mode in modes.items():
            module.training = mode
    log.info("embedded %d utterances in %d length groups", len(out), len(by_length))
    return out
