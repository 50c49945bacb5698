"""Speaker-level DP-SGD: ``clip_group_sum`` against a loop reference, and Opacus' per-sample
gradients summed per speaker against a plain backward pass per speaker."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from privspk.errors import ConfigError
from privspk.features.crops import CropDataset
from privspk.models.heads import aam_softmax_loss
from privspk.training.speaker_dp import clip_group_sum
from training_support import client_data, tiny_net


def reference_clip_group_sum(grad_samples, groups, n_groups, clip):
    """Plain loops: per-group sums, each group's joint L2 norm over all params, clip, add."""
    batch = len(groups)
    sums = [[torch.zeros(g.shape[1:], dtype=torch.float64) for g in grad_samples] for _ in range(n_groups)]
    for i in range(batch):
        for k, g in enumerate(grad_samples):
            sums[int(groups[i])][k] += g[i].double()
    norms = []
    out = [torch.zeros(g.shape[1:], dtype=torch.float64) for g in grad_samples]
    for grp in range(n_groups):
        norm = math.sqrt(sum(float((t * t).sum()) for t in sums[grp]))
        norms.append(norm)
        factor = min(1.0, clip / (norm + 1e-6))
        for k in range(len(out)):
            out[k] += sums[grp][k] * factor
    return out, torch.tensor(norms, dtype=torch.float64)


@st.composite
def grad_problem(draw):
    batch = draw(st.integers(0, 9))
    n_groups = draw(st.integers(1, 5))
    shapes = draw(st.lists(st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple), min_size=1, max_size=3))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([1e-3, 1.0, 30.0]))
    gen = torch.Generator().manual_seed(seed)
    grads = [torch.randn((batch, *s), generator=gen, dtype=torch.float64) * scale for s in shapes]
    groups = torch.tensor(draw(st.lists(st.integers(0, n_groups - 1), min_size=batch, max_size=batch)),
                          dtype=torch.long)
    clip = draw(st.floats(1e-3, 100.0))
    return grads, groups, n_groups, clip


@settings(max_examples=80, deadline=None)
@given(grad_problem())
def test_clip_group_sum_matches_loop_reference(problem):
    grads, groups, n_groups, clip = problem
    summed, norms = clip_group_sum(grads, groups, n_groups=n_groups, clip=clip)
    ref, ref_norms = reference_clip_group_sum(grads, groups, n_groups, clip)
    assert len(summed) == len(grads)
    for s, r, g in zip(summed, ref, grads):
        assert s.shape == g.shape[1:]
        torch.testing.assert_close(s, r, rtol=1e-9, atol=1e-9)
    assert norms.shape == (n_groups,)
    torch.testing.assert_close(norms, ref_norms, rtol=1e-9, atol=1e-12)
    # the sum of clipped groups is bounded by (groups with a sample) x clip
    total = math.sqrt(sum(float((s * s).sum()) for s in summed))
    assert total <= len(set(groups.tolist())) * clip * (1 + 1e-9) + 1e-12


def test_groups_without_samples_have_zero_norm_and_add_nothing():
    g = [torch.tensor([[3.0, 4.0], [1.0, 0.0]])]
    summed, norms = clip_group_sum(g, torch.tensor([2, 2]), n_groups=4, clip=100.0)
    assert norms.tolist() == pytest.approx([0.0, 0.0, math.hypot(4.0, 4.0), 0.0])
    assert summed[0].tolist() == pytest.approx([4.0, 4.0])


def test_clipping_is_joint_over_parameters_not_per_parameter():
    # group 0 has norm 5 over two parameters (3 in one, 4 in the other): both scale by 1/5
    g = [torch.tensor([[3.0]]), torch.tensor([[0.0, 4.0]])]
    summed, norms = clip_group_sum(g, torch.tensor([0]), n_groups=1, clip=1.0)
    assert norms.tolist() == pytest.approx([5.0])
    assert summed[0].tolist() == pytest.approx([0.6], rel=1e-5)
    assert summed[1].tolist() == pytest.approx([0.0, 0.8], rel=1e-5)


