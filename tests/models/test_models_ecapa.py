from __future__ import annotations

import copy
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from privspk.errors import ConfigError, ModelError
from privspk.models.ecapa import AttentiveStatsPooling, ECAPAEncoder, Res2NetBlock
from privspk.models.heads import AAMHead, aam_softmax_loss


def tiny(in_dim: int = 12, **overrides: object) -> ECAPAEncoder:
    settings_ = {"channels": 16, "embed_dim": 8, "scale": 4, "attention_channels": 8}
    settings_.update(overrides)
    return ECAPAEncoder(in_dim, **settings_)  # type: ignore[arg-type]


@settings(max_examples=12, deadline=None)
@given(batch=st.integers(1, 3), n_frames=st.integers(1, 40), in_dim=st.sampled_from([12, 20]))
def test_output_shape_for_any_length(batch: int, n_frames: int, in_dim: int) -> None:
    torch.manual_seed(0)
    emb = tiny(in_dim)(torch.randn(batch, n_frames, in_dim))
    assert emb.shape == (batch, 8) and bool(torch.isfinite(emb).all())


def test_default_sizes_and_block_names() -> None:
    enc = ECAPAEncoder(80, channels=64)
    assert (enc.in_dim, enc.embed_dim, enc.channels) == (80, 192, 64)
    assert enc.se_blocks == ("block1", "block2", "block3")
    for name in enc.blocks:
        assert isinstance(enc.get_submodule(name), nn.Module)
    named = {name for name, _ in enc.named_children()} - {"adapters"}
    assert named == set(enc.blocks)
    dilations = [enc.get_submodule(b).res2net.convs[0].conv.dilation[0] for b in enc.se_blocks]
    assert dilations == [2, 3, 4] and enc.front.conv.kernel_size == (5,)


def test_no_batchnorm_only_group_and_layer_norm() -> None:
    enc = ECAPAEncoder(40, channels=64)
    kinds = {type(m) for m in enc.modules()}
    assert not any(issubclass(k, nn.modules.batchnorm._BatchNorm) for k in kinds)
    assert nn.GroupNorm in kinds and nn.LayerNorm in kinds


