"""SecAgg+ graphs sized for the dropout rate a round must survive.

The default degree ``2 * ceil(log2 K)`` was chosen for communication cost, not for a
dropout rate: with 10 % of K = 100 devices dropping out, about 1 % of rounds cannot be
opened (a dropped device's key or a survivor's seed keeps fewer than ``t`` holders), and
at 20 % about a third of them (Monte Carlo on the real graphs, below). ``MaskConfig(dropout=p)`` sizes the graph so that the
union bound on that failure is below ``round_failure``; these tests check the bound
against a Monte Carlo count on the real graphs and run real rounds at the rate.
"""

from __future__ import annotations

import numpy as np
import pytest

from privspk.errors import AggregationError, ConfigError
from privspk.secagg.crossdevice import aggregate_round
from privspk.secagg.graph import degree_for_dropout, default_degree, neighbourhood_graph, round_failure_bound, \
    threshold_for
from privspk.secagg.mask_protocol import MaskConfig


def _unrecoverable(g, dropped: set[str], t: int) -> bool:
    """Whether some needed secret keeps fewer than t holders once ``dropped`` stop before collect."""
    alive = set(g.clients) - dropped
    for c in g.clients:
        holders = len(set(g.closed(c)) & alive)
        if c in alive and holders < t:
            return True
        if c in dropped and set(g.neighbours(c)) & alive and holders < t:
            return True
    return False


def _monte_carlo_failure(k: int, degree: int, p: float, trials: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    ids = tuple(f"d{i:04d}" for i in range(k))
    t = threshold_for(degree + 1, 0.5, colluders=1)
    fails = 0
    for i in range(trials):
        g = neighbourhood_graph(ids, degree=degree, seed=i.to_bytes(4, "big"))
        dropped = {d for d, u in zip(ids, rng.random(k)) if u < p}
        fails += _unrecoverable(g, dropped, t)
    return fails / trials


def test_default_degree_loses_rounds_at_twenty_percent_dropouts() -> None:
    """The old sizing: about a third of K = 100 rounds with 20 % independent dropouts cannot be opened."""
    k, p = 100, 0.2
    d = default_degree(k)
    assert _monte_carlo_failure(k, d, p, trials=200, seed=1) > 0.2
    assert round_failure_bound(k, d, p, colluders=1) > 0.5


@pytest.mark.parametrize(("k", "p", "target"), [(100, 0.1, 1e-2), (100, 0.2, 1e-2), (200, 0.1, 1e-2)])
def test_sized_degree_meets_its_failure_target_by_monte_carlo(k: int, p: float, target: float) -> None:
    d = degree_for_dropout(k, p, colluders=1, round_failure=target)
    assert d > default_degree(k)
    assert round_failure_bound(k, d, p, colluders=1) <= target
    # 600 trials: a true rate of 1e-2 shows ~6 failures; the bound is an upper bound, so expect fewer
    assert _monte_carlo_failure(k, d, p, trials=600, seed=2) <= 2 * target
    # and the degree just below the chosen one misses the target by the bound
    assert round_failure_bound(k, d - 2, p, colluders=1) > target


def test_bound_is_an_upper_bound_on_the_default_graph() -> None:
    """Monte Carlo on the default K = 100 graph at 10 %: a few percent of rounds fail, under the bound."""
    k, p = 100, 0.1
    d = default_degree(k)
    mc = _monte_carlo_failure(k, d, p, trials=1500, seed=3)
    bound = round_failure_bound(k, d, p, colluders=1)
    assert 0.005 < mc <= bound + 3 * np.sqrt(bound / 1500)


def test_degree_is_monotone_and_capped_at_complete() -> None:
    degs = [degree_for_dropout(1000, p, colluders=1, round_failure=1e-4) for p in (0.0, 0.05, 0.1, 0.2, 0.3)]
    assert degs == sorted(degs) and degs[0] == default_degree(1000)
    assert degree_for_dropout(20, 0.4, colluders=1, round_failure=1e-9) == 19  # complete graph: the best there is
    assert degree_for_dropout(12, 0.1, colluders=1) == 11  # small rounds stay complete
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ConfigError, match="dropout"):
            degree_for_dropout(100, bad, colluders=1)
    with pytest.raises(ConfigError, match="round_failure"):
        degree_for_dropout(100, 0.1, colluders=1, round_failure=0.0)


