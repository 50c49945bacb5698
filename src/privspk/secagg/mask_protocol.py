"""What client and server of the ``mask`` scheme agree on: options, stages, round parameters, message layout.

A round runs these stages, each one request from the server and one reply from
each client still in the round:

=============  =============================================  ==================================================
stage          server sends                                   client replies
=============  =============================================  ==================================================
``advertise``  the client list and dimension                  round keys ``c_pk``, ``s_pk``, a commitment to its
                                                              self-mask seed, signed with its identity key
``share``      its neighbours' signed adverts                 its seed and ``s`` secret key, Shamir-shared and
                                                              sealed to each neighbour
``collect``    the sealed shares addressed to it              ``y = x + PRG(b) + sum_v +-PRG(s_uv) mod 2^k``
``confirm``    the survivor set ``S`` (who sent ``y``) and    its signature on ``(S, U)``, after checking that
               the set ``U`` of clients whose shares were     ``S`` is within ``U`` and that its ``collect``
               forwarded at ``collect``                       senders were exactly its neighbours in ``U``
``unmask``     ``S``, ``U``, the dropped neighbours, the      seed shares of survivors, ``s``-key shares of the
               signatures                                     dropped -- never both for one client
=============  =============================================  ==================================================

The ``confirm`` stage is SecAgg's consistency check: a client reveals shares
only after at least ``t`` of its neighbours signed the very view ``(S, U)`` it was
shown. What keeps a server -- with up to ``colluders`` colluding clients -- from
collecting both secrets of one client is the share count: each honest holder
reveals at most one of them, and ``t`` is chosen with ``2t - n > colluders``
(:func:`~privspk.secagg.graph.threshold_for`). Signing ``U`` binds the sender list
of ``collect``: a client that was told only some of its neighbours shared (so it
masked only against them) refuses to sign a survivor set holding a neighbour it
never masked with, and without its signature a survivor set of ``t`` signers needs
``2t - n > colluders`` more clients than there are (Bonawitz et al. 2017, t > 2n/3
against an active server, is the same bound at ``colluders < n/3``).

Both sides derive the same :class:`RoundParams` (quantiser, graph, threshold and
a digest binding them) from the options and the announced client list, and every
signature, KDF and sealed share is bound to that digest.

>>> p = RoundParams.build(MaskConfig(bits="auto"), run_id="r", round_id=0, clients=("a", "b", "c"), dim=5)
>>> p.quantiser.bits, p.quantiser.dtype.__name__, p.graph.degree, p.threshold
(14, 'uint16', 2, 3)
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import numbers
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from privspk.errors import ConfigError, ProtocolError
from privspk.secagg.graph import (
    Graph,
    check_dropout,
    default_degree,
    degree_for_dropout,
    neighbourhood_graph,
    threshold_for,
    tolerated_colluders,
)
from privspk.secagg.keys import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, confirm_message, encode_ids, sealed_size
from privspk.secagg.quantise import Quantiser, headroom_for
from privspk.secagg.wire import ENVELOPE_FIELDS, check_fields, expect, pack

SCHEME = "mask"
SERVER = "server"

SEED_BYTES = 16
"""Self-mask seed ``b_u`` (128 bits)."""
SKEY_BYTES = 32
"""X25519 secret key of the mask key pair ``s``."""
SHARE_BYTES = SEED_BYTES + SKEY_BYTES
"""One holder's share of a client's (seed, s key): 16 + 32 bytes."""
SEALED_BYTES = sealed_size(SHARE_BYTES)
"""A sealed share on the wire (nonce + ciphertext + tag)."""
ADVERT_BYTES = 3 * PUBLIC_KEY_BYTES + SIGNATURE_BYTES
"""``c_pk | s_pk | seed commitment | signature``."""

_MIN_AUTO_BITS = 12


def _real(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


class Stage:
    """Stage names of a masked round, in order (``done`` closes it).

    >>> Stage.after(None), Stage.after(Stage.COLLECT), Stage.after(Stage.UNMASK)
    ('advertise', 'confirm', 'done')
    """

    ADVERTISE = "advertise"
    SHARE = "share"
    COLLECT = "collect"
    CONFIRM = "confirm"
    UNMASK = "unmask"
    DONE = "done"
    ORDER = (ADVERTISE, SHARE, COLLECT, CONFIRM, UNMASK, DONE)

    @classmethod
    def after(cls, stage: str | None) -> str | None:
        """The stage that follows ``stage`` (``None``: nothing answered yet); ``None`` after ``done``."""
        if stage is None:
            return cls.ADVERTISE
        i = cls.ORDER.index(stage)
        return cls.ORDER[i + 1] if i + 1 < len(cls.ORDER) else None


def check_transition(current: str | None, requested: object, *, client: str | None = None) -> str:
    """Accept ``requested`` only if it is the stage right after ``current``; else ProtocolError.

    >>> check_transition(Stage.SHARE, "collect")
    'collect'
    >>> check_transition(Stage.SHARE, "unmask", client="server")
    Traceback (most recent call last):
    ...
    privspk.errors.ProtocolError: client server: request for stage 'unmask' out of order: \
