"""The mask scheme: exact sums under dropout, signatures, thresholds, share discipline, stages, transcripts."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare
from secagg_support import RecordingServer, Stepper, repack, setup_round, split_envelope

from privspk.errors import AggregationError, ConfigError, ProtocolError
from privspk.secagg import RoundSpec, build_scheme, shamir
from privspk.secagg.keys import IdentityKey, advert_message
from privspk.secagg.mask import MaskConfig, MaskScheme, RoundParams, Stage
from privspk.secagg.mask_protocol import REQUEST_FIELDS, REPLY_FIELDS, message
from privspk.secagg.simulate import run_round
from privspk.secagg.wire import pack

STAGES = list(Stage.ORDER[:-1])
SUMMED_AT = STAGES.index(Stage.COLLECT)  # silent from advertise/share/collect: not in the sum


def integer_round(k: int, dim: int, seed: int, *, options: dict | None = None, round_id: int = 0):
    scheme, spec, eps = setup_round("mask", k, dim, options=options, seed=seed, round_id=round_id)
    q = scheme.quantiser(k)
    rng = np.random.default_rng(seed)
    limit = (1 << (q.bits - 1 + q.headroom_bits)) - 1
    codes = {c: rng.integers(-limit, limit, dim, endpoint=True) for c in spec.clients}
    for c in spec.clients:
        eps[c].submit_integers(round_id, codes[c])
    return scheme, spec, eps, codes


def exact_total(scheme: MaskScheme, k: int, total: np.ndarray) -> np.ndarray:
    return np.rint(total * scheme.quantiser(k).scale).astype(np.int64)


# -- sums ------------------------------------------------------------------------------------


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(k=st.integers(3, 20), dim=st.integers(1, 6), seed=st.integers(0, 2**31),
       bits=st.sampled_from([16, "auto", 9]), data=st.data())
def test_integer_sums_are_exact_under_random_dropouts(k, dim, seed, bits, data) -> None:
    scheme, spec, eps, codes = integer_round(k, dim, seed, options={"bits": bits})
    tol = scheme.dropout_tolerance(k)
    gone = data.draw(st.lists(st.sampled_from(spec.clients), max_size=tol, unique=True))
    silent = {c: data.draw(st.sampled_from(STAGES)) for c in gone}
    res = run_round(scheme, spec, eps, silent=silent)
    summed = [c for c in spec.clients if c not in silent or STAGES.index(silent[c]) > SUMMED_AT]
    assert list(res.included) == summed
    assert set(res.dropped) == set(spec.clients) - set(summed)
    assert exact_total(scheme, k, res.total).tolist() == sum(codes[c] for c in summed).tolist()


def test_float_sums_within_stated_tolerance() -> None:
    scheme, spec, eps = setup_round("mask", 7, 300, options={"clip": 0.5, "bits": 10}, seed=3)
    rng = np.random.default_rng(3)
    xs = {c: rng.uniform(-0.8, 0.8, 300) for c in spec.clients}  # some beyond the clip
    for c in spec.clients:
        eps[c].submit(0, xs[c])
    res = run_round(scheme, spec, eps, silent={"c02": "share", "c05": "unmask"})
    want = sum(np.clip(xs[c], -0.5, 0.5) for c in res.included)
    err = np.abs(res.total - want).max()
    assert err <= scheme.sum_tolerance(len(res.included), bound=0.5)
    assert err > 0  # quantisation is really there: the tolerance is not vacuous


def test_sparse_graph_round_costs_grow_with_degree_not_k() -> None:
    scheme, spec, eps, codes = integer_round(40, 8, 1)
    params = scheme.round_params(spec)
    assert params.graph.degree == 12 and params.threshold == 8  # 13 holders, 2t - n = 3 > 1 colluder
    rec = RecordingServer(scheme.server_round(spec))
    res = run_round(scheme, spec, eps, silent={"c05": "collect", "c17": "unmask"}, server=rec)
    assert exact_total(scheme, 40, res.total).tolist() == sum(codes[c] for c in res.included).tolist()
    share_req = max(len(b) for st_, _, b in rec.requests if st_ == Stage.SHARE)
    assert share_req < 13 * 170 + 400  # the neighbours' adverts only, not all 39 others


@pytest.mark.parametrize("stage", [Stage.SHARE, Stage.COLLECT, Stage.UNMASK])
def test_sparse_graph_worst_case_dropouts(stage: str) -> None:
    """K = 20 (degree 10, 11 holders, t = 7 for one colluder): n - t = 4 dropouts inside one
    neighbourhood are survived; with 5 the round fails cleanly at any stage. (t was 6, tolerating 5,
    before the colluder bound 2t - n > 1; then 6 dropouts at share left c00 out and the rest opened.)"""
    scheme, spec, eps, codes = integer_round(20, 3, 25)
    params = scheme.round_params(spec)
    assert (params.graph.degree, params.threshold, scheme.dropout_tolerance(20)) == (10, 7, 4)
    around = list(params.graph.neighbours("c00"))
    res = run_round(scheme, spec, eps, silent={c: stage for c in around[:4]})
    assert exact_total(scheme, 20, res.total).tolist() == sum(codes[c] for c in res.included).tolist()
    scheme, spec, eps, codes = integer_round(20, 3, 26)
    around = list(scheme.round_params(spec).graph.neighbours("c00"))
    silent = {c: stage for c in around[:5]}
    # At share the server first drops c00 (6 of 11 left, t = 7), and then its ring neighbours, who
    # lose c00 and most of the same five: the pruning runs through the ring and nothing is opened.
    with pytest.raises(AggregationError, match="nothing opened"):
        run_round(scheme, spec, eps, silent=silent)


def test_noise_headroom_carries_bigger_codes_without_wrap() -> None:
    opts = {"bits": 8, "noise_headroom_bits": 5}
    scheme, spec, eps, codes = integer_round(6, 16, 4, options=opts)
    q = scheme.quantiser(6)
    assert max(int(np.abs(c).max()) for c in codes.values()) > q.levels  # beyond the value range
    res = run_round(scheme, spec, eps)
    assert exact_total(scheme, 6, res.total).tolist() == sum(codes.values()).tolist()


def test_codes_beyond_the_headroom_make_the_client_drop_out() -> None:
    scheme, spec, eps, codes = integer_round(4, 3, 0, options={"bits": 8})
    eps["c01"].submit_integers(0, np.array([0, 128, 0]))  # |code| > 127
    res = run_round(scheme, spec, eps)
    assert "c01" not in res.included
    assert exact_total(scheme, 4, res.total).tolist() == sum(codes[c] for c in res.included).tolist()


# -- options and parameters ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"clip": 0}, "clip must be a positive finite"),
        ({"clip": True}, "clip must be a positive finite"),
        ({"bits": 1}, "bits must be an int in"),
        ({"bits": "16"}, "bits must be an int in"),
        ({"threshold": 0.49}, "strict majority"),
        ({"threshold": 1.0}, "threshold must be a float"),
        ({"degree": 1}, "degree must be None or an int >= 2"),
        ({"noise_headroom_bits": -1}, "noise_headroom_bits"),
        ({"treshold": 0.5}, "unknown option"),
    ],
)
def test_bad_options_are_refused(options: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_scheme("mask", options)


def test_auto_bits_uses_uint16_words_up_to_16_clients() -> None:
    cfg = MaskConfig(bits="auto")
    for k in range(2, 17):
        assert cfg.quantiser(k).dtype is np.uint16
    assert cfg.quantiser(17).dtype is np.uint32 and cfg.quantiser(17).bits == 16
    assert MaskConfig(bits=16).quantiser(2).dtype is np.uint32  # 16-bit values need a 32-bit word for any sum
    assert MaskConfig().bits == "auto"  # the default meets the 2-bytes/param upload target for K <= 16


def test_a_round_needs_two_clients() -> None:
    scheme = build_scheme("mask")
    with pytest.raises(ConfigError, match="at least 2 clients"):
        scheme.server_round(RoundSpec(run_id="r", round_id=0, clients=("a",), dim=1))


def test_digest_binds_everything_public() -> None:
    base = {"run_id": "r", "round_id": 0, "clients": ("a", "b", "c", "d", "e"), "dim": 4}
    d0 = RoundParams.build(MaskConfig(), **base).digest
    for change in ({"run_id": "s"}, {"round_id": 1}, {"clients": ("a", "b", "c", "d", "f")}, {"dim": 5}):
        assert RoundParams.build(MaskConfig(), **{**base, **change}).digest != d0
    others = (MaskConfig(clip=2.0), MaskConfig(bits=12), MaskConfig(threshold=0.85), MaskConfig(noise_headroom_bits=1),
              MaskConfig(colluders=2))
    for cfg in others:
        assert RoundParams.build(cfg, **base).digest != d0
    assert RoundParams.build(MaskConfig(), **{**base, "clients": ("e", "c", "a", "d", "b")}).digest == d0


# -- signatures and keys ---------------------------------------------------------------------


def test_altered_advert_is_rejected_by_the_server() -> None:
    scheme, spec, eps, codes = integer_round(5, 4, 2)
    rec = RecordingServer(scheme.server_round(spec))

    def tamper(who: str, stage: str, blob: bytes) -> bytes:
        if who == "c02" and stage == Stage.ADVERTISE:
            _, body = split_envelope(blob)
            return repack(blob, body=IdentityKey.generate().public_bytes() + body[32:])  # swap c_pk
        return blob

    res = run_round(scheme, spec, eps, tamper=tamper, server=rec)
    [(stage, who, exc)] = rec.rejected
    assert (stage, who, exc.client) == (Stage.ADVERTISE, "c02", "c02")
    assert "bad signature" in exc.reason
    assert "c02" not in res.included and "bad signature" in res.dropped["c02"]
    assert exact_total(scheme, 5, res.total).tolist() == sum(codes[c] for c in res.included).tolist()


def test_server_cannot_substitute_a_peer_key() -> None:
    """A server that swaps in its own keys (signed with its own identity) is caught by the client."""
    scheme, spec, eps, _ = integer_round(4, 2, 5)
    stepper = Stepper(scheme, spec, eps)
    stepper.run_to(Stage.SHARE)
    request = stepper.server.outbox()["c00"]
    header, body = split_envelope(request)
    assert header["peers"][0] == "c01"
    params = scheme.round_params(spec)
    evil = IdentityKey.generate()
    c_pk, s_pk, commit = IdentityKey.generate().public_bytes(), body[32:64], body[64:96]
    forged = c_pk + s_pk + commit + evil.sign(advert_message(params.digest, "c01", c_pk, s_pk, commit))
    with pytest.raises(ProtocolError, match="bad signature") as e:
        eps["c00"].handle(repack(request, body=forged + body[160:]))
    assert e.value.client == "c01"


def test_reused_round_keys_are_refused() -> None:
    """A registered client that advertises another client's keys under its own signature."""
    scheme, spec, eps, _ = integer_round(4, 2, 6)
    rec = RecordingServer(scheme.server_round(spec))
    params = scheme.round_params(spec)
    copied: dict[str, bytes] = {}

    def tamper(who: str, stage: str, blob: bytes) -> bytes:
        if stage != Stage.ADVERTISE:
            return blob
        _, body = split_envelope(blob)
        if who == "c00":
            copied["keys"] = body[:96]
            return blob
        if who == "c03":
            c_pk, s_pk, commit = copied["keys"][:32], copied["keys"][32:64], body[64:96]
            sig = eps["c03"]._identity.sign(advert_message(params.digest, "c03", c_pk, s_pk, commit))
            return repack(blob, body=c_pk + s_pk + commit + sig)
        return blob

    res = run_round(scheme, spec, eps, tamper=tamper, server=rec)
    assert [(w, "already used" in e.reason) for _, w, e in rec.rejected] == [("c03", True)]
    assert res.included == ("c00", "c01", "c02")


