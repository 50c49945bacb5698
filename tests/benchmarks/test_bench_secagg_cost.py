"""Smoke tests of benchmarks/secagg_cost.py at tiny K and P, so the script cannot rot.

They check what the timings hang on: each measured round opens the right sum (against a
float64 reference), the dropout rounds leave the dropped clients out, Flower's own
workflow and mod really ran (and were restored), the result files carry the fields the
issue asks for, and the targets pass or miss as their figures say.
"""

from __future__ import annotations

import doctest
import importlib.util
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privspk.errors import ConfigError
from privspk.secagg import build_scheme
from privspk.secagg.mask_protocol import MaskConfig

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "secagg_cost.py"


def _load():
    spec = importlib.util.spec_from_file_location("secagg_cost", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["secagg_cost"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


sc = _load()

REQUIRED = ("scheme", "K", "params", "bytes_per_param", "client_s", "server_s", "open_s", "max_err")


@pytest.fixture(autouse=True)
def _keep_log_levels():
    names = ("privspk", "flwr", "secagg_cost")
    saved = {n: logging.getLogger(n).level for n in names}
    yield
    for n, level in saved.items():
        logging.getLogger(n).setLevel(level)


def test_doctests_of_the_script_pass():
    res = doctest.testmod(sc, optionflags=doctest.ELLIPSIS)
    assert res.attempted > 10 and res.failed == 0


@pytest.mark.parametrize("k", [3, 10, 17, 50])
def test_resolved_graphs_match_the_library_and_flower_gets_the_same(k):
    mask = sc.resolve("mask", k)
    assert (mask.holders, mask.threshold) == (MaskConfig().holders(k), MaskConfig().shares_needed(k))
    complete, sparse = sc.resolve("mask_complete", k), sc.resolve("mask_sparse", k)
    assert complete.holders == k == sc.resolve("flower_complete", k).holders
    assert sparse.holders == MaskConfig(degree=sc.sparse_degree(k)).holders(k) == sc.resolve("flower_sparse", k).holders
    assert sc.resolve("flower_sparse", k).threshold == min(sparse.threshold, sparse.holders - 1)  # Flower: t < n
    assert complete.threshold == MaskConfig(degree=k - 1).shares_needed(k)
    # Same configuration <=> same key: measured once.
    assert (mask.key == complete.key) == (mask.holders == k)
    assert (mask.key == sparse.key) == (mask.holders == sparse.holders)
    assert sc.resolve("mask16", k).key != mask.key or MaskConfig(bits="auto").value_bits(k) == 16


def test_unknown_scheme_and_bad_lists_are_refused_by_name():
    with pytest.raises(ConfigError, match="'maks'"):
        sc.resolve("maks", 10)
    with pytest.raises(ConfigError, match="'3,x'"):
        sc._ints("3,x", (1,))
    with pytest.raises(ConfigError, match="positive"):
        sc._ints("0,5", (1,))
    assert sc._ints("3, 1e6", (1,)) == (3, 1_000_000)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 8), min_size=2, max_size=12, unique=True),
       st.floats(-5, 5), st.floats(-5, 5), st.integers(0, 2**31))
def test_slope_and_its_error_match_scipy_linregress(xs, a, b, seed):
    from scipy.stats import linregress

    noise = np.random.default_rng(seed).normal(size=len(xs))
    ys = [a + b * x + e for x, e in zip(xs, noise)]
    ref = linregress(xs, ys)
    assert sc.slope(xs, ys) == pytest.approx(ref.slope, abs=1e-9)
    got, se = sc.slope_se(xs, ys)
    assert got == pytest.approx(ref.slope, abs=1e-9)
    if len(xs) < 3:
        assert se is None
    else:
        assert se == pytest.approx(ref.stderr, rel=1e-6, abs=1e-12)


def test_median_keeps_the_worst_error():
    rows = [{"client_s": c, "max_err": e} for c, e in ((3.0, 0.1), (1.0, 0.5), (2.0, 0.2))]
    assert sc.median_of(rows) == {"client_s": 2.0, "max_err": 0.5}


@pytest.mark.parametrize("name", ["plain", "mask", "mask16", "bfv", "ckks"])
def test_privspk_rounds_open_the_exact_sum_and_time_each_party(name):
    k, dim = 3, 64
    variant = sc.resolve(name, k)
    session = sc.make_session(variant, k, seed=1)
    x = sc.make_inputs(k, dim, seed=2)
    m = session.run_round(x)
    tol = build_scheme(variant.scheme, variant.options).sum_tolerance(k)
    assert m["included"] == k
    assert m["max_err"] <= max(tol, 1e-12)
    assert m["client_s"] > 0 and m["server_s"] > 0
    if name == "plain":
        assert m["open_s"] == 0 and m["setup_client_s"] == 0
        assert m["bytes_protect"] >= 4 * dim
    else:
        assert m["open_s"] > 0
    if name.startswith("mask"):
        word = 2 if name == "mask" else 4  # 14-bit values in uint16 for K = 3; 16-bit values need uint32
        assert word * dim <= m["bytes_protect"] < word * dim + 400
        assert m["setup_client_s"] > 0 and m["setup_server_s"] > 0


