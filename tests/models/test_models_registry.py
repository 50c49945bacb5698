from __future__ import annotations

import pytest
from torch import nn

from privspk.errors import ConfigError, ModelError
from privspk.models import registry
from privspk.models.ecapa import ECAPAEncoder
from privspk.models.finetune import count_parameters
from privspk.models.registry import build_encoder, list_encoders, register_encoder

# Pinned: a change here changes every preset's checkpoints and the documented table.
PARAMS = {
    ("ecapa_gn_c64", 40): 211_688,
    ("ecapa_gn_c64", 80): 224_488,
    ("ecapa_gn_c128", 40): 565_840,
    ("ecapa_gn_c128", 80): 591_440,
    ("ecapa_gn_c160", 40): 796_628,
    ("ecapa_gn_c160", 80): 828_628,
    ("ecapa_gn_c256", 40): 1_703_840,
    ("ecapa_gn_c256", 80): 1_755_040,
}


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_ENCODERS", dict(registry._ENCODERS))


@pytest.mark.parametrize(("name", "in_dim"), sorted(PARAMS))
def test_presets_sizes_and_no_batchnorm(name: str, in_dim: int) -> None:
    enc = build_encoder(name, in_dim=in_dim)
    assert isinstance(enc, ECAPAEncoder)
    assert (enc.in_dim, enc.embed_dim, enc.channels) == (in_dim, 192, int(name.rsplit("c", 1)[1]))
    assert count_parameters(enc) == PARAMS[(name, in_dim)]
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in enc.modules())
    table_row = f"``{name}``"
    doc = registry.__doc__ or ""
    row = next(line for line in doc.splitlines() if line.startswith(table_row))
    assert f"{PARAMS[(name, in_dim)] / 1e6:.2f}M" in row


def test_every_preset_validates_under_opacus() -> None:
    from opacus.validators import ModuleValidator

    for name in ("ecapa_gn_c64", "ecapa_gn_c128", "ecapa_gn_c160", "ecapa_gn_c256"):
        assert ModuleValidator.validate(build_encoder(name, in_dim=40), strict=True) == [], name


def test_list_is_sorted_and_has_the_presets() -> None:
    names = list_encoders()
    assert list(names) == sorted(names)
    assert {"ecapa_gn_c64", "ecapa_gn_c128", "ecapa_gn_c160", "ecapa_gn_c256"} <= set(names)


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ModelError) as info:
        build_encoder("resnet34", in_dim=80)
    assert "'resnet34'" in str(info.value)
    assert all(name in str(info.value) for name in list_encoders())


@pytest.mark.usefixtures("fresh_registry")
def test_register_then_build_and_refuse_duplicates() -> None:
    @register_encoder("test_linear")
    def linear(*, in_dim: int) -> nn.Module:
        return nn.Linear(in_dim, 3)

    assert "test_linear" in list_encoders()
    assert build_encoder("test_linear", in_dim=7).in_features == 7
    with pytest.raises(ModelError, match="'test_linear' is already registered"):
        register_encoder("test_linear")(linear)
    with pytest.raises(ModelError, match="already registered"):
        register_encoder("ecapa_gn_c64")(linear)
    assert build_encoder("ecapa_gn_c64", in_dim=40).channels == 64


@pytest.mark.usefixtures("fresh_registry")
def test_bad_registrations_and_in_dims() -> None:
    with pytest.raises(ConfigError, match="non-empty str"):
        register_encoder("  ")
    with pytest.raises(ConfigError, match="callable"):
        register_encoder("not_callable")(42)  # type: ignore[type-var]
    for bad in (0, -3, 40.0, True):
        with pytest.raises(ConfigError, match="in_dim"):
            build_encoder("ecapa_gn_c64", in_dim=bad)  # type: ignore[arg-type]