def test_degenerate_x25519_key_is_refused_at_the_door() -> None:
    scheme, spec, eps, _ = integer_round(4, 2, 7)
    rec = RecordingServer(scheme.server_round(spec))
    params = scheme.round_params(spec)

    def tamper(who: str, stage: str, blob: bytes) -> bytes:
        if who == "c01" and stage == Stage.ADVERTISE:
            _, body = split_envelope(blob)
            c_pk, s_pk, commit = bytes(32), body[32:64], body[64:96]
            sig = eps["c01"]._identity.sign(advert_message(params.digest, "c01", c_pk, s_pk, commit))
            return repack(blob, body=c_pk + s_pk + commit + sig)
        return blob

    res = run_round(scheme, spec, eps, tamper=tamper, server=rec)
    assert "unusable X25519" in rec.rejected[0][2].reason and res.included == ("c00", "c02", "c03")


# -- thresholds: clean failure, exactly t, nothing opened ---------------------------------------


@pytest.fixture
def combine_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = shamir._combine_block

    def spy(parts):  # noqa: ANN001
        calls.append(len(parts))
        return real(parts)

    monkeypatch.setattr(shamir, "_combine_block", spy)
    return calls


@pytest.mark.parametrize("stage", STAGES)
def test_below_threshold_fails_cleanly_and_opens_nothing(stage: str, combine_calls: list[int]) -> None:
    scheme, spec, eps, _ = integer_round(5, 3, 8)
    assert scheme.min_survivors(5) == 4  # 3 before the colluder bound 2t - n > 1
    server = scheme.server_round(spec)
    with pytest.raises(AggregationError, match="nothing opened"):
        run_round(scheme, spec, eps, silent={"c00": stage, "c02": stage, "c04": STAGES[-1]}, server=server)
    assert combine_calls == []  # not one secret rebuilt
    with pytest.raises(AggregationError, match="round not finished"):
        server.result()


