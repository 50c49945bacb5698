from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from privspk.errors import ConfigError, ModelError
from privspk.models.ecapa import ECAPAEncoder
from privspk.models.finetune import (
    RECIPES,
    ResidualAdapter,
    adapter_rank,
    add_adapters,
    apply_recipe,
    count_parameters,
    trainable_parameters_for,
)
from privspk.models.heads import AAMHead, aam_softmax_loss

# What each recipe trains, as top-level module names of the encoder.
EXPECTED = {
    "full": {"front", "block1", "block2", "block3", "mfa", "pooling", "embedding", "adapters"},
    "last": {"block3", "mfa", "pooling", "embedding"},
    "head": {"pooling", "embedding"},
    "adapters": {"adapters", "embedding"},
    "embedding": {"embedding"},
    "embedding_norm": {"embedding.stats_norm", "embedding.norm"},
}


def _under(name: str, prefixes: set[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def tiny() -> ECAPAEncoder:
    torch.manual_seed(0)
    return ECAPAEncoder(12, channels=16, embed_dim=8, scale=4, attention_channels=8)


def trained_tops(enc: nn.Module) -> set[str]:
    return {name.split(".")[0] for name, p in enc.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_trains_exactly_what_it_claims(recipe: str) -> None:
    enc = tiny()
    add_adapters(enc, rank=2)  # present for every recipe, so "full" and the others can be told apart
    n_trainable = apply_recipe(enc, recipe, rank=2)
    assert all(_under(n, EXPECTED[recipe]) == p.requires_grad for n, p in enc.named_parameters())
    assert all(any(_under(n, {e}) for n, p in enc.named_parameters() if p.requires_grad) for e in EXPECTED[recipe])
    by_hand = sum(p.numel() for name, p in enc.named_parameters() if _under(name, EXPECTED[recipe]))
    assert n_trainable == by_hand == count_parameters(enc, trainable_only=True)
    assert {n for n, _ in trainable_parameters_for(enc, recipe)} == {
        n for n, p in enc.named_parameters() if p.requires_grad
    }


def test_recipes_shrink_in_the_expected_order() -> None:
    counts = {recipe: apply_recipe(tiny(), recipe, rank=2) for recipe in RECIPES}
    assert counts["head"] < counts["last"] < counts["full"]
    assert counts["adapters"] < counts["last"]
    assert counts["embedding"] < counts["head"] and counts["embedding"] < counts["adapters"]
    assert counts["embedding_norm"] < counts["embedding"] / 4


def test_embedding_norm_recipe_cuts_at_the_pooled_statistics() -> None:
    from privspk.training.trunk import embedding_only

    enc = tiny()
    apply_recipe(enc, "embedding_norm")
    assert embedding_only(enc) and not enc.embedding.linear.weight.requires_grad
    assert enc.embedding.stats_norm.weight.requires_grad and enc.embedding.norm.bias.requires_grad


def test_trainable_parameters_for_changes_nothing() -> None:
    enc = tiny()
    trainable_parameters_for(enc, "head")
    assert all(p.requires_grad for p in enc.parameters())


def test_recipes_can_be_switched() -> None:
    enc = tiny()
    apply_recipe(enc, "head")
    assert apply_recipe(enc, "full") == count_parameters(enc)


def test_adapters_leave_the_function_unchanged_until_trained() -> None:
    enc = tiny().eval()
    x = torch.randn(2, 25, 12)
    before = enc(x)
    added = add_adapters(enc, rank=3)
    assert added == 3 * (16 * 3 + 3 + 3 * 16 + 16) and adapter_rank(enc) == 3
    torch.testing.assert_close(enc(x), before, rtol=0, atol=0)
    with torch.no_grad():
        enc.adapters["block2"].up.weight.fill_(0.1)
    assert not torch.allclose(enc(x), before)


def test_adapters_are_idempotent_and_refuse_another_rank() -> None:
    enc = tiny()
    add_adapters(enc, rank=4)
    assert add_adapters(enc, rank=4) == 0 and len(enc.adapters) == 3
    with pytest.raises(ModelError, match="rank-4.*rank-2"):
        add_adapters(enc, rank=2)
    with pytest.raises(ConfigError, match="rank"):
        ResidualAdapter(16, rank=0)


@pytest.mark.parametrize("recipe", RECIPES)
def test_dp_sgd_step_moves_only_trainable_weights(recipe: str) -> None:
    from opacus import PrivacyEngine
    from opacus.validators import ModuleValidator

    enc = tiny()
    apply_recipe(enc, recipe, rank=2)
    model = nn.Sequential(enc, AAMHead(8, 4))
    assert ModuleValidator.validate(model, strict=True) == []
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    data = torch.utils.data.TensorDataset(torch.randn(16, 20, 12), torch.randint(0, 4, (16,)))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        private, optimizer, loader = PrivacyEngine().make_private(
            module=model,
            optimizer=optimizer,
            data_loader=torch.utils.data.DataLoader(data, batch_size=8),
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            grad_sample_mode="hooks",
        )
        x, y = next(iter(loader))
        aam_softmax_loss(private(x), y).backward()
        optimizer.step()
    for name, p in model.named_parameters():
        moved = not torch.equal(before[name], p.detach())
        assert moved == p.requires_grad, name


def test_bad_recipe_and_bad_model() -> None:
    with pytest.raises(ConfigError, match="'lora'.*choose one of"):
        apply_recipe(tiny(), "lora")
    with pytest.raises(ConfigError, match="'lora'"):
        trainable_parameters_for(tiny(), "lora")
    with pytest.raises(ModelError, match="se_blocks"):
        apply_recipe(nn.Linear(3, 3), "last")
    with pytest.raises(ModelError, match="apply_recipe\\(encoder, 'adapters'\\)"):
        trainable_parameters_for(tiny(), "adapters")
