"""Tests of privspk.evaluation.embed against embedding each utterance by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from privspk.errors import ConfigError, FeatureError, ModelError
from privspk.evaluation.embed import embed_features, l2_normalise


def reference(encoder, mat):
    """One utterance alone, eval mode, normalised by hand."""
    encoder.eval()
    with torch.no_grad():
        vec = encoder(torch.as_tensor(mat, dtype=torch.float32)[None])[0].double().numpy()
    return vec / np.linalg.norm(vec)


def random_feats(seed, lengths, n_bins=5):
    gen = torch.Generator().manual_seed(seed)
    return {f"u{i}": torch.randn(n, n_bins, generator=gen) + i for i, n in enumerate(lengths)}


@given(st.lists(st.integers(1, 12), min_size=1, max_size=10), st.integers(1, 4), st.integers(0, 1000))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_matches_one_at_a_time_reference(mean_std_encoder, lengths, batch_size, seed):
    encoder = mean_std_encoder(5, 4, seed=seed)
    feats = random_feats(seed, lengths)
    out = embed_features(encoder, feats, batch_size=batch_size)
    assert sorted(out) == sorted(feats)
    for utt, mat in feats.items():
        assert out[utt].dtype == np.float32 and out[utt].shape == (4,)
        np.testing.assert_allclose(out[utt], reference(encoder, mat), atol=1e-5)


def test_max_frames_keeps_the_middle(mean_std_encoder):
    encoder = mean_std_encoder(5, 4)
    feats = random_feats(0, [20, 7])
    out = embed_features(encoder, feats, max_frames=8)
    np.testing.assert_allclose(out["u0"], reference(encoder, feats["u0"][6:14]), atol=1e-6)
    np.testing.assert_allclose(out["u1"], reference(encoder, feats["u1"]), atol=1e-6)  # shorter: whole


def test_accepts_pairs_and_numpy(mean_std_encoder):
    encoder = mean_std_encoder(5, 4)
    feats = random_feats(1, [6, 9])
    pairs = [(u, m.numpy()) for u, m in feats.items()]
    a = embed_features(encoder, pairs)
    b = embed_features(encoder, feats)
    for u in feats:
        np.testing.assert_array_equal(a[u], b[u])


def test_eval_mode_no_grad_and_modes_restored(mean_std_encoder):
    encoder = mean_std_encoder(5, 4)
    encoder.train()
    encoder.proj.eval()  # a mixed state must come back exactly
    feats = random_feats(2, [10, 10, 10])
    first = embed_features(encoder, feats, batch_size=2)
    second = embed_features(encoder, feats, batch_size=3)
    for u in feats:  # dropout (p=0.5) is off during embedding
        np.testing.assert_allclose(first[u], second[u], atol=1e-6)
    assert encoder.training and encoder.dropout.training and not encoder.proj.training
    assert encoder.proj.weight.grad is None


def test_modes_restored_when_the_encoder_fails():
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    enc = Broken().train()
    with pytest.raises(RuntimeError, match="boom"):
        embed_features(enc, {"a": torch.ones(3, 2)})
    assert enc.training


def test_zero_embedding_stays_zero():
    enc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 2))
    torch.nn.init.zeros_(enc[1].weight)
    torch.nn.init.zeros_(enc[1].bias)
    out = embed_features(enc, {"a": torch.ones(3, 2)})
    np.testing.assert_array_equal(out["a"], [0.0, 0.0])


def test_l2_normalise_matches_numpy():
    x = np.random.default_rng(0).normal(size=(5, 3))
    np.testing.assert_allclose(l2_normalise(x), x / np.linalg.norm(x, axis=1, keepdims=True))


@pytest.mark.parametrize(
    ("feats", "error", "fragment"),
    [
        ({"a": torch.ones(3)}, FeatureError, r"features of 'a' must be a non-empty \(frames, bins\) matrix"),
        ({"a": torch.ones(0, 5)}, FeatureError, "non-empty"),
        ({"a": torch.ones(3, 5), "b": torch.ones(3, 4)}, FeatureError, "'b' have 4 bins but earlier ones have 5"),
        ({"a": torch.full((3, 5), float("nan"))}, FeatureError, "'a' contain NaN"),
        ([("a", torch.ones(3, 5)), ("a", torch.ones(4, 5))], ConfigError, "'a' appears twice"),
        ([torch.ones(3, 5)], ConfigError, "mapping or"),
    ],
)
def test_bad_features(mean_std_encoder, feats, error, fragment):
    with pytest.raises(error, match=fragment):
        embed_features(mean_std_encoder(5, 4), feats)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2.0}, "batch_size"),
        ({"max_frames": 0}, "max_frames"),
        ({"device": "gpu0"}, "device must name a torch device"),
    ],
)
def test_bad_options(mean_std_encoder, kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        embed_features(mean_std_encoder(5, 4), {"a": torch.ones(3, 5)}, **kwargs)


def test_encoder_with_wrong_output_shape():
    with pytest.raises(ModelError, match=r"encoder must map \(B, T, F\) to \(B, D\); got \(1, 3, 2\)"):
        embed_features(torch.nn.Linear(5, 2), {"a": torch.ones(3, 5)})


def test_encoder_with_non_finite_output():
    class Nan(torch.nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], 2), float("nan"))

    with pytest.raises(ModelError, match="non-finite embedding for 'a'"):
        embed_features(Nan(), {"a": torch.ones(3, 5)})


def test_encoder_on_another_device():
    enc = torch.nn.Linear(5, 2, device="meta")
    with pytest.raises(ConfigError, match=r"weights are on meta but device='cpu'"):
        embed_features(enc, {"a": torch.ones(3, 5)})
