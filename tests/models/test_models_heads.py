from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from privspk.errors import ConfigError, ModelError
from privspk.models.heads import AAMHead, aam_softmax_loss


def reference_loss(cos: np.ndarray, labels: np.ndarray, margin: float, scale: float, easy: bool) -> float:
    """ArcFace loss, one sample and one class at a time, with the angle taken by acos."""
    total = 0.0
    for row, label in zip(cos, labels):
        logits = []
        for k, c in enumerate(row):
            c = min(1.0, max(-1.0, float(c)))
            if k == label:
                theta = math.acos(c)
                if easy:
                    target = math.cos(theta + margin) if c > 0 else c
                elif theta + margin <= math.pi:
                    target = math.cos(theta + margin)
                else:  # past pi cos(theta + m) turns back up; ArcFace uses a linear stand-in
                    target = c - margin * math.sin(margin)
                logits.append(scale * target)
            else:
                logits.append(scale * c)
        top = max(logits)
        log_sum = top + math.log(sum(math.exp(v - top) for v in logits))
        total += log_sum - logits[label]
    return total / len(labels)


@st.composite
def batches(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    batch = draw(st.integers(1, 6))
    n_classes = draw(st.integers(2, 7))
    cos = draw(
        st.lists(
            st.lists(st.floats(-1.0, 1.0, allow_nan=False), min_size=n_classes, max_size=n_classes),
            min_size=batch, max_size=batch,
        )
    )
    labels = draw(st.lists(st.integers(0, n_classes - 1), min_size=batch, max_size=batch))
    return np.array(cos, dtype=np.float64), np.array(labels)


@settings(max_examples=150, deadline=None)
@given(
    data=batches(),
    margin=st.floats(0.0, 0.6),
    scale=st.floats(1.0, 64.0),
    easy=st.booleans(),
)
def test_loss_matches_slow_reference(data: tuple[np.ndarray, np.ndarray], margin: float, scale: float, easy: bool) -> None:
    cos, labels = data
    # Keep clear of the branch point cos = cos(pi - m), where the rule jumps.
    if not easy and np.any(np.abs(cos[np.arange(len(labels)), labels] - math.cos(math.pi - margin)) < 1e-6):
        return
    got = aam_softmax_loss(
        torch.from_numpy(cos), torch.from_numpy(labels), margin=margin, scale=scale, easy_margin=easy
    )
    assert math.isclose(float(got), reference_loss(cos, labels, margin, scale, easy), rel_tol=1e-7, abs_tol=1e-7)


@settings(max_examples=50, deadline=None)
@given(data=batches(), scale=st.floats(1.0, 64.0))
def test_zero_margin_is_scaled_cosine_cross_entropy(data: tuple[np.ndarray, np.ndarray], scale: float) -> None:
    cos, labels = (torch.from_numpy(a) for a in data)
    torch.testing.assert_close(
        aam_softmax_loss(cos, labels, margin=0.0, scale=scale), F.cross_entropy(scale * cos, labels)
    )


def test_margin_makes_the_target_harder() -> None:
    cos, labels = torch.tensor([[0.6, 0.1, -0.3]]), torch.tensor([0])
    losses = [float(aam_softmax_loss(cos, labels, margin=m)) for m in (0.0, 0.1, 0.2, 0.4)]
    assert losses == sorted(losses) and losses[0] < losses[-1]


def test_reductions() -> None:
    cos, labels = torch.tensor([[0.6, 0.1], [0.2, 0.3], [-0.5, 0.9]]), torch.tensor([0, 0, 1])
    each = aam_softmax_loss(cos, labels, reduction="none")
    assert each.shape == (3,)
    torch.testing.assert_close(aam_softmax_loss(cos, labels, reduction="sum"), each.sum())
    torch.testing.assert_close(aam_softmax_loss(cos, labels), each.mean())


@pytest.mark.parametrize("target", [1.0, 1.0 - 1e-15, -1.0, -1.0 + 1e-15])
@pytest.mark.parametrize("easy", [False, True])
def test_values_are_exact_next_to_plus_and_minus_one(target: float, easy: bool) -> None:
    cos = np.array([[target, 0.95]])  # a close competitor keeps the loss far from 0
    got = float(aam_softmax_loss(torch.from_numpy(cos), torch.tensor([0]), margin=0.3, easy_margin=easy))
    assert math.isclose(got, reference_loss(cos, np.array([0]), 0.3, 30.0, easy), rel_tol=1e-9, abs_tol=1e-12)


def test_gradients_are_finite_at_plus_and_minus_one() -> None:
    for easy in (False, True):
        cos = torch.tensor([[1.0, -1.0, 0.0], [-1.0, 1.0, 1.0]], requires_grad=True)
        aam_softmax_loss(cos, torch.tensor([0, 0]), easy_margin=easy).backward()
        assert bool(torch.isfinite(cos.grad).all())


def test_head_outputs_cosines() -> None:
    torch.manual_seed(0)
    head = AAMHead(5, 4)
    emb = torch.randn(3, 5) * 7
    weight = head.weight.detach().numpy()
    want = np.array(
        [[np.dot(e, w) / np.linalg.norm(e) / np.linalg.norm(w) for w in weight] for e in emb.numpy()]
    )
    np.testing.assert_allclose(head(emb).detach().numpy(), want, rtol=1e-5, atol=1e-6)
    # only directions matter
    torch.testing.assert_close(head(emb * 0.01), head(emb))


def test_head_per_sample_gradients_under_opacus_match_micro_batches() -> None:
    from opacus import GradSampleModule

    torch.manual_seed(1)
    head = AAMHead(6, 4).double()
    x, y = torch.randn(5, 6, dtype=torch.float64), torch.tensor([0, 3, 1, 1, 2])
    singles = []
    for i in range(5):
        head.zero_grad(set_to_none=True)
        aam_softmax_loss(head(x[i : i + 1]), y[i : i + 1], reduction="sum").backward()
        singles.append(head.weight.grad.clone())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gsm = GradSampleModule(head, batch_first=True, loss_reduction="sum")
        aam_softmax_loss(gsm(x), y, reduction="sum").backward()
    torch.testing.assert_close(head.weight.grad_sample, torch.stack(singles), atol=1e-12, rtol=1e-9)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"margin": -0.1}, "margin"),
        ({"margin": 2.0}, "margin"),
        ({"margin": True}, "margin"),
        ({"scale": 0.0}, "scale"),
        ({"scale": float("inf")}, "scale"),
        ({"easy_margin": 1}, "easy_margin"),
        ({"reduction": "avg"}, "reduction"),
    ],
)
def test_bad_hyperparameters(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        aam_softmax_loss(torch.zeros(2, 3), torch.tensor([0, 1]), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cos", "labels", "match"),
    [
        (torch.zeros(2, 3), torch.tensor([0, 3]), r"\[0, 3\).*max 3"),
        (torch.zeros(2, 3), torch.tensor([-1, 0]), "min -1"),
        (torch.zeros(2, 3), torch.tensor([0.0, 1.0]), "integer"),
        (torch.zeros(2, 3), torch.tensor([0, 1, 2]), r"\(2,\)"),
        (torch.zeros(6), torch.tensor([0]), "batch, classes"),
        (torch.zeros(2, 3, dtype=torch.long), torch.tensor([0, 1]), "float"),
    ],
)
def test_bad_tensors(cos: torch.Tensor, labels: torch.Tensor, match: str) -> None:
    with pytest.raises(ModelError, match=match):
        aam_softmax_loss(cos, labels)


def test_bad_head_arguments() -> None:
    with pytest.raises(ConfigError, match="n_classes"):
        AAMHead(8, 0)
    with pytest.raises(ConfigError, match="embed_dim"):
        AAMHead(8.0, 3)  # type: ignore[arg-type]
    with pytest.raises(ModelError, match=r"\(batch, 8\), got \(2, 7\)"):
        AAMHead(8, 3)(torch.zeros(2, 7))
