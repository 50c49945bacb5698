"""privspk.corpus.text: deterministic sentences from the module's own word lists."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privspk.corpus import text as text_mod
from privspk.corpus.text import make_sentence
from privspk.errors import ConfigError

VOCABULARY = {
    w.lower()
    for words in text_mod._SLOTS.values()
    for phrase in words
    for w in phrase.split()
} | {"the", "a", "an", "and", "was", "nobody", "then", "meanwhile", "but", "while", "so"}


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 60))
def test_sentences_are_deterministic_well_formed_and_near_the_length(seed: int, n: int) -> None:
    s = make_sentence(np.random.default_rng(seed), n_words=n)
    assert s == make_sentence(np.random.default_rng(seed), n_words=n)
    assert s[0].isupper() and s.endswith(".")
    words = [w.strip(",.").lower() for w in s.split()]
    assert set(words) <= VOCABULARY
    assert n - 2 <= len(words) <= max(n, 5) + 7
    assert not re.search(r"\ba [aeiou]", s)


def test_different_seeds_give_different_sentences() -> None:
    sentences = {make_sentence(np.random.default_rng(seed), n_words=10) for seed in range(20)}
    assert len(sentences) >= 18


@pytest.mark.parametrize("n", [0, 201, 2.5, True])
def test_bad_lengths(n: object) -> None:
    with pytest.raises(ConfigError, match="n_words"):
        make_sentence(np.random.default_rng(0), n_words=n)  # type: ignore[arg-type]


def test_rng_must_be_a_generator() -> None:
    with pytest.raises(ConfigError, match="Generator"):
        make_sentence(0, n_words=5)  # type: ignore[arg-type]
