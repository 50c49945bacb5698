"""Verification trial lists and score files in the Kaldi text formats.

A trials file has one ``enroll test target|nontarget`` line per trial; a score
file has one ``enroll test score`` line. Ids must be non-empty and free of
whitespace. :func:`make_trials` draws a balanced, deterministic list from an
``utt2spk`` mapping.

>>> trials = make_trials({"a1": "A", "a2": "A", "b1": "B", "b2": "B"}, all_pairs=True)
>>> [(t.enroll, t.test, t.target) for t in trials][:3]
[('a1', 'a2', True), ('a1', 'b1', False), ('a1', 'b2', False)]
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from privspk.errors import ConfigError

__all__ = ["Score", "Trial", "make_trials", "read_scores", "read_trials", "write_scores", "write_trials"]

log = logging.getLogger(__name__)

_LABELS = {"target": True, "nontarget": False}


def _check_id(value: object, what: str) -> str:
    if not isinstance(value, str) or not value or any(ch.isspace() for ch in value):
        raise ConfigError(f"{what} id must be a non-empty string without whitespace, got {value!r}")
    return value


@dataclass(frozen=True)
class Trial:
    """One verification trial: does ``test`` come from the speaker of ``enroll``?

    >>> Trial("spk1-u1", "spk1-u7", True)
    Trial(enroll='spk1-u1', test='spk1-u7', target=True)
    """

    enroll: str
    test: str
    target: bool

    def __post_init__(self) -> None:
        _check_id(self.enroll, "enroll")
        _check_id(self.test, "test")
        if not isinstance(self.target, (bool, np.bool_)):
            raise ConfigError(f"target must be a bool, got {self.target!r}")
        object.__setattr__(self, "target", bool(self.target))


class Score(NamedTuple):
    """One line of a score file.

    >>> Score("u1", "u2", 0.75).score
    0.75
    """

    enroll: str
    test: str
    score: float


def _lines(path: str | PathLike[str], kind: str) -> Iterable[tuple[int, list[str]]]:
    """Yield ``(line_number, fields)`` for each non-blank line of a text file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{kind} file {path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {kind} file {path}: {exc}") from exc
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if fields:
            yield number, fields


def read_trials(path: str | PathLike[str]) -> list[Trial]:
    """Read a Kaldi trials file (``enroll test target|nontarget`` per line).

    Blank lines are skipped; any other malformed line raises ConfigError
    naming ``file:line``.

    >>> import tempfile, os
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = os.path.join(d, "trials")
    ...     _ = open(p, "w").write("u1 u2 target\\nu1 u3 nontarget\\n")
    ...     read_trials(p)[1]
    Trial(enroll='u1', test='u3', target=False)
    """
    trials: list[Trial] = []
    for number, fields in _lines(path, "trials"):
        if len(fields) != 3 or fields[2] not in _LABELS:
            raise ConfigError(
                f"{path}:{number}: expected 'enroll test target|nontarget', got {' '.join(fields)!r}"
            )
        trials.append(Trial(fields[0], fields[1], _LABELS[fields[2]]))
    return trials


def write_trials(path: str | PathLike[str], trials: Iterable[Trial]) -> None:
    """Write trials in the Kaldi 3-column format (parent folders are created).

    >>> import tempfile, os
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = os.path.join(d, "trials")
    ...     write_trials(p, [Trial("u1", "u2", True)])
    ...     open(p).read()
    'u1 u2 target\\n'
    """
    lines = []
    for trial in trials:
        if not isinstance(trial, Trial):
            raise ConfigError(f"write_trials takes Trial objects, got {type(trial).__name__}")
        lines.append(f"{trial.enroll} {trial.test} {'target' if trial.target else 'nontarget'}\n")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(lines), encoding="utf-8")


def read_scores(path: str | PathLike[str]) -> list[Score]:
    """Read a score file (``enroll test score`` per line; scores must be finite).

    >>> import tempfile, os
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = os.path.join(d, "scores")
    ...     _ = open(p, "w").write("u1 u2 0.5\\n")
    ...     read_scores(p)
    [Score(enroll='u1', test='u2', score=0.5)]
    """
    scores: list[Score] = []
    for number, fields in _lines(path, "scores"):
        value = math.nan
        if len(fields) == 3:
            try:
                value = float(fields[2])
            except ValueError:
                pass
        if not math.isfinite(value):
            raise ConfigError(f"{path}:{number}: expected 'enroll test <finite score>', got {' '.join(fields)!r}")
        scores.append(Score(fields[0], fields[1], value))
    return scores