def test_reconstruction_uses_exactly_t_shares(combine_calls: list[int]) -> None:
    scheme, spec, eps, codes = integer_round(9, 3, 9)
    t = scheme.round_params(spec).threshold
    res = run_round(scheme, spec, eps, silent={"c01": "collect", "c04": "collect"})
    # 7 survivors' seeds (1 block each) + 2 dropped s keys (2 blocks each)
    assert combine_calls == [t] * (7 + 2 * 2)
    assert exact_total(scheme, 9, res.total).tolist() == sum(codes[c] for c in res.included).tolist()


def test_corrupted_share_is_caught_by_the_commitment() -> None:
    scheme, spec, eps, _ = integer_round(4, 2, 10)

    def tamper(who: str, stage: str, blob: bytes) -> bytes:
        if who == "c00" and stage == Stage.UNMASK:
            _, body = split_envelope(blob)
            return repack(blob, body=bytes([body[0] ^ 1]) + body[1:])  # c00's share of c00's seed
        return blob

    with pytest.raises(AggregationError, match="does not match its commitment"):
        run_round(scheme, spec, eps, tamper=tamper)


# -- the server never gets both secrets of one client ------------------------------------------


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(k=st.integers(3, 12), seed=st.integers(0, 2**31), data=st.data())
def test_server_never_receives_both_shares_of_a_client(k: int, seed: int, data: st.DataObject) -> None:
    scheme, spec, eps, _ = integer_round(k, 2, seed)
    gone = data.draw(st.lists(st.sampled_from(spec.clients), max_size=scheme.dropout_tolerance(k), unique=True))
    silent = {c: data.draw(st.sampled_from(STAGES)) for c in gone}
    rec = RecordingServer(scheme.server_round(spec))
    run_round(scheme, spec, eps, silent=silent, server=rec)
    seeds_of, keys_of = set(), set()
    for stage, _, blob in rec.received:
        if stage == Stage.UNMASK:
            header, _ = split_envelope(blob)
            seeds_of.update(header["b_of"])
            keys_of.update(header["s_of"])
    assert not seeds_of & keys_of
    assert seeds_of  # the test looked at real unmask traffic


