"""Homomorphic aggregation with a separate key holder: the scheme shared by ``ckks`` and ``bfv``.

The roles live in their own modules: :mod:`~privspk.secagg.he_keyholder`,
:mod:`~privspk.secagg.he_client` and :mod:`~privspk.secagg.he_server`; what they share (stages,
contexts, the codec interface, signatures, sketches) in :mod:`~privspk.secagg.he_common`, and
the parameter and trust rules in :mod:`~privspk.secagg.he_params`.

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
from abc import abstractmethod
from typing import Any

import numpy as np

from privspk.errors import ConfigError, KeyLeakError
from privspk.secagg.base import KEYHOLDER, RoundSpec, Scheme
from privspk.secagg.he_client import HeClient
from privspk.secagg.he_common import SERVER, HeCodec, raw_ed25519
from privspk.secagg.he_keyholder import KeyHolder
from privspk.secagg.he_params import HE_TRUST, trust_problem  # noqa: F401  (HE_TRUST: in the examples)
from privspk.secagg.he_server import HeServerRound
from privspk.secagg.keys import IdentityKey, KeyRegistry


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
        self._registry = KeyRegistry()  # the clients' identity keys (PKI stand-in)
        self._clients: dict[str, HeClient] = {}
        self._keyholder: KeyHolder | None = None
        self._remote_key: bytes | None = None  # a key holder on another machine: its verify key only

    @abstractmethod
    def _make_codec(self, config: Any) -> HeCodec:
        """The codec for ``config``."""

    def keyholder(self, *, identity: IdentityKey | None = None) -> KeyHolder:
        """The run's key holder (created with a fresh key pair on first call).

        ``identity``: its Ed25519 signing key (:class:`~privspk.secagg.keys.IdentityKey`),
        used when the key holder is created; a fresh one when omitted. Refused after
        :meth:`use_keyholder`: this object then never holds a secret key.
        """
        if self._remote_key is not None:
            raise ConfigError("this scheme trusts a remote key holder (use_keyholder); it makes no secret key here")
        if self._keyholder is None:
            self._keyholder = KeyHolder(self.codec, registry=self._registry,
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
        key = raw_ed25519(verify_key, "the key holder's verify key")
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
        key = raw_ed25519(public_key, f"the identity key of {client_id!r}")
        self._registry.register(client_id, key)  # another key for a registered client: KeyLeakError

    def _keyholder_key(self) -> bytes:
        return self._remote_key if self._remote_key is not None else self.keyholder().verify_key

    def client(self, client_id: str, *, identity: IdentityKey | None = None) -> HeClient:
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
            self._registry.register(client_id, endpoint.public_key)
            self._clients[client_id] = endpoint
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
