"""A cross-device mask round: the opened sum equals the plain sum of the survivors' integer codes."""

from __future__ import annotations

import numpy as np
import pytest

from privspk.errors import AggregationError, ConfigError
from privspk.privacy.distributed import make_rng
from privspk.privacy.user_level import plan_device_noise
from privspk.secagg.crossdevice import PHASES, MaskConfig, aggregate_round


def _codes(k: int, dim: int, *, seed: int, bound: int = 30000) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"dev{i:05d}": rng.integers(-bound, bound + 1, dim) for i in range(k)}


def _plain_sum(codes, included):
    return sum(codes[d].astype(np.int64) for d in included)


@pytest.mark.parametrize("stage", ["advertise", "share", "collect", "confirm", "unmask"])
def test_dropouts_at_every_stage_leave_the_exact_sum_of_the_survivors(stage):
    codes = _codes(60, 32, seed=1)
    drop = {d: stage for d in sorted(codes)[::10]}
    r = aggregate_round(codes, config=MaskConfig(clip=1.0, bits=16), dropped=drop, round_id=3)
    if stage in ("confirm", "unmask"):  # their masked updates were already summed
        assert r.included == tuple(sorted(codes))
    else:
        assert set(r.included) == set(codes) - set(drop)
    assert np.array_equal(r.total, _plain_sum(codes, r.included))
    assert all(r.timings[p] > 0 for p in PHASES) and r.degree < 59


def test_noise_shared_codes_from_the_planner_round_trip():
    k, dim = 100, 200
    plan = plan_device_noise(n_sampled=k, noise_multiplier=1.0, clip=1.0, dim=dim, colluders=1,
                             dropout_allowance=0.1, counting="honest-dropouts")
    cfg = MaskConfig(clip=1.0, bits=16, noise_headroom_bits=plan.headroom_bits, colluders=1)
    rng = make_rng(4)
    codes = {f"d{i:03d}": plan.encoder.encode(rng.normal(size=dim), rng=rng) for i in range(k)}
    drop = set(sorted(codes)[5::10])
    r = aggregate_round(codes, config=cfg, dropped=drop, min_survivors=plan.min_survivors)
    assert np.array_equal(r.total, _plain_sum(codes, r.included)) and len(r.included) == 90
    assert r.scale == pytest.approx(plan.encoder.scale)


def test_the_honest_server_aborts_below_the_counted_survivors():
    codes = _codes(30, 8, seed=2, bound=100)
    with pytest.raises(AggregationError, match="nothing opened"):
        aggregate_round(codes, config=MaskConfig(clip=1.0, bits=16), dropped=sorted(codes)[:4], min_survivors=27)


def test_bad_input_is_refused():
    codes = _codes(10, 4, seed=3, bound=100)
    cfg = MaskConfig(clip=1.0, bits=8)
    with pytest.raises(ConfigError, match="noise_headroom_bits"):
        aggregate_round({**codes, "dev00000": np.full(4, 500)}, config=cfg)
    with pytest.raises(ConfigError, match="not among"):
        aggregate_round(codes, config=cfg, dropped=["nobody"])
    with pytest.raises(ConfigError, match="stage"):
        aggregate_round(codes, config=cfg, dropped={"dev00001": "later"})
    with pytest.raises(ConfigError, match="integer vectors"):
        aggregate_round({**codes, "dev00000": np.zeros(4)}, config=cfg)


@pytest.mark.slow
def test_a_1000_device_round_with_10_percent_dropouts_opens_the_survivors_sum():
    codes = _codes(1000, 64, seed=7)
    drop = set(sorted(codes)[3::10])
    cfg = MaskConfig(clip=1.0, bits=16, noise_headroom_bits=1, dropout=0.1)  # the cross-device loop's sizing
    r = aggregate_round(codes, config=cfg, dropped=drop)
    assert (r.degree, r.threshold) == (30, 17)
    assert set(r.included) == set(codes) - drop and len(r.included) == 900
    assert np.array_equal(r.total, _plain_sum(codes, r.included))
