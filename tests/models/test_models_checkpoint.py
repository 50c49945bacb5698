from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from privspk.errors import CheckpointError, ConfigError, ModelError
from privspk.models.checkpoint import load_encoder, save_encoder, state_sha256
from privspk.models.finetune import add_adapters
from privspk.models.registry import build_encoder


@pytest.fixture
def encoder() -> torch.nn.Module:
    torch.manual_seed(0)
    enc = build_encoder("ecapa_gn_c64", in_dim=40)
    with torch.no_grad():  # move the weights off their initial values
        for p in enc.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return enc.eval()


def test_round_trip_gives_the_same_function_and_meta(tmp_path: Path, encoder: torch.nn.Module) -> None:
    path = tmp_path / "enc.pt"
    save_encoder(path, encoder, name="ecapa_gn_c64", in_dim=40, extra={"round": 5, "eps": 7.5, "tags": ["a"]})
    model, meta = load_encoder(path)
    x = torch.randn(2, 60, 40)
    torch.testing.assert_close(model(x), encoder(x), rtol=0, atol=0)
    assert not model.training
    assert meta["name"] == "ecapa_gn_c64" and meta["in_dim"] == 40 and meta["embed_dim"] == 192
    assert meta["adapter_rank"] is None and meta["n_parameters"] == 211_688
    assert meta["extra"] == {"round": 5, "eps": 7.5, "tags": ["a"]}
    assert [p.name for p in tmp_path.iterdir()] == ["enc.pt"]  # no temp file left


def test_adapters_survive_the_round_trip(tmp_path: Path, encoder: torch.nn.Module) -> None:
    add_adapters(encoder, rank=4)
    with torch.no_grad():
        encoder.adapters["block3"].up.weight.normal_()
    save_encoder(tmp_path / "a.pt", encoder, name="ecapa_gn_c64", in_dim=40)
    model, meta = load_encoder(tmp_path / "a.pt")
    assert meta["adapter_rank"] == 4
    x = torch.randn(1, 30, 40)
    torch.testing.assert_close(model(x), encoder(x), rtol=0, atol=0)


def test_an_opacus_wrapped_model_is_saved_unwrapped(tmp_path: Path, encoder: torch.nn.Module) -> None:
    from opacus import GradSampleModule

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapped = GradSampleModule(encoder)
    save_encoder(tmp_path / "w.pt", wrapped, name="ecapa_gn_c64", in_dim=40)
    model, _ = load_encoder(tmp_path / "w.pt")
    torch.testing.assert_close(model.front.conv.weight, encoder.front.conv.weight)


def test_save_refuses_a_wrong_name_or_in_dim(tmp_path: Path, encoder: torch.nn.Module) -> None:
    with pytest.raises(ModelError, match="'ecapa_gn_c128' with in_dim=40.*differ in shape"):
        save_encoder(tmp_path / "x.pt", encoder, name="ecapa_gn_c128", in_dim=40)
    with pytest.raises(ModelError, match="in_dim=80"):
        save_encoder(tmp_path / "x.pt", encoder, name="ecapa_gn_c64", in_dim=80)
    with pytest.raises(ModelError, match="unknown encoder"):
        save_encoder(tmp_path / "x.pt", encoder, name="nope", in_dim=40)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "extra", [{"f": float("nan")}, {"obj": object()}, {1: "int key"}, {"t": (1, 2)}], ids=["nan", "obj", "key", "tuple"]
)
def test_save_refuses_extra_json_cannot_hold(tmp_path: Path, encoder: torch.nn.Module, extra: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError, match="JSON"):
        save_encoder(tmp_path / "x.pt", encoder, name="ecapa_gn_c64", in_dim=40, extra=extra)
    assert not list(tmp_path.iterdir())


def test_truncated_file_is_refused(tmp_path: Path, encoder: torch.nn.Module) -> None:
    path = tmp_path / "t.pt"
    save_encoder(path, encoder, name="ecapa_gn_c64", in_dim=40)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_encoder(path)


def test_altered_weights_are_refused(tmp_path: Path, encoder: torch.nn.Module) -> None:
    path = tmp_path / "c.pt"
    save_encoder(path, encoder, name="ecapa_gn_c64", in_dim=40)
    blob = torch.load(path, weights_only=True)
    blob["state_dict"]["front.conv.weight"][0, 0, 0] += 1.0
    torch.save(blob, path)
    with pytest.raises(CheckpointError, match="SHA-256.*corrupt"):
        load_encoder(path)


def test_flipped_bytes_in_the_file_are_refused(tmp_path: Path, encoder: torch.nn.Module) -> None:
    path = tmp_path / "f.pt"
    save_encoder(path, encoder, name="ecapa_gn_c64", in_dim=40)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0x5A for b in data[middle : middle + 16])
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        load_encoder(path)


def test_weights_that_do_not_fit_the_meta_are_refused(tmp_path: Path, encoder: torch.nn.Module) -> None:
    path = tmp_path / "m.pt"
    save_encoder(path, encoder, name="ecapa_gn_c64", in_dim=40)
    blob = torch.load(path, weights_only=True)
    blob["meta"]["name"] = "ecapa_gn_c128"
    torch.save(blob, path)
    with pytest.raises(CheckpointError, match="do not fit encoder 'ecapa_gn_c128'"):
        load_encoder(path)
    blob["meta"]["name"] = "gone_encoder"
    torch.save(blob, path)
    with pytest.raises(CheckpointError, match="cannot rebuild encoder 'gone_encoder'"):
        load_encoder(path)


@pytest.mark.parametrize(
    ("blob", "match"),
    [
        ({"weights": torch.zeros(2)}, "not a privspk encoder checkpoint"),
        ({"format": "privspk-encoder", "version": 7}, "version 7"),
        ({"format": "privspk-encoder", "version": 1, "meta": {}}, "lacks its meta or state_dict"),
    ],
)
def test_foreign_files_are_refused(tmp_path: Path, blob: dict, match: str) -> None:  # type: ignore[type-arg]
    path = tmp_path / "foreign.pt"
    torch.save(blob, path)
    with pytest.raises(CheckpointError, match=match):
        load_encoder(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_encoder(tmp_path / "absent.pt")


def test_state_hash_sees_names_shapes_and_dtypes() -> None:
    base = state_sha256({"a": torch.zeros(4)})
    assert base != state_sha256({"b": torch.zeros(4)})
    assert base != state_sha256({"a": torch.zeros(2, 2)})
    assert base != state_sha256({"a": torch.zeros(4, dtype=torch.float64)})
    assert base == state_sha256({"a": torch.zeros(4, requires_grad=True)})
