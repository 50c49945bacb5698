"""Encoders by name: one string picks an architecture and its size.

Presets (parameter counts for 40 / 80 input bins, embedding 192):

=================  ======  =================
name               C       params (40 / 80)
=================  ======  =================
``ecapa_gn_c64``   64      0.21M / 0.22M
``ecapa_gn_c128``  128     0.57M / 0.59M
``ecapa_gn_c160``  160     0.80M / 0.83M
``ecapa_gn_c256``  256     1.70M / 1.76M
=================  ======  =================

All are :class:`~privspk.models.ecapa.ECAPAEncoder` with three SE-Res2Net blocks (dilations
2, 3, 4; scale 8), attentive statistics pooling with 64 attention channels and GroupNorm only.

>>> enc = build_encoder("ecapa_gn_c64", in_dim=40)
>>> (enc.in_dim, enc.embed_dim, enc.channels)
(40, 192, 64)
>>> "ecapa_gn_c128" in list_encoders()
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

from torch import nn

from privspk.errors import ConfigError, ModelError
from privspk.models.ecapa import ECAPAEncoder

__all__ = ["EncoderFactory", "build_encoder", "list_encoders", "register_encoder"]


class EncoderFactory(Protocol):
    """Builds an encoder for features of width ``in_dim``.

    >>> def tiny(*, in_dim: int) -> nn.Module:
    ...     return nn.Linear(in_dim, 4)
    >>> isinstance(tiny(in_dim=3), nn.Module)
    True
    """

    def __call__(self, *, in_dim: int) -> nn.Module: ...


F = TypeVar("F", bound=Callable[..., nn.Module])

_ENCODERS: dict[str, Callable[..., nn.Module]] = {}


def register_encoder(name: str) -> Callable[[F], F]:
    """Decorator registering ``factory(*, in_dim) -> nn.Module`` under ``name``; duplicates are refused.

    Example:
        >>> @register_encoder("doc_linear_encoder")
        ... def _linear(*, in_dim: int) -> nn.Module:
        ...     return nn.Linear(in_dim, 8)
        >>> build_encoder("doc_linear_encoder", in_dim=5).out_features
        8
        >>> register_encoder("doc_linear_encoder")(_linear)
        Traceback (most recent call last):
        ...
        privspk.errors.ModelError: encoder 'doc_linear_encoder' is already registered; pick another name
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"encoder name must be a non-empty str, got {name!r}")

    def decorator(factory: F) -> F:
        if name in _ENCODERS:
            raise ModelError(f"encoder {name!r} is already registered; pick another name")
        if not callable(factory):
            raise ConfigError(f"encoder factory for {name!r} must be callable, got {type(factory).__name__}")
        _ENCODERS[name] = factory
        return factory

    return decorator


def list_encoders() -> tuple[str, ...]:
    """Registered encoder names, sorted.

    >>> [n for n in list_encoders() if n.startswith("ecapa_gn_")]
    ['ecapa_gn_c128', 'ecapa_gn_c160', 'ecapa_gn_c256', 'ecapa_gn_c64']
    """
    return tuple(sorted(_ENCODERS))


def build_encoder(name: str, *, in_dim: int) -> nn.Module:
    """A freshly initialised encoder ``name`` for features of width ``in_dim``.

    Example:
        >>> tuple(build_encoder("ecapa_gn_c128", in_dim=80).embedding.linear.weight.shape)
        (192, 768)
        >>> build_encoder("ecapa_gn_c999", in_dim=80)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        privspk.errors.ModelError: unknown encoder 'ecapa_gn_c999'; known encoders: ...ecapa_gn_c64...
    """
    if type(in_dim) is not int or in_dim < 1:
        raise ConfigError(f"in_dim must be a positive int (feature bins), got {in_dim!r}")
    factory = _ENCODERS.get(name)
    if factory is None:
        raise ModelError(f"unknown encoder {name!r}; known encoders: {', '.join(list_encoders())}")
    return factory(in_dim=in_dim)


def _ecapa_gn(channels: int) -> Callable[..., nn.Module]:
    def factory(*, in_dim: int) -> nn.Module:
        return ECAPAEncoder(in_dim, channels=channels, embed_dim=192, scale=8, dilations=(2, 3, 4), attention_channels=64)

    factory.__name__ = f"ecapa_gn_c{channels}"
    factory.__doc__ = f"GroupNorm ECAPA encoder with C={channels} (see the module table)."
    return factory


for _channels in (64, 128, 160, 256):
    register_encoder(f"ecapa_gn_c{_channels}")(_ecapa_gn(_channels))
