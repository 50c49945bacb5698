"""One suite for every registered aggregation scheme (plain, mask, and the HE schemes once registered).

Each scheme states its own contract through the :class:`~privspk.secagg.Scheme` hooks
``sum_tolerance``, ``min_survivors`` and ``dropout_tolerance``; this suite holds it
to them: sums against numpy under random dropouts, clean failure below the
threshold, a server transcript that shows no update, and hundreds of malformed
replies, each rejected naming its sender while the round still completes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from secagg_support import RecordingServer, client_ids, random_updates, repack, setup_round, split_envelope

from privspk.errors import AggregationError, ConfigError, ProtocolError
from privspk.secagg import KEYHOLDER, RoundSpec, Scheme, scheme_names
from privspk.secagg.simulate import run_round

NAMES = scheme_names()
CHEAP = {"plain", "mask"}  # unknown (HE) schemes get fewer hypothesis examples in the default suite


def budget(name: str, cheap: int, costly: int) -> settings:
    """Hypothesis settings: ``cheap`` examples for plain/mask, ``costly`` for heavier schemes."""
    return settings(max_examples=cheap if name in CHEAP else costly, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@functools.cache
def _dry_run(name: str) -> tuple[tuple[str, ...], str]:
    scheme, spec, eps = setup_round(name, 3, 512, seed=0, run_id="dry-run")
    for c, x in random_updates(spec, 0).items():
        eps[c].submit(spec.round_id, x)
    rec = RecordingServer(scheme.server_round(spec))
    run_round(scheme, spec, eps, server=rec)
    sizes: dict[str, int] = {}
    for stage, sender, blob in rec.received:
        if sender != KEYHOLDER:
            sizes[stage] = max(sizes.get(stage, 0), len(blob))
    return tuple(sizes), max(sizes, key=sizes.__getitem__)


def client_stages(name: str) -> tuple[str, ...]:
    """Stages at which clients (not the key holder) reply, in order, from one honest round."""
    return _dry_run(name)[0]


def stages_until_update(name: str) -> tuple[str, ...]:
    """Client stages up to the one that carries the update (its reply grows with the dimension).

    A client silent from one of these never contributes; later stages differ between schemes
    (mask needs t answers to unmask, HE forwards a silent client's ciphertext)."""
    stages, update = _dry_run(name)
    return stages[: stages.index(update) + 1]


def submit_all(eps: dict, spec: RoundSpec, updates: dict[str, np.ndarray]) -> None:
    for c in spec.clients:
        eps[c].submit(spec.round_id, updates[c])


def assert_sum(scheme: Scheme, res, updates: dict[str, np.ndarray], *, bound: float = 1.0) -> None:
    inc = list(res.included)
    assert inc, "a finished round includes at least one client"
    want = np.sum([updates[c] for c in inc], axis=0)
    err = float(np.abs(np.asarray(res.total, dtype=np.float64) - want).max())
    # the resolution is set by the round's size (all announced clients), whoever is finally included
    assert err <= scheme.sum_tolerance(len(updates), bound=bound) + 1e-12, f"error {err} beyond the stated tolerance"


# -- sums and dropouts -------------------------------------------------------------------------


def can_run(scheme: Scheme, k: int) -> bool:
    """Whether ``scheme`` runs rounds of ``k`` clients (mask refuses rounds too small for its collusion bound)."""
    try:
        scheme.min_survivors(k)
    except ConfigError:
        return False
    return True


def check_sums(name: str, examples: settings) -> None:
    stages = client_stages(name)

    @examples
    @given(k=st.integers(2, 20), dim=st.integers(1, 6), seed=st.integers(0, 2**31), data=st.data())
    def check(k: int, dim: int, seed: int, data: st.DataObject) -> None:
        scheme, spec, eps = setup_round(name, k, dim, seed=seed)
        assume(can_run(scheme, k))
        updates = random_updates(spec, seed)
        submit_all(eps, spec, updates)
        gone = data.draw(st.lists(st.sampled_from(spec.clients), max_size=scheme.dropout_tolerance(k), unique=True))
        silent = {c: data.draw(st.sampled_from(stages)) for c in gone}
        res = run_round(scheme, spec, eps, silent=silent)
        assert set(res.included) >= set(spec.clients) - set(silent)
        assert set(res.included).isdisjoint(res.dropped)
        assert set(res.included) | set(res.dropped) == set(spec.clients)
        assert all(isinstance(r, str) and r for r in res.dropped.values())
        assert res.total.shape == (dim,)
        assert_sum(scheme, res, updates)

    check()


@pytest.mark.parametrize("name", NAMES)
def test_sums_match_numpy_under_random_dropouts(name: str) -> None:
    check_sums(name, budget(name, 10, 3))


@pytest.mark.parametrize("name", NAMES)
def test_below_threshold_the_round_fails_cleanly(name: str) -> None:
    stages = stages_until_update(name)

    @budget(name, 8, 2)
    @given(k=st.integers(2, 12), seed=st.integers(0, 2**31), data=st.data())
    def check(k: int, seed: int, data: st.DataObject) -> None:
        scheme, spec, eps = setup_round(name, k, 3, seed=seed)
        assume(can_run(scheme, k))
        submit_all(eps, spec, random_updates(spec, seed))
        n_gone = k - scheme.min_survivors(k) + 1
        gone = data.draw(st.lists(st.sampled_from(spec.clients), min_size=n_gone, max_size=n_gone, unique=True))
        silent = {c: data.draw(st.sampled_from(stages)) for c in gone}
        server = scheme.server_round(spec)
        with pytest.raises(AggregationError):
            run_round(scheme, spec, eps, silent=silent, server=server)
        with pytest.raises(AggregationError):
            server.result()  # nothing was opened

    check()


# -- the server's transcript -------------------------------------------------------------------


def leaked_encodings(updates: np.ndarray, scheme: Scheme, k: int) -> list[bytes]:
    """Byte patterns that would give the update away: 4-value windows of its float32 and float64
    encodings and, for quantising schemes, 8-word windows of its quantised words."""
    pats = []
    for dt, w in (("<f4", 4), ("<f8", 4)):
        raw = updates.astype(dt).tobytes()
        size = np.dtype(dt).itemsize * w
        pats += [raw[i : i + size] for i in range(0, len(raw) - size + 1, size)]
    if hasattr(scheme, "quantiser"):
        q = scheme.quantiser(k)
        raw = q.words_to_bytes(q.wrap(np.rint(updates * q.scale).astype(np.int64)))
        size = 8 * q.bytes_per_value
        pats += [raw[i : i + size] for i in range(0, len(raw) - size + 1, size)]
    return pats


def on_grid_updates(scheme: Scheme, spec: RoundSpec, seed: int) -> dict[str, np.ndarray]:
    """Random updates that a quantiser maps to known integers (so a leak of the words is searchable)."""
    ups = random_updates(spec, seed, bound=0.9)
    if not hasattr(scheme, "quantiser"):
        return ups
    q = scheme.quantiser(len(spec.clients))
    return {c: np.rint(x * q.scale) / q.scale for c, x in ups.items()}


@pytest.mark.parametrize("name", NAMES)
def test_server_transcript_shows_no_update(name: str) -> None:
    """Everything the server receives in a round, searched for each client's update."""
    k, dim = 4, 64
    scheme, spec, eps = setup_round(name, k, dim, seed=5)
    updates = on_grid_updates(scheme, spec, 5)
    submit_all(eps, spec, updates)
    rec = RecordingServer(scheme.server_round(spec))
    res = run_round(scheme, spec, eps, server=rec)
    assert_sum(scheme, res, updates)
    transcript = b"".join(blob for _, _, blob in rec.received)
    found = {c: sum(p in transcript for p in leaked_encodings(updates[c], scheme, k)) for c in spec.clients}
    if name == "plain":
        # Negative control: plain sends updates in the clear, and the detector sees them.
        assert all(n > 0 for n in found.values())
    else:
        assert found == {c: 0 for c in spec.clients}


def test_leak_detector_finds_quantised_words() -> None:
    """The detector is able to see a quantised update, not only floats."""
    scheme, spec, _ = setup_round("mask", 4, 64, seed=1)
    x = on_grid_updates(scheme, spec, 1)["c00"]
    q = scheme.quantiser(4)
    words = q.words_to_bytes(q.encode(x, rng=np.random.default_rng(0)))
    assert any(p in b"junk" + words for p in leaked_encodings(x, scheme, 4)[-(64 // 8):])


# -- malformed replies -------------------------------------------------------------------------

MUTATIONS = ("truncate", "extend", "flip", "field", "type", "body", "swap", "duplicate")
WRONG_TYPES = {"scheme": [7, None], "run": [1, ["r"]], "round": ["0", True, 1.0, None], "stage": [0, None],
               "sender": [3, None]}


def at_index(data: st.DataObject, size: int, label: str) -> int:
    """A position below ``size``, drawn so that the draw does not depend on ``size`` (ciphertext
    lengths vary from run to run; hypothesis must replay the same choices)."""
    return data.draw(st.integers(0, 2**24), label=label) % size


def mutate(kind: str, blob: bytes, *, data: st.DataObject, peers: dict[str, bytes], others: tuple[str, ...],
           stages: tuple[str, ...]) -> bytes | None:
    """One malformed version of ``blob`` (``None`` for 'duplicate': the genuine blob is sent twice)."""
    if kind == "truncate":
        return blob[: at_index(data, len(blob), "cut")]
    if kind == "extend":
        return blob + data.draw(st.binary(min_size=1, max_size=40), label="tail")
    if kind == "flip":
        pos = at_index(data, len(blob), "pos")
        return blob[:pos] + bytes([blob[pos] ^ data.draw(st.integers(1, 255), label="xor")]) + blob[pos + 1 :]
    header, body = split_envelope(blob)
    if kind == "field":
        field = data.draw(st.sampled_from(["scheme", "run", "round", "stage", "sender"]), label="field")
        value = {
            "scheme": data.draw(st.sampled_from([n for n in (*NAMES, "other") if n != header["scheme"]])),
            "run": header["run"] + data.draw(st.sampled_from(["x", "-old", "0"])),
            "round": header["round"] + data.draw(st.sampled_from([1, 2, 1000])),
            "stage": data.draw(st.sampled_from([s for s in (*stages, "done", "bogus") if s != header["stage"]])),
            "sender": data.draw(st.sampled_from(others)),
        }[field]
        return repack(blob, changes={field: value})
    if kind == "type":
        field = data.draw(st.sampled_from(sorted(WRONG_TYPES)), label="field")
        return repack(blob, changes={field: data.draw(st.sampled_from(WRONG_TYPES[field]), label="value")})
    if kind == "body":
        if body and data.draw(st.booleans(), label="shorter"):
            return repack(blob, body=body[: at_index(data, len(body), "cut")])
        return repack(blob, body=body + data.draw(st.binary(min_size=1, max_size=40), label="tail"))
    if kind == "swap":
        source = next((peers[o] for o in others if o in peers), None)
        return source if source is not None else repack(blob, changes={"sender": others[0]})
    return None  # duplicate


def check_malformed(name: str, examples: settings) -> None:
    stages = client_stages(name)

    @examples
    @given(k=st.integers(3, 6), dim=st.integers(1, 4), seed=st.integers(0, 2**31), data=st.data(),
           kinds=st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=5))
    def check(k: int, dim: int, seed: int, data: st.DataObject, kinds: list[str]) -> None:
        scheme, spec, eps = setup_round(name, k, dim, seed=seed)
        assume(scheme.dropout_tolerance(k) >= 1)
        updates = random_updates(spec, seed)
        submit_all(eps, spec, updates)
        victim = data.draw(st.sampled_from(spec.clients[1:]), label="victim")
        at = data.draw(st.sampled_from(stages), label="stage")
        others = tuple(c for c in spec.clients if c != victim)
        seen: dict[str, bytes] = {}
        sent_twice = "duplicate" in kinds
        accepted: list[str] = []  # mutations the server took: must stay empty
        tried: list[str] = []

        def intercept(stage: str, sender: str, payload: bytes, deliver: Callable[[bytes], bool]) -> None:
            if stage != at or sender != victim:
                if stage == at:
                    seen[sender] = payload
                deliver(payload)
                return
            for kind in kinds:
                bad = mutate(kind, payload, data=data, peers=seen, others=others, stages=stages)
                if bad is not None and bad != payload:
                    tried.append(kind)
                    if deliver(bad):
                        accepted.append(kind)
            if sent_twice:
                assert deliver(payload), "the genuine reply was refused"
                tried.append("duplicate")
                if deliver(payload):
                    accepted.append("duplicate")

        rec = RecordingServer(scheme.server_round(spec), intercept=intercept)
        res = run_round(scheme, spec, eps, server=rec)
        assert tried and accepted == [], f"server accepted malformed {accepted}"
        assert len(rec.rejected) == len(tried)
        for stage, who, exc in rec.rejected:
            assert (stage, who, exc.client) == (at, victim, victim), exc
            assert isinstance(exc, ProtocolError) and exc.reason
        assert set(res.included) >= set(others)
        if sent_twice:
            assert victim in res.included or victim in res.dropped
        elif victim not in res.included:
            assert res.dropped[victim]
        assert_sum(scheme, res, updates)

    check()


@pytest.mark.parametrize("name", NAMES)
def test_malformed_replies_are_rejected_and_the_round_completes(name: str) -> None:
    check_malformed(name, budget(name, 45, 6))


@pytest.mark.parametrize("name", NAMES)
def test_replayed_replies_from_an_earlier_round_are_rejected(name: str) -> None:
    stages = client_stages(name)
    scheme, spec0, eps = setup_round(name, 4, 3, seed=9, round_id=0)
    submit_all(eps, spec0, random_updates(spec0, 9))
    rec0 = RecordingServer(scheme.server_round(spec0))
    run_round(scheme, spec0, eps, server=rec0)
    old = {(stage, who): blob for stage, who, blob in rec0.received}
    for rid, at in enumerate(stages, start=1):
        spec = RoundSpec(run_id=spec0.run_id, round_id=rid, clients=spec0.clients, dim=3)
        updates = random_updates(spec, rid)
        submit_all(eps, spec, updates)
        rec = RecordingServer(scheme.server_round(spec))
        res = run_round(scheme, spec, eps, server=rec,
                        tamper=lambda who, stage, blob: old[(stage, who)] if (who, stage) == ("c02", at) else blob)
        assert [(s, w, e.client) for s, w, e in rec.rejected] == [(at, "c02", "c02")]
        assert_sum(scheme, res, updates)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_many_more_cases(name: str) -> None:
    """The sum and malformed-reply properties with ten times the cases (``make test-all``)."""
    check_sums(name, budget(name, 100, 15))
    check_malformed(name, budget(name, 450, 30))


def test_suite_covers_the_registered_schemes() -> None:
    assert {"plain", "mask"} <= set(NAMES)
    assert client_stages("mask") == ("advertise", "share", "collect", "confirm", "unmask")
    assert stages_until_update("mask") == ("advertise", "share", "collect")
    assert stages_until_update("plain") == ("collect",)
    assert client_ids(3) == ("c00", "c01", "c02")