last stage was 'share', expected 'collect'
    """
    want = Stage.after(current)
    if requested not in Stage.ORDER[:-1]:
        raise ProtocolError(f"unknown stage {requested!r}; stages are {list(Stage.ORDER[:-1])}", client=client)
    if requested != want:
        last = "none (round not started)" if current is None else repr(current)
        nxt = "nothing (round finished)" if want is None else repr(want)
        raise ProtocolError(
            f"request for stage {requested!r} out of order: last stage was {last}, expected {nxt}", client=client
        )
    return requested


@dataclass(frozen=True)
class MaskConfig:
    """Options of the ``mask`` scheme (SecAgg / SecAgg+ pairwise masks).

    Args:
        clip: coordinate range: each value is clipped to ``[-clip, clip]`` before quantising.
        bits: width of one quantised value, or ``"auto"``: the widest value (at least 12
            bits) whose K-fold sum fits a uint16 word (K <= 16 without noise headroom),
            else 16-bit values in uint32 words.
        threshold: a secret is rebuilt from *more than* this fraction of the
            ``degree + 1`` clients holding its shares (at least 2); in ``[0.5, 1)``.
            ``t`` is also raised until ``2t - n > colluders``; ``n - t`` dropouts per
            neighbourhood are tolerated.
        colluders: clients that may collude with the server (in the whole round) whose
            help must not let it open any one honest update; set from ``[secagg]
            colluders`` (default 1). ``t`` grows with it; rounds with fewer than
            ``colluders + 2`` holders per secret are refused.
        degree: neighbours per client; ``None`` = complete graph for K <= 16, else
            ``2 * ceil(log2 K)`` (SecAgg+). An int forces it (complete if >= K - 1).
        noise_headroom_bits: extra bits per value for distributed-DP integer noise
            the client adds before masking (see ``MaskClient.submit_integers``).
        dropout: the share of a round's clients expected to stop answering before they
            send their masked update (each independently). With ``degree=None`` and
            ``dropout > 0`` the degree is the smallest (at least the default) whose
            union bound on a round that cannot be opened is at most ``round_failure``
            (:func:`~privspk.secagg.graph.degree_for_dropout`); ``0`` keeps the default.
        round_failure: that bound, per round (default 1e-4).

    >>> MaskConfig(threshold=0.3)
    Traceback (most recent call last):
    ...
    privspk.errors.ConfigError: threshold must be a float in [0.5, 1.0), got 0.3: below a strict majority a \
