"""Homomorphic aggregation with a separate key holder: the roles shared by ``ckks`` and ``bfv``.

Three roles, each seeing only what it must:

* the **key holder** creates the TenSEAL context - a fresh key pair for every round -
  and is the only party with its secret key. It hands out the context *without* the
  secret key (checked by reloading it), signed with its Ed25519 identity for that run
  and round, and decrypts one sum per round - only a sum of at least ``min_clients``
  registered clients' ciphertexts, checked as described below;
* each **client** checks the key holder's signature on the context (so a server cannot
  slip in a context whose key it holds), encrypts its update, signs a digest of the
  ciphertext with its own Ed25519 identity, and later answers a challenge about it;
* the **server** holds the public context only. It checks each ciphertext (envelope,
  signature, context fingerprint, exact length, every residue below its modulus), adds
  them as residue arrays (:mod:`privspk.secagg.he_wire`) and asks the key holder to open
  the sum.

Why a challenge. A server could hand the key holder one client's ciphertext and call it
"the sum". The key holder therefore accepts a sum only with the contributors' signed
digests, then - once the sum is fixed - sends a fresh random challenge ``r``; every
contributor returns the signed sketch ``<r, its ciphertext>`` (mod each prime), and the
key holder decrypts only if the sketches add up to the sketch of the sum. A wrong sum
passes with probability <= 2**-64. It costs one small message per client instead of
shipping every ciphertext to the key holder. A contributor that does not answer has its
ciphertext forwarded (its signed digest binds it), so nothing already added is lost.

Commit before reveal. Each client encrypts at ``pledge`` and sends only the signed digest
of its ciphertext; at ``freeze`` the key holder signs the round's pledge list, once per
round; at ``collect`` each client checks that signature on the list it is shown and only
then reveals its ciphertext, signing that list too. The key holder opens only a sum whose
contributors all pledged in, and revealed against, the frozen list, so no ciphertext in a
sum can have been chosen after any ciphertext of the round (under the round's key) was seen.

Stages: ``setup`` (key holder -> public context) -> ``pledge`` (clients -> signed digests)
-> ``freeze`` (key holder signs the pledge list) -> ``collect`` (pledge list -> ciphertexts) -> ``commit`` (sum + signed digests and
reveals -> challenge) -> ``verify`` (clients -> sketches) -> ``open`` (sketches ->
decrypted sum) -> ``done``.

What a release gives away. A BFV sum decrypts exactly (the noise is rounded off, with a
2-bit margin). A CKKS decryption would reveal ``c0 + c1*s`` almost exactly for a sum
``(c0, c1)`` the server knows, hence the secret key; the key holder floods every CKKS
release with fresh Gaussian noise (:attr:`privspk.secagg.ckks.CkksCodec.flood_std`).

Trust assumptions (for ``threat_model/``): the key holder does not collude with the
server; client identities and the key holder's public key come from a registry the
server cannot change (a PKI stand-in); **no client colludes with the server**. Nothing
proves that a ciphertext is a well-formed encryption (TenSEAL has no such proof), so a
colluding client can submit a chosen ciphertext and the key holder decrypts a value of
the server's choosing: without commit-before-reveal, ``(-c0, a - c1)`` built from an
honest ciphertext ``(c0, c1)`` made the release ``a*s``, the whole secret key, and a
ciphertext that needs no honest one, such as ``(0, a)``, still adds ``a*s`` to the
released sum (tests/secagg/test_secagg_he_collusion.py). The schemes therefore refuse
to start unless the ``he_trust`` option accepts :data:`HE_TRUST`; ``mask`` needs no
such assumption.

>>> import numpy as np
>>> from privspk.secagg import build_scheme, RoundSpec
>>> from privspk.secagg.simulate import run_round
>>> s = build_scheme("bfv", {"he_trust": "no-client-colludes-with-server"}, seed=0)
>>> spec = RoundSpec(run_id="doc", round_id=0, clients=("a", "b"), dim=3)
>>> eps = {c: s.client(c) for c in spec.clients}
>>> eps["a"].submit(0, np.array([0.5, -0.25, 1.0])); eps["b"].submit(0, np.array([0.25, 0.25, -1.0]))
>>> res = run_round(s, spec, eps)
>>> np.round(res.total, 3).tolist(), res.stages
([0.75, 0.0, 0.0], ('setup', 'pledge', 'freeze', 'collect', 'commit', 'verify', 'open'))
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import secrets
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np

from privspk.errors import AggregationError, ConfigError, KeyLeakError, ProtocolError
from privspk.secagg.base import KEYHOLDER, AggregateResult, ClientEndpoint, RoundSpec, Scheme, ServerRound
from privspk.secagg.he_wire import SKETCH_ROWS, CipherLayout, SealFrame, ntt_primes
from privspk.secagg.wire import check_fields, expect, pack, unpack

log = logging.getLogger(__name__)

SERVER = "server"
DOMAIN = "privspk/he/v1"
"""Prefix of everything signed here, so a signature cannot be reused by another protocol."""

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


class Stage:
    """Stage names of an HE round, in order.

    >>> Stage.ORDER.index(Stage.COMMIT) < Stage.ORDER.index(Stage.OPEN)
    True
    """

    SETUP = "setup"
    PLEDGE = "pledge"
    FREEZE = "freeze"
    COLLECT = "collect"
    COMMIT = "commit"
    VERIFY = "verify"
    OPEN = "open"
    DONE = "done"
    ORDER = (SETUP, PLEDGE, FREEZE, COLLECT, COMMIT, VERIFY, OPEN, DONE)


# --------------------------------------------------------------------------- contexts


def public_context_bytes(ctx: Any) -> bytes:
    """Serialise a TenSEAL context with its public key only; refuse if the secret key survives.

    The bytes are reloaded and checked (``has_secret_key()`` must be False), so what is
    checked is the bytes, not the intent. The context itself is not modified.

    >>> import tenseal as ts
    >>> ctx = ts.context(ts.SCHEME_TYPE.BFV, 4096, plain_modulus=1032193, coeff_mod_bit_sizes=[36, 21])
    >>> blob = public_context_bytes(ctx)
    >>> ctx.has_secret_key(), ts.context_from(blob).has_secret_key()
    (True, False)
    """
    import tenseal as ts

    blob = ctx.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False)
    if ts.context_from(blob, n_threads=1).has_secret_key():
        raise KeyLeakError("the serialised public context still holds the secret key; refusing to hand it out")
    return blob


def load_public_context(blob: bytes, *, who: str | None = None) -> Any:
    """Load a context that must not hold a secret key (server and clients use this).

    A context with the secret key raises :class:`KeyLeakError`: the key holder leaked it.

    >>> import tenseal as ts
    >>> ctx = ts.context(ts.SCHEME_TYPE.BFV, 4096, plain_modulus=1032193, coeff_mod_bit_sizes=[36, 21])
    >>> load_public_context(ctx.serialize(save_secret_key=True))
    Traceback (most recent call last):
    ...
    privspk.errors.KeyLeakError: the context received holds the secret key; only the key holder may have it
    """
    import tenseal as ts

    try:
        ctx = ts.context_from(bytes(blob), n_threads=1)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise ProtocolError(f"public context does not load ({exc})", client=who) from None
    if ctx.has_secret_key():
        raise KeyLeakError("the context received holds the secret key; only the key holder may have it")
    return ctx


def check_context_moduli(ctx: Any, layout: CipherLayout, *, who: str | None = None) -> None:
    """Check that a context has the ring degree and data-level primes of ``layout``.

    SEAL reports only the low 64-bit word of the modulus product, so the product is
    checked through that word and its bit count (the primes follow from the bit sizes).

    >>> import tenseal as ts
    >>> from privspk.secagg.he_wire import ntt_primes
    >>> ctx = ts.context(ts.SCHEME_TYPE.BFV, 4096, plain_modulus=1032193, coeff_mod_bit_sizes=[36, 21])
    >>> check_context_moduli(ctx, CipherLayout(poly_degree=4096, moduli=ntt_primes(4096, [36])))
    >>> try:
    ...     check_context_moduli(ctx, CipherLayout(poly_degree=4096, moduli=ntt_primes(4096, [40])))
    ... except ProtocolError as exc:
    ...     print(str(exc)[:60])
    context parameters (degree 4096, 36-bit modulus) do not matc
    """
    first = ctx.seal_context().data.first_context_data()
    degree = first.parms().poly_modulus_degree()
    product = math.prod(layout.moduli)
    if (
        degree != layout.poly_degree
        or first.total_coeff_modulus() != product % (1 << 64)
        or first.total_coeff_modulus_bit_count() != product.bit_length()
    ):
        raise ProtocolError(
            f"context parameters (degree {degree}, {first.total_coeff_modulus_bit_count()}-bit modulus) do not "
            f"match this scheme's configuration (degree {layout.poly_degree}, primes {layout.moduli})",
            client=who,
        )


# --------------------------------------------------------------------------- parameter rules


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


# --------------------------------------------------------------------------- codec interface


class HeCodec(ABC):
    """What a homomorphic scheme adds to the shared roles: contexts, encoding and decoding.

    >>> from privspk.secagg.bfv import BfvCodec, BfvConfig
    >>> codec = BfvCodec(BfvConfig())
    >>> isinstance(codec, HeCodec), codec.kind, codec.n_chunks(10_000)
    (True, 'bfv', 2)
    """

    kind: ClassVar[str]
    """Scheme name (also on the wire)."""

    layout: CipherLayout
    values_per_chunk: int
    """Update coordinates one ciphertext carries."""

    def n_chunks(self, dim: int) -> int:
        """Ciphertexts an update of ``dim`` values needs."""
        return -(-dim // self.values_per_chunk)

    @abstractmethod
    def make_context(self) -> Any:
        """A fresh TenSEAL context with its secret key (the key holder alone calls this)."""

    @abstractmethod
    def check_context(self, ctx: Any, *, who: str | None = None) -> None:
        """Refuse (ProtocolError) a context whose parameters differ from the configuration."""

    @abstractmethod
    def encrypt(self, ctx: Any, update: np.ndarray, *, rng: np.random.Generator) -> np.ndarray:
        """Encode and encrypt one update; returns ciphertext words ``(chunks, 2, L, N)``."""

    @abstractmethod
    def frame(self, ctx: Any) -> SealFrame:
        """The :class:`SealFrame` of this context's fresh ciphertexts."""

    @abstractmethod
    def decrypt(self, ctx: Any, words: np.ndarray, frame: SealFrame, *, dim: int, n_summands: int) -> np.ndarray:
        """Decrypt and decode a sum of ``n_summands`` ciphertexts to a float64 vector of ``dim``."""

    @abstractmethod
    def sum_tolerance(self, n_clients: int) -> float:
        """Largest absolute error of one coordinate of a sum of ``n_clients`` clipped updates."""


