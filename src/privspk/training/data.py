"""A client's local training data: feature getter, utterance ids, local speaker labels.

>>> import torch
>>> feats = {"u1": torch.zeros(50, 4), "u2": torch.zeros(60, 4), "u3": torch.zeros(70, 4)}
>>> d = ClientData.from_pairs(feats.__getitem__, [("u1", "s9"), ("u2", "s2"), ("u3", "s9")])
>>> d.speakers, d.labels, d.n_speakers
(('s2', 's9'), (1, 0, 1), 2)
>>> d.utterances_of(1)
[0, 2]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
import dataclasses
from dataclasses import dataclass, field

from torch import Tensor

from privspk.errors import ConfigError


@dataclass(frozen=True)
class ClientData:
    """Utterances of one client with labels ``0..n_speakers-1`` (index into ``speakers``).

    ``pooled`` optionally holds the frozen trunk's pooled statistics of cached crops,
    ``(N, crops, pool_dim)`` (see :mod:`privspk.training.trunk`); training then runs on
    them instead of on feature crops.
    """

    getter: Callable[[str], Tensor]
    utt_ids: tuple[str, ...]
    labels: tuple[int, ...]
    speakers: tuple[str, ...]
    pooled: Tensor | None = field(default=None, repr=False, compare=False)
    _by_label: dict[int, list[int]] = field(init=False, default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.pooled is not None and (self.pooled.dim() != 3 or self.pooled.shape[0] != len(self.utt_ids)):
            raise ConfigError(f"pooled must be (N={len(self.utt_ids)}, crops, dim), got {tuple(self.pooled.shape)}")
        if not self.utt_ids:
            raise ConfigError("a client needs at least one utterance")
        if len(self.utt_ids) != len(self.labels):
            raise ConfigError("utt_ids and labels differ in length")
        for i, lab in enumerate(self.labels):
            if not 0 <= lab < len(self.speakers):
                raise ConfigError(f"label {lab} of {self.utt_ids[i]} is outside 0..{len(self.speakers) - 1}")
            self._by_label.setdefault(lab, []).append(i)

    @classmethod
    def from_pairs(cls, getter: Callable[[str], Tensor], pairs: Iterable[tuple[str, str]]) -> ClientData:
        """Build from ``(utt_id, speaker)`` pairs; speakers are indexed in sorted order."""
        pairs = list(pairs)
        speakers = tuple(sorted({s for _, s in pairs}))
        index = {s: i for i, s in enumerate(speakers)}
        return cls(getter, tuple(u for u, _ in pairs), tuple(index[s] for _, s in pairs), speakers)

    @property
    def n_speakers(self) -> int:
        """Number of distinct local speakers."""
        return len(self.speakers)

    def __len__(self) -> int:
        return len(self.utt_ids)

    def with_pooled(self, pooled: Tensor) -> ClientData:
        """A copy that trains on cached pooled statistics ``(N, crops, dim)``."""
        return dataclasses.replace(self, pooled=pooled)

    def utterances_of(self, label: int) -> list[int]:
        """Item indices of one speaker."""
        return list(self._by_label.get(label, []))