def test_samples_of_a_group_are_summed_before_clipping():
    # two opposite samples of one speaker cancel: nothing is clipped away, the sum is zero
    g = [torch.tensor([[10.0, 0.0], [-10.0, 0.0]])]
    summed, norms = clip_group_sum(g, torch.tensor([0, 0]), n_groups=1, clip=1.0)
    assert norms.tolist() == [0.0]
    assert summed[0].tolist() == [0.0, 0.0]


@pytest.mark.parametrize(
    ("grads", "groups", "n_groups", "clip", "match"),
    [
        ([torch.ones(2, 3)], torch.tensor([0, 1]), 2, 0.0, "clip must be > 0"),
        ([torch.ones(2, 3)], torch.tensor([0, 1]), 2, -1.0, "clip must be > 0"),
        ([torch.ones(2, 3)], torch.tensor([[0, 1]]), 2, 1.0, "groups must be 1-D"),
        ([torch.ones(2, 3)], torch.tensor([0, 2]), 2, 1.0, r"group ids must lie in 0\.\.1"),
        ([torch.ones(2, 3)], torch.tensor([-1, 0]), 2, 1.0, r"group ids must lie in 0\.\.1"),
        ([torch.ones(3, 3)], torch.tensor([0, 1]), 2, 1.0, "grad sample batch 3 != 2 group ids"),
        ([torch.ones(2, 3), torch.ones(1, 2)], torch.tensor([0, 1]), 2, 1.0, "grad sample batch 1 != 2"),
    ],
)
def test_bad_input_is_refused_with_a_message(grads, groups, n_groups, clip, match):
    with pytest.raises(ConfigError, match=match):
        clip_group_sum(grads, groups, n_groups=n_groups, clip=clip)


# --------------------------------------------------------------------------- Opacus end to end
def _crops(data, n_frames=24, seed=0):
    ds = CropDataset(data.getter, data.utt_ids, data.labels, n_frames=n_frames, seed=seed)
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    return torch.stack(xs), torch.tensor(ys)


@pytest.mark.parametrize("freeze_front", [False, True])
def test_opacus_per_speaker_sums_equal_a_plain_backward_per_speaker(freeze_front):
    from opacus.grad_sample import GradSampleModule

    data = client_data(3, 3, frames=30, seed=4)
    x, y = _crops(data)
    net = tiny_net(3, seed=2, freeze_front=freeze_front)
    ref_net = copy.deepcopy(net)
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    frozen = [n for n, p in net.named_parameters() if not p.requires_grad]
    assert bool(frozen) == freeze_front

    # what _train_dp_speaker does: per-sample gradients of the summed loss, grouped by speaker
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gsm = GradSampleModule(net, batch_first=True, loss_reduction="sum")
        try:
            aam_softmax_loss(gsm(x), y, reduction="sum").backward()
            params = dict(net.named_parameters())
            gs = [params[n].grad_sample for n in names]
            assert all(getattr(params[n], "grad_sample", None) is None for n in frozen)
            summed, norms = clip_group_sum(gs, y, n_groups=3, clip=1e9)
            clipped, _ = clip_group_sum(gs, y, n_groups=3, clip=0.05)
        finally:
            gsm._close()

    # reference: one plain backward pass per speaker (micro-batch of that speaker's utterances)
    per_speaker = []
    ref_params = dict(ref_net.named_parameters())
    for spk in range(3):
        ref_net.zero_grad(set_to_none=True)
        mask = y == spk
        aam_softmax_loss(ref_net(x[mask]), y[mask], reduction="sum").backward()
        per_speaker.append([ref_params[n].grad.detach().clone() for n in names])
    for k, n in enumerate(names):
        expect = sum(per_speaker[s][k] for s in range(3))
        torch.testing.assert_close(summed[k], expect, rtol=1e-4, atol=1e-5, msg=lambda m: f"{n}: {m}")
    ref_norms = torch.tensor([math.sqrt(sum(float((g * g).sum()) for g in grads)) for grads in per_speaker])
    torch.testing.assert_close(norms, ref_norms, rtol=1e-4, atol=1e-6)
    assert bool((ref_norms > 0.05).all())  # the clip below is active for every speaker
    for k, n in enumerate(names):
        expect = sum(per_speaker[s][k] * (0.05 / (float(ref_norms[s]) + 1e-6)) for s in range(3))
        torch.testing.assert_close(clipped[k], expect, rtol=1e-4, atol=1e-6, msg=lambda m: f"{n}: {m}")