def test_privspk_dropout_rounds_leave_the_dropped_client_out():
    k, dim = 4, 32
    session = sc.make_session(sc.resolve("mask", k), k, seed=0)
    x = sc.make_inputs(k, dim, seed=3)
    m = session.run_round(x, drop=[1], drop_stage="collect")
    assert m["included"] == k - 1
    tol = build_scheme("mask", sc.resolve("mask", k).options).sum_tolerance(k)
    assert m["max_err"] <= tol  # checked against the sum of the three others
    late = session.run_round(x, drop=[1], drop_stage="confirm")
    assert late["included"] == k and late["max_err"] <= tol


def test_flower_round_runs_flowers_own_code_and_restores_it():
    mod = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
    wf = importlib.import_module("flwr.server.workflow.secure_aggregation.secaggplus_workflow")
    before = (mod._collect_masked_vectors, wf.combine_shares, wf.pseudo_rand_gen)
    k, dim = 4, 48
    session = sc.make_session(sc.resolve("flower_complete", k), k, seed=0)
    x = sc.make_inputs(k, dim, seed=4)
    m = session.run_round(x)
    assert (mod._collect_masked_vectors, wf.combine_shares, wf.pseudo_rand_gen) == before
    step = 2 * sc.CLIP / sc.FlowerSession.QUANT_RANGE
    assert m["included"] == k and m["max_err"] <= k * step * 1.01
    assert 8 * dim <= m["bytes_protect"] < 8 * dim + 600  # int64 on the wire
    assert m["client_s"] > 0 and m["shamir_s"] > 0 and m["prg_s"] > 0 and m["transport_s"] > 0
    assert m["client_stage_s"] >= m["client_s"]
    d = session.run_round(x, drop=[2], drop_stage="collect")
    assert d["included"] == k - 1 and d["max_err"] <= k * step * 1.01


def test_benchmark_rows_ratios_and_outputs(tmp_path):
    plan = sc.Plan(repeats=2, dropout_params=(40,), max_drop=1, late_drop=1, drop_budget_s=0.0)
    # K = 4: the smallest complete-graph round that survives a dropout with one colluder tolerated (t = 3)
    rows = sc.run_benchmark(["plain", "mask", "mask_complete", "flower_complete"], (4,), (40,), plan)
    by = {r["scheme"]: r for r in rows}
    assert set(by) == {"plain", "mask", "mask_complete", "flower_complete"}
    for r in rows:
        assert all(f in r for f in REQUIRED)
        assert r["bytes_per_param"] == pytest.approx(r["bytes_protect"] / 40)
    assert by["mask_complete"]["same_as"] == "mask"
    assert by["mask"]["flower_peer"] == "flower_complete" and by["flower_complete"]["flower_peer"] is None
    assert by["mask"]["drop_counts"] == [1] and by["mask"]["drop_server_s_per_client"] is not None
    assert by["mask"]["drop_cycles"] == 1 and len(by["mask"]["drop_server_s"]) == 2  # d = 0 and d = 1
    assert by["mask"]["late_drop_count"] == 1
    assert by["plain"]["drop_server_s_per_client"] is None
    assert by["mask"]["ratio_to_flower_client_s"] == pytest.approx(
        by["mask"]["client_s"] / by["flower_complete"]["client_s"])
    assert by["mask"]["ratio_to_plain_server_s"] == pytest.approx(by["mask"]["server_s"] / by["plain"]["server_s"])
    assert by["flower_complete"]["ratio_to_flower_client_s"] is None
    payload = {"metadata": {"date": "d", "machine": "m", "flower_method": "f", "target_params": 40},
               "rows": rows, "targets": [t.as_dict() for t in sc.targets(rows, target_params=40)]}
    tgt = {t["target"]: t for t in payload["targets"]}
    assert tgt["mask bytes/param, K=4"]["value"] == pytest.approx(by["mask"]["bytes_per_param"])
    assert tgt["bfv bytes/param, K=4"]["status"] == "not measured"
    md = sc.markdown(payload)
    assert "| mask_complete (= mask) |" in md and "## Targets (P = 40" in md
    png = tmp_path / "x.png"
    assert sc.plot(payload, png) and png.read_bytes()[:4] == b"\x89PNG"


def _row(scheme, k, **fields):
    base = {"scheme": scheme, "K": k, "params": 1_000_000, "holders": None, "same_as": None, "flower_peer": None}
    return {**base, **fields}


