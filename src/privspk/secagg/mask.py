"""The ``mask`` scheme: pairwise-mask secure aggregation with dropout recovery (SecAgg / SecAgg+).

Each client adds to its quantised update a self mask and, for each graph
neighbour, a pairwise mask that the neighbour subtracts; masks are AES-CTR
keystreams from X25519 + HKDF seeds (:mod:`~privspk.secagg.prg`). Summed over the
round the pairwise masks cancel; the server removes the self masks, and the pair
masks of clients that dropped out, from secrets Shamir-shared among neighbours
(:mod:`~privspk.secagg.shamir`), rebuilt from exactly ``t`` shares. Stages and
messages: :mod:`~privspk.secagg.mask_protocol`; the two sides:
:mod:`~privspk.secagg.mask_client`, :mod:`~privspk.secagg.mask_server`.

Trust assumptions: the :class:`~privspk.secagg.keys.KeyRegistry` of identity keys
is authentic (a PKI stand-in); the server may be curious or actively malicious
and up to ``colluders`` clients (``[secagg] colluders``, default 1) may collude with
it: ``t`` is chosen with ``2t - n > colluders`` for ``n`` holders per secret, and the
confirm stage binds the collect-stage sender list; the graph and every key
derivation are bound to the public round digest.

>>> import numpy as np
>>> from privspk.secagg import build_scheme, RoundSpec
>>> from privspk.secagg.simulate import run_round
>>> s = build_scheme("mask", {"clip": 2.0, "bits": "auto"}, seed=0)
>>> spec = RoundSpec(run_id="demo", round_id=0, clients=("a", "b", "c", "d", "e"), dim=4)
>>> eps = {c: s.client(c) for c in spec.clients}
>>> for i, c in enumerate(spec.clients):
...     eps[c].submit(0, np.full(4, 0.1 * i))
>>> res = run_round(s, spec, eps, silent={"e": "collect"})
>>> res.included, bool(np.abs(res.total - 0.6).max() <= s.sum_tolerance(4))
(('a', 'b', 'c', 'd'), True)
"""

from __future__ import annotations

from privspk.secagg.base import RoundSpec, Scheme, register_scheme
from privspk.secagg.keys import IdentityKey, KeyRegistry
from privspk.secagg.mask_client import MaskClient
from privspk.secagg.quantise import RoundingRandomness
from privspk.secagg.mask_protocol import MaskConfig, RoundParams, Stage
from privspk.secagg.mask_server import MaskServerRound
from privspk.secagg.quantise import Quantiser

__all__ = ["MaskClient", "MaskConfig", "MaskScheme", "MaskServerRound", "RoundParams", "Stage"]


@register_scheme("mask")
class MaskScheme(Scheme):
    """Pairwise masks over quantised updates; only the sum is opened.

    ``client(cid)`` gives each client a long-term Ed25519 identity key and puts its
    public half in :attr:`registry`; ``seed`` fixes only stochastic rounding.

    >>> s = MaskScheme(MaskConfig())
    >>> s.client("a") is s.client("a"), "a" in s.registry
    (True, True)
    """

    Config = MaskConfig

    def __init__(self, config: MaskConfig, *, seed: int | None = None) -> None:
        super().__init__(config, seed=seed)
        self.registry = KeyRegistry()
        self._clients: dict[str, MaskClient] = {}

    def client(self, client_id: str, *, identity: IdentityKey | None = None) -> MaskClient:
        """The (cached) endpoint of ``client_id``, with a fresh identity key on first use
        (or ``identity``: a node's own long-term key, on a deployed node)."""
        if client_id not in self._clients:
            identity = identity if identity is not None else IdentityKey.generate()
            self.registry.register(client_id, identity.public_bytes())
            self._clients[client_id] = MaskClient(client_id, config=self.config, identity=identity,
                                                  registry=self.registry,
                                                  rng=RoundingRandomness(self.seed, client_id))
        return self._clients[client_id]

    def server_round(self, spec: RoundSpec) -> MaskServerRound:
        """A fresh server state machine for ``spec`` (ConfigError for fewer than 2 clients)."""
        return MaskServerRound(spec, self.config, self.registry)

    def round_params(self, spec: RoundSpec) -> RoundParams:
        """The public parameters of the round ``spec`` (quantiser, graph, threshold, digest).

        >>> p = MaskScheme(MaskConfig()).round_params(RoundSpec(run_id="r", round_id=0, clients=("a", "b", "c"), dim=1))
        >>> p.threshold, p.graph.degree
        (3, 2)
        """
        return RoundParams.build(self.config, run_id=spec.run_id, round_id=spec.round_id, clients=spec.clients,
                                 dim=spec.dim)

    def quantiser(self, n_clients: int) -> Quantiser:
        """The quantiser of a round of ``n_clients`` (its ``scale`` converts integer noise to update units).

        >>> MaskScheme(MaskConfig(bits="auto")).quantiser(10).dtype.__name__
        'uint16'
        """
        return self.config.quantiser(n_clients)

    def sum_tolerance(self, n_clients: int, *, bound: float = 1.0) -> float:
        """Worst error of a coordinate of the opened sum of ``n_clients`` updates bounded by ``bound``.

        Stochastic rounding moves each value by less than one step ``clip / levels``;
        values beyond ``clip`` are also clipped. Distributed-DP noise is not included.

        >>> MaskScheme(MaskConfig(bits=8)).sum_tolerance(2)
        0.015748031496062992
        """
        q = self.quantiser(n_clients)
        return n_clients * (max(0.0, float(bound) - q.clip) + q.clip / q.levels)

    def min_survivors(self, n_clients: int) -> int:
        """Below ``t`` surviving clients (shares needed per secret) a round always fails.

        ``t`` counts the configured colluders (``2t - n > colluders``); ConfigError for a
        round too small to tolerate them.

        >>> MaskScheme(MaskConfig()).min_survivors(10), MaskScheme(MaskConfig()).min_survivors(5)
        (6, 4)
        """
        return self.config.shares_needed(n_clients)

    def dropout_tolerance(self, n_clients: int) -> int:
        """Dropouts (at any stages) a round always survives: ``degree + 1 - t``.

        >>> MaskScheme(MaskConfig()).dropout_tolerance(10), MaskScheme(MaskConfig()).dropout_tolerance(3)
        (4, 0)
        """
        return self.config.holders(n_clients) - self.config.shares_needed(n_clients)
