"""Secure aggregation: quantise, then mask or encrypt; only the sum is opened.

Schemes share one interface (:class:`Scheme`) and are picked by name:
``plain`` (no protection, baseline), ``mask`` (pairwise masks with dropout
recovery), ``ckks`` and ``bfv`` (TenSEAL homomorphic encryption with a separate
key holder).
"""

from privspk.secagg.base import (
    KEYHOLDER,
    AggregateResult,
    ClientEndpoint,
    RoundSpec,
    Scheme,
    ServerRound,
    register_scheme,
)
from privspk.secagg.quantise import Quantiser, auto_bits, headroom_for
from privspk.secagg.registry import build_scheme, scheme_names

__all__ = [
    "KEYHOLDER",
    "AggregateResult",
    "ClientEndpoint",
    "Quantiser",
    "RoundSpec",
    "Scheme",
    "ServerRound",
    "auto_bits",
    "build_scheme",
    "headroom_for",
    "register_scheme",
    "scheme_names",
]
