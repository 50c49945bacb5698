"""Fixed-length random crops of feature matrices, and a deterministic training dataset of them.

Training batches need equal lengths; a crop of ``n_frames`` frames is taken at a random start,
and an utterance shorter than that is repeated end to end first. Every crop of
:class:`CropDataset` depends only on ``(seed, epoch, index)``, so runs repeat exactly whatever
the sampler (uniform, Poisson for DP-SGD) or the number of loader workers.

>>> import numpy as np, torch
>>> feats = torch.arange(10.0).unsqueeze(1)  # 10 frames, 1 bin
>>> random_crop(feats, n_frames=4, rng=np.random.default_rng(0)).flatten().tolist()
[5.0, 6.0, 7.0, 8.0]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from privspk.errors import ConfigError, FeatureError

__all__ = ["CropDataset", "random_crop"]


def _check_n_frames(n_frames: object) -> int:
    if type(n_frames) is not int or n_frames <= 0:
        raise ConfigError(f"n_frames must be a positive int, got {n_frames!r}")
    return n_frames


def random_crop(feats: Tensor, *, n_frames: int, rng: np.random.Generator) -> Tensor:
    """A random window of ``n_frames`` consecutive frames of ``feats`` ``(T, F)``.

    When ``T >= n_frames`` the window lies inside the utterance (start uniform in
    ``[0, T - n_frames]``). When shorter, the utterance is repeated end to end and the window
    starts at a uniform frame of the first copy, so every frame can open the crop.

    Example:
        >>> import numpy as np, torch
        >>> feats = torch.arange(6.0).reshape(3, 2)
        >>> random_crop(feats, n_frames=5, rng=np.random.default_rng(1))[:, 0].tolist()
        [2.0, 4.0, 0.0, 2.0, 4.0]
        >>> tuple(random_crop(torch.zeros(50, 40), n_frames=20, rng=np.random.default_rng(0)).shape)
        (20, 40)
    """
    n_frames = _check_n_frames(n_frames)
    if not isinstance(rng, np.random.Generator):
        raise ConfigError(f"rng must be a numpy Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    if not isinstance(feats, Tensor) or feats.dim() != 2:
        shape = tuple(feats.shape) if isinstance(feats, Tensor) else type(feats).__name__
        raise FeatureError(f"features must be a (T, F) tensor, got {shape}")
    n_total = feats.shape[0]
    if n_total == 0:
        raise FeatureError("features have 0 frames; nothing to crop")
    if n_total >= n_frames:
        start = int(rng.integers(0, n_total - n_frames + 1))
        return feats[start : start + n_frames]
    start = int(rng.integers(0, n_total))
    copies = -(-(start + n_frames) // n_total)  # ceil
    return feats.repeat(copies, 1)[start : start + n_frames]


class CropDataset(Dataset):
    """Map-style dataset of ``(crop (n_frames, F) float32, label int)`` pairs.

    Arguments:
        feature_getter: returns the ``(T, F)`` features of an utterance id
            (for example ``FeatureCache.get``).
        utt_ids: utterance ids, one per item.
        labels: integer class (speaker index) per item, ``>= 0``.
        n_frames: crop length in frames.
        seed: base seed; the crop of item ``i`` in epoch ``e`` is drawn from
            ``np.random.default_rng([seed, e, i])``.

    Call :meth:`set_epoch` at the start of each epoch for new crops.

    Example:
        >>> import torch
        >>> feats = {"a": torch.randn(30, 8), "b": torch.randn(300, 8)}
        >>> ds = CropDataset(feats.__getitem__, ["a", "b"], [0, 1], n_frames=100, seed=7)
        >>> crop, label = ds[1]
        >>> tuple(crop.shape), label
        ((100, 8), 1)
        >>> bool(torch.equal(ds[1][0], crop)), len(ds)
        (True, 2)
    """

    def __init__(
        self,
        feature_getter: Callable[[str], Tensor],
        utt_ids: Sequence[str],
        labels: Sequence[int],
        *,
        n_frames: int,
        seed: int,
    ) -> None:
        if not callable(feature_getter):
            raise ConfigError("feature_getter must be callable: utt_id -> (T, F) tensor")
        self.utt_ids = tuple(utt_ids)
        self.labels = tuple(int(label) for label in labels)
        if len(self.utt_ids) != len(self.labels):
            raise ConfigError(
                f"utt_ids and labels differ in length ({len(self.utt_ids)} vs {len(self.labels)})"
            )
        bad = [label for label in self.labels if label < 0]
        if bad:
            raise ConfigError(f"labels must be >= 0, got {bad[:5]}")
        if type(seed) is not int or seed < 0:
            raise ConfigError(f"seed must be an int >= 0, got {seed!r}")
        self.feature_getter = feature_getter
        self.n_frames = _check_n_frames(n_frames)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the crops of epoch ``epoch`` (an int >= 0).

        >>> import torch
        >>> ds = CropDataset(lambda u: torch.arange(50.0).unsqueeze(1), ["u"], [0], n_frames=3, seed=0)
        >>> first = ds[0][0]; ds.set_epoch(1); ds.epoch
        1
        """
        if type(epoch) is not int or epoch < 0:
            raise ConfigError(f"epoch must be an int >= 0, got {epoch!r}")
        self.epoch = epoch

    def __len__(self) -> int:
        """Number of items (utterances)."""
        return len(self.utt_ids)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        """``(crop (n_frames, F) float32, label)`` of item ``index`` in the current epoch."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        index = index % len(self)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        feats = self.feature_getter(self.utt_ids[index])
        crop = random_crop(feats, n_frames=self.n_frames, rng=rng)
        return crop.to(torch.float32).contiguous(), self.labels[index]