def write_scores(
    path: str | PathLike[str],
    trials: Sequence[Trial] | Sequence[tuple[str, str]],
    scores: ArrayLike,
) -> None:
    """Write one ``enroll test score`` line per trial (scores written exactly, round-trippable).

    >>> import tempfile, os
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = os.path.join(d, "scores")
    ...     write_scores(p, [Trial("u1", "u2", True)], [0.25])
    ...     open(p).read()
    'u1 u2 0.25\\n'
    """
    values = np.asarray(scores, dtype=np.float64)
    if values.shape != (len(trials),):
        raise ConfigError(f"need one score per trial: {len(trials)} trials but scores of shape {values.shape}")
    if not np.isfinite(values).all():
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        raise ConfigError(f"score {bad} is {values[bad]}; scores must be finite")
    lines = []
    for trial, value in zip(trials, values.tolist()):
        enroll, test = (trial.enroll, trial.test) if isinstance(trial, Trial) else trial
        lines.append(f"{_check_id(enroll, 'enroll')} {_check_id(test, 'test')} {value!r}\n")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(lines), encoding="utf-8")


def _check_count(value: object, name: str) -> int:
    if type(value) is not int or value < 0:
        raise ConfigError(f"{name} must be a non-negative int, got {value!r}")
    return value


def make_trials(
    utt2spk: Mapping[str, str],
    *,
    n_target_per_utt: int = 3,
    n_nontarget_per_utt: int = 3,
    seed: int = 0,
    all_pairs: bool = False,
) -> list[Trial]:
    """Draw a deterministic, balanced trial list from an utterance -> speaker map.

    Each utterance (in sorted order) enrolls up to ``n_target_per_utt`` trials
    against other utterances of its speaker and up to ``n_nontarget_per_utt``
    against utterances of *different* other speakers, taken from a fresh random
    permutation of the other speakers so every speaker is drawn about equally
    often. A pair is never used twice (in either order) and never pairs an
    utterance with itself, so a speaker with few utterances may get fewer
    target trials. ``all_pairs=True`` returns every unordered pair instead
    (the counts and seed are then unused). The result depends only on the
    mapping's contents and ``seed``, not on its order.

    >>> u2s = {f"{s}{i}": s for s in "ABC" for i in range(3)}
    >>> trials = make_trials(u2s, n_target_per_utt=1, n_nontarget_per_utt=2, seed=0)
    >>> sum(not t.target for t in trials), all(t.enroll != t.test for t in trials)
    (18, True)
    """
    if not isinstance(utt2spk, Mapping) or not utt2spk:
        raise ConfigError("utt2spk must be a non-empty mapping of utterance id -> speaker id")
    for utt, spk in utt2spk.items():
        _check_id(utt, "utterance")
        if not isinstance(spk, str) or not spk:
            raise ConfigError(f"speaker of {utt!r} must be a non-empty string, got {spk!r}")
    utts = sorted(utt2spk)
    by_speaker: dict[str, list[str]] = {}
    for utt in utts:
        by_speaker.setdefault(utt2spk[utt], []).append(utt)
    speakers = sorted(by_speaker)

    if all_pairs:
        return [Trial(a, b, utt2spk[a] == utt2spk[b]) for i, a in enumerate(utts) for b in utts[i + 1 :]]

    n_target = _check_count(n_target_per_utt, "n_target_per_utt")
    n_nontarget = _check_count(n_nontarget_per_utt, "n_nontarget_per_utt")
    if type(seed) is not int:
        raise ConfigError(f"seed must be an int, got {seed!r}")
    if n_target > 0 and all(len(v) < 2 for v in by_speaker.values()):
        raise ConfigError("no target trials possible: every speaker has a single utterance")
    if n_nontarget > 0 and len(speakers) < 2:
        raise ConfigError(f"no nontarget trials possible: only one speaker ({speakers[0]!r})")

    rng = np.random.default_rng(seed)
    used: set[frozenset[str]] = set()
    trials: list[Trial] = []

    def take(enroll: str, test: str, target: bool) -> bool:
        pair = frozenset((enroll, test))
        if test == enroll or pair in used:
            return False
        used.add(pair)
        trials.append(Trial(enroll, test, target))
        return True

    for utt in utts:
        spk = utt2spk[utt]
        same = by_speaker[spk]
        made = 0
        for j in rng.permutation(len(same)):
            if made == n_target:
                break
            made += take(utt, same[j], True)

        others = [s for s in speakers if s != spk]
        made = 0
        while made < n_nontarget:
            made_before = made
            for k in rng.permutation(len(others)):
                if made == n_nontarget:
                    break
                pool = [u for u in by_speaker[others[k]] if frozenset((utt, u)) not in used]
                if pool:
                    made += take(utt, pool[int(rng.integers(len(pool)))], False)
            if made == made_before:  # every pair with this utterance is already used
                break
    log.info(
        "made %d trials (%d target) over %d utterances of %d speakers",
        len(trials),
        sum(t.target for t in trials),
        len(utts),
        len(speakers),
    )
    return trials
