"""A malicious server plus colluding clients against real ``mask`` endpoints (issue 19, findings 5 and 6b).

Each test runs one attack with :class:`mask_attack.Attack` (real :class:`MaskClient` objects,
crafted server requests, colluders whose secrets the attacker reads) and checks that no honest
client's update comes out on its own. The attack code is checked to open an update exactly when
it does hold the keys (``test_the_attack_opens_an_update_exactly_given_its_keys``), so an empty
result means missing keys, not a broken attack.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
from mask_attack import Attack
from secagg_support import client_ids

from privspk.api import _scheme_options
from privspk.config import RunConfig
from privspk.errors import ConfigError, ProtocolError
from privspk.secagg import RoundSpec, build_scheme
from privspk.secagg.graph import _ring_order, threshold_for, tolerated_colluders
from privspk.secagg.keys import RoundKeyPair
from privspk.secagg.mask import MaskScheme
from privspk.secagg.mask_protocol import MaskConfig, Stage, message
from privspk.secagg.simulate import run_round


def test_the_attack_opens_an_update_exactly_given_its_keys() -> None:
    """Control: with the victim's own seed and mask key (read from the victim), the attacker's
    unmasking code returns exactly the victim's integer codes; without them it returns nothing."""
    attack = Attack(5, colluders={"c04"}, seed=1)
    state = attack.eps["c00"]._rounds[attack.key]
    seed, s_key = state.seed, RoundKeyPair.from_secret(state.s_key.secret_bytes())
    attack.collect()
    words = attack.open_one("c00", seed=seed, s_keys={"c00": s_key})
    assert words is not None and words.tolist() == attack.p.quantiser.wrap(attack.codes["c00"]).tolist()
    assert attack.open_one("c00") is None  # the honest round so far gave the attacker nothing
    assert attack.recover() == {}


def test_split_view_with_a_colluder_k3() -> None:
    """K = 3, colluder c02: c00 is shown "c01 dropped" (reveals its share of c01's mask key), c01 is
    shown "c01 survived" (reveals its own self-mask share); c02 signs both views."""
    attack = Attack(3, colluders={"c02"}, seed=3)
    everyone = attack.spec.clients
    attack.collect()
    views = {"c00": (["c00", "c02"], everyone), "c01": (everyone, everyone)}
    attack.confirm(views)
    attack.unmask(views)
    assert attack.recover() == {}
    assert {c: st for c, (st, _) in attack.refused.items()} == {"c00": Stage.UNMASK, "c01": Stage.UNMASK}
    assert not attack.revealed


def test_split_view_with_a_colluder_k5() -> None:
    """K = 5, colluder c04: c00, c01 see c02, c03 dropped; c02, c03 see everyone survive."""
    attack = Attack(5, colluders={"c04"}, seed=5)
    everyone = attack.spec.clients
    attack.collect()
    small = ["c00", "c01", "c04"]
    views = {"c00": (small, everyone), "c01": (small, everyone), "c02": (everyone, everyone),
             "c03": (everyone, everyone)}
    attack.confirm(views)
    attack.unmask(views)
    assert attack.recover() == {}


def test_sender_list_attack_k3() -> None:
    """K = 3, colluder c02: each honest client is told only c02 shared, so it masks against c02 alone."""
    attack = Attack(3, colluders={"c02"}, seed=7)
    everyone = attack.spec.clients
    attack.collect({"c00": ["c02"], "c01": ["c02"]})
    views = {c: (everyone, everyone) for c in ("c00", "c01")}
    attack.confirm(views)
    attack.unmask(views)
    assert attack.recover() == {}
    assert {c: st for c, (st, _) in attack.refused.items()} == {"c00": Stage.COLLECT, "c01": Stage.COLLECT}


def test_sender_list_attack_k5() -> None:
    """K = 5, colluders c03, c04: each honest client is told only the colluders shared."""
    attack = Attack(5, colluders={"c03", "c04"}, seed=9)
    everyone = attack.spec.clients
    attack.collect({h: ["c03", "c04"] for h in attack.honest})
    views = {h: (everyone, everyone) for h in attack.honest}
    attack.confirm(views)
    attack.unmask(views)
    assert attack.recover() == {}
    assert {c: st for c, (st, _) in attack.refused.items()} == {h: Stage.COLLECT for h in attack.honest}