server could collect both secrets of a client from two disjoint groups
    """

    clip: float = 1.0
    bits: int | str = "auto"
    threshold: float = 0.5
    degree: int | None = None
    noise_headroom_bits: int = 0
    colluders: int = 1
    dropout: float = 0.0
    round_failure: float = 1e-4

    def __post_init__(self) -> None:
        if not _real(self.clip) or not math.isfinite(self.clip) or self.clip <= 0:
            raise ConfigError(f"clip must be a positive finite number, got {self.clip!r}")
        if not (self.bits == "auto" or (type(self.bits) is int and 2 <= self.bits <= 32)):
            raise ConfigError(f"bits must be an int in [2, 32] or 'auto', got {self.bits!r}")
        if not _real(self.threshold) or not 0.5 <= self.threshold < 1.0:
            raise ConfigError(
                f"threshold must be a float in [0.5, 1.0), got {self.threshold!r}: below a strict majority a "
                "server could collect both secrets of a client from two disjoint groups"
            )
        if self.degree is not None and (type(self.degree) is not int or self.degree < 2):
            raise ConfigError(f"degree must be None or an int >= 2, got {self.degree!r}")
        if type(self.colluders) is not int or self.colluders < 0:
            raise ConfigError(f"colluders must be an int >= 0 (clients that may collude with the server), "
                              f"got {self.colluders!r}")
        check_dropout(self.dropout)
        if not _real(self.round_failure) or not 0.0 < self.round_failure < 1.0:
            raise ConfigError(f"round_failure must be a probability in (0, 1), got {self.round_failure!r}")
        if type(self.noise_headroom_bits) is not int or not 0 <= self.noise_headroom_bits <= 16:
            raise ConfigError(f"noise_headroom_bits must be an int in [0, 16], got {self.noise_headroom_bits!r}")

    def value_bits(self, n_clients: int) -> int:
        """Bits per value for a round of ``n_clients`` (resolves ``"auto"``).

        >>> [MaskConfig(bits="auto").value_bits(k) for k in (2, 10, 16, 17, 50)]
        [15, 12, 12, 16, 16]
        """
        if self.bits != "auto":
            return int(self.bits)
        room = headroom_for(n_clients) + self.noise_headroom_bits
        return 16 - room if 16 - room >= _MIN_AUTO_BITS else min(16, 32 - room)

    def quantiser(self, n_clients: int) -> Quantiser:
        """The quantiser of a round of ``n_clients`` (headroom for their sum and the noise).

        >>> MaskConfig(bits=16).quantiser(10).word_bits
        32
        """
        return Quantiser(
            clip=float(self.clip),
            bits=self.value_bits(n_clients),
            n_clients=n_clients,
            headroom_bits=self.noise_headroom_bits,
        )

    def holders(self, n_clients: int) -> int:
        """Clients holding shares of one client's secrets (its closed neighbourhood).

        >>> MaskConfig().holders(10), MaskConfig().holders(50), MaskConfig(degree=4).holders(50)
        (10, 13, 5)
        >>> MaskConfig(dropout=0.1).holders(100), MaskConfig(dropout=0.1).holders(1000)
        (27, 31)
        """
        if self.degree is not None:
            d = self.degree
        elif self.dropout > 0:
            d = degree_for_dropout(n_clients, float(self.dropout), fraction=float(self.threshold),
                                   colluders=self.colluders, round_failure=float(self.round_failure))
        else:
            d = default_degree(n_clients)
        return min(d, n_clients - 1) + 1

    def shares_needed(self, n_clients: int) -> int:
        """``t``: shares that rebuild a secret in a round of ``n_clients`` (ConfigError if too small).

        >>> MaskConfig().shares_needed(10), MaskConfig(threshold=0.75).shares_needed(10)
        (6, 8)
        >>> [MaskConfig().shares_needed(k) for k in (3, 5, 50)], MaskConfig(colluders=0).shares_needed(5)
        ([3, 4, 8], 3)
        """
        return threshold_for(self.holders(n_clients), float(self.threshold), colluders=self.colluders)

    def tolerated_colluders(self, n_clients: int) -> int:
        """Colluding clients a round of ``n_clients`` tolerates (at least :attr:`colluders`).

        >>> [MaskConfig().tolerated_colluders(k) for k in (3, 5, 10, 50)]
        [1, 2, 1, 2]
        """
        return tolerated_colluders(self.holders(n_clients), self.shares_needed(n_clients))


@dataclass(frozen=True)
class RoundParams:
    """Everything public about one round, derived the same way by server and clients.

    ``digest`` (SHA-256 of the canonical parameters) salts every KDF and is part
    of every signature, so messages of another round, run, client list or option
    set never verify. It also seeds the graph, so nobody picks the neighbourhoods.

    >>> a = RoundParams.build(MaskConfig(), run_id="r", round_id=0, clients=("a", "b", "c"), dim=2)
    >>> b = RoundParams.build(MaskConfig(), run_id="r", round_id=1, clients=("a", "b", "c"), dim=2)
    >>> len(a.digest), a.digest != b.digest
    (32, True)
    """

    run_id: str
    round_id: int
    clients: tuple[str, ...]
    dim: int
    quantiser: Quantiser
    graph: Graph
    threshold: int
    digest: bytes

    @classmethod
    def build(
        cls, config: MaskConfig, *, run_id: str, round_id: int, clients: tuple[str, ...], dim: int
    ) -> RoundParams:
        """Derive the parameters of a round (ConfigError when the round cannot be masked).

        >>> RoundParams.build(MaskConfig(), run_id="r", round_id=0, clients=("a",), dim=1)
        Traceback (most recent call last):
        ...
        privspk.errors.ConfigError: a masked round needs at least 2 clients, got 1
        """
        return _build_params(cls, config, run_id, round_id, tuple(sorted(clients)), dim)

    @classmethod
    def _build(
        cls, config: MaskConfig, *, run_id: str, round_id: int, clients: tuple[str, ...], dim: int
    ) -> RoundParams:
        if len(clients) < 2:
            raise ConfigError(f"a masked round needs at least 2 clients, got {len(clients)}")
        if len(set(clients)) != len(clients):
            raise ConfigError(f"client ids repeat in {clients!r}")
        if type(dim) is not int or dim < 1:
            raise ConfigError(f"dim must be a positive int, got {dim!r}")
        k = len(clients)
        q = config.quantiser(k)
        n = config.holders(k)
        t = config.shares_needed(k)
        canon = {
            "scheme": SCHEME,
            "version": 1,
            "run": run_id,
            "round": round_id,
            "clients": list(clients),
            "dim": dim,
            "clip": float(config.clip),
            "bits": q.bits,
            "word_bits": q.word_bits,
            "noise_headroom_bits": q.headroom_bits,
            "holders": n,
            "threshold": t,
            "colluders": config.colluders,
        }
        digest = hashlib.sha256(json.dumps(canon, sort_keys=True, separators=(",", ":")).encode()).digest()
        graph = neighbourhood_graph(clients, degree=n - 1, seed=hashlib.sha256(b"privspk/mask/graph" + digest).digest())
        return cls(run_id=run_id, round_id=round_id, clients=clients, dim=dim, quantiser=q, graph=graph,
                   threshold=t, digest=digest)

    def commitment(self, client_id: str, seed: bytes) -> bytes:
        """Public commitment to a client's self-mask seed (checked after the server rebuilds it)."""
        return hashlib.sha256(b"privspk/mask/commit/v1" + self.digest + encode_ids(client_id) + seed).digest()

    def self_info(self, client_id: str) -> bytes:
        """HKDF info of a client's self mask."""
        return b"privspk/mask/self/v1" + encode_ids(client_id)

    def pair_info(self, a: str, b: str) -> bytes:
        """HKDF info of the pairwise mask of ``a`` and ``b`` (order-free)."""
        lo, hi = sorted((a, b))
        return b"privspk/mask/pair/v1" + encode_ids(lo, hi)

    @staticmethod
    def pair_sign(owner: str, peer: str) -> int:
        """+1 if ``owner`` adds the pair mask with ``peer``, -1 if it subtracts it.

        >>> RoundParams.pair_sign("a", "b"), RoundParams.pair_sign("b", "a")
        (1, -1)
        """
        return 1 if owner < peer else -1


