"""``bfv``: parameter plan, digit packing, and sums exact to the quantisation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from privspk.errors import ConfigError, ProtocolError
from privspk.secagg import RoundSpec
from privspk.secagg.bfv import (
    NOISE_SAFETY_BITS,
    BfvCodec,
    BfvConfig,
    _plan_for,
    noise_bits,
    pack_digits,
    unpack_digits,
)
from privspk.secagg.he_params import SECURITY_CAP_BITS
from privspk.secagg.he_scheme import client_rng
from privspk.secagg.he_wire import ntt_primes
from privspk.secagg.simulate import run_round

from secagg_support import build_trusted

ts = pytest.importorskip("tenseal")


# ---------------------------------------------------------------- the plan


@pytest.mark.parametrize(("bits", "pack", "t_bits", "chain", "bpp"), [
    (16, 2, 45, (57, 30), 7.125),  # t carries CHECK_BITS = 1 spare bit above the digits
    (12, 3, 54, (34, 33, 30), 5.583333333333333),
])
def test_default_plans_meet_the_byte_target(bits: int, pack: int, t_bits: int, chain: tuple, bpp: float) -> None:
    plan = BfvConfig(bits=bits).plan
    assert (plan.pack, plan.plain_modulus.bit_length(), plan.chain, plan.bytes_per_param) == (pack, t_bits, chain, bpp)
    assert plan.bytes_per_param <= 8.0


@settings(max_examples=25, deadline=None)
@given(bits=st.integers(4, 24), max_clients=st.integers(1, 200), log_n=st.sampled_from([12, 13, 14]))
def test_plan_invariants(bits: int, max_clients: int, log_n: int) -> None:
    n = 1 << log_n
    try:
        cfg = BfvConfig(bits=bits, max_clients=max_clients, poly_modulus_degree=n)
    except ConfigError:
        return  # no plan fits (checked by test_impossible_plans_are_refused)
    plan = cfg.plan
    levels = (1 << (bits - 1)) - 1
    assert plan.radix == max_clients * 2 * levels + 1
    t = plan.plain_modulus
    assert sympy.isprime(t) and t % (2 * n) == 1 and t > plan.radix**plan.pack - 1 and t.bit_length() <= 60
    data = ntt_primes(n, plan.chain)[:-1]
    assert math.log2(math.prod(data)) - math.log2(t) >= noise_bits(max_clients, poly_degree=n) + NOISE_SAFETY_BITS
    assert sum(plan.chain) <= SECURITY_CAP_BITS[n] and len(plan.chain) >= 2
    # the automatic pack is the cheapest valid one (slow reference: try them all)
    packs = [k for k in range(1, 61) if k == 1 or plan.radix**k <= 2**60]
    options = [p for p in (_plan_for(k, plan.radix, n, max_clients) for k in packs) if not isinstance(p, str)]
    assert plan.bytes_per_param == min(p.bytes_per_param for p in options)


def test_impossible_plans_are_refused() -> None:
    with pytest.raises(ConfigError, match="pack=3 needs a 66-bit plain modulus"):
        BfvConfig(bits=16, pack=3)
    with pytest.raises(ConfigError, match="more than 54 at N=2048"):
        BfvConfig(poly_modulus_degree=2048)
    with pytest.raises(ConfigError, match=r"leave log2\(q/t\) = .* bits; a sum of 50 ciphertexts needs 10.3"):
        BfvConfig(coeff_mod_bit_sizes=(50, 30))
    with pytest.raises(ConfigError, match="needs at least two primes"):
        BfvConfig(coeff_mod_bit_sizes=(60,))
    with pytest.raises(ConfigError, match="more than the 109"):
        BfvConfig(coeff_mod_bit_sizes=(60, 50))


@pytest.mark.parametrize(("options", "message"), [
    ({"bits": 1}, "bits must be an int in"),
    ({"bits": 31}, "bits must be an int in"),
    ({"clip": 0.0}, "clip must be a positive finite number"),
    ({"clip": float("nan")}, "clip must be a positive finite number"),
    ({"max_clients": True}, "max_clients must be a positive int"),
    ({"min_clients": 0}, "min_clients must be a positive int"),
    ({"min_clients": 9, "max_clients": 8}, "min_clients 9 exceeds max_clients 8"),
    ({"poly_modulus_degree": 3000}, "poly_modulus_degree must be one of"),
    ({"pack": 0}, "pack must be a positive int"),
    ({"coeff_mod_bit_sizes": (56, 70)}, r"prime sizes \[70\] are outside"),
])
def test_bad_options_fail_at_construction(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_trusted("bfv", options)


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(ConfigError) as e:
        BfvConfig(clip=-1.0, min_clients=0, bits=99)
    assert all(w in str(e.value) for w in ("clip", "min_clients", "bits"))


def test_a_config_that_passes_builds_a_tenseal_context() -> None:
    for cfg in (BfvConfig(), BfvConfig(bits=12), BfvConfig(bits=8, max_clients=4), BfvConfig(poly_modulus_degree=8192)):
        codec = BfvCodec(cfg)
        ctx = codec.make_context()
        codec.check_context(ctx)
        assert ctx.has_secret_key()


# ---------------------------------------------------------------- digit packing


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(2, 16), k=st.integers(1, 50), pack=st.integers(1, 3), slots=st.sampled_from([1, 4, 16]),
       dim=st.integers(1, 70), data=st.data())
def test_packed_sums_unpack_to_digit_sums(bits: int, k: int, pack: int, slots: int, dim: int, data) -> None:
    levels = (1 << (bits - 1)) - 1
    max_clients = data.draw(st.integers(k, 60), label="max_clients")
    radix = max_clients * 2 * levels + 1
    assume(radix**pack <= 2**60)  # what a 60-bit plain modulus allows
    kind = data.draw(st.sampled_from(["random", "top", "bottom"]), label="kind")
    codes = []
    for i in range(k):
        if kind == "top":
            c = np.full(dim, levels)
        elif kind == "bottom":
            c = np.full(dim, -levels)
        else:
            c = np.array(data.draw(st.lists(st.integers(-levels, levels), min_size=dim, max_size=dim)))
        codes.append(c)
    total = sum(pack_digits(c + levels, pack=pack, radix=radix, slots=slots) for c in codes)
    assert total.max() < radix**pack  # below any plain modulus t > radix**pack - 1: no wrap
    got = unpack_digits(total, pack=pack, radix=radix, dim=dim)
    assert np.array_equal(got - k * levels, sum(codes))


def test_decode_refuses_digits_out_of_range() -> None:
    codec = BfvCodec(BfvConfig(bits=4, max_clients=4))
    rng = np.random.default_rng(0)
    values = sum(codec.encode(np.ones(5), rng=rng) for _ in range(3))
    assert np.allclose(codec.decode(values, dim=5, n_summands=3), 3.0)
    with pytest.raises(ProtocolError, match="not a sum of 1 quantised updates"):
        codec.decode(values, dim=5, n_summands=1)


def test_check_context_refuses_other_parameters() -> None:
    codec = BfvCodec(BfvConfig())
    other = BfvCodec(BfvConfig(bits=12)).make_context()
    with pytest.raises(ProtocolError, match="do not match"):
        codec.check_context(other)
    same_chain = ts.context(ts.SCHEME_TYPE.BFV, 4096, plain_modulus=1032193, coeff_mod_bit_sizes=list(codec.plan.chain))
    with pytest.raises(ProtocolError, match="not BFV with plain modulus"):
        codec.check_context(same_chain)
    ckks = ts.context(ts.SCHEME_TYPE.CKKS, 4096, coeff_mod_bit_sizes=list(codec.plan.chain))
    with pytest.raises(ProtocolError, match="not BFV"):
        codec.check_context(ckks)


# ---------------------------------------------------------------- sums exact to the quantisation


def quantised_reference(scheme, updates: dict[str, np.ndarray], included, seed: int) -> np.ndarray:
    """The same codes the clients drew (same seeded streams), summed and scaled: exact, not approximate."""
    q = scheme.config.quantiser
    codes = sum(q.to_integers(updates[c], rng=client_rng(seed, c)) for c in included)
    return codes.astype(np.float64) / q.scale


@settings(max_examples=12, deadline=None)
@given(k=st.integers(2, 7), dim=st.integers(1, 9000), seed=st.integers(0, 2**31), bits=st.sampled_from([12, 16]),
       data=st.data())
def test_sum_is_exact_to_the_quantisation(k: int, dim: int, seed: int, bits: int, data) -> None:
    scheme = build_trusted("bfv", {"bits": bits, "max_clients": 8}, seed=seed)
    clients = tuple(f"c{i}" for i in range(k))
    spec = RoundSpec(run_id="exact", round_id=0, clients=clients, dim=dim)
    eps = {c: scheme.client(c) for c in clients}
    rng = np.random.default_rng(seed)
    updates = {c: rng.uniform(-1.5, 1.5, dim) for c in clients}
    for c in clients:
        eps[c].submit(0, updates[c])
    stages = data.draw(st.lists(st.sampled_from(["collect", "verify"]), min_size=k, max_size=k), label="stages")
    drop = data.draw(st.lists(st.booleans(), min_size=k, max_size=k), label="drop")
    silent = {c: s for c, s, d in zip(clients, stages, drop) if d}
    survivors = [c for c in clients if silent.get(c) != "collect"]
    if len(survivors) < 2:
        return
    res = run_round(scheme, spec, eps, silent=silent)
    assert list(res.included) == survivors
    assert np.array_equal(res.total, quantised_reference(scheme, updates, survivors, seed))
    clipped = sum(np.clip(updates[c], -1, 1) for c in survivors)
    assert np.abs(res.total - clipped).max() <= scheme.sum_tolerance(len(survivors))
    assert np.abs(res.total - sum(updates[c] for c in survivors)).max() <= scheme.sum_tolerance(len(survivors),
                                                                                            bound=1.5)


@pytest.mark.parametrize(("bits", "value"), [(16, 1.0), (12, -1.0)])
def test_a_full_round_of_max_clients_at_the_extremes_decrypts_exactly(bits: int, value: float) -> None:
    k = 50
    scheme = build_trusted("bfv", {"bits": bits}, seed=1)
    spec = RoundSpec(run_id="full", round_id=0, clients=tuple(f"c{i:02d}" for i in range(k)), dim=200)
    eps = {c: scheme.client(c) for c in spec.clients}
    for c in spec.clients:
        eps[c].submit(0, np.full(spec.dim, value))  # every digit at its largest or smallest code
    res = run_round(scheme, spec, eps)
    assert len(res.included) == k
    assert np.array_equal(res.total, np.full(spec.dim, k * value))


def test_upload_is_within_the_byte_target() -> None:
    scheme = build_trusted("bfv", seed=0)
    dim = 8 * scheme.codec.values_per_chunk
    spec = RoundSpec(run_id="bytes", round_id=0, clients=("a", "b"), dim=dim)
    eps = {c: scheme.client(c) for c in spec.clients}
    for c in spec.clients:
        eps[c].submit(0, np.zeros(dim))
    res = run_round(scheme, spec, eps)
    for c in spec.clients:
        assert 7.125 <= res.bytes_up[c] / dim <= 7.15  # 57-bit residues, 2 per slot, plus ~1.5 kB of headers
