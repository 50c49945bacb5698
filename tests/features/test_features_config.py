from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privspk.errors import ConfigError
from privspk.features.config import FeatureConfig

configs = st.builds(
    FeatureConfig,
    kind=st.sampled_from(["fbank", "mfcc"]),
    n_mels=st.integers(20, 128),
    n_mfcc=st.integers(1, 20),
    frame_length_ms=st.sampled_from([20.0, 25.0, 32.0]),
    frame_shift_ms=st.sampled_from([5.0, 10.0, 12.5]),
    dither=st.sampled_from([0.0, 1.0]),
    cmn=st.booleans(),
    sample_rate=st.sampled_from([8000, 16000, 22050]),
)


def test_defaults_match_the_brief() -> None:
    cfg = FeatureConfig()
    assert (cfg.kind, cfg.n_mels, cfg.n_mfcc, cfg.cmn, cfg.sample_rate) == ("fbank", 80, 30, True, 16000)
    assert (cfg.frame_length_ms, cfg.frame_shift_ms, cfg.dither) == (25.0, 10.0, 0.0)
    assert (cfg.dim, cfg.window_samples, cfg.shift_samples) == (80, 400, 160)
    assert FeatureConfig(kind="mfcc").dim == 30


def test_key_is_pinned() -> None:
    # Changing how keys are computed silently orphans every cache on disk: do it on purpose only.
    assert FeatureConfig().key() == FeatureConfig(frame_length_ms=25, frame_shift_ms=10, dither=0).key()
    assert FeatureConfig().key() == "fbank80-d11c58bd30"
    assert FeatureConfig(kind="mfcc", n_mels=40, n_mfcc=20).key() == "mfcc20-03604a5caf"


@settings(max_examples=60, deadline=None)
@given(a=configs, b=configs)
def test_key_equal_exactly_when_settings_that_matter_are_equal(a: FeatureConfig, b: FeatureConfig) -> None:
    def meaningful(c: FeatureConfig) -> dict[str, object]:
        d = c.to_dict()
        if c.kind == "fbank":
            d.pop("n_mfcc")
        return d

    assert (a.key() == b.key()) == (meaningful(a) == meaningful(b))


def test_fbank_key_ignores_n_mfcc_but_mfcc_key_does_not() -> None:
    assert FeatureConfig(n_mfcc=13).key() == FeatureConfig(n_mfcc=20).key()
    assert FeatureConfig(kind="mfcc", n_mfcc=13).key() != FeatureConfig(kind="mfcc", n_mfcc=20).key()


@settings(max_examples=40, deadline=None)
@given(cfg=configs)
def test_dict_round_trip_through_json(cfg: FeatureConfig) -> None:
    assert FeatureConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@settings(max_examples=60, deadline=None)
@given(cfg=configs, n_samples=st.integers(0, 5000))
def test_n_frames_counts_whole_frames(cfg: FeatureConfig, n_samples: int) -> None:
    starts = range(0, n_samples - cfg.window_samples + 1, cfg.shift_samples)
    assert cfg.n_frames(n_samples) == len(starts)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"kind": "plp"}, "kind"),
        ({"n_mels": 0}, "n_mels"),
        ({"n_mels": 40.0}, "n_mels"),
        ({"n_mels": True}, "n_mels"),
        ({"n_mels": 3}, "n_mels"),
        ({"n_mels": 300}, "n_mels"),
        ({"n_mfcc": -1}, "n_mfcc"),
        ({"kind": "mfcc", "n_mels": 20, "n_mfcc": 21}, "n_mfcc"),
        ({"frame_length_ms": 0.0}, "frame_length_ms"),
        ({"frame_length_ms": float("nan")}, "frame_length_ms"),
        ({"frame_length_ms": 0.1}, "frame_length_ms"),
        ({"frame_shift_ms": float("inf")}, "frame_shift_ms"),
        ({"frame_shift_ms": 0.01}, "frame_shift_ms"),
        ({"frame_shift_ms": "10"}, "frame_shift_ms"),
        ({"dither": -1.0}, "dither"),
        ({"cmn": 1}, "cmn"),
        ({"sample_rate": 16000.0}, "sample_rate"),
        ({"sample_rate": 0}, "sample_rate"),
    ],
)
def test_bad_settings_raise_config_error_naming_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        FeatureConfig(**changes)  # type: ignore[arg-type]


def test_all_problems_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        FeatureConfig(kind="x", n_mels=-2, dither=-1.0)  # type: ignore[arg-type]
    message = str(info.value)
    assert "kind" in message and "n_mels" in message and "dither" in message


def test_from_dict_refuses_unknown_keys_and_non_mappings() -> None:
    with pytest.raises(ConfigError, match="n_mel"):
        FeatureConfig.from_dict({"n_mel": 40})
    with pytest.raises(ConfigError, match="mapping"):
        FeatureConfig.from_dict([("n_mels", 40)])  # type: ignore[arg-type]


def test_frozen() -> None:
    with pytest.raises(AttributeError):
        FeatureConfig().n_mels = 40  # type: ignore[misc]


def test_fields_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        FeatureConfig("mfcc")  # type: ignore[misc]