@functools.lru_cache(maxsize=32)
def _build_params(cls: type, config: MaskConfig, run_id: str, round_id: int, clients: tuple[str, ...],
                  dim: int) -> RoundParams:
    """Cached :meth:`RoundParams.build`: every party of a simulated round derives the same (frozen) parameters,
    so K devices in one process share one graph instead of building K (O(K^2 log K) at K = 1,000)."""
    return cls._build(config, run_id=run_id, round_id=round_id, clients=clients, dim=dim)


# Fields of each stage beyond the envelope, with exact types.
REQUEST_FIELDS: dict[str, dict[str, type]] = {
    Stage.ADVERTISE: {"clients": list, "dim": int},
    Stage.SHARE: {"peers": list},
    Stage.COLLECT: {"senders": list},
    Stage.CONFIRM: {"survivors": list, "shared": list},
    Stage.UNMASK: {"survivors": list, "shared": list, "dropped": list, "signers": list},
}
REPLY_FIELDS: dict[str, dict[str, type]] = {
    Stage.ADVERTISE: {},
    Stage.SHARE: {"to": list},
    Stage.COLLECT: {},
    Stage.CONFIRM: {},
    Stage.UNMASK: {"b_of": list, "s_of": list},
}
_WIRE_FIELDS = {**ENVELOPE_FIELDS, "body_len": int, "body_sha256": str}