def test_sender_list_attack_at_a_threshold_the_old_code_also_had() -> None:
    """K = 5 with t = 4 (threshold option 0.75, so the threshold alone does not stop it), colluders
    c03, c04. Victim v is told the colluders and one honest client h shared; h is then called
    dropped (its mask key is rebuilt) and v's masked vector is left with masks the attacker knows.
    Only binding the sender list into what clients sign stops it: v refuses to sign a survivor set
    holding a client it never masked with. One victim per round, all three honest clients."""
    for i, victim in enumerate(("c00", "c01", "c02")):
        attack = Attack(5, colluders={"c03", "c04"}, options={"threshold": 0.75}, seed=11 + i)
        assert attack.t == 4
        others = [h for h in attack.honest if h != victim]
        dropped, kept = others
        attack.collect({victim: ["c03", "c04", dropped]})
        survivors = sorted([victim, kept, "c03", "c04"])
        views = {victim: (survivors, attack.spec.clients), kept: (survivors, attack.spec.clients)}
        attack.confirm(views)
        attack.unmask(views)
        assert attack.recover() == {}, f"victim {victim}"
        stage, reason = attack.refused[victim]
        assert stage == Stage.CONFIRM and "refusing to sign" in reason  # the sender list is bound
        assert not attack.revealed  # 3 signers (kept + colluders) < t: nobody reveals anything


def test_sparse_graph_split_view_passes_the_signature_check_but_not_the_share_count() -> None:
    """Finding 6b. K = 32, SecAgg+ graph of degree 10 (11 holders per secret): one colluder c next to
    victim v on the ring. The left half of the ring is shown "v dropped", the right half and v "v
    survived"; c signs both. In a sparse graph each client counts signatures of its own neighbours
    only, so both halves find enough signatures and reveal -- the signature-overlap argument of the
    complete graph does not carry over. What still holds is the per-secret count: v's two secrets
    are held by v's 11 neighbourhood, each honest holder reveals at most one of them, so with
    2t - n > n_C one of them stays below t."""
    attack = Attack(32, colluders=set(), seed=13)
    p, g = attack.p, attack.g
    assert (g.degree, len(g.closed("c00"))) == (10, 11)
    ring = _ring_order(p.clients, hashlib.sha256(b"privspk/mask/graph" + p.digest).digest())
    assert all(ring[(i + 1) % 32] in g.neighbours(ring[i]) for i in range(32))  # it is the graph's ring
    v, c = ring[0], ring[1]
    attack = Attack(32, colluders={c}, seed=13)  # same seed, same digest, same ring
    assert _ring_order(attack.p.clients, hashlib.sha256(b"privspk/mask/graph" + attack.p.digest).digest()) == ring
    everyone = attack.spec.clients
    left, right = ring[17:], [ring[0], *ring[2:17]]
    without_v = [x for x in everyone if x != v]
    attack.collect()
    views = {**{u: (without_v, everyone) for u in left}, **{u: (everyone, everyone) for u in right}}
    attack.confirm(views)
    attack.unmask(views)
    assert set(ring[-5:]) | set(ring[2:6]) <= attack.revealed  # v's other holders revealed: the views passed
    assert attack.recover() == {}
    assert len(attack.s[v]) < attack.t and len(attack.b[v]) < attack.t


def test_sparse_graph_split_view_on_the_neighbours_keys_opens_nothing() -> None:
    """Finding 6b, the other route: open w's vector through its neighbours' mask keys rather than its
    own. K = 32, degree 10, colluder c next to w. The left half of the ring (and w) is shown w's right
    neighbours dropped, the right half is shown w's left neighbours dropped, so w's seed is revealed by
    everyone and each neighbour's key by the other side. Every neighbour's key stays below t: the
    holders that could call it dropped are split between the two views (this attack family also fails
    at the old t = 6; it is a check of the claim, not of the fix)."""
    probe = Attack(32, colluders=set(), seed=17)
    ring = _ring_order(probe.p.clients, hashlib.sha256(b"privspk/mask/graph" + probe.p.digest).digest())
    w, c = ring[0], ring[1]
    attack = Attack(32, colluders={c}, seed=17)
    everyone = attack.spec.clients
    lefts, rights = ring[-5:], ring[2:6]  # w's honest neighbours
    attack.collect()
    views = {**{u: ([x for x in everyone if x not in rights], everyone) for u in [w, *ring[17:]]},
             **{u: ([x for x in everyone if x not in lefts], everyone) for u in ring[2:17]}}
    attack.confirm(views)
    attack.unmask(views)
    assert w in attack.revealed and len(attack.b[w]) >= attack.t  # w's seed is out ...
    assert max(len(attack.s[v]) for v in [*lefts, *rights]) < attack.t  # ... but no neighbour's key
    assert attack.recover() == {}