def unmask_setup(k: int = 5, *, options: dict | None = None, silent: dict | None = None, seed: int = 11):
    scheme, spec, eps, _ = integer_round(k, 2, seed, options=options)
    stepper = Stepper(scheme, spec, eps, silent=silent)
    stepper.run_to(Stage.UNMASK)
    return scheme, spec, eps, stepper


def test_client_refuses_to_reveal_both_shares_of_one_client() -> None:
    _, _, eps, stepper = unmask_setup()
    request = stepper.server.outbox()["c01"]
    with pytest.raises(ProtocolError, match=r"\['c03'\] listed as both survivor and dropped") as e:
        eps["c01"].handle(repack(request, changes={"dropped": ["c03"]}))
    assert e.value.client == "server"


def test_client_refuses_questions_about_non_neighbours() -> None:
    opts = {"degree": 4}
    scheme, spec, eps, _ = integer_round(12, 2, 12, options=opts)
    g = scheme.round_params(spec).graph
    victim = "c00"
    stranger = next(c for c in spec.clients if c not in g.closed(victim))
    stepper = Stepper(scheme, spec, eps, silent={stranger: Stage.COLLECT})
    stepper.run_to(Stage.UNMASK)
    with pytest.raises(ProtocolError, match=rf"\['{stranger}'\], which are not neighbours"):
        eps[victim].handle(repack(stepper.server.outbox()[victim], changes={"dropped": [stranger]}))


