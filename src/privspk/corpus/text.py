"""Deterministic English sentences for the built-in corpus.

Sentences are built from clause templates and word lists kept in this module, so the
built-in corpus needs no text data set. The same generator state gives the same sentence.

>>> import numpy as np
>>> s = make_sentence(np.random.default_rng(0), n_words=12)
>>> s[0].isupper() and s.endswith(".")
True
>>> 9 <= len(s.split()) <= 15
True
"""

from __future__ import annotations

import numpy as np

from privspk.errors import ConfigError

__all__ = ["make_sentence"]

_NOUNS = (
    "garden river window doctor teacher engine village mountain letter kitchen market ocean "
    "farmer pilot bridge island camera blanket harbour pencil ladder museum orchestra tunnel "
    "lantern forest station meadow beacon carpet journey painter chimney compass rabbit violin "
    "cottage desert sailor kettle parcel library theatre garage saddle thunder feather pocket "
    "monkey candle biscuit captain cabinet puzzle rocket shadow signal village wagon zebra "
    "umbrella hammer dolphin balloon mirror quarry scholar voyage emerald giraffe jacket"
).split()
_ADJECTIVES = (
    "quiet golden heavy bright narrow ancient gentle frozen crowded distant yellow careful "
    "curious hollow rapid silver patient sudden noisy wooden smooth enormous tiny purple "
    "friendly rusty lonely eager clever muddy polished fragile windy early splendid shallow "
    "velvet stubborn cheerful brilliant modest thirsty"
).split()
_VERBS = (
    "carried watched painted opened followed repaired visited borrowed measured cleaned "
    "discovered delivered remembered described gathered noticed questioned collected admired "
    "finished ignored explored protected crossed counted polished lifted traded examined "
    "welcomed"
).split()
_INTRANSITIVE = (
    "waited laughed wandered shivered vanished arrived whispered listened travelled rested "
    "sparkled hesitated stumbled answered"
).split()
_ADVERBS = (
    "slowly quickly quietly yesterday suddenly carefully again happily nearly rarely often "
    "gladly early proudly barely"
).split()
_PREPOSITIONS = "near behind beside under across beyond inside above toward along past".split()
_NAMES = (
    "Anna Peter Maria Thomas Louise George Clara Oliver Fatima Samuel Irene Victor Nadia "
    "Hugo Grace Martin Rosa Felix Lena Oscar"
).split()
_NUMBERS = "two three four five six seven eight nine ten twelve twenty forty".split()
_PLURALS = "apples boxes stones birds letters candles tickets flowers coins shells bottles books".split()
_OPENERS = (
    "in the morning", "after the storm", "every winter", "later that day", "on Sunday",
    "without a word", "long ago", "by the evening", "at noon", "once again",
)

_TEMPLATES: tuple[tuple[str, ...], ...] = (
    ("the", "ADJ", "NOUN", "VERB", "the", "NOUN"),
    ("NAME", "VERB", "NUM", "PLURAL", "PREP", "the", "NOUN"),
    ("the", "NOUN", "INTR", "ADV", "PREP", "the", "ADJ", "NOUN"),
    ("OPEN", "NAME", "VERB", "a", "ADJ", "NOUN"),
    ("NAME", "and", "NAME", "INTR", "PREP", "the", "NOUN"),
    ("a", "ADJ", "NOUN", "INTR", "ADV"),
    ("the", "NOUN", "PREP", "the", "NOUN", "was", "ADJ"),
    ("NAME", "ADV", "VERB", "the", "ADJ", "NOUN", "PREP", "the", "NOUN"),
    ("OPEN", "the", "NOUN", "INTR"),
    ("nobody", "VERB", "the", "NOUN", "PREP", "the", "ADJ", "NOUN"),
)
_SLOTS: dict[str, tuple[str, ...]] = {
    "NOUN": tuple(_NOUNS),
    "ADJ": tuple(_ADJECTIVES),
    "VERB": tuple(_VERBS),
    "INTR": tuple(_INTRANSITIVE),
    "ADV": tuple(_ADVERBS),
    "PREP": tuple(_PREPOSITIONS),
    "NAME": tuple(_NAMES),
    "NUM": tuple(_NUMBERS),
    "PLURAL": tuple(_PLURALS),
    "OPEN": _OPENERS,
}
_JOINERS = (", and", ", but", ", while", ". Then", ", so", ". Meanwhile,")


def _clause(rng: np.random.Generator) -> list[str]:
    template = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
    words: list[str] = []
    for slot in template:
        choices = _SLOTS.get(slot)
        words.append(slot if choices is None else choices[int(rng.integers(len(choices)))])
    for i in range(len(words) - 1):
        if words[i] == "a" and words[i + 1][0] in "aeiou":
            words[i] = "an"
    return words


def _fitting_clause(rng: np.random.Generator, room: int, tries: int = 6) -> list[str]:
    """Of ``tries`` random clauses, the one whose length is closest to ``room`` words."""
    best = _clause(rng)
    for _ in range(tries - 1):
        other = _clause(rng)
        if abs(len(other) - room) < abs(len(best) - room):
            best = other
    return best


def make_sentence(rng: np.random.Generator, *, n_words: int) -> str:
    """A sentence of about ``n_words`` words (whole clauses, so a few more or less).

    Args:
        rng: the random source; the sentence is a function of its state.
        n_words: wanted length, 1..200 words.

    >>> import numpy as np
    >>> make_sentence(np.random.default_rng(5), n_words=4) == make_sentence(np.random.default_rng(5), n_words=4)
    True
    """
    if not isinstance(rng, np.random.Generator):
        raise ConfigError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if isinstance(n_words, bool) or not isinstance(n_words, (int, np.integer)) or not 1 <= n_words <= 200:
        raise ConfigError(f"n_words must be an integer in [1, 200], got {n_words!r}")
    words = _fitting_clause(rng, n_words)
    while n_words - len(words) >= 3:
        joiner = _JOINERS[int(rng.integers(len(_JOINERS)))]
        words[-1] += joiner[0] if joiner[0] in ",." else ""
        rest = joiner.lstrip(",. ").split()
        words += rest + _fitting_clause(rng, n_words - len(words) - len(rest))
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."