def test_mask_config_sizes_the_graph_from_dropout() -> None:
    assert MaskConfig().holders(100) == default_degree(100) + 1
    cfg = MaskConfig(dropout=0.1, round_failure=1e-4)
    assert cfg.holders(100) == degree_for_dropout(100, 0.1, colluders=1, round_failure=1e-4) + 1
    assert MaskConfig(dropout=0.1, degree=14).holders(100) == 15  # an explicit degree wins
    with pytest.raises(ConfigError, match="dropout"):
        MaskConfig(dropout=0.6)
    with pytest.raises(ConfigError, match="round_failure"):
        MaskConfig(dropout=0.1, round_failure=2.0)


def _codes(k: int, dim: int, seed: int):
    rng = np.random.default_rng(seed)
    ids = [f"d{i:03d}" for i in range(k)]
    return ids, {d: rng.integers(-50, 50, dim) for d in ids}, rng


def test_real_rounds_at_twenty_percent_open_with_a_sized_graph() -> None:
    """Real SecAgg+ rounds (X25519, Shamir, AES-CTR) of 60 devices with 20 % dropouts.

    A dropout set that makes the default-degree graph fail is found first (the old behaviour:
    AggregationError, nothing opened); the sized graph opens that same round, and its opened sum
    equals the plain sum of the survivors.
    """
    k, p, dim = 60, 0.2, 8
    ids, codes, rng = _codes(k, dim, seed=4)
    old = MaskConfig(clip=1.0, bits=16)
    new = MaskConfig(clip=1.0, bits=16, dropout=p, round_failure=1e-3)
    assert new.holders(k) > old.holders(k)
    failed_old = None
    for attempt in range(40):
        dropped = {d for d in ids if rng.random() < p}
        try:
            aggregate_round(codes, config=old, dropped=dropped, round_id=attempt)
        except AggregationError:
            failed_old = (attempt, dropped)
            break
    assert failed_old is not None, "the default graph survived 40 rounds at 20 % dropouts"
    attempt, dropped = failed_old
    res = aggregate_round(codes, config=new, dropped=dropped, round_id=attempt)
    survivors = [d for d in ids if d not in dropped]
    assert res.included == tuple(survivors)
    assert res.total.tolist() == np.sum([codes[d] for d in survivors], axis=0).tolist()


def test_threat_model_dropout_table_matches_the_code() -> None:
    """Every row of the threat model's "SecAgg+ graphs sized for dropouts" table, recomputed."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "threat_model" / "README.md").read_text(encoding="utf-8")
    section = text.split("### SecAgg+ graphs sized for dropouts", 1)[1].split("\n##", 1)[0]
    rows = [r for r in section.splitlines() if re.match(r"\| \d+ \|", r)]
    assert len(rows) == 7
    for row in rows:
        k, p, d0, b0, d, t, tol, b = (c.strip() for c in row.strip("|").split("|"))
        k, p = int(k), float(p.rstrip("%")) / 100
        cfg = MaskConfig(dropout=p)
        assert int(d0) == default_degree(k) and float(b0) == float(f"{round_failure_bound(k, int(d0), p):.2g}")
        assert int(d) + 1 == cfg.holders(k) and int(t) == cfg.shares_needed(k) and int(tol) == cfg.tolerated_colluders(k)
        assert float(b) == float(f"{round_failure_bound(k, int(d), p):.1e}") <= cfg.round_failure
