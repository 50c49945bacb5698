"""Tests of privspk.evaluation.trials: Kaldi trial/score files and balanced trial lists."""

from __future__ import annotations

import math
import random
import string
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from privspk.errors import ConfigError
from privspk.evaluation.trials import Score, Trial, make_trials, read_scores, read_trials, write_scores, write_trials

_ids = st.text(alphabet=string.ascii_letters + string.digits + "-_./", min_size=1, max_size=12)
_trials = st.lists(st.builds(Trial, _ids, _ids, st.booleans()), max_size=30)


@given(_trials)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_trials_round_trip(tmp_path, trials):
    path = tmp_path / "sub" / "trials"
    write_trials(path, trials)
    assert read_trials(path) == trials


@given(_trials, st.data())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_scores_round_trip_exactly(tmp_path, trials, data):
    finite = st.floats(allow_nan=False, allow_infinity=False)
    values = data.draw(st.lists(finite, min_size=len(trials), max_size=len(trials)))
    path = tmp_path / "scores"
    write_scores(path, trials, values)
    assert read_scores(path) == [Score(t.enroll, t.test, v) for t, v in zip(trials, values)]


def test_trials_file_format_is_kaldi(tmp_path):
    path = tmp_path / "trials"
    write_trials(path, [Trial("id1/a.wav", "id2/b.wav", False), Trial("x", "y", True)])
    assert path.read_text() == "id1/a.wav id2/b.wav nontarget\nx y target\n"


def test_read_trials_skips_blank_lines_and_accepts_tabs(tmp_path):
    path = tmp_path / "trials"
    path.write_text("a\tb  target\n\n   \nc d nontarget")
    assert read_trials(path) == [Trial("a", "b", True), Trial("c", "d", False)]


@pytest.mark.parametrize(
    "bad_line",
    ["a b", "a b target extra", "a b TARGET", "a b 1", "a b tar get"],
)
def test_malformed_trial_line_names_file_and_line(tmp_path, bad_line):
    path = tmp_path / "trials"
    path.write_text(f"u1 u2 target\n{bad_line}\n")
    with pytest.raises(ConfigError, match=rf"{path.name}:2: expected 'enroll test target\|nontarget'"):
        read_trials(path)


@pytest.mark.parametrize("bad_line", ["a b", "a b nan", "a b inf", "a b x1", "a b 0.1 0.2"])
def test_malformed_score_line_names_file_and_line(tmp_path, bad_line):
    path = tmp_path / "scores"
    path.write_text(f"\nu1 u2 0.5\n{bad_line}\n")
    with pytest.raises(ConfigError, match=rf"{path.name}:3: expected 'enroll test <finite score>'"):
        read_scores(path)


@pytest.mark.parametrize("reader", [read_trials, read_scores])
def test_missing_file(tmp_path, reader):
    with pytest.raises(ConfigError, match="does not exist"):
        reader(tmp_path / "nope")


@pytest.mark.parametrize(("enroll", "test"), [("a b", "c"), ("a", ""), ("a", "b\n"), (3, "b")])
def test_trial_rejects_ids_that_cannot_round_trip(enroll, test):
    with pytest.raises(ConfigError, match="id must be a non-empty string without whitespace"):
        Trial(enroll, test, True)


def test_trial_rejects_non_bool_target():
    with pytest.raises(ConfigError, match="target must be a bool"):
        Trial("a", "b", "target")


def test_write_scores_checks_lengths_and_values(tmp_path):
    trials = [Trial("a", "b", True), Trial("a", "c", False)]
    with pytest.raises(ConfigError, match="need one score per trial: 2 trials"):
        write_scores(tmp_path / "s", trials, [0.1])
    with pytest.raises(ConfigError, match="score 1 is nan"):
        write_scores(tmp_path / "s", trials, [0.1, math.nan])
    with pytest.raises(ConfigError, match="test id must be"):
        write_scores(tmp_path / "s", [("a", "b c")], [0.1])


def test_write_trials_refuses_other_objects(tmp_path):
    with pytest.raises(ConfigError, match="takes Trial objects"):
        write_trials(tmp_path / "t", [("a", "b", True)])


# ------------------------------------------------------------------------------ make_trials


def corpus(n_speakers: int, n_utts: int) -> dict[str, str]:
    return {f"s{s:02d}-u{u:02d}": f"s{s:02d}" for s in range(n_speakers) for u in range(n_utts)}


def check_invariants(trials, utt2spk, n_target, n_nontarget):
    pairs = [frozenset((t.enroll, t.test)) for t in trials]
    assert all(t.enroll != t.test for t in trials), "self-pair"
    assert len(set(pairs)) == len(pairs), "duplicate pair"
    for t in trials:
        assert t.target == (utt2spk[t.enroll] == utt2spk[t.test])
    per_enroll = Counter((t.enroll, t.target) for t in trials)
    assert all(c <= (n_target if target else n_nontarget) for (_, target), c in per_enroll.items())