def confirm_statement(digest: bytes, view: Mapping[str, Any]) -> bytes:
    """The bytes a client signs at ``confirm`` for the view ``(survivors, shared)`` of a confirm or unmask request.

    >>> v = {"survivors": ["a", "b"], "shared": ["a", "b", "c"]}
    >>> confirm_statement(bytes(32), v) == confirm_statement(bytes(32), {**v, "shared": ["a", "b"]})
    False
    """
    return confirm_message(digest, view["survivors"], view["shared"])


def check_stage_fields(header: Mapping[str, Any], fields: Mapping[str, type], *, client: str | None) -> None:
    """Exactly the envelope plus ``fields``, each of exactly its type; no extra keys.

    >>> h = {"scheme": "mask", "run": "r", "round": 0, "stage": "share", "sender": "s",
    ...      "body_len": 0, "body_sha256": "", "peers": [], "extra": 1}
    >>> check_stage_fields(h, {"peers": list}, client="c0")
    Traceback (most recent call last):
    ...
    privspk.errors.ProtocolError: client c0: unexpected header field(s) ['extra']
    """
    check_fields(header, fields, client=client)
    extra = sorted(set(header) - set(_WIRE_FIELDS) - set(fields))
    if extra:
        raise ProtocolError(f"unexpected header field(s) {extra}", client=client)


def id_list(header: Mapping[str, Any], key: str, *, within: Collection[str], client: str | None) -> tuple[str, ...]:
    """A header list of client ids: strings, strictly ascending (so no repeats), all in ``within``.

    >>> id_list({"peers": ["b", "a"]}, "peers", within={"a", "b"}, client="c0")
    Traceback (most recent call last):
    ...
    privspk.errors.ProtocolError: client c0: field 'peers' must list client ids in ascending order without repeats
    """
    raw = header[key]
    if not all(type(x) is str for x in raw):
        raise ProtocolError(f"field {key!r} must be a list of client-id strings", client=client)
    if any(a >= b for a, b in zip(raw, raw[1:])):
        raise ProtocolError(f"field {key!r} must list client ids in ascending order without repeats", client=client)
    allowed = within if isinstance(within, (set, frozenset, dict)) else frozenset(within)  # O(1) lookups at K = 1,000
    unknown = [x for x in raw if x not in allowed]
    if unknown:
        raise ProtocolError(f"field {key!r} names client(s) {unknown} outside the allowed set", client=client)
    return tuple(raw)


def parse(
    header: Mapping[str, Any], *, run: str, round_id: int, stage: str, fields: Mapping[str, type], client: str | None
) -> None:
    """Check a message's scheme, run, round and stage, then its exact field set (before any crypto).

    >>> h = {"scheme": "mask", "run": "r", "round": 0, "stage": "confirm", "sender": "c1",
    ...      "body_len": 64, "body_sha256": "..."}
    >>> parse(h, run="r", round_id=0, stage="confirm", fields={}, client="c1")
    >>> parse(h, run="r", round_id=1, stage="confirm", fields={}, client="c1")
    Traceback (most recent call last):
    ...
    privspk.errors.ProtocolError: client c1: message is for round 0, this is round 1 (replayed or stale)
    """
    expect(header, scheme=SCHEME, run=run, round_id=round_id, stage=stage, client=client)
    check_stage_fields(header, fields, client=client)


def message(
    *, run: str, round_id: int, stage: str, sender: str, fields: Mapping[str, Any] | None = None, body: bytes = b""
) -> bytes:
    """Pack a ``mask`` message (envelope + stage fields + body).

    >>> from privspk.secagg.wire import unpack
    >>> blob = message(run="r", round_id=1, stage="confirm", sender="server", fields={"survivors": ["a"]})
    >>> unpack(blob)[0]["survivors"]
    ['a']
    """
    header = {"scheme": SCHEME, "run": run, "round": round_id, "stage": stage, "sender": sender, **(fields or {})}
    return pack(header, body)
