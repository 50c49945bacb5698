"""ClientData (labels, speakers, errors) and the SpeakerNet helpers (trainable state, flatten, unflatten)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from privspk.errors import ConfigError, ModelError
from privspk.training.data import ClientData
from privspk.training.net import SpeakerNet, flatten, trainable_state, unflatten_into
from training_support import tiny_net


def _getter(utt: str) -> torch.Tensor:
    return torch.zeros(5, 2)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.text("abc", min_size=1, max_size=3), st.sampled_from(["zed", "amy", "bob", "kim"])),
                min_size=1, max_size=30, unique_by=lambda p: p[0]))
def test_from_pairs_indexes_speakers_in_sorted_order(pairs):
    d = ClientData.from_pairs(_getter, pairs)
    assert d.speakers == tuple(sorted({s for _, s in pairs}))
    assert d.n_speakers == len(d.speakers) and len(d) == len(pairs)
    assert d.utt_ids == tuple(u for u, _ in pairs)
    for (utt, spk), lab in zip(pairs, d.labels):
        assert d.speakers[lab] == spk
    for lab in range(d.n_speakers):
        assert d.utterances_of(lab) == [i for i, (_, s) in enumerate(pairs) if s == d.speakers[lab]]
    assert d.utterances_of(d.n_speakers + 3) == []


def test_utterances_of_returns_a_copy():
    d = ClientData.from_pairs(_getter, [("u1", "a"), ("u2", "a")])
    d.utterances_of(0).append(99)
    assert d.utterances_of(0) == [0, 1]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (((), (), ("a",)), "at least one utterance"),
        ((("u1", "u2"), (0,), ("a",)), "differ in length"),
        ((("u1",), (1,), ("a",)), r"label 1 of u1 is outside 0\.\.0"),
        ((("u1",), (-1,), ("a", "b")), r"label -1 of u1 is outside 0\.\.1"),
    ],
)
def test_client_data_refuses_bad_input(args, match):
    with pytest.raises(ConfigError, match=match):
        ClientData(_getter, *args)


def test_speaker_net_output_is_cosines_per_local_speaker():
    net = tiny_net(5)
    out = net(torch.randn(3, 30, 8))
    assert out.shape == (3, 5)
    assert bool((out.abs() <= 1 + 1e-5).all())
    assert isinstance(net, SpeakerNet)


def test_trainable_state_holds_detached_copies_of_trainable_parameters_only():
    net = tiny_net(3, freeze_front=True)
    st_ = trainable_state(net)
    expect = [n for n, p in net.named_parameters() if p.requires_grad]
    assert list(st_) == expect and not any(n.startswith("encoder.front") for n in st_)
    name = expect[0]
    st_[name].add_(1.0)  # a copy: the model is untouched
    assert not torch.equal(st_[name], dict(net.named_parameters())[name])
    assert not st_[name].requires_grad


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 1000), add=st.booleans())
def test_flatten_then_unflatten_round_trips(seed, add):
    src, dst = tiny_net(2, seed=seed), tiny_net(2, seed=seed + 1)
    names = [n for n, _ in src.named_parameters()][::3]  # any subset, in any fixed order
    vec = flatten(trainable_state(src), names)
    assert vec.dtype == torch.float64
    assert vec.numel() == sum(dict(src.named_parameters())[n].numel() for n in names)
    before = flatten(trainable_state(dst), names)
    unflatten_into(dst, names, vec, add=add)
    after = flatten(trainable_state(dst), names)
    want = before + vec if add else vec
    torch.testing.assert_close(after, want.to(torch.float32).to(torch.float64))
    others = [n for n, _ in dst.named_parameters() if n not in names]
    untouched = tiny_net(2, seed=seed + 1)
    for n in others:
        assert torch.equal(dict(dst.named_parameters())[n], dict(untouched.named_parameters())[n])


def test_flatten_of_no_names_is_empty():
    assert flatten({}, []).numel() == 0


@pytest.mark.parametrize("length", [0, 5, 7, 100])
def test_unflatten_refuses_a_vector_of_the_wrong_length_and_writes_nothing(length):
    lin = nn.Linear(2, 2)
    before = {n: p.detach().clone() for n, p in lin.named_parameters()}
    with pytest.raises(ModelError, match=f"vector has {length} values, the named parameters 6"):
        unflatten_into(lin, ["weight", "bias"], torch.zeros(length), add=False)
    assert all(torch.equal(before[n], p) for n, p in lin.named_parameters())