def test_batch_items_do_not_influence_each_other() -> None:
    # Per-sample normalisation only: the precondition for correct per-sample gradients.
    torch.manual_seed(1)
    enc = tiny()
    x = torch.randn(4, 30, 12)
    together = enc(x)
    alone = torch.cat([enc(x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_zero_attention_pools_plain_mean_and_std() -> None:
    torch.manual_seed(2)
    for global_context in (True, False):
        pool = AttentiveStatsPooling(6, attention_channels=4, global_context=global_context)
        nn.init.zeros_(pool.conv.weight)
        nn.init.zeros_(pool.conv.bias)
        x = torch.randn(3, 6, 25)
        out = pool(x)
        torch.testing.assert_close(out[:, :6], x.mean(dim=2))
        torch.testing.assert_close(out[:, 6:], x.std(dim=2, unbiased=False))


def test_attention_weights_a_hand_checkable_case() -> None:
    # Force the attention logits to (1.5, 0, 0, 0): weights e^1.5 / (e^1.5 + 3) and 1 / (e^1.5 + 3).
    pool = AttentiveStatsPooling(1, attention_channels=1, global_context=False)
    x = torch.tensor([[[4.0, 1.0, 1.0, 2.0]]])
    logits = torch.tensor([[[1.5, 0.0, 0.0, 0.0]]])
    handle = pool.conv.register_forward_hook(lambda module, inputs, output: logits)
    try:
        out = pool(x)
    finally:
        handle.remove()
    w = torch.tensor([1.5, 0.0, 0.0, 0.0]).exp()
    w = w / w.sum()
    mean = float((w * x[0, 0]).sum())
    std = float((w * (x[0, 0] - mean) ** 2).sum().sqrt())
    torch.testing.assert_close(out, torch.tensor([[mean, std]]))


def test_constant_input_has_finite_gradients() -> None:
    # std of a constant is 0: the variance floor keeps the gradient finite.
    pool = AttentiveStatsPooling(4, attention_channels=4)
    x = torch.ones(2, 4, 10, requires_grad=True)
    pool(x).sum().backward()
    assert bool(torch.isfinite(x.grad).all())


def test_gradients_reach_every_parameter_and_are_finite() -> None:
    torch.manual_seed(3)
    enc, head = tiny(), AAMHead(8, 5)
    loss = aam_softmax_loss(head(enc(torch.randn(1, 40, 12))), torch.tensor([2]))
    loss.backward()
    for name, param in list(enc.named_parameters()) + list(head.named_parameters()):
        assert param.grad is not None, name
        assert bool(torch.isfinite(param.grad).all()), name
    assert float(enc.front.conv.weight.grad.abs().sum()) > 0


def test_res2net_first_split_passes_through() -> None:
    block = Res2NetBlock(8, scale=4, dilation=2)
    x = torch.randn(2, 8, 9)
    torch.testing.assert_close(block(x)[:, :2], x[:, :2])


def test_opacus_validator_strict_passes() -> None:
    from opacus.validators import ModuleValidator

    model = nn.Sequential(ECAPAEncoder(40, channels=64), AAMHead(192, 10))
    assert ModuleValidator.validate(model, strict=True) == []


def test_per_sample_gradients_match_micro_batches() -> None:
    """Opacus (hooks) per-sample gradients == gradients of each sample alone (sum reduction).

    float64, so that a mismatch means a wrong rule or mixing between samples, not rounding.
    """
    from opacus import GradSampleModule

    torch.manual_seed(4)
    model = nn.Sequential(tiny(), AAMHead(8, 3)).double()
    reference = copy.deepcopy(model)
    x, y = torch.randn(3, 15, 12, dtype=torch.float64), torch.tensor([0, 2, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
        aam_softmax_loss(gsm(x), y, reduction="sum").backward()
    per_sample = {name: p.grad_sample for name, p in model.named_parameters()}
    mismatches = []
    for i in range(3):
        reference.zero_grad(set_to_none=True)
        aam_softmax_loss(reference(x[i : i + 1]), y[i : i + 1], reduction="sum").backward()
        for name, p in reference.named_parameters():
            if not torch.allclose(per_sample[name][i], p.grad, atol=1e-12, rtol=1e-8):
                mismatches.append((i, name))
    assert len(per_sample) == len(list(reference.parameters()))
    assert mismatches == []


def test_one_dp_sgd_step_under_privacy_engine_hooks() -> None:
    from opacus import PrivacyEngine

    torch.manual_seed(5)
    model = nn.Sequential(tiny(), AAMHead(8, 4))
    before = [p.detach().clone() for p in model.parameters()]
    data = torch.utils.data.TensorDataset(torch.randn(16, 20, 12), torch.randint(0, 4, (16,)))
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        private, optimizer, loader = PrivacyEngine().make_private(
            module=model, optimizer=optimizer, data_loader=loader,
            noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode="hooks",
        )
        x, y = next(iter(loader))
        loss = aam_softmax_loss(private(x), y)
        loss.backward()
        optimizer.step()
    assert bool(torch.isfinite(loss))
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"channels": 30, "scale": 8}, "divisible"),
        ({"channels": 0}, "channels"),
        ({"embed_dim": 19.5}, "embed_dim"),
        ({"dilations": ()}, "dilations"),
        ({"dilations": (2, 0)}, "dilations"),
        ({"gn_groups": True}, "gn_groups"),
    ],
)
def test_bad_architecture_settings(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ECAPAEncoder(40, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("feats", "match"),
    [
        (torch.zeros(2, 30, 13), r"\(batch, frames >= 1, 12\), got \(2, 30, 13\)"),
        (torch.zeros(30, 12), r"got \(30, 12\)"),
        (torch.zeros(2, 0, 12), r"got \(2, 0, 12\)"),
    ],
)
def test_wrong_feature_shape_is_a_model_error(feats: torch.Tensor, match: str) -> None:
    with pytest.raises(ModelError, match=match):
        tiny()(feats)