def test_rounds_too_small_for_the_colluders_are_refused() -> None:
    """K = 2 with one colluder tolerated: refused by the server and, if announced, by the client.
    With colluders = 0 (no client colludes, stated explicitly) a 2-client round still runs."""
    scheme = build_scheme("mask")
    spec = RoundSpec(run_id="r", round_id=0, clients=("a", "b"), dim=2)
    with pytest.raises(ConfigError, match=r"cannot tolerate 1 colluding client\(s\).*lower \[secagg\] colluders"):
        scheme.server_round(spec)
    with pytest.raises(ConfigError, match="cannot tolerate 2"):
        build_scheme("mask", {"colluders": 2}).min_survivors(3)
    client = scheme.client("a")
    client.submit_integers(0, np.array([1, 2]))
    advertise = message(run="r", round_id=0, stage=Stage.ADVERTISE, sender="server",
                        fields={"clients": ["a", "b"], "dim": 2})
    with pytest.raises(ProtocolError, match="cannot be masked: secrets held by 2 clients cannot tolerate"):
        client.handle(advertise)
    open_two = build_scheme("mask", {"colluders": 0, "bits": 12})
    eps = {c: open_two.client(c) for c in spec.clients}
    for i, c in enumerate(spec.clients):
        eps[c].submit_integers(0, np.array([10 * i + 1, -3]))
    res = run_round(open_two, spec, eps)
    assert np.rint(res.total * open_two.quantiser(2).scale).tolist() == [12.0, -6.0]


def test_colluders_is_a_secagg_config_key_passed_to_the_mask_scheme() -> None:
    cfg = RunConfig.from_dict({"secagg": {"scheme": "mask", "colluders": 2}, "federation": {"n_clients": 5}})
    assert cfg.secagg.colluders == 2 and RunConfig().secagg.colluders == 1
    scheme = build_scheme("mask", _scheme_options(cfg))
    assert scheme.config.colluders == 2 and scheme.min_survivors(5) == 4
    for bad, match in (({"colluders": -1}, "colluders must be an int >= 0"),
                       ({"colluders": 1.5}, "colluders"),
                       ({"options": {"colluders": 0}}, r"\[secagg\] colluders, not in \[secagg.options\]")):
        with pytest.raises(ConfigError, match=match):
            RunConfig.from_dict({"secagg": {"scheme": "mask", **bad}})


ROOT = Path(__file__).resolve().parents[2]


def test_threat_model_threshold_table_matches_the_code() -> None:
    """Every row of the threat model's "Collusion thresholds of `mask`" table, recomputed."""
    text = (ROOT / "threat_model" / "README.md").read_text(encoding="utf-8")
    section = text.split("### Collusion thresholds of `mask`", 1)[1].split("\n##", 1)[0]
    rows = [r for r in section.splitlines() if re.match(r"\| \d+ \|", r)]
    assert [int(r.split("|")[1]) for r in rows] == [3, 5, 10, 16, 17, 32, 50, 1000]
    cfg = MaskConfig()
    assert cfg.colluders == 1  # the table is for the default
    for row in rows:
        k, graph, n, t, tol, surv, drop, old = (c.strip() for c in row.strip("|").split("|"))
        k = int(k)
        holders, need = cfg.holders(k), cfg.shares_needed(k)
        params = MaskScheme(cfg).round_params(RoundSpec(run_id="r", round_id=0, clients=client_ids(k), dim=1))
        assert (int(n), int(t)) == (holders, need) == (params.graph.degree + 1, params.threshold), row
        assert graph == ("complete" if holders == k else f"SecAgg+, degree {holders - 1}"), row
        assert int(tol) == cfg.tolerated_colluders(k) == tolerated_colluders(holders, need), row
        assert int(surv.split()[0]) == MaskScheme(cfg).min_survivors(k) == need, row
        assert int(drop.split()[0]) == MaskScheme(cfg).dropout_tolerance(k) == holders - need, row
        assert int(old) == threshold_for(holders, 0.5), row  # the strict majority used before
