"""The scheme registry's front door: the built-in schemes, and building one by name.

Importing this module imports every built-in scheme, which registers itself with
:func:`privspk.secagg.base.register_scheme`; ``base`` itself knows no scheme, so the
package's modules import downwards only (schemes -> base, registry -> schemes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from privspk.errors import ConfigError
from privspk.secagg import bfv, ckks, mask, plain  # noqa: F401  (registers the built-in schemes)
from privspk.secagg.base import _SCHEMES, Scheme, config_from_options

__all__ = ["build_scheme", "scheme_names"]


def scheme_names() -> tuple[str, ...]:
    """Registered scheme names, sorted.

    >>> {"plain", "mask", "ckks", "bfv"} <= set(scheme_names())
    True
    """
    return tuple(sorted(_SCHEMES))


def build_scheme(name: str, options: Mapping[str, Any] | None = None, *, seed: int | None = None) -> Scheme:
    """Instantiate a registered scheme with its options (see each scheme's ``Config``).

    ``seed`` fixes the non-secret randomness of a simulation (stochastic rounding);
    key material and masks always come from the operating system's CSPRNG.

    >>> build_scheme("nope")
    Traceback (most recent call last):
    ...
    privspk.errors.ConfigError: unknown aggregation scheme 'nope'; choose one of ['bfv', 'ckks', 'mask', 'plain']
    """
    if name not in _SCHEMES:
        raise ConfigError(f"unknown aggregation scheme {name!r}; choose one of {sorted(_SCHEMES)}")
    cls = _SCHEMES[name]
    return cls(config_from_options(cls.Config, options), seed=seed)