def test_client_refuses_questions_about_clients_it_holds_nothing_of() -> None:
    _, _, eps, stepper = unmask_setup(silent={"c04": Stage.SHARE})
    with pytest.raises(ProtocolError, match=r"\['c04'\], whose shares this client never received"):
        eps["c00"].handle(repack(stepper.server.outbox()["c00"], changes={"dropped": ["c04"]}))


def test_client_refuses_another_survivor_set_than_it_confirmed() -> None:
    _, _, eps, stepper = unmask_setup()
    with pytest.raises(ProtocolError, match="differs from the one this client confirmed"):
        eps["c00"].handle(repack(stepper.server.outbox()["c00"], changes={"survivors": ["c00", "c01", "c02"]}))


def test_client_refuses_with_too_few_confirmations() -> None:
    _, _, eps, stepper = unmask_setup()
    request = stepper.server.outbox()["c00"]
    header, body = split_envelope(request)
    assert header["signers"] == ["c00", "c01", "c02", "c03", "c04"]
    with pytest.raises(ProtocolError, match="only 2 neighbours confirmed"):
        eps["c00"].handle(repack(request, changes={"signers": ["c00", "c01"]}, body=body[:128]))


def test_client_refuses_a_forged_confirmation() -> None:
    _, _, eps, stepper = unmask_setup()
    request = stepper.server.outbox()["c00"]
    _, body = split_envelope(request)
    forged = body[:64] + IdentityKey.generate().sign(b"anything") + body[128:]
    with pytest.raises(ProtocolError, match="bad signature") as e:
        eps["c00"].handle(repack(request, body=forged))
    assert e.value.client == "c01"


def test_client_refuses_when_too_few_neighbours_survived() -> None:
    scheme, spec, eps, _ = integer_round(5, 2, 13)
    stepper = Stepper(scheme, spec, eps)
    stepper.run_to(Stage.CONFIRM)
    small = ["c00", "c01"]  # below t = 4
    eps["c00"].handle(repack(stepper.server.outbox()["c00"], changes={"survivors": small}))
    unmask = message(run=spec.run_id, round_id=0, stage=Stage.UNMASK, sender="server",
                     fields={"survivors": small, "shared": list(spec.clients), "dropped": [], "signers": []})
    with pytest.raises(ProtocolError, match="only 2 of its neighbourhood survived"):
        eps["c00"].handle(unmask)


def test_split_view_attack_is_stopped_by_the_consistency_check() -> None:
    """A server shows c03, c04 a survivor set without c00 and the others the true one, hoping to collect
    c00's seed shares from the first group and its s-key shares from the second."""
    scheme, spec, eps, _ = integer_round(5, 2, 14)
    stepper = Stepper(scheme, spec, eps)
    stepper.run_to(Stage.CONFIRM)
    fake = ["c01", "c02", "c03", "c04"]
    sigs = {}
    for c in ("c03", "c04"):
        reply = eps[c].handle(repack(stepper.server.outbox()[c], changes={"survivors": fake}))
        sigs[c] = split_envelope(reply)[1]
    for c in ("c00", "c01", "c02"):  # the honest three confirm the true set
        eps[c].handle(stepper.server.outbox()[c])
    forged = message(run=spec.run_id, round_id=0, stage=Stage.UNMASK, sender="server",
                     fields={"survivors": fake, "shared": list(spec.clients), "dropped": ["c00"],
                             "signers": ["c03", "c04"]},
                     body=sigs["c03"] + sigs["c04"])
    for c in ("c03", "c04"):
        with pytest.raises(ProtocolError, match="only 2 neighbours confirmed"):
            eps[c].handle(forged)  # no s-key share of c00 leaves them


# -- stages --------------------------------------------------------------------------------------

PLAUSIBLE = {
    Stage.ADVERTISE: {"clients": ["c00", "c01", "c02"], "dim": 2},
    Stage.SHARE: {"peers": ["c01", "c02"]},
    Stage.COLLECT: {"senders": ["c01", "c02"]},
    Stage.CONFIRM: {"survivors": ["c00", "c01", "c02"], "shared": ["c00", "c01", "c02"]},
    Stage.UNMASK: {"survivors": ["c00", "c01", "c02"], "shared": ["c00", "c01", "c02"], "dropped": [],
                   "signers": ["c00", "c01", "c02"]},
}


