"""Public pretraining: it learns separable synthetic speakers; the learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from privspk.errors import ConfigError
from privspk.training.pretrain import PretrainReport, cosine_lr, pretrain
from training_support import client_data, state, tiny_encoder


def test_loss_decreases_and_speakers_are_learned_on_separable_data():
    data = client_data(6, 4, frames=40, seed=2)
    enc = tiny_encoder(seed=1)
    before = state(enc)
    rep = pretrain(enc, data, steps=40, batch_size=12, lr=1e-2, crop_frames=24, seed=0, margin=0.1, scale=10.0)
    assert isinstance(rep, PretrainReport)
    assert rep.steps == 40 and len(rep.losses) == 40 and rep.seconds > 0
    assert all(math.isfinite(v) for v in rep.losses)
    first, last = sum(rep.losses[:5]) / 5, sum(rep.losses[-5:]) / 5
    assert last < 0.5 * first, (first, last)
    # accuracy over the last 10 % of the steps: far above chance (1/6)
    assert rep.train_accuracy >= 0.8
    after = state(enc)
    assert all(not torch.equal(before[n], after[n]) for n in before), "every encoder parameter trains"
    assert not enc.training


def test_pretraining_is_deterministic_for_a_seed():
    data = client_data(3, 3, frames=30)
    a, b, c = tiny_encoder(0), tiny_encoder(0), tiny_encoder(0)
    ra = pretrain(a, data, steps=3, batch_size=4, lr=1e-3, crop_frames=20, seed=7)
    rb = pretrain(b, data, steps=3, batch_size=4, lr=1e-3, crop_frames=20, seed=7)
    pretrain(c, data, steps=3, batch_size=4, lr=1e-3, crop_frames=20, seed=8)
    assert ra.losses == rb.losses
    sa, sb, sc = state(a), state(b), state(c)
    assert all(torch.equal(sa[n], sb[n]) for n in sa)
    assert any(not torch.equal(sa[n], sc[n]) for n in sa)


def test_zero_steps_changes_nothing():
    data = client_data(2, 2)
    enc = tiny_encoder()
    before = state(enc)
    rep = pretrain(enc, data, steps=0, batch_size=4, lr=1e-3, crop_frames=20, seed=0)
    assert rep.steps == 0 and rep.losses == [] and math.isnan(rep.train_accuracy)
    assert all(torch.equal(before[n], v) for n, v in state(enc).items())


@pytest.mark.parametrize(("steps", "batch_size"), [(-1, 4), (3, 0)])
def test_bad_steps_or_batch_are_refused(steps, batch_size):
    with pytest.raises(ConfigError, match="steps must be >= 0 and batch_size >= 1"):
        pretrain(tiny_encoder(), client_data(2, 2), steps=steps, batch_size=batch_size, lr=1e-3, crop_frames=20,
                 seed=0)


def test_cosine_lr_known_points():
    assert cosine_lr(0, 100, warmup=10) == pytest.approx(0.1)
    assert cosine_lr(9, 100, warmup=10) == pytest.approx(1.0)
    assert cosine_lr(10, 100, warmup=10) == pytest.approx(1.0)
    assert cosine_lr(55, 100, warmup=10) == pytest.approx(0.05 + 0.95 * 0.5)  # half way through the decay
    assert cosine_lr(100, 100, warmup=10) == pytest.approx(0.05)
    assert cosine_lr(10_000, 100, warmup=10) == pytest.approx(0.05)  # stays at the floor


@settings(max_examples=100, deadline=None)
@given(total=st.integers(1, 2000), warmup=st.integers(1, 200), data=st.data())
def test_cosine_lr_warms_up_linearly_then_decays_monotonically(total, warmup, data):
    s1 = data.draw(st.integers(0, total + 10))
    s2 = data.draw(st.integers(s1, total + 10))
    f1, f2 = cosine_lr(s1, total, warmup=warmup), cosine_lr(s2, total, warmup=warmup)
    assert min(0.05, 1 / warmup) - 1e-12 <= f1 <= 1.0 + 1e-12
    if s1 >= warmup:
        assert f1 >= 0.05 - 1e-12  # the decay ends at 5 %, never below
    if s2 < warmup:
        assert f1 == pytest.approx((s1 + 1) / warmup) and f2 >= f1
    elif s1 >= warmup:
        assert f2 <= f1 + 1e-12