def test_targets_pass_and_miss_on_their_figures():
    rows = [
        _row("mask", 10, bytes_per_param=2.0, client_s=0.03, holders=10, flower_peer="flower_complete",
             drop_server_s_per_client=0.05),
        _row("mask_sparse", 10, client_s=0.01, holders=9, flower_peer="flower_sparse"),
        _row("flower_complete", 10, client_s=0.1, drop_server_s_per_client=0.1),
        _row("flower_sparse", 10, client_s=0.1),
        _row("mask", 50, bytes_per_param=4.2, server_open_s=1.0, holders=13, flower_peer="flower_sparse"),
        _row("flower_sparse", 50, server_open_s=5.0),
        _row("bfv", 10, bytes_per_param=7.0, client_s=0.3),
        _row("ckks", 10, bytes_per_param=22.5, client_s=1.3, max_err=2e-7),
    ]
    got = {t.name: t for t in sc.targets(rows)}
    assert got["mask bytes/param, K=10"].met is True
    assert got["mask bytes/param, K=50"].met is False  # 4.2 > 4.1
    assert got["client protect / Flower (mask vs flower_complete, holders 10), K=10"].value == pytest.approx(0.3)
    assert got["client protect / Flower (mask vs flower_complete, holders 10), K=10"].met is False
    assert got["client protect / Flower (mask_sparse vs flower_sparse, holders 9), K=10"].met is True
    assert got["server aggregate+open / Flower (mask vs flower_sparse, holders 13), K=50"].met is True
    assert got["extra server s per dropped client / Flower (mask vs flower_complete, holders 10), K=10"].met is False
    assert got["ckks client encrypt per 1M params, K=10"].met is False
    assert got["bfv client encrypt per 1M params, K=10"].met is True
    assert got["ckks max error, K=10"].met is True and got["bfv bytes/param, K=10"].met is True


def test_dropout_targets_use_the_regression_errors():
    def rows(ours, ours_se, theirs, theirs_se):
        return [_row("mask", 10, holders=10, flower_peer="flower_complete", drop_server_s_per_client=ours,
                     drop_server_s_per_client_se=ours_se),
                _row("flower_complete", 10, drop_server_s_per_client=theirs, drop_server_s_per_client_se=theirs_se)]

    name = "extra server s per dropped client / Flower (mask vs flower_complete, holders 10), K=10"
    clear = {t.name: t for t in sc.targets(rows(0.01, 0.001, 0.2, 0.01))}[name]
    assert clear.status == "pass" and clear.high == pytest.approx(0.012 / 0.18)
    noisy = {t.name: t for t in sc.targets(rows(0.01, 0.001, 0.2, 0.15))}[name]
    assert noisy.value == pytest.approx(0.05) and noisy.status == "inconclusive" and noisy.high == float("inf")
    worse = {t.name: t for t in sc.targets(rows(0.2, 0.01, 0.2, 0.01))}[name]
    assert worse.status == "MISS" and worse.low > 0.25


def test_main_writes_the_three_result_files(tmp_path):
    out = tmp_path / "res"
    rc = sc.main(["--no-reexec", "--ks", "3", "--params", "32", "--schemes", "plain,mask,flower_complete",
                  "--repeats", "1", "--dropout-params", "32", "--max-drop", "1", "--drop-budget-s", "0",
                  "--out", str(out)])
    assert rc == 0
    data = json.loads((out / "secagg_cost.json").read_text())
    assert {r["scheme"] for r in data["rows"]} == {"plain", "mask", "flower_complete"}
    for r in data["rows"]:
        assert all(f in r for f in REQUIRED)
        assert "ratio_to_plain_client_s" in r and "ratio_to_flower_server_open_s" in r
    meta = data["metadata"]
    assert set(meta["malloc_env"]) == {"MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_ARENA_MAX"}
    assert "secaggplus_mod" in meta["flower_method"] and meta["target_params"] == 32
    (tgt,) = [t for t in data["targets"] if t["target"] == "mask bytes/param, K=3"]
    mask = next(r for r in data["rows"] if r["scheme"] == "mask")
    assert tgt["value"] == mask["bytes_per_param"] > 2.1  # at P = 32 the message header dominates
    assert tgt["status"] == "MISS"
    assert (out / "secagg_cost.md").read_text().startswith("# Secure aggregation cost")
    assert (out / "secagg_cost.png").read_bytes()[:4] == b"\x89PNG"


def test_reexec_pins_the_allocator_once(monkeypatch):
    calls = []
    monkeypatch.setattr(sc.os, "execve", lambda exe, argv, env: calls.append((argv, env)))
    for key in (*sc.PINNED_ENV, "PRIVSPK_BENCH_REEXEC"):
        monkeypatch.delenv(key, raising=False)
    sc._reexec_pinned(["--quick"])
    (argv, env), = calls
    assert argv[-1] == "--quick" and argv[1].endswith("secagg_cost.py")
    assert all(env[k] == v for k, v in sc.PINNED_ENV.items()) and env["PRIVSPK_BENCH_REEXEC"] == "1"
    monkeypatch.setenv("PRIVSPK_BENCH_REEXEC", "1")
    sc._reexec_pinned(["--quick"])  # already re-executed: no second exec
    assert len(calls) == 1