@pytest.mark.parametrize(("current", "requested"), list(itertools.product([None, *STAGES], STAGES)))
def test_stage_transition_table(current: str | None, requested: str) -> None:
    """Every (last answered, requested) pair: only the next stage is answered, everything else refused."""
    scheme, spec, eps, _ = integer_round(3, 2, 15)
    stepper = Stepper(scheme, spec, eps)
    nxt = Stage.after(current)
    if nxt != Stage.DONE:
        stepper.run_to(nxt)
    else:
        stepper.finish()
    if requested == nxt:
        reply = eps["c00"].handle(stepper.server.outbox()["c00"])
        assert split_envelope(reply)[0]["stage"] == requested
        return
    forged = message(run=spec.run_id, round_id=0, stage=requested, sender="server", fields=PLAUSIBLE[requested])
    with pytest.raises(ProtocolError, match="out of order") as e:
        eps["c00"].handle(forged)
    assert e.value.client == "server"


def test_a_round_id_is_never_started_twice() -> None:
    scheme, spec, eps, _ = integer_round(3, 2, 16)
    stepper = Stepper(scheme, spec, eps)
    advertise = stepper.server.outbox()["c00"]
    stepper.finish()
    eps["c00"].submit_integers(0, np.array([1, 2]))
    with pytest.raises(ProtocolError, match="out of order"):
        eps["c00"].handle(advertise)  # a replayed round start would mask the same update twice


def test_refusal_ends_the_clients_round() -> None:
    scheme, spec, eps, _ = integer_round(3, 2, 17)
    stepper = Stepper(scheme, spec, eps)
    stepper.run_to(Stage.SHARE)
    good = stepper.server.outbox()["c00"]
    with pytest.raises(ProtocolError):
        eps["c00"].handle(repack(good, changes={"peers": ["c01"]}))  # adverts no longer match
    with pytest.raises(ProtocolError, match="out of order"):
        eps["c00"].handle(good)


WRONG = [True, 3, 2.5, "c01", None, {"a": 1}, ["c01", 2]]


def _wrong_values(typ: type) -> list[object]:
    return [w for w in WRONG if type(w) is not typ]


@pytest.mark.parametrize(
    ("stage", "field", "wrong"),
    [(s, f, w) for s, fields in REQUEST_FIELDS.items() for f, t in fields.items() for w in _wrong_values(t)],
)
def test_client_checks_each_request_field_type(stage: str, field: str, wrong: object) -> None:
    scheme, spec, eps, _ = integer_round(3, 2, 18)
    stepper = Stepper(scheme, spec, eps)
    stepper.run_to(stage)
    bad = repack(stepper.server.outbox()["c00"], changes={field: wrong})
    with pytest.raises(ProtocolError, match=f"field '{field}' must be") as e:
        eps["c00"].handle(bad)
    assert e.value.client == "server"


@pytest.mark.parametrize("stage", STAGES)
def test_client_refuses_missing_and_extra_fields(stage: str) -> None:
    scheme, spec, eps, _ = integer_round(3, 2, 19)
    stepper = Stepper(scheme, spec, eps)
    stepper.run_to(stage)
    with pytest.raises(ProtocolError, match=r"unexpected header field\(s\) \['note'\]"):
        eps["c00"].handle(repack(stepper.server.outbox()["c00"], changes={"note": 1}))
    scheme, spec, eps, _ = integer_round(3, 2, 20)  # c00 left the first round: a fresh one
    stepper = Stepper(scheme, spec, eps)
    stepper.run_to(stage)
    header, body = split_envelope(stepper.server.outbox()["c00"])
    field = next(iter(REQUEST_FIELDS[stage]))
    for key in ("body_len", "body_sha256", field):
        header.pop(key)
    with pytest.raises(ProtocolError, match=f"missing field '{field}'"):
        eps["c00"].handle(pack(header, body))


@pytest.mark.parametrize(
    ("stage", "field", "wrong"),
    [(s, f, w) for s, fields in REPLY_FIELDS.items() for f, t in fields.items() for w in _wrong_values(t)],
)
def test_server_checks_each_reply_field_type(stage: str, field: str, wrong: object) -> None:
    scheme, spec, eps, codes = integer_round(4, 2, 21)
    rec = RecordingServer(scheme.server_round(spec))
    res = run_round(scheme, spec, eps, server=rec,
                    tamper=lambda who, st_, blob: repack(blob, changes={field: wrong})
                    if (who, st_) == ("c02", stage) else blob)
    [(_, who, exc)] = rec.rejected
    assert who == exc.client == "c02" and f"field '{field}' must be" in exc.reason
    assert exact_total(scheme, 4, res.total).tolist() == sum(codes[c] for c in res.included).tolist()


