"""Small validators shared by the privacy modules.

Each returns the value as a plain Python type (``float``/``int``/``str``) so that
numpy scalars never reach JSON or SQLite, and raises :class:`~privspk.errors.ConfigError`
with a message that names the setting and says what is allowed.

>>> positive_float("epsilon", 8)
8.0
>>> probability("delta", 1e-5)
1e-05
"""

from __future__ import annotations

import math
import numbers

from privspk.errors import ConfigError

__all__ = ["positive_float", "probability", "positive_int", "nonempty_str", "real"]


def real(name: str, value: object) -> float:
    """Return ``value`` as a finite ``float`` or raise ConfigError (bools are refused).

    >>> real("clip", 1)
    1.0
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    out = float(value)
    if not math.isfinite(out):
        raise ConfigError(f"{name} must be finite, got {value!r}")
    return out


def positive_float(name: str, value: object) -> float:
    """Return ``value`` as a finite float > 0, else raise ConfigError.

    >>> positive_float("noise_multiplier", 0.8)
    0.8
    """
    out = real(name, value)
    if out <= 0.0:
        raise ConfigError(f"{name} must be > 0, got {value!r}")
    return out


def probability(name: str, value: object, *, allow_one: bool = False) -> float:
    """Return ``value`` as a float in (0, 1) (or (0, 1] with ``allow_one``), else raise ConfigError.

    >>> probability("sample_rate", 1, allow_one=True)
    1.0
    """
    out = real(name, value)
    upper_ok = out <= 1.0 if allow_one else out < 1.0
    if not (out > 0.0 and upper_ok):
        interval = "(0, 1]" if allow_one else "(0, 1)"
        raise ConfigError(f"{name} must be in {interval}, got {value!r}")
    return out


def positive_int(name: str, value: object, *, minimum: int = 1) -> int:
    """Return ``value`` as an ``int`` >= ``minimum`` (bools and floats are refused).

    >>> positive_int("steps", 14)
    14
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    out = int(value)
    if out < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {out}")
    return out


def nonempty_str(name: str, value: object) -> str:
    """Return ``value`` if it is a non-empty ``str`` without surrounding whitespace.

    >>> nonempty_str("client", "c0")
    'c0'
    """
    if not isinstance(value, str) or not value or value.strip() != value:
        raise ConfigError(f"{name} must be a non-empty string without surrounding spaces, got {value!r}")
    return value