@given(
    st.dictionaries(_ids, st.sampled_from(["A", "B", "C", "D", "E"]), min_size=2, max_size=25),
    st.integers(0, 4),
    st.integers(0, 4),
    st.integers(0, 2**32 - 1),
)
@settings(max_examples=100, deadline=None)
def test_make_trials_invariants(utt2spk, n_target, n_nontarget, seed):
    speakers = set(utt2spk.values())
    has_pair = any(c >= 2 for c in Counter(utt2spk.values()).values())
    if (n_target > 0 and not has_pair) or (n_nontarget > 0 and len(speakers) < 2):
        with pytest.raises(ConfigError, match="no (target|nontarget) trials possible"):
            make_trials(utt2spk, n_target_per_utt=n_target, n_nontarget_per_utt=n_nontarget, seed=seed)
        return
    trials = make_trials(utt2spk, n_target_per_utt=n_target, n_nontarget_per_utt=n_nontarget, seed=seed)
    check_invariants(trials, utt2spk, n_target, n_nontarget)
    # Deterministic and independent of the mapping's order.
    shuffled = list(utt2spk.items())
    random.Random(seed).shuffle(shuffled)
    again = make_trials(dict(shuffled), n_target_per_utt=n_target, n_nontarget_per_utt=n_nontarget, seed=seed)
    assert again == trials
    # Every utterance that could enroll more nontarget trials did (none is starved while pairs remain).
    for utt in utt2spk:
        made = sum(1 for t in trials if t.enroll == utt and not t.target)
        if made < n_nontarget:
            others = [u for u in utt2spk if utt2spk[u] != utt2spk[utt]]
            assert all(frozenset((utt, o)) in {frozenset((t.enroll, t.test)) for t in trials} for o in others)


def test_make_trials_counts_on_a_regular_corpus():
    utt2spk = corpus(10, 6)
    trials = make_trials(utt2spk, n_target_per_utt=2, n_nontarget_per_utt=4, seed=7)
    check_invariants(trials, utt2spk, 2, 4)
    assert sum(not t.target for t in trials) == 60 * 4  # plenty of distinct nontarget pairs
    # 6 utterances give 15 same-speaker pairs; each enrolls up to 2 new ones -> 9..12 per speaker.
    targets = Counter(utt2spk[t.enroll] for t in trials if t.target)
    assert set(targets) == {f"s{s:02d}" for s in range(10)}
    assert all(9 <= c <= 12 for c in targets.values())


def test_make_trials_balances_nontarget_speakers():
    utt2spk = corpus(12, 8)
    trials = make_trials(utt2spk, n_target_per_utt=1, n_nontarget_per_utt=11, seed=3)
    involved = Counter()
    for t in trials:
        if not t.target:
            involved[utt2spk[t.enroll]] += 1
            involved[utt2spk[t.test]] += 1
    # Every speaker appears in 2 * 8 * 11 nontarget trials on average; a permutation per utterance keeps it even.
    mean = sum(involved.values()) / len(involved)
    assert max(involved.values()) - min(involved.values()) <= 0.1 * mean


def test_make_trials_seed_changes_the_draw():
    utt2spk = corpus(6, 5)
    a = make_trials(utt2spk, n_target_per_utt=2, n_nontarget_per_utt=2, seed=1)
    b = make_trials(utt2spk, n_target_per_utt=2, n_nontarget_per_utt=2, seed=2)
    assert a != b
    assert sum(not t.target for t in a) == sum(not t.target for t in b) == 30 * 2


def test_all_pairs():
    utt2spk = corpus(3, 3)
    trials = make_trials(utt2spk, all_pairs=True)
    assert len(trials) == 9 * 8 // 2
    assert sum(t.target for t in trials) == 3 * 3
    check_invariants(trials, utt2spk, 8, 8)


@pytest.mark.parametrize(
    ("utt2spk", "kwargs", "fragment"),
    [
        ({}, {}, "non-empty mapping"),
        ({"a": "A", "b": "B"}, {"n_target_per_utt": 1}, "every speaker has a single utterance"),
        ({"a": "A", "b": "A"}, {"n_nontarget_per_utt": 1, "n_target_per_utt": 1}, "only one speaker"),
        ({"a": "A", "b": "B"}, {"n_target_per_utt": -1}, "n_target_per_utt must be a non-negative int"),
        ({"a": "A", "b": "B"}, {"n_nontarget_per_utt": 1.5}, "n_nontarget_per_utt must be a non-negative int"),
        ({"a": "A", "b": "B"}, {"seed": "x", "n_target_per_utt": 0}, "seed must be an int"),
        ({"a b": "A", "c": "B"}, {}, "utterance id must be"),
        ({"a": "", "c": "B"}, {}, "speaker of 'a'"),
    ],
)
def test_make_trials_bad_input(utt2spk, kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        make_trials(utt2spk, **kwargs)
