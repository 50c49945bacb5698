"""Frozen-trunk cache: train the embedding layer on pooled statistics computed once.

With the ``embedding`` fine-tuning recipe everything up to the pooled statistics is
frozen (it was pretrained on public speakers and never changes during federated
training). A client can therefore run the trunk once over a few random crops of
each of its utterances and train the embedding layer and its head on the cached
``(N, crops, pool_dim)`` tensor. DP-SGD steps then cost microseconds instead of a
trunk forward and backward, so the same epsilon buys much larger batches and many
more steps, which is what lets DP keep most of what federation adds.

The cache is private client state (it is computed from the client's audio) and
never leaves the client; only the embedding-layer update does, through DP-SGD.

>>> import torch
>>> from privspk.models.ecapa import ECAPAEncoder
>>> from privspk.models.finetune import apply_recipe
>>> enc = ECAPAEncoder(20, channels=32, embed_dim=8)
>>> _ = apply_recipe(enc, "embedding")
>>> embedding_only(enc)
True
>>> feats = {"u1": torch.randn(80, 20), "u2": torch.randn(50, 20)}
>>> X = pooled_crops(enc, feats.__getitem__, ["u1", "u2"], crops=3, crop_frames=40, seed=0)
>>> tuple(X.shape)
(2, 3, 192)
>>> ds = PooledDataset(X, [0, 1], seed=0)
>>> x, y = ds[1]; tuple(x.shape), y
((192,), 1)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from privspk.device import torch_device
from privspk.errors import ConfigError
from privspk.features.crops import random_crop

EMBEDDING_PREFIX = "embedding."


def embedding_only(encoder: nn.Module) -> bool:
    """True when the encoder can be cut at its pooled statistics: only ``embedding.*`` trains.

    >>> from privspk.models.ecapa import ECAPAEncoder
    >>> embedding_only(ECAPAEncoder(20, channels=32))   # everything trainable
    False
    """
    if not hasattr(encoder, "pooled") or not hasattr(encoder, "embedding"):
        return False
    trainable = [n for n, p in encoder.named_parameters() if p.requires_grad]
    return bool(trainable) and all(n.startswith(EMBEDDING_PREFIX) for n in trainable)


def trunk_fingerprint(encoder: nn.Module) -> str:
    """SHA-256 of every parameter and buffer outside ``embedding`` (the frozen trunk).

    >>> from privspk.models.ecapa import ECAPAEncoder
    >>> a = ECAPAEncoder(20, channels=32); b = ECAPAEncoder(20, channels=32)
    >>> _ = b.load_state_dict(a.state_dict())
    >>> with torch.no_grad():
    ...     _ = b.embedding.linear.weight.add_(1.0)
    >>> trunk_fingerprint(a) == trunk_fingerprint(b)
    True
    """
    h = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        if name.startswith(EMBEDDING_PREFIX):
            continue
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def _pool_by_length(encoder: nn.Module, items: Iterable[tuple[object, Tensor]], *, batch: int,
                    device: str | torch.device = "cpu") -> dict:
    """Pooled statistics on ``device`` (the encoder goes there and back), returned on the CPU."""
    dev = torch_device(device)
    groups: dict[int, list[tuple[object, Tensor]]] = {}
    for key, feats in items:
        groups.setdefault(int(feats.shape[0]), []).append((key, feats))
    out: dict = {}
    was_training = encoder.training
    home = next(encoder.parameters()).device
    encoder.to(dev).eval()
    try:
        for group in groups.values():
            for lo in range(0, len(group), batch):
                chunk = group[lo : lo + batch]
                pooled = encoder.pooled(torch.stack([f for _, f in chunk]).float().to(dev)).cpu()
                for (key, _), vec in zip(chunk, pooled):
                    out[key] = vec.clone()
    finally:
        encoder.to(home).train(was_training)
    return out


_MEMO: dict[tuple, Tensor] = {}
_MEMO_MAX = 16


def pooled_crops(
    encoder: nn.Module,
    getter: Callable[[str], Tensor],
    utt_ids: Sequence[str],
    *,
    crops: int,
    crop_frames: int,
    seed: int,
    batch: int = 64,
    device: str | torch.device = "cpu",
) -> Tensor:
    """Pooled statistics of ``crops`` random crops of each utterance: ``(N, crops, pool_dim)``.

    Crop ``m`` of utterance ``i`` is drawn from ``np.random.default_rng([seed, i, m])``.
    Results are memoised in this process by (trunk fingerprint, feature source, utterances,
    crops, crop length, seed), so several runs over the same client data (a benchmark
    sweep) compute them once. The trunk runs on ``device``; the result is on the CPU.
    """
    if type(crops) is not int or crops < 1:
        raise ConfigError(f"crops must be a positive int, got {crops!r}")
    key = (trunk_fingerprint(encoder), id(getattr(getter, "__self__", getter)),
           hashlib.sha256("\n".join(utt_ids).encode()).hexdigest(), crops, crop_frames, seed)
    if key in _MEMO:
        return _MEMO[key]
    items = []
    for i, utt in enumerate(utt_ids):
        feats = getter(utt)
        for m in range(crops):
            items.append(((i, m), random_crop(feats, n_frames=crop_frames, rng=np.random.default_rng([seed, i, m]))))
    pooled = _pool_by_length(encoder, items, batch=batch, device=device)
    out = torch.stack([torch.stack([pooled[(i, m)] for m in range(crops)]) for i in range(len(utt_ids))])
    if len(_MEMO) >= _MEMO_MAX:
        _MEMO.pop(next(iter(_MEMO)))
    _MEMO[key] = out
    return out


def pooled_utterances(encoder: nn.Module, items: Iterable[tuple[str, Tensor]], *, batch: int = 64,
                      device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """Pooled statistics of whole utterances (batched by equal length, run on ``device``), by utterance id."""
    return _pool_by_length(encoder, items, batch=batch, device=device)


class PooledDataset(Dataset):
    """Items ``(pooled stats of one random cached crop, label)``; the crop depends on (seed, epoch, index)."""

    def __init__(self, pooled: Tensor, labels: Sequence[int], *, seed: int) -> None:
        if pooled.dim() != 3 or pooled.shape[0] != len(labels):
            raise ConfigError(f"pooled must be (N, crops, dim) with N = {len(labels)} labels, got "
                              f"{tuple(pooled.shape)}")
        self.pooled = pooled
        self.labels = tuple(int(v) for v in labels)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the crops of epoch ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        m = int(np.random.default_rng([self.seed, self.epoch, index]).integers(0, self.pooled.shape[1]))
        return self.pooled[index, m], self.labels[index]
