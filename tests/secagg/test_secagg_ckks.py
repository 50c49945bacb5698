"""``ckks``: parameters checked at construction, sums within the stated tolerance of numpy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privspk.errors import ConfigError, ProtocolError
from privspk.secagg import RoundSpec
from privspk.secagg.ckks import CkksCodec, CkksConfig
from privspk.secagg.simulate import run_round

from secagg_support import build_trusted

ts = pytest.importorskip("tenseal")


def test_default_chain_and_bytes() -> None:
    cfg = CkksConfig()
    assert (cfg.poly_modulus_degree, cfg.scale_bits, cfg.chain) == (4096, 37, (45, 30))
    codec = CkksCodec(cfg)
    assert codec.values_per_chunk == 2048
    assert codec.layout.packed_bytes(1) / codec.values_per_chunk == 22.5 <= 32
    assert codec.sum_tolerance(50) < 1e-6


@pytest.mark.parametrize(("options", "message"), [
    ({"poly_modulus_degree": 2048, "coeff_mod_bit_sizes": (40, 20)}, "more than the 54 that N=2048 allows"),
    ({"coeff_mod_bit_sizes": (45,)}, "needs at least two primes"),
    ({"coeff_mod_bit_sizes": (61, 30)}, r"prime sizes \[61\] are outside"),
    ({"coeff_mod_bit_sizes": (40, 30)}, "cannot hold a sum of 50 values of up to 1.0 at scale 2\\^37"),
    ({"coeff_mod_bit_sizes": (45.0, 30)}, "must be a tuple of ints"),
    ({"scale_bits": 70}, "scale_bits must be an int in"),
    ({"scale_bits": True}, "scale_bits must be an int in"),
    ({"poly_modulus_degree": 4000}, "poly_modulus_degree must be one of"),
    ({"clip": -1.0}, "clip must be a positive finite number"),
    ({"clip": 100.0, "coeff_mod_bit_sizes": (45, 30)}, "cannot hold a sum of 50 values of up to 100.0"),
    ({"min_clients": 5, "max_clients": 4}, "min_clients 5 exceeds max_clients 4"),
])
def test_bad_parameters_fail_at_construction(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CkksConfig(**options)


def test_lists_become_tuples_and_wide_sums_get_more_primes() -> None:
    assert build_trusted("ckks", {"coeff_mod_bit_sizes": [46, 30]}).config.chain == (46, 30)
    assert CkksConfig(coeff_mod_bit_sizes=[46, 30]).coeff_mod_bit_sizes == (46, 30)
    assert CkksConfig(clip=100.0, scale_bits=50).chain == (33, 32, 30)  # 65 data bits in two primes
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['scale'\]"):
        build_trusted("ckks", {"scale": 40})


@pytest.mark.parametrize("cfg", [CkksConfig(), CkksConfig(poly_modulus_degree=8192), CkksConfig(clip=4.0),
                                 CkksConfig(coeff_mod_bit_sizes=(30, 30, 30), scale_bits=50, max_clients=8)])
def test_a_config_that_passes_builds_a_tenseal_context(cfg: CkksConfig) -> None:
    codec = CkksCodec(cfg)
    ctx = codec.make_context()
    codec.check_context(ctx)
    x = np.linspace(-cfg.clip, cfg.clip, 300)
    words = codec.encrypt(ctx, x, rng=np.random.default_rng(0))
    out = codec.decrypt(ctx, words, codec.frame(ctx), dim=300, n_summands=1)
    assert np.abs(out - x).max() <= codec.sum_tolerance(1)


def test_check_context_refuses_other_parameters() -> None:
    codec = CkksCodec(CkksConfig())
    other_scale = ts.context(ts.SCHEME_TYPE.CKKS, 4096, coeff_mod_bit_sizes=[45, 30])
    other_scale.global_scale = 2.0**30
    with pytest.raises(ProtocolError, match="expected CKKS at 2\\^37"):
        codec.check_context(other_scale)
    with pytest.raises(ProtocolError, match="do not match"):
        codec.check_context(CkksCodec(CkksConfig(scale_bits=38)).make_context())
    bfv = ts.context(ts.SCHEME_TYPE.BFV, 4096, plain_modulus=1032193, coeff_mod_bit_sizes=[45, 30])
    with pytest.raises(ProtocolError, match="expected CKKS"):
        codec.check_context(bfv)


def test_decrypt_refuses_what_cannot_be_a_sum() -> None:
    codec = CkksCodec(CkksConfig())
    ctx = codec.make_context()
    garbage = codec.layout.random_words(1, rng=np.random.default_rng(0))  # what another key's ciphertext decrypts to
    with pytest.raises(ProtocolError, match="not a sum of 2 clipped updates"):
        codec.decrypt(ctx, garbage, codec.frame(ctx), dim=100, n_summands=2)


@settings(max_examples=10, deadline=None)
@given(k=st.integers(2, 6), dim=st.integers(1, 5000), seed=st.integers(0, 2**31), bound=st.floats(0.1, 2.0),
       data=st.data())
def test_sum_within_tolerance_of_numpy(k: int, dim: int, seed: int, bound: float, data) -> None:
    scheme = build_trusted("ckks", {"max_clients": 10}, seed=seed)
    clients = tuple(f"c{i}" for i in range(k))
    spec = RoundSpec(run_id="ckks", round_id=0, clients=clients, dim=dim)
    eps = {c: scheme.client(c) for c in clients}
    rng = np.random.default_rng(seed)
    updates = {c: rng.uniform(-bound, bound, dim) for c in clients}
    for c in clients:
        eps[c].submit(0, updates[c])
    silent = data.draw(st.dictionaries(st.sampled_from(clients), st.sampled_from(["collect", "verify"])),
                       label="silent")
    survivors = [c for c in clients if silent.get(c) != "collect"]
    if len(survivors) < 2:
        return
    res = run_round(scheme, spec, eps, silent=silent)
    assert list(res.included) == survivors
    clipped = sum(np.clip(updates[c], -1.0, 1.0) for c in survivors)
    assert np.abs(res.total - clipped).max() <= scheme.codec.sum_tolerance(len(survivors))
    raw = sum(updates[c] for c in survivors)
    assert np.abs(res.total - raw).max() <= scheme.sum_tolerance(len(survivors), bound=bound)


def test_error_at_fifty_clients_is_below_1e6_even_at_the_extremes() -> None:
    k = 50
    scheme = build_trusted("ckks", seed=3)
    spec = RoundSpec(run_id="k50", round_id=0, clients=tuple(f"c{i:02d}" for i in range(k)), dim=2048)
    eps = {c: scheme.client(c) for c in spec.clients}
    rng = np.random.default_rng(3)
    updates = {c: rng.uniform(-1, 1, spec.dim) for c in spec.clients}
    updates["c00"][:100] = 1.0  # the first coordinates at the largest sum the modulus must hold
    for c in spec.clients[1:]:
        updates[c][:100] = 1.0
    for c in spec.clients:
        eps[c].submit(0, updates[c])
    res = run_round(scheme, spec, eps)
    err = np.abs(res.total - sum(updates.values())).max()
    assert err <= 1e-6 and err <= scheme.sum_tolerance(k)
    assert np.abs(res.total[:100] - 50.0).max() <= 1e-6


def test_the_key_holder_floods_each_release_with_fresh_noise() -> None:
    """An exact CKKS release would hand the server c0 + c1*s for a (c0, c1) it knows."""
    codec = CkksCodec(CkksConfig())
    ctx = codec.make_context()
    x = np.random.default_rng(0).uniform(-1, 1, 8 * 2048)
    words = codec.encrypt(ctx, x, rng=np.random.default_rng(0))
    frame = codec.frame(ctx)
    a = codec.decrypt(ctx, words, frame, dim=x.size, n_summands=1)
    b = codec.decrypt(ctx, words, frame, dim=x.size, n_summands=1)
    diff_std = float(np.std(a - b))  # the CKKS error cancels; two independent floods remain
    assert 0.9 < diff_std / (np.sqrt(2) * codec.flood_std) < 1.1
    assert codec.flood_std >= codec.noise_std(codec.config.max_clients)
    assert np.abs(a - x).max() <= codec.sum_tolerance(1)