# --------------------------------------------------------------------------- signatures


def _digest(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def _statement(*parts: Any) -> bytes:
    return json.dumps([DOMAIN, *parts], separators=(",", ":"), sort_keys=True).encode()


def _sign(key: Any, *parts: Any) -> str:
    return key.sign(_statement(*parts)).hex()


def _verify(public: bytes, signature: str, *parts: Any, what: str, client: str | None) -> None:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(public).verify(bytes.fromhex(signature), _statement(*parts))
    except (InvalidSignature, ValueError):
        raise ProtocolError(f"bad signature on {what}", client=client) from None


def _identity_pair(identity: Any) -> tuple[Any, bytes]:
    """``(signing key, raw public key)``: ``identity`` (an :class:`~privspk.secagg.keys.IdentityKey`) or a fresh one."""
    from privspk.secagg.keys import IdentityKey

    key = identity if identity is not None else IdentityKey.generate()
    return key, key.public_bytes()


def _raw_ed25519(public_key: Any, what: str) -> bytes:
    if not isinstance(public_key, bytes) or len(public_key) != 32:
        raise ConfigError(f"{what} must be a raw Ed25519 public key (32 bytes)")
    return public_key


def _hex32(value: str, what: str, client: str | None) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ProtocolError(f"{what} must be 64 hex characters", client=client)
    return raw


def _sketch_hex(rows: list[list[int]], layout: CipherLayout) -> str:
    """Fixed-width hex of a sketch (so every reply of a stage has the same length)."""
    widths = [-(-w // 4) for w in layout.widths]
    return "".join(f"{v:0{w}x}" for row in rows for v, w in zip(row, widths))


def _sketch_rows(text: Any, layout: CipherLayout, *, client: str | None) -> list[list[int]]:
    """Parse and check a sketch: ``SKETCH_ROWS`` rows of one value below each ``q_l``."""
    widths = [-(-w // 4) for w in layout.widths]
    size = SKETCH_ROWS * sum(widths)
    if not isinstance(text, str) or len(text) != size or any(ch not in "0123456789abcdef" for ch in text):
        raise ProtocolError(f"sketch must be {size} lowercase hex characters", client=client)
    rows, pos = [], 0
    for _ in range(SKETCH_ROWS):
        row = []
        for w, q in zip(widths, layout.moduli):
            v = int(text[pos : pos + w], 16)
            if v >= q:
                raise ProtocolError("sketch value is not below its modulus", client=client)
            row.append(v)
            pos += w
        rows.append(row)
    return rows


def _sum_rows(rows: list[list[list[int]]], layout: CipherLayout) -> list[list[int]]:
    total = [[0] * len(layout.moduli) for _ in range(SKETCH_ROWS)]
    for sk in rows:
        for k in range(SKETCH_ROWS):
            for l, q in enumerate(layout.moduli):
                total[k][l] = (total[k][l] + sk[k][l]) % q
    return total


# --------------------------------------------------------------------------- key holder


@dataclass
class _Opening:
    """What the key holder remembers about one round between commit and open."""

    contributors: tuple[str, ...]
    digests: dict[str, str]
    words: np.ndarray | None
    challenge: bytes
    dim: int
    n_chunks: int
    context: Any = None
    frame: SealFrame | None = None
    fingerprint: str = ""
    opened: bool = False


def pledge_digest(pledges: Mapping[str, Any]) -> str:
    """Digest of a round's pledge list ``{client: [ciphertext digest, signature]}`` (what a reveal signs).

    >>> pledge_digest({"b": ["01", "02"], "a": ["03", "04"]}) == pledge_digest({"a": ["03", "04"], "b": ["01", "02"]})
    True
    """
    return _digest(json.dumps({c: list(v) for c, v in pledges.items()}, separators=(",", ":"),
                              sort_keys=True).encode())


class KeyHolder(ClientEndpoint):
    """The only holder of the secret key; decrypts one verified sum per round.

    A fresh key pair is made for every round (at its ``setup``): a key that leaks opens
    the ciphertexts of one round only. The key made at construction serves the first
    round set up.

    Args:
        codec: the scheme's codec (parameters, encoding).
        registry: client id -> raw Ed25519 public key (read-only view; the PKI stand-in).
        min_clients: fewest contributions a sum must hold to be opened.
        max_clients: most contributions a sum may hold (the modulus is sized for it).
        identity: its long-term Ed25519 signing key (a deployed key holder's, kept on its node);
            a fresh one when omitted.

    >>> from privspk.secagg import build_scheme
    >>> kh = build_scheme("bfv", {"he_trust": "no-client-colludes-with-server"}).keyholder()
    >>> kh.client_id, len(kh.verify_key)
    ('keyholder', 32)
    """

    client_id = KEYHOLDER

    def __init__(self, codec: HeCodec, *, registry: Mapping[str, bytes], min_clients: int, max_clients: int,
                 identity: Any = None) -> None:
        self._codec = codec
        self._new_key()
        self._identity, self.verify_key = _identity_pair(identity)
        self._registry = registry
        self._min = min_clients
        self._max = max_clients
        self._rounds: dict[tuple[str, int], _Opening] = {}
        self._keyed: tuple[str, int] | None = None  # the round the current key was handed out for
        self._frozen: dict[tuple[str, int], str] = {}  # round -> digest of its one frozen pledge list

    def _new_key(self) -> None:
        try:
            self._context = self._codec.make_context()
        except (ValueError, RuntimeError, TypeError) as exc:
            raise ConfigError(f"TenSEAL refused the {self._codec.kind} parameters: {exc}") from None
        self._public = public_context_bytes(self._context)
        self.fingerprint = _digest(self._public)
        self._frame = self._codec.frame(self._context)

    def public_context_bytes(self) -> bytes:
        """The context as the server and clients get it: public key only (checked)."""
        return self._public

    def submit(self, round_id: int, update: np.ndarray) -> None:
        """The key holder contributes nothing; always refuses."""
        raise ProtocolError("the key holder takes no update")

    def handle(self, request: bytes) -> bytes | None:
        """Answer the server's ``setup``, ``commit`` or ``open`` request; refuse anything else."""
        header, body = unpack(request, client=SERVER)
        if header["scheme"] != self._codec.kind:
            raise ProtocolError(f"request is for scheme {header['scheme']!r}, this key holder serves "
                                f"{self._codec.kind!r}", client=SERVER)
        stage = header["stage"]
        if stage == Stage.SETUP:
            return self._setup(header)
        if stage == Stage.FREEZE:
            return self._freeze(header, body)
        if stage == Stage.COMMIT:
            return self._commit(header, body)
        if stage == Stage.OPEN:
            return self._open(header, body)
        raise ProtocolError(f"the key holder does not answer stage {stage!r}", client=SERVER)

    def _reply(self, header: Mapping[str, Any], extra: Mapping[str, Any], body: bytes = b"") -> bytes:
        return pack({"scheme": self._codec.kind, "run": header["run"], "round": header["round"],
                     "stage": header["stage"], "sender": KEYHOLDER, **extra}, body)

    def _setup(self, header: Mapping[str, Any]) -> bytes:
        key = (header["run"], header["round"])
        if key in self._rounds:
            raise ProtocolError(f"round {key[1]} of run {key[0]!r} was already committed; it gets no new key",
                                client=SERVER)
        if self._keyed is not None and self._keyed != key:
            self._new_key()  # a fresh key per round: the previous round's key is dropped here
        self._keyed = key
        sig = _sign(self._identity, "context", header["run"], header["round"], self.fingerprint)
        return self._reply(header, {"fingerprint": self.fingerprint, "context_signature": sig}, self._public)

    def _freeze(self, header: Mapping[str, Any], body: bytes) -> bytes:
        """Sign the round's pledge list, once: clients reveal only against this list."""
        check_fields(header, {"pledges": dict, "dim": int, "n_chunks": int, "fingerprint": str}, client=SERVER)
        run, rnd = header["run"], header["round"]
        key = (run, rnd)
        if body:
            raise ProtocolError("a freeze request carries no body", client=SERVER)
        if key in self._frozen:
            raise ProtocolError(f"the pledge list of round {rnd} of run {run!r} is already frozen; one list per round",
                                client=SERVER)
        if self._keyed != key or header["fingerprint"] != self.fingerprint:
            raise ProtocolError(f"round {rnd} of run {run!r} is not the round set up under this key", client=SERVER)
        pledges, dim, n_chunks = header["pledges"], header["dim"], header["n_chunks"]
        if dim < 1 or n_chunks != self._codec.n_chunks(dim):
            raise ProtocolError(f"{n_chunks} chunks do not fit an update of dim {dim}", client=SERVER)
        if not self._min <= len(pledges) <= self._max:
            raise ProtocolError(f"{len(pledges)} pledges; a round needs {self._min} to {self._max}", client=SERVER)
        self._check_pledge_signatures(pledges, run, rnd, dim, n_chunks)
        listed = pledge_digest(pledges)
        self._frozen[key] = listed
        sig = _sign(self._identity, "frozen", run, rnd, self.fingerprint, listed)
        return self._reply(header, {"freeze_signature": sig})

    def _check_pledge_signatures(self, pledges: Mapping[str, Any], run: str, rnd: int, dim: int,
                                 n_chunks: int) -> None:
        for c, entry in pledges.items():
            if c not in self._registry:
                raise ProtocolError(f"pledge of {c!r}, not a registered client", client=SERVER)
            if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(v, str) for v in entry)):
                raise ProtocolError(f"pledge of {c} must be [digest, signature]", client=SERVER)
            _verify(self._registry[c], entry[1], "collect", run, rnd, c, self.fingerprint, dim, n_chunks, entry[0],
                    what=f"the pledge of {c}", client=SERVER)

    def _commit(self, header: Mapping[str, Any], body: bytes) -> bytes:
        check_fields(header, {"contributors": list, "digests": dict, "signatures": dict, "n_chunks": int,
                              "dim": int, "fingerprint": str, "pledges": dict, "reveals": dict}, client=SERVER)
        run, rnd = header["run"], header["round"]
        key = (run, rnd)
        if key in self._rounds:
            raise ProtocolError(f"round {rnd} of run {run!r} was already committed; one sum is opened per round",
                                client=SERVER)
        if self._keyed != key:
            raise ProtocolError(f"round {rnd} of run {run!r} was not set up (or another round was set up since); "
                                "its key is gone", client=SERVER)
        if header["fingerprint"] != self.fingerprint:
            raise ProtocolError("the sum is announced under another context", client=SERVER)
        who = header["contributors"]
        if not all(isinstance(c, str) for c in who) or len(set(who)) != len(who):
            raise ProtocolError("contributors must be distinct client ids", client=SERVER)
        if len(who) < self._min:
            raise ProtocolError(f"the sum holds {len(who)} contributions; the key holder opens only sums of at "
                                f"least min_clients = {self._min}", client=SERVER)
        if len(who) > self._max:
            raise ProtocolError(f"the sum holds {len(who)} contributions, more than max_clients = {self._max} "
                                "that the modulus is sized for", client=SERVER)
        unknown = sorted(c for c in who if c not in self._registry)
        if unknown:
            raise ProtocolError(f"contributors {unknown} are not registered clients", client=SERVER)
        digests, sigs = header["digests"], header["signatures"]
        if set(digests) != set(who) or set(sigs) != set(who):
            raise ProtocolError("digests and signatures must cover exactly the contributors", client=SERVER)
        dim, n_chunks = header["dim"], header["n_chunks"]
        if dim < 1 or n_chunks != self._codec.n_chunks(dim):
            raise ProtocolError(f"{n_chunks} chunks do not fit an update of dim {dim}", client=SERVER)
        for c in who:
            if not isinstance(digests[c], str) or not isinstance(sigs[c], str):
                raise ProtocolError(f"digest and signature of {c} must be strings", client=SERVER)
            _verify(self._registry[c], sigs[c], "collect", run, rnd, c, self.fingerprint, dim, n_chunks,
                    digests[c], what=f"the ciphertext digest of {c}", client=SERVER)
        self._check_pledges(header, who, run, rnd, dim, n_chunks)
        words = self._codec.layout.unpack(body, n_chunks=n_chunks, client=SERVER)
        challenge = secrets.token_bytes(32)
        for stale in self._rounds.values():  # one round is open at a time: older commits can no longer open
            stale.words, stale.opened, stale.context = None, True, None
        self._rounds[key] = _Opening(tuple(who), dict(digests), words, challenge, dim, n_chunks,
                                     context=self._context, frame=self._frame, fingerprint=self.fingerprint)
        return self._reply(header, {"challenge": challenge.hex(), "sum_digest": _digest(body)})

    def _check_pledges(self, header: Mapping[str, Any], who: list[str], run: str, rnd: int, dim: int,
                       n_chunks: int) -> None:
        """Commit-before-reveal: every contributor pledged its digest in the one list this key holder
        froze for the round, and revealed against that list (so no pledged ciphertext was chosen
        after any ciphertext of the round had been shown)."""
        pledges, reveals = header["pledges"], header["reveals"]
        if set(reveals) != set(who):
            raise ProtocolError("reveal signatures must cover exactly the contributors", client=SERVER)
        self._check_pledge_signatures(pledges, run, rnd, dim, n_chunks)
        listed = pledge_digest(pledges)
        if self._frozen.get((run, rnd)) != listed:
            raise ProtocolError("the pledges are not the list this key holder froze for the round", client=SERVER)
        for c in who:
            if c not in pledges or pledges[c][0] != header["digests"][c]:
                raise ProtocolError(f"{c} contributes a ciphertext it did not pledge before the reveal",
                                    client=SERVER)
            if not isinstance(reveals[c], str):
                raise ProtocolError(f"reveal signature of {c} must be a string", client=SERVER)
            _verify(self._registry[c], reveals[c], "reveal", run, rnd, c, self.fingerprint, listed,
                    what=f"the reveal of {c} (it revealed after seeing another pledge list)", client=SERVER)

    def _open(self, header: Mapping[str, Any], body: bytes) -> bytes:
        check_fields(header, {"sketches": dict, "sketch_signatures": dict, "forwarded": list}, client=SERVER)
        run, rnd = header["run"], header["round"]
        state = self._rounds.get((run, rnd))
        if state is None:
            raise ProtocolError(f"round {rnd} of run {run!r} has no committed sum", client=SERVER)
        if state.opened or state.words is None:
            raise ProtocolError(f"round {rnd} of run {run!r} was already opened (or refused); "
                                "one decryption per round", client=SERVER)
        state.opened = True  # whatever happens next, this round's sum is never opened again
        layout = self._codec.layout
        sketches, sigs, forwarded = header["sketches"], header["sketch_signatures"], header["forwarded"]
        if (set(sketches) | set(forwarded)) != set(state.contributors) or set(sketches) & set(forwarded) \
                or len(set(forwarded)) != len(forwarded) or set(sigs) != set(sketches):
            raise ProtocolError("each contributor needs exactly one signed sketch or its forwarded ciphertext",
                                client=SERVER)
        size = layout.packed_bytes(state.n_chunks)
        if len(body) != size * len(forwarded):
            raise ProtocolError(f"forwarded ciphertexts take {size * len(forwarded)} bytes, got {len(body)}",
                                client=SERVER)
        parts: list[list[list[int]]] = []
        ch_hex = state.challenge.hex()
        for c in sorted(sketches):
            rows = _sketch_rows(sketches[c], layout, client=SERVER)
            if not isinstance(sigs[c], str):
                raise ProtocolError(f"sketch signature of {c} must be a string", client=SERVER)
            _verify(self._registry[c], sigs[c], "sketch", run, rnd, c, state.fingerprint, state.digests[c], ch_hex,
                    sketches[c], what=f"the sketch of {c}", client=SERVER)
            parts.append(rows)
        for i, c in enumerate(forwarded):
            blob = body[i * size : (i + 1) * size]
            if _digest(blob) != state.digests[c]:
                raise ProtocolError(f"forwarded ciphertext of {c} is not the one it signed", client=SERVER)
            parts.append(layout.sketch(layout.unpack(blob, n_chunks=state.n_chunks, client=SERVER), state.challenge))
        words, state.words = state.words, None
        if _sum_rows(parts, layout) != layout.sketch(words, state.challenge):
            raise ProtocolError("the sum is not the sum of the contributors' ciphertexts; refusing to decrypt",
                                client=SERVER)
        context, state.context = state.context, None
        total = self._codec.decrypt(context, words, state.frame, dim=state.dim,
                                    n_summands=len(state.contributors))
        log.info("key holder opened run %s round %s: %d contributions", run, rnd, len(state.contributors))
        return self._reply(header, {"included": list(state.contributors)},
                           np.ascontiguousarray(total, dtype="<f8").tobytes())


# --------------------------------------------------------------------------- client


@dataclass
class _Sent:
    run: str
    round_id: int
    packed: bytes
    digest: str
    fingerprint: str
    n_chunks: int
    revealed: bool = False


class HeClient(ClientEndpoint):
    """A client of an HE scheme: encrypts under the key holder's signed public context.

    >>> from privspk.secagg import build_scheme
    >>> c = build_scheme("bfv", {"he_trust": "no-client-colludes-with-server"}).client("c0")
    >>> c.client_id, len(c.public_key)
    ('c0', 32)

    Args:
        client_id: this client's id.
        codec: the scheme's codec.
        keyholder_key: the key holder's raw Ed25519 public key (from the PKI stand-in).
        rng: randomness for encoding (stochastic rounding); encryption uses SEAL's own CSPRNG.
        identity: its long-term Ed25519 signing key (a deployed node's); a fresh one when omitted.
    """

    def __init__(self, client_id: str, codec: HeCodec, *, keyholder_key: bytes, rng: np.random.Generator,
                 identity: Any = None) -> None:
        self.client_id = client_id
        self._codec = codec
        self._kh_key = keyholder_key
        self._rng = rng
        self._identity, self.public_key = _identity_pair(identity)
        self._updates: dict[int, np.ndarray] = {}
        self._sent: _Sent | None = None
        self._context: tuple[str, Any] | None = None

    def submit(self, round_id: int, update: np.ndarray) -> None:
        """Store the float update to encrypt in ``round_id``.

        >>> from privspk.secagg import build_scheme
        >>> build_scheme("ckks", {"he_trust": "no-client-colludes-with-server"}).client("c0").submit(0, np.array([np.nan]))
        Traceback (most recent call last):
        ...
        privspk.errors.ConfigError: client c0: update must be a finite 1-D vector
        """
        if type(round_id) is not int or round_id < 0:
            raise ConfigError(f"client {self.client_id}: round_id must be a non-negative int, got {round_id!r}")
        u = np.asarray(update, dtype=np.float64)
        if u.ndim != 1 or u.size == 0 or not np.all(np.isfinite(u)):
            raise ConfigError(f"client {self.client_id}: update must be a finite 1-D vector")
        self._updates[round_id] = u.copy()

    def handle(self, request: bytes) -> bytes | None:
        """Answer ``pledge`` (signed digest), ``collect`` (ciphertext) or ``verify`` (sketch); refuse anything else."""
        header, body = unpack(request, client=SERVER)
        expect(header, scheme=self._codec.kind, run=header["run"], round_id=header["round"],
               stage=header["stage"], client=SERVER)
        self.check_run(header["run"], who=SERVER)  # a bound client serves its own run only
        if header["stage"] == Stage.PLEDGE:
            return self._pledge(header, body)
        if header["stage"] == Stage.COLLECT:
            return self._reveal(header, body)
        if header["stage"] == Stage.VERIFY:
            return self._verify_request(header)
        raise ProtocolError(f"client {self.client_id} does not answer stage {header['stage']!r}", client=SERVER)

    def _load(self, blob: bytes, fingerprint: str) -> Any:
        if self._context is None or self._context[0] != fingerprint:
            ctx = load_public_context(blob, who=SERVER)
            self._codec.check_context(ctx, who=SERVER)
            self._context = (fingerprint, ctx)
        return self._context[1]

    def _pledge(self, header: Mapping[str, Any], body: bytes) -> bytes:
        """Encrypt now, send only the signed digest: the ciphertext is fixed before any is shown."""
        check_fields(header, {"dim": int, "fingerprint": str, "context_signature": str}, client=SERVER)
        run, rnd, fp = header["run"], header["round"], header["fingerprint"]
        update = self._updates.get(rnd)
        if update is None:
            raise ProtocolError(f"client {self.client_id} has no update for round {rnd}", client=SERVER)
        if update.shape[0] != header["dim"]:
            raise ProtocolError(f"server asks for dim {header['dim']}, the update has {update.shape[0]}",
                                client=SERVER)
        if _digest(body) != fp:
            raise ProtocolError("the context does not match its fingerprint", client=SERVER)
        _verify(self._kh_key, header["context_signature"], "context", run, rnd, fp,
                what="the public context (not signed by the key holder for this round)", client=SERVER)
        ctx = self._load(body, fp)
        # the key holder of this context opens one sum per round: the ciphertext fixes the sum to it
        context = json.dumps({"scheme": self._codec.kind, "fingerprint": fp}, sort_keys=True, separators=(",", ":"))
        self.check_release(run_id=run, round_id=rnd, context=context, opens=True)
        words = self._codec.encrypt(ctx, update, rng=self._rng)
        packed = self._codec.layout.pack(words)
        digest = _digest(packed)
        n_chunks = int(words.shape[0])
        sig = _sign(self._identity, "collect", run, rnd, self.client_id, fp, header["dim"], n_chunks, digest)
        del self._updates[rnd]  # one ciphertext per round: a replayed request finds nothing to send
        self._sent = _Sent(run, rnd, packed, digest, fp, n_chunks)
        return pack({"scheme": self._codec.kind, "run": run, "round": rnd, "stage": Stage.PLEDGE,
                     "sender": self.client_id, "n_chunks": n_chunks, "fingerprint": fp, "digest": digest,
                     "signature": sig})

    def _reveal(self, header: Mapping[str, Any], body: bytes) -> bytes:
        """Send the pledged ciphertext, signing the pledge list it was revealed against."""
        check_fields(header, {"pledges": dict, "freeze_signature": str}, client=SERVER)
        if body:
            raise ProtocolError("a reveal request carries no body", client=SERVER)
        run, rnd, pledges = header["run"], header["round"], header["pledges"]
        sent = self._sent
        if sent is None or (sent.run, sent.round_id) != (run, rnd) or sent.revealed:
            raise ProtocolError(f"client {self.client_id} pledged no ciphertext in round {rnd} (or already revealed "
                                "it)", client=SERVER)
        _verify(self._kh_key, header["freeze_signature"], "frozen", run, rnd, sent.fingerprint, pledge_digest(pledges),
                what="the pledge list (not the one the key holder froze for this round)", client=SERVER)
        mine = pledges.get(self.client_id)
        if not (isinstance(mine, list) and len(mine) == 2 and mine[0] == sent.digest):
            raise ProtocolError("the pledge list does not hold this client's pledge", client=SERVER)
        sent.revealed = True  # revealed once, against one pledge list
        sig = _sign(self._identity, "reveal", run, rnd, self.client_id, sent.fingerprint, pledge_digest(pledges))
        return pack({"scheme": self._codec.kind, "run": run, "round": rnd, "stage": Stage.COLLECT,
                     "sender": self.client_id, "reveal_signature": sig}, sent.packed)

    def _verify_request(self, header: Mapping[str, Any]) -> bytes:
        check_fields(header, {"challenge": str, "digest": str}, client=SERVER)
        run, rnd = header["run"], header["round"]
        sent = self._sent
        if sent is None or (sent.run, sent.round_id) != (run, rnd) or not sent.revealed:
            raise ProtocolError(f"client {self.client_id} sent no ciphertext in round {rnd} "
                                "(or already answered its challenge)", client=SERVER)
        if header["digest"] != sent.digest:
            raise ProtocolError("the challenge names a ciphertext this client did not send", client=SERVER)
        challenge = _hex32(header["challenge"], "challenge", SERVER)
        self._sent = None
        layout = self._codec.layout
        rows = layout.sketch(layout.unpack(sent.packed, n_chunks=sent.n_chunks), challenge)
        text = _sketch_hex(rows, layout)
        sig = _sign(self._identity, "sketch", run, rnd, self.client_id, sent.fingerprint, sent.digest,
                    challenge.hex(), text)
        return pack({"scheme": self._codec.kind, "run": run, "round": rnd, "stage": Stage.VERIFY,
                     "sender": self.client_id, "sketch": text, "signature": sig})


# --------------------------------------------------------------------------- server


class HeServerRound(ServerRound):
    """The server's side of one HE round; it holds the public context and ciphertexts only.

    >>> from privspk.secagg import build_scheme, KEYHOLDER
    >>> s = build_scheme("ckks", {"he_trust": "no-client-colludes-with-server"})
    >>> server = s.server_round(RoundSpec(run_id="r", round_id=0, clients=("a", "b"), dim=5))
    >>> server.stage, list(server.outbox()) == [KEYHOLDER]
    ('setup', True)

    Args:
        spec: the round's announcement.
        codec_kind: scheme name on the wire.
        layout: ciphertext layout of the scheme's context.
        n_chunks: ciphertexts per update.
        min_clients: fewest contributions a sum must hold.
        registry: client id -> raw Ed25519 public key.
        keyholder_key: the key holder's raw Ed25519 public key.
    """

    def __init__(self, spec: RoundSpec, *, codec_kind: str, layout: CipherLayout, n_chunks: int, min_clients: int,
                 registry: Mapping[str, bytes], keyholder_key: bytes) -> None:
        self.spec = spec
        self._kind = codec_kind
        self._layout = layout
        self._n_chunks = n_chunks
        self._min = min_clients
        self._registry = dict(registry)
        self._kh_key = keyholder_key
        self._stage = Stage.SETUP
        self._public: bytes | None = None
        self._fingerprint = ""
        self._context_sig = ""
        self._sum = layout.zeros(n_chunks)
        self._lazy = 0  # additions since the sum was last reduced
        self._packed: dict[str, bytes] = {}
        self._pledges: dict[str, list[str]] = {}
        self._reveals: dict[str, str] = {}
        self._digests: dict[str, str] = {}
        self._signatures: dict[str, str] = {}
        self._rejected: dict[str, str] = {}
        self._replied: set[str] = set()
        self._challenge: bytes | None = None
        self._freeze_sig: str | None = None
        self._sketches: dict[str, list[list[int]]] = {}
        self._sketch_text: dict[str, str] = {}
        self._sketch_sigs: dict[str, str] = {}
        self._forwarded: list[str] = []
        self._total: np.ndarray | None = None

    @property
    def stage(self) -> str:
        """Current stage (see :class:`Stage`)."""
        return self._stage

    def _header(self, stage: str, **extra: Any) -> dict[str, Any]:
        return {"scheme": self._kind, "run": self.spec.run_id, "round": self.spec.round_id, "stage": stage,
                "sender": SERVER, **extra}

    def outbox(self) -> dict[str, bytes]:
        """Requests of the current stage, keyed by recipient."""
        st = self._stage
        if st == Stage.SETUP:
            return {KEYHOLDER: pack(self._header(st))}
        if st == Stage.PLEDGE and self._public is not None:
            req = pack(self._header(st, dim=self.spec.dim, fingerprint=self._fingerprint,
                                    context_signature=self._context_sig), self._public)
            return {c: req for c in self.spec.clients}
        if st == Stage.FREEZE:
            return {KEYHOLDER: pack(self._header(st, pledges=self._pledges, dim=self.spec.dim,
                                                 n_chunks=self._n_chunks, fingerprint=self._fingerprint))}
        if st == Stage.COLLECT and self._freeze_sig is not None:
            req = pack(self._header(st, pledges=self._pledges, freeze_signature=self._freeze_sig))
            return {c: req for c in sorted(self._pledges)}
        if st == Stage.COMMIT:
            who = sorted(self._packed)
            return {KEYHOLDER: pack(self._header(st, contributors=who, digests=self._digests,
                                                 signatures=self._signatures, n_chunks=self._n_chunks,
                                                 dim=self.spec.dim, fingerprint=self._fingerprint,
                                                 pledges=self._pledges, reveals=self._reveals),
                                    self._layout.pack(self._sum))}
        if st == Stage.VERIFY and self._challenge is not None:
            return {c: pack(self._header(st, challenge=self._challenge.hex(), digest=self._digests[c]))
                    for c in sorted(self._packed)}
        if st == Stage.OPEN:
            body = b"".join(self._packed[c] for c in self._forwarded)
            return {KEYHOLDER: pack(self._header(st, sketches=self._sketch_text, sketch_signatures=self._sketch_sigs,
                                                 forwarded=self._forwarded), body)}
        return {}

    def receive(self, sender: str, payload: bytes) -> None:
        """Take one reply; a bad one raises ProtocolError naming its sender (dropped at ``collect``)."""
        try:
            st = self._stage
            expected = {KEYHOLDER} if st in (Stage.SETUP, Stage.FREEZE, Stage.COMMIT, Stage.OPEN) else (
                set(self.spec.clients) if st == Stage.PLEDGE else set(self._pledges) if st == Stage.COLLECT
                else set(self._packed) if st == Stage.VERIFY else set())
            if sender not in expected:
                raise ProtocolError(f"not expected to send at stage {st}", client=sender)
            if sender in self._replied:
                raise ProtocolError("second message in the same stage (duplicate or replay)", client=sender)
            header, body = unpack(payload, client=sender)
            expect(header, scheme=self._kind, run=self.spec.run_id, round_id=self.spec.round_id, stage=st,
                   client=sender)
            if st == Stage.SETUP:
                self._on_context(header, body)
            elif st == Stage.PLEDGE:
                self._on_pledge(sender, header, body)
            elif st == Stage.FREEZE:
                check_fields(header, {"freeze_signature": str}, client=sender)
                _verify(self._kh_key, header["freeze_signature"], "frozen", self.spec.run_id, self.spec.round_id,
                        self._fingerprint, pledge_digest(self._pledges), what="the frozen pledge list",
                        client=KEYHOLDER)
                self._freeze_sig = header["freeze_signature"]
            elif st == Stage.COLLECT:
                self._on_ciphertext(sender, header, body)
            elif st == Stage.COMMIT:
                check_fields(header, {"challenge": str}, client=sender)
                if body:
                    raise ProtocolError("a challenge reply carries no body", client=sender)
                self._challenge = _hex32(header["challenge"], "challenge", sender)
            elif st == Stage.VERIFY:
                self._on_sketch(sender, header, body)
            else:
                self._on_sum(header, body)
            self._replied.add(sender)
        except ProtocolError as exc:
            if self._stage in (Stage.PLEDGE, Stage.COLLECT) and sender in self.spec.clients \
                    and sender not in self._packed:
                self._rejected.setdefault(sender, exc.reason)
            raise

    def _on_context(self, header: Mapping[str, Any], body: bytes) -> None:
        check_fields(header, {"fingerprint": str, "context_signature": str}, client=KEYHOLDER)
        if _digest(body) != header["fingerprint"]:
            raise ProtocolError("public context does not match its fingerprint", client=KEYHOLDER)
        _verify(self._kh_key, header["context_signature"], "context", self.spec.run_id, self.spec.round_id,
                header["fingerprint"], what="the public context", client=KEYHOLDER)
        ctx = load_public_context(body, who=KEYHOLDER)  # KeyLeakError aborts the round
        if ctx.is_private():
            raise KeyLeakError("the server was handed a private context; refusing it")
        check_context_moduli(ctx, self._layout, who=KEYHOLDER)
        self._public, self._fingerprint, self._context_sig = body, header["fingerprint"], header["context_signature"]

    def _on_pledge(self, sender: str, header: Mapping[str, Any], body: bytes) -> None:
        check_fields(header, {"n_chunks": int, "fingerprint": str, "digest": str, "signature": str}, client=sender)
        if body:
            raise ProtocolError("a pledge carries no body (the ciphertext comes at collect)", client=sender)
        if header["fingerprint"] != self._fingerprint:
            raise ProtocolError("ciphertext is under another context (fingerprint differs)", client=sender)
        if header["n_chunks"] != self._n_chunks:
            raise ProtocolError(f"{header['n_chunks']} ciphertexts sent, the round needs {self._n_chunks}",
                                client=sender)
        if sender not in self._registry:
            raise ProtocolError("not a registered client", client=sender)
        _hex32(header["digest"], "digest", sender)
        _verify(self._registry[sender], header["signature"], "collect", self.spec.run_id, self.spec.round_id,
                sender, self._fingerprint, self.spec.dim, self._n_chunks, header["digest"], what="the ciphertext",
                client=sender)
        self._pledges[sender] = [header["digest"], header["signature"]]

    def _on_ciphertext(self, sender: str, header: Mapping[str, Any], body: bytes) -> None:
        check_fields(header, {"reveal_signature": str}, client=sender)
        want = self._layout.packed_bytes(self._n_chunks)
        if len(body) != want:
            raise ProtocolError(f"{self._n_chunks} packed ciphertexts take {want} bytes, got {len(body)} "
                                f"({'truncated' if len(body) < want else 'oversized'})", client=sender)
        words = self._layout.unpack(body, n_chunks=self._n_chunks, client=sender)
        digest = header["body_sha256"]  # wire.unpack checked it against the body
        pledged, signature = self._pledges[sender]
        if pledged != digest:
            raise ProtocolError("ciphertext does not match its pledged (signed) digest", client=sender)
        _verify(self._registry[sender], header["reveal_signature"], "reveal", self.spec.run_id, self.spec.round_id,
                sender, self._fingerprint, pledge_digest(self._pledges), what="the reveal", client=sender)
        if self._lazy + 1 >= self._layout.lazy_adds:
            self._layout.reduce(self._sum)
            self._lazy = 0
        np.add(self._sum, words, out=self._sum)  # only after every check passed; reduced before use
        self._lazy += 1
        self._packed[sender] = body
        self._digests[sender] = digest
        self._signatures[sender] = signature
        self._reveals[sender] = header["reveal_signature"]

    def _on_sketch(self, sender: str, header: Mapping[str, Any], body: bytes) -> None:
        check_fields(header, {"sketch": str, "signature": str}, client=sender)
        if body:
            raise ProtocolError("a sketch reply carries no body", client=sender)
        rows = _sketch_rows(header["sketch"], self._layout, client=sender)
        if self._challenge is None:
            raise ProtocolError("no challenge was issued in this round", client=sender)
        _verify(self._registry[sender], header["signature"], "sketch", self.spec.run_id, self.spec.round_id,
                sender, self._fingerprint, self._digests[sender], self._challenge.hex(), header["sketch"],
                what="the sketch", client=sender)
        self._sketches[sender] = rows
        self._sketch_text[sender] = header["sketch"]
        self._sketch_sigs[sender] = header["signature"]

    def _on_sum(self, header: Mapping[str, Any], body: bytes) -> None:
        check_fields(header, {"included": list}, client=KEYHOLDER)
        if sorted(header["included"]) != sorted(self._packed):
            raise ProtocolError("key holder opened a sum of other contributors", client=KEYHOLDER)
        if len(body) != 8 * self.spec.dim:
            raise ProtocolError(f"opened sum has {len(body)} bytes, expected {8 * self.spec.dim}", client=KEYHOLDER)
        total = np.frombuffer(body, dtype="<f8").astype(np.float64)
        if not np.all(np.isfinite(total)):
            raise ProtocolError("opened sum holds NaN or inf", client=KEYHOLDER)
        self._total = total

    def _check_sketches(self) -> None:
        """Keep the sketches that add up; the other contributors' ciphertexts get forwarded."""
        layout = self._layout
        if self._challenge is None:
            raise AggregationError("no challenge was issued in this round")
        silent = [c for c in sorted(self._packed) if c not in self._sketches]
        rest = layout.zeros(self._n_chunks)
        for c in silent:
            layout.add_into(rest, layout.unpack(self._packed[c], n_chunks=self._n_chunks))
        target = layout.sketch(layout.sub_into(self._sum.copy(), rest), self._challenge)
        if _sum_rows(list(self._sketches.values()), layout) != target:
            for c in sorted(self._sketches):  # someone lied: check each (costs a sketch per client)
                own = layout.sketch(layout.unpack(self._packed[c], n_chunks=self._n_chunks), self._challenge)
                if own != self._sketches[c]:
                    log.warning("client %s sent a wrong sketch; forwarding its ciphertext instead", c)
                    del self._sketches[c], self._sketch_text[c], self._sketch_sigs[c]
        self._forwarded = sorted(c for c in self._packed if c not in self._sketches)

    def advance(self) -> bool:
        """Close the current stage; AggregationError when the round cannot finish (nothing is opened)."""
        st = self._stage
        self._replied = set()
        if st == Stage.SETUP:
            if self._public is None:
                raise AggregationError("the key holder sent no valid public context; nothing can be encrypted")
            self._stage = Stage.PLEDGE
        elif st == Stage.PLEDGE:
            if len(self._pledges) < self._min:
                raise AggregationError(f"only {len(self._pledges)} of {len(self.spec.clients)} clients pledged a "
                                       f"ciphertext; the key holder opens sums of at least {self._min}")
            self._stage = Stage.FREEZE
        elif st == Stage.FREEZE:
            if self._freeze_sig is None:
                raise AggregationError("the key holder refused to freeze the pledge list; nothing is revealed")
            self._stage = Stage.COLLECT
        elif st == Stage.COLLECT:
            if len(self._packed) < self._min:
                raise AggregationError(f"only {len(self._packed)} of {len(self.spec.clients)} clients sent a valid "
                                       f"ciphertext; the key holder opens sums of at least {self._min}")
            self._layout.reduce(self._sum)
            self._lazy = 0
            self._stage = Stage.COMMIT
        elif st == Stage.COMMIT:
            if self._challenge is None:
                raise AggregationError("the key holder refused to commit to the sum; nothing is opened")
            self._stage = Stage.VERIFY
        elif st == Stage.VERIFY:
            self._check_sketches()
            self._stage = Stage.OPEN
        elif st == Stage.OPEN:
            if self._total is None:
                raise AggregationError("the key holder refused to open the sum")
            self._stage = Stage.DONE
            return False
        else:
            return False
        return True

    def result(self) -> AggregateResult:
        """The opened sum and who is in it."""
        if self._stage != Stage.DONE or self._total is None:
            raise AggregationError(f"round not finished (stage {self._stage})")
        dropped = {c: self._rejected.get(c, "no reply at stage collect" if c in self._pledges
                                         else "no reply at stage pledge") for c in self.spec.clients
                   if c not in self._packed}
        return AggregateResult(total=self._total.copy(), included=tuple(sorted(self._packed)), dropped=dropped)


# --------------------------------------------------------------------------- scheme


def client_rng(seed: int | None, client_id: str) -> np.random.Generator:
    """Per-client encoding randomness: reproducible from ``seed``, else from the OS.

    >>> float(client_rng(1, "a").random()) == float(client_rng(1, "a").random())
    True
    """
    if seed is None:
        return np.random.default_rng()
    return np.random.default_rng([seed, int.from_bytes(hashlib.sha256(client_id.encode()).digest()[:8], "little")])


class HeScheme(Scheme):
    """Base of the HE schemes: one key holder, clients registered with it, fresh server rounds.

    The key holder is created on first use (``keyholder()``); clients get its public
    key, the server rounds get the registry and that key, never the key holder itself.

    Deployed, each party has its own scheme object: the key-holder node calls
    ``keyholder(identity=...)``; the server and the client nodes call
    :meth:`use_keyholder` with the key holder's verify key, so they never make a
    secret key, and :meth:`register` the other parties' identity keys.

    ``ckks`` and ``bfv`` refuse to start unless the ``he_trust`` option accepts that no
    client colludes with the server (:data:`HE_TRUST`, :func:`trust_problem`).

    >>> from privspk.secagg import build_scheme
    >>> s = build_scheme("bfv", {"min_clients": 3, "he_trust": HE_TRUST})
    >>> isinstance(s, HeScheme), s.min_survivors(10), s.dropout_tolerance(10)
    (True, 3, 7)
    """

    def __init__(self, config: Any, *, seed: int | None = None) -> None:
        super().__init__(config, seed=seed)
        problem = trust_problem(self.name, getattr(config, "he_trust", None))
        if problem is not None:
            raise ConfigError(problem)
        self.codec = self._make_codec(config)
        self._registry: dict[str, bytes] = {}
        self._clients: dict[str, HeClient] = {}
        self._keyholder: KeyHolder | None = None
        self._remote_key: bytes | None = None  # a key holder on another machine: its verify key only

    @abstractmethod
    def _make_codec(self, config: Any) -> HeCodec:
        """The codec for ``config``."""

    def keyholder(self, *, identity: Any = None) -> KeyHolder:
        """The run's key holder (created with a fresh key pair on first call).

        ``identity``: its Ed25519 signing key (:class:`~privspk.secagg.keys.IdentityKey`),
        used when the key holder is created; a fresh one when omitted. Refused after
        :meth:`use_keyholder`: this object then never holds a secret key.
        """
        if self._remote_key is not None:
            raise ConfigError("this scheme trusts a remote key holder (use_keyholder); it makes no secret key here")
        if self._keyholder is None:
            self._keyholder = KeyHolder(self.codec, registry=MappingProxyType(self._registry),
                                        min_clients=self.config.min_clients, max_clients=self.config.max_clients,
                                        identity=identity)
        elif identity is not None and identity.public_bytes() != self._keyholder.verify_key:
            raise ConfigError("the key holder already exists with another identity key")
        return self._keyholder

    def use_keyholder(self, verify_key: bytes) -> None:
        """Trust the key holder that runs elsewhere and signs with ``verify_key`` (raw Ed25519).

        Clients then check contexts against it and server rounds its signatures; no key
        holder (no secret key) is created here. The same key again is a no-op; another
        key is refused, as is a call after a local key holder or a client exists.

        >>> from privspk.secagg import build_scheme
        >>> s = build_scheme("bfv", {"he_trust": HE_TRUST})
        >>> s.use_keyholder(b"\x01" * 32)
        >>> s.keyholder()
        Traceback (most recent call last):
        ...
        privspk.errors.ConfigError: this scheme trusts a remote key holder (use_keyholder); it makes no secret key here
        """
        key = _raw_ed25519(verify_key, "the key holder's verify key")
        if self._remote_key is not None:
            if key != self._remote_key:
                raise KeyLeakError("the key holder's verify key is already set; refusing to replace it")
            return
        if self._keyholder is not None or self._clients:
            raise ConfigError("use_keyholder must come before the scheme makes its key holder or any client")
        self._remote_key = key

    def register(self, client_id: str, public_key: bytes) -> None:
        """Register the Ed25519 identity key of a client whose endpoint lives elsewhere.

        The same key again is a no-op; another key for a registered client is refused.

        >>> from privspk.secagg import build_scheme
        >>> s = build_scheme("bfv", {"he_trust": HE_TRUST})
        >>> s.register("c0", b"\x02" * 32); s.register("c0", b"\x02" * 32)
        >>> s.register("c0", b"\x03" * 32)
        Traceback (most recent call last):
        ...
        privspk.errors.KeyLeakError: client 'c0' already has an identity key; refusing to replace it
        """
        if not isinstance(client_id, str) or not client_id or client_id in (KEYHOLDER, SERVER):
            raise ConfigError(f"client id must be a non-empty string other than {KEYHOLDER!r}/{SERVER!r}, "
                              f"got {client_id!r}")
        key = _raw_ed25519(public_key, f"the identity key of {client_id!r}")
        if self._registry.get(client_id, key) != key:
            raise KeyLeakError(f"client {client_id!r} already has an identity key; refusing to replace it")
        self._registry[client_id] = key

    def _keyholder_key(self) -> bytes:
        return self._remote_key if self._remote_key is not None else self.keyholder().verify_key

    def client(self, client_id: str, *, identity: Any = None) -> HeClient:
        """The (cached) endpoint of ``client_id``; its public key joins the registry.

        ``identity``: the client's Ed25519 signing key (a deployed node's); fresh when omitted.
        """
        if not isinstance(client_id, str) or not client_id or client_id in (KEYHOLDER, SERVER):
            raise ConfigError(f"client id must be a non-empty string other than {KEYHOLDER!r}/{SERVER!r}, "
                              f"got {client_id!r}")
        if client_id not in self._clients:
            if identity is not None:
                self.register(client_id, identity.public_bytes())
            endpoint = HeClient(client_id, self.codec, keyholder_key=self._keyholder_key(),
                                rng=client_rng(self.seed, client_id), identity=identity)
            self._clients[client_id] = endpoint
            self._registry[client_id] = endpoint.public_key
        return self._clients[client_id]

    def server_round(self, spec: RoundSpec) -> HeServerRound:
        """A fresh server round; refuses more clients than the modulus is sized for."""
        if len(spec.clients) > self.config.max_clients:
            raise ConfigError(f"{len(spec.clients)} clients exceed max_clients = {self.config.max_clients} that "
                              f"this {self.name} configuration is sized for; raise max_clients")
        return HeServerRound(spec, codec_kind=self.codec.kind, layout=self.codec.layout,
                             n_chunks=self.codec.n_chunks(spec.dim), min_clients=self.config.min_clients,
                             registry=self._registry, keyholder_key=self._keyholder_key())

    def sum_tolerance(self, n_clients: int, *, bound: float = 1.0) -> float:
        """Largest error of one coordinate of the opened sum of ``n_clients`` updates in ``[-bound, bound]``.

        The codec's own error (quantisation or CKKS noise) plus what clipping to ``clip`` removes.
        """
        n = max(1, int(n_clients))
        return n * max(0.0, float(bound) - float(self.config.clip)) + self.codec.sum_tolerance(n)

    def min_survivors(self, n_clients: int) -> int:
        """``min_clients``: fewer valid ciphertexts at ``collect`` fail the round (nothing is opened)."""
        return self.config.min_clients

    def dropout_tolerance(self, n_clients: int) -> int:
        """All but ``min_clients`` may drop: at ``collect`` they leave the sum; at ``verify`` their
        ciphertext is forwarded to the key holder and they stay in it."""
        return max(0, n_clients - self.config.min_clients)
