"""A malicious server plus colluding clients against real ``mask`` endpoints (issue 19, findings 5 and 6b).

Each test runs one attack with :class:`mask_attack.Attack` (real :class:`MaskClient` objects,
crafted server requests, colluders whose secrets the attacker reads) and checks that no honest
client's update comes out on its own. The attack code is checked to open an update exactly when
it does hold the keys (``test_the_attack_opens_an_update_exactly_given_its_keys``), so an empty
result means missing keys, not a broken attack.
"""

from __future__ import annotations

import hashlib

from mask_attack import Attack

from privspk.secagg.graph import _ring_order
from privspk.secagg.keys import RoundKeyPair
from privspk.secagg.mask_protocol import Stage


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
    assert set(attack.refused) == {"c00", "c01"}


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
