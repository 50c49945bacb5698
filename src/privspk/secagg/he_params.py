"""Parameter and trust rules every HE scheme (``ckks``, ``bfv``) checks before it makes a key.

>>> split_bits(66), trust_problem("ckks", HE_TRUST) is None
((33, 33), True)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from privspk.errors import ConfigError
from privspk.secagg.he_wire import ntt_primes

SECURITY_CAP_BITS: Mapping[int, int] = MappingProxyType(
    {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
)
"""Largest total coefficient-modulus bits for 128-bit security (HomomorphicEncryption.org standard)."""

MAX_PRIME_BITS = 60
"""SEAL's largest coefficient (and plain) modulus prime."""

HE_TRUST = "no-client-colludes-with-server"
"""The value of the ``he_trust`` option by which an operator accepts the HE schemes' trust assumption.

No TenSEAL ciphertext comes with a proof that it is a well-formed encryption, so a registered
client that colludes with the server can submit a ciphertext chosen from what the server has
seen; the key holder then decrypts a value of the server's choosing, which can be the secret key
itself (tests/secagg/test_secagg_he_collusion.py). ``ckks`` and ``bfv`` therefore refuse to
start unless the operator states that no client colludes with the server."""

SPECIAL_PRIME_BITS = 30
"""Bits of the key-switching prime in automatic chains (its size did not change CKKS error or BFV
decryption failures: 20, 30, 40 and 60 bits measured alike)."""


def split_bits(total: int) -> tuple[int, ...]:
    """Fewest primes of at most 60 bits, as even as possible, that add up to ``total`` bits.

    >>> split_bits(45), split_bits(66), split_bits(121)
    ((45,), (33, 33), (41, 40, 40))
    """
    n = -(-total // MAX_PRIME_BITS)
    return tuple(total // n + (1 if i < total % n else 0) for i in range(n))


def option_problems(clip: Any, max_clients: Any, min_clients: Any, degree: Any) -> list[str]:
    """What is wrong with the options every HE scheme shares (empty when nothing is).

    >>> option_problems(1.0, 4, 5, 4096)
    ['min_clients 5 exceeds max_clients 4']
    """
    problems = []
    if not (isinstance(clip, (int, float)) and not isinstance(clip, bool) and math.isfinite(clip) and clip > 0):
        problems.append(f"clip must be a positive finite number, got {clip!r}")
    if type(max_clients) is not int or max_clients < 1:
        problems.append(f"max_clients must be a positive int, got {max_clients!r}")
    if type(min_clients) is not int or min_clients < 1:
        problems.append(f"min_clients must be a positive int, got {min_clients!r}")
    elif type(max_clients) is int and min_clients > max_clients:
        problems.append(f"min_clients {min_clients} exceeds max_clients {max_clients}")
    if type(degree) is not int or degree not in SECURITY_CAP_BITS:
        problems.append(f"poly_modulus_degree must be one of {sorted(SECURITY_CAP_BITS)}, got {degree!r}")
    return problems


def trust_problem(kind: str, he_trust: Any) -> str | None:
    """Why an HE scheme refuses to start with this ``he_trust`` value (None when it may start).

    >>> trust_problem("bfv", HE_TRUST) is None
    True
    >>> print(trust_problem("bfv", None)[:60])
    bfv needs the operator to accept that no client colludes wit
    """
    if he_trust == HE_TRUST:
        return None
    got = "" if he_trust is None else f" (got he_trust = {he_trust!r})"
    return (f"{kind} needs the operator to accept that no client colludes with the server{got}: a single "
            "registered client colluding with the server can submit a chosen ciphertext that makes the key holder "
            "release the secret key, and with it every update encrypted under that key (the round's updates; "
            "keys are fresh per round). TenSEAL has no proof of well-formed ciphertexts to stop this. Use "
            f"scheme = \"mask\" (pairwise masking, no key holder), or, if you accept the assumption, set "
            f"he_trust = \"{HE_TRUST}\" in [secagg.options]")


def chain_problems(chain: Any, degree: int) -> list[str]:
    """Rules TenSEAL/SEAL enforce on a coefficient modulus, checked before any key is made.

    >>> chain_problems((60, 60), 4096)
    ['coeff_mod_bit_sizes (60, 60) total 120 bits, more than the 109 that N=4096 allows at 128-bit security']
    """
    if not isinstance(chain, tuple) or not all(type(b) is int for b in chain):
        return [f"coeff_mod_bit_sizes must be a tuple of ints, got {chain!r}"]
    problems = []
    if len(chain) < 2:
        problems.append(f"coeff_mod_bit_sizes {chain} needs at least two primes (data + special); "
                        "TenSEAL refuses a single prime")
    low = (2 * degree).bit_length() + 1
    bad = [b for b in chain if not low <= b <= MAX_PRIME_BITS]
    if bad:
        problems.append(f"prime sizes {bad} are outside [{low}, {MAX_PRIME_BITS}] bits for N={degree}")
    cap = SECURITY_CAP_BITS[degree]
    if sum(chain) > cap:
        problems.append(f"coeff_mod_bit_sizes {chain} total {sum(chain)} bits, more than the {cap} that "
                        f"N={degree} allows at 128-bit security")
    if not problems:
        try:
            ntt_primes(degree, chain)
        except ConfigError as exc:
            problems.append(str(exc))
    return problems
