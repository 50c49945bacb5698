from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from privspk.errors import ConfigError, FeatureError
from privspk.features.crops import CropDataset, random_crop


def indexed(n_total: int, n_bins: int = 3) -> torch.Tensor:
    """Frame t holds t in every bin, so a crop shows which frames it took."""
    return torch.arange(n_total, dtype=torch.float32).unsqueeze(1).repeat(1, n_bins)


@settings(max_examples=100, deadline=None)
@given(n_total=st.integers(1, 60), n_frames=st.integers(1, 90), seed=st.integers(0, 2**32 - 1))
def test_crop_is_a_window_of_the_repeated_utterance(n_total: int, n_frames: int, seed: int) -> None:
    crop = random_crop(indexed(n_total), n_frames=n_frames, rng=np.random.default_rng(seed))
    assert crop.shape == (n_frames, 3)
    frames = crop[:, 0].long().tolist()
    start = frames[0]
    assert frames == [(start + j) % n_total for j in range(n_frames)]
    if n_total >= n_frames:  # fits: no wrap-around, the window lies inside
        assert start + n_frames <= n_total


@pytest.mark.parametrize(("n_total", "n_frames"), [(6, 4), (3, 7)])
def test_every_start_is_drawn(n_total: int, n_frames: int) -> None:
    rng = np.random.default_rng(0)
    starts = {int(random_crop(indexed(n_total), n_frames=n_frames, rng=rng)[0, 0]) for _ in range(300)}
    n_starts = n_total - n_frames + 1 if n_total >= n_frames else n_total
    assert starts == set(range(n_starts))


def test_same_generator_state_same_crop() -> None:
    feats = torch.randn(100, 5)
    a = random_crop(feats, n_frames=30, rng=np.random.default_rng(42))
    b = random_crop(feats, n_frames=30, rng=np.random.default_rng(42))
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("feats", "kwargs", "error", "match"),
    [
        (torch.zeros(10, 2), {"n_frames": 0}, ConfigError, "n_frames"),
        (torch.zeros(10, 2), {"n_frames": True}, ConfigError, "n_frames"),
        (torch.zeros(10, 2), {"n_frames": 4.0}, ConfigError, "n_frames"),
        (torch.zeros(10), {"n_frames": 4}, FeatureError, r"\(T, F\).*\(10,\)"),
        (torch.zeros(0, 2), {"n_frames": 4}, FeatureError, "0 frames"),
        (np.zeros((10, 2)), {"n_frames": 4}, FeatureError, "ndarray"),
    ],
)
def test_bad_crop_input(feats: object, kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        random_crop(feats, rng=np.random.default_rng(0), **kwargs)  # type: ignore[arg-type]


def test_rng_must_be_a_generator() -> None:
    with pytest.raises(ConfigError, match="Generator"):
        random_crop(torch.zeros(5, 2), n_frames=2, rng=np.random.RandomState(0))  # type: ignore[arg-type]


def make_dataset(seed: int = 3, n_frames: int = 20) -> CropDataset:
    store = {f"u{i}": indexed(15 + 17 * i) for i in range(6)}
    return CropDataset(store.__getitem__, list(store), [i % 3 for i in range(6)], n_frames=n_frames, seed=seed)


def test_dataset_items_depend_only_on_seed_epoch_index() -> None:
    a, b = make_dataset(), make_dataset()
    forward = [a[i][0] for i in range(len(a))]
    backward = [b[i][0] for i in reversed(range(len(b)))][::-1]
    assert all(torch.equal(x, y) for x, y in zip(forward, backward))
    a.set_epoch(1)
    moved = [a[i][0] for i in range(len(a))]
    assert any(not torch.equal(x, y) for x, y in zip(forward, moved))
    b.set_epoch(1)
    assert all(torch.equal(x, b[i][0]) for i, x in enumerate(moved))
    c = make_dataset(seed=4)
    assert any(not torch.equal(c[i][0], forward[i]) for i in range(len(c)))


def test_dataset_labels_shapes_and_negative_index() -> None:
    ds = make_dataset()
    assert len(ds) == 6
    crop, label = ds[4]
    assert crop.shape == (20, 3) and crop.dtype == torch.float32 and label == 1
    assert torch.equal(ds[-2][0], crop)
    with pytest.raises(IndexError):
        ds[6]


def test_dataset_batches_through_a_dataloader() -> None:
    crops, labels = next(iter(DataLoader(make_dataset(), batch_size=4)))
    assert crops.shape == (4, 20, 3)
    assert labels.tolist() == [0, 1, 2, 0]


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((["a", "b"], [0]), {"n_frames": 5, "seed": 0}, "differ in length"),
        ((["a"], [-1]), {"n_frames": 5, "seed": 0}, "labels must be >= 0"),
        ((["a"], [0]), {"n_frames": 0, "seed": 0}, "n_frames"),
        ((["a"], [0]), {"n_frames": 5, "seed": -1}, "seed"),
    ],
)
def test_bad_dataset_arguments(args: tuple[list[str], list[int]], kwargs: dict[str, int], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        CropDataset(lambda u: torch.zeros(5, 2), *args, **kwargs)


def test_bad_epoch_and_getter() -> None:
    with pytest.raises(ConfigError, match="epoch"):
        make_dataset().set_epoch(-1)
    with pytest.raises(ConfigError, match="callable"):
        CropDataset({"a": torch.zeros(3, 2)}, ["a"], [0], n_frames=2, seed=0)  # type: ignore[arg-type]