@pytest.mark.parametrize("stage", STAGES)
def test_old_round_replies_are_refused_as_replays(stage: str) -> None:
    scheme, spec0, eps, _ = integer_round(4, 2, 22)
    rec0 = RecordingServer(scheme.server_round(spec0))
    run_round(scheme, spec0, eps, server=rec0)
    old = {(st_, who): blob for st_, who, blob in rec0.received}
    spec1 = RoundSpec(run_id=spec0.run_id, round_id=1, clients=spec0.clients, dim=2)
    for c in spec1.clients:
        eps[c].submit_integers(1, np.array([1, -1]))
    rec1 = RecordingServer(scheme.server_round(spec1))
    res = run_round(scheme, spec1, eps, server=rec1,
                    tamper=lambda who, st_, blob: old[(st_, who)] if (who, st_) == ("c01", stage) else blob)
    [(_, who, exc)] = rec1.rejected
    assert who == "c01" and "replayed or stale" in exc.reason
    assert res.total.size == 2 and ("c01" in res.included) == (STAGES.index(stage) > SUMMED_AT)


# -- what the server sees -------------------------------------------------------------------------


def test_masked_vectors_look_uniform_and_hide_the_update() -> None:
    """Everything the server receives from one client: the masked vector of an all-zero update is
    indistinguishable from uniform words (chi-square), the other messages are keys, sealed boxes,
    signatures and shares."""
    k, dim = 4, 1 << 13
    scheme, spec, eps = setup_round("mask", k, dim, options={"bits": 12}, seed=23)
    for c in spec.clients:
        eps[c].submit(0, np.zeros(dim))  # the most structured update there is
    rec = RecordingServer(scheme.server_round(spec))
    res = run_round(scheme, spec, eps, server=rec)
    assert np.abs(res.total).max() == 0.0
    masked = [split_envelope(b)[1] for s, _, b in rec.received if s == Stage.COLLECT]
    assert len(masked) == k
    for body in masked:
        words = np.frombuffer(body, dtype="<u2")
        for values in (words & 0xFF, words >> 8):
            assert chisquare(np.bincount(values.astype(np.int64), minlength=256)).pvalue > 1e-6
    # The same check fails on an unmasked quantised update: it can tell.
    plain_words = scheme.quantiser(k).encode(np.full(dim, 0.3), rng=np.random.default_rng(0))
    assert chisquare(np.bincount((plain_words & 0xFF).astype(np.int64), minlength=256)).pvalue < 1e-6


def test_server_state_never_holds_client_secrets() -> None:
    scheme, spec, eps, _ = integer_round(5, 2, 24)
    stepper = Stepper(scheme, spec, eps, silent={"c03": Stage.COLLECT})
    secrets: list[bytes] = []

    def harvest() -> None:
        for ep in eps.values():
            for state in ep._rounds.values():
                for key in (state.c_key, state.s_key):
                    if key is not None:
                        secrets.append(key.secret_bytes())
                if state.seed is not None:
                    secrets.append(state.seed)

    def server_bytes(obj: object, depth: int = 0) -> list[bytes]:
        if depth > 6:
            return []
        if isinstance(obj, (bytes, bytearray)):
            return [bytes(obj)]
        if isinstance(obj, np.ndarray):
            return [obj.tobytes()]
        if isinstance(obj, dict):
            return [b for kv in obj.items() for x in kv for b in server_bytes(x, depth + 1)]
        if isinstance(obj, (list, tuple, set, frozenset)):
            return [b for x in obj for b in server_bytes(x, depth + 1)]
        if hasattr(obj, "__dict__") and not isinstance(obj, type):
            return server_bytes(vars(obj), depth + 1)
        return []

    more = True
    while more:
        harvest()
        more = stepper.step()
        blob = b"|".join(server_bytes(stepper.server))
        assert not any(s in blob for s in secrets)
    assert len(set(secrets)) == 5 * 3  # c, s keys and seed of each client were all checked

