"""A node's privspk agent: its data, its client, its ledger and its scheme endpoint.

It answers the ServerApp's requests (through the ClientApp bridge) in the order of a run:

``setup``
    the run config and the initial encoder (weights only, never a pickled object): the
    node loads its own data partition, opens its own SQLite ledger (a resume with other
    privacy settings is refused there) and creates its scheme endpoint. It answers with
    its client id, its sample count and, for ``mask``, its identity key's public half,
    signed together with the Flower node id (:mod:`~privspk.runtimes.flower.identity`).
``roster``
    every client's FedAvg weight and registered identity key; the node builds its
    :class:`~privspk.federation.FederatedClient`.
``train``
    the global vector of a round: the client trains (DP-SGD), records the spend, and
    hands the update to its scheme endpoint; nothing leaves the node but a report.
``secagg``
    one scheme request: the endpoint's answer (masked or encrypted update, shares...).
``aggregated``
    the round's sum was applied: mark this node's ledger row aggregated, drop the staged update.

The protocol code is untouched: this is :func:`privspk.api.train`'s client loop for
one client, driven by messages instead of a loop.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from privspk.errors import ConfigError, ProtocolError

log = logging.getLogger(__name__)

ROLE_CLIENT = "client"
ROLE_KEYHOLDER = "keyholder"
PLUGINS_ENV = "PRIVSPK_PLUGINS"
TAMPER_ENV = "PRIVSPK_DEPLOY_TAMPER"  # tests: "stage" -> this node corrupts its replies at that scheme stage
KILL_ENV = "PRIVSPK_DEPLOY_KILL"  # tests: "stage:round" -> this node SIGKILLs itself (its whole process group) there


def load_plugins() -> list[str]:
    """Import the modules named in ``PRIVSPK_PLUGINS`` (comma-separated), e.g. extra encoders."""
    import importlib

    names = [n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(",") if n.strip()]
    for name in names:
        importlib.import_module(name)
    return names


def encoder_to_bytes(encoder) -> bytes:
    """The encoder's ``state_dict`` as ``torch.save`` bytes (tensors only)."""
    import torch

    buf = io.BytesIO()
    torch.save({k: v.detach().clone() for k, v in encoder.state_dict().items()}, buf)
    return buf.getvalue()


def encoder_from_bytes(cfg, blob: bytes):
    """Build ``cfg``'s encoder and load weights sent by the server (``weights_only``: no code runs)."""
    import torch

    from privspk.models import build_encoder

    in_dim = cfg.features.n_mels if cfg.features.kind == "fbank" else cfg.features.n_mfcc
    encoder = build_encoder(cfg.model.encoder, in_dim=in_dim)
    try:
        state = torch.load(io.BytesIO(blob), weights_only=True)
        encoder.load_state_dict(state)
    except Exception as exc:  # torch raises many types for bad bytes
        raise ProtocolError(f"the initial encoder sent by the server does not load ({exc})", client="server") from None
    return encoder


@dataclass
class NodeSettings:
    """What a node is: its role, its data, where it keeps its state."""

    role: str
    run_root: Path
    data_dir: Path | None = None
    partition: int | None = None
    client_id: str | None = None
    threads: int | None = None  # torch threads on this node; None: the run config's ``threads``

    def __post_init__(self) -> None:
        if self.role not in (ROLE_CLIENT, ROLE_KEYHOLDER):
            raise ConfigError(f"node role must be {ROLE_CLIENT!r} or {ROLE_KEYHOLDER!r}, got {self.role!r}")
        if self.threads is not None and (type(self.threads) is not int or self.threads < 1):
            raise ConfigError(f"--threads must be an integer >= 1, got {self.threads!r}")
        self.run_root = Path(self.run_root)
        if self.role == ROLE_CLIENT:
            if self.data_dir is None or self.partition is None:
                raise ConfigError("a client node needs --data DIR and --partition N (its share of the corpus)")
            if self.partition < 0:
                raise ConfigError(f"--partition must be >= 0, got {self.partition}")
            if self.client_id is None:
                self.client_id = f"client{self.partition}"


class Node:
    """The request handler of one node's agent (see the module docstring for the requests)."""

    def __init__(self, settings: NodeSettings) -> None:
        self.settings = settings
        self.run_key: tuple | None = None
        self.cfg = None
        self.scheme = None
        self.endpoint = None
        self.client = None
        self.ledger = None
        self.data = None
        self.encoder = None
        self.names: list[str] = []
        self.plan = None
        self.client_dp = None  # client-level DP: this client's DistributedDP encoder (planned at setup)
        self.options: dict = {}
        self.public_basis = None  # [train] public_subspace's basis, from the public speakers (set up with the encoder)
        self.identity = None
        self._setup_seconds = 0.0

    # ------------------------------------------------------------------ dispatch
    def __call__(self, meta: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
        kind = meta.get("kind")
        handler = {"setup": self.setup, "roster": self.roster, "train": self.train, "secagg": self.secagg,
                   "aggregated": self.aggregated, "bye": self.bye, "ping": self.ping}.get(kind)
        if handler is None:
            raise ProtocolError(f"unknown request kind {kind!r}", client="server")
        if kind not in ("setup", "ping") and self.cfg is None:
            raise ProtocolError(f"{kind} request before setup", client="server")
        return handler(meta, body)

    @property
    def run_dir(self) -> Path:
        return self.settings.run_root / self.cfg.name

    # ------------------------------------------------------------------ setup
    def setup(self, meta: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
        import hashlib

        from privspk.config import RunConfig

        t0 = time.perf_counter()
        key = (meta.get("config"), hashlib.sha256(body).hexdigest())
        if self.run_key == key and self.cfg is not None:  # the same run again (server restarted): keep our state
            return self._hello(meta), b""
        self.close()
        try:
            cfg = RunConfig.from_toml(str(meta["config"]))
        except KeyError:
            raise ProtocolError("setup without a run config", client="server") from None
        changes = {"out_dir": str(self.settings.run_root)}
        if self.settings.data_dir is not None:
            changes["data_dir"] = str(self.settings.data_dir)
        self.cfg = cfg = cfg.replace(**changes)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        import torch

        # the node's own machine decides: nodes that share one machine split its cores (`--threads`)
        torch.set_num_threads(self.settings.threads or cfg.threads)
        if self.settings.role == ROLE_KEYHOLDER:
            self._setup_keyholder(cfg)
        else:
            self._setup_client(cfg, body)
        self.run_key = key
        self._setup_seconds = time.perf_counter() - t0
        return self._hello(meta), b""

    def _hello(self, meta: dict[str, Any]) -> dict[str, Any]:
        from privspk.runtimes.flower.identity import bind_node

        out: dict[str, Any] = {"role": self.settings.role, "setup_seconds": round(self._setup_seconds, 3)}
        if self.settings.role == ROLE_CLIENT:
            out.update(client_id=self.settings.client_id, n_samples=len(self.data))
        if self.identity is not None:  # the key holder binds its verify key under the id "keyholder"
            from privspk.secagg import KEYHOLDER

            who = self.settings.client_id if self.settings.role == ROLE_CLIENT else KEYHOLDER
            out["identity"] = bind_node(self.identity, run=self.cfg.name, client_id=who,
                                        node_id=int(meta.get("node_id", 0)),
                                        node_key=str(meta.get("node_key_fingerprint", "")))
        return out

    def _scheme(self, cfg, options: dict | None = None):
        from privspk.api import _scheme_options
        from privspk.secagg import build_scheme

        return build_scheme(cfg.secagg.scheme, _scheme_options(cfg) if options is None else options, seed=cfg.seed)

    def _setup_keyholder(self, cfg) -> None:
        from privspk.runtimes.flower.identity import load_identity
        from privspk.secagg.he_scheme import HeScheme

        self.scheme = self._scheme(cfg)
        if not isinstance(self.scheme, HeScheme):
            raise ConfigError(f"scheme {cfg.secagg.scheme!r} has no key holder; do not start a keyholder node")
        # the only process of the run that makes a secret key; its verify key is bound to this Flower node
        self.identity = load_identity(self.settings.run_root / "identity.key")
        self.endpoint = self.scheme.keyholder(identity=self.identity)

    def _setup_client(self, cfg, body: bytes) -> None:
        from privspk.api import open_run_ledger
        from privspk.models.finetune import apply_recipe
        from privspk.prepare import prepare_data
        from privspk.runtimes.flower.identity import load_identity
        from privspk.training.data import ClientData

        data = prepare_data(cfg, progress=False)
        groups = data.split.clients
        part = self.settings.partition
        if part >= len(groups):
            raise ConfigError(f"partition {part} does not exist: the run splits the corpus into {len(groups)} clients")
        self.data = ClientData.from_pairs(data.features.get, data.utterances_of(groups[part]))
        encoder = encoder_from_bytes(cfg, body)
        apply_recipe(encoder, cfg.train.recipe)
        self.encoder = encoder
        self.names = [n for n, p in encoder.named_parameters() if p.requires_grad]
        from privspk.api import public_basis_for

        self.public_basis = public_basis_for(cfg, data, encoder)  # the shipped pretrained encoder + public speakers
        if cfg.privacy.enabled:
            self.ledger = open_run_ledger(self.run_dir / "ledger.sqlite", cfg)
        from privspk.api import _scheme_options, plan_client_level
        from privspk.secagg.he_scheme import HeScheme

        self.options, self.client_dp = _scheme_options(cfg), None
        if cfg.privacy.client_level:  # planned from the config and the model alone: the server plans the same
            dim = sum(int(p.numel()) for p in self._trainable_of(encoder))
            self.client_dp, self.options = plan_client_level(cfg, dim=dim)
        self.scheme = self._scheme(cfg, self.options)
        self.identity = None
        if isinstance(self.scheme, HeScheme):  # the endpoint waits for the key holder's verify key (roster)
            self.identity = load_identity(self.settings.run_root / "identity.key")
            self.endpoint = None
        elif hasattr(self.scheme, "registry"):  # a scheme with identity keys (mask): the node's own, kept on disk
            self.identity = load_identity(self.settings.run_root / "identity.key")
            self.endpoint = self.scheme.client(self.settings.client_id, identity=self.identity)
        else:
            self.endpoint = self.scheme.client(self.settings.client_id)
        (self.run_dir / "config.toml").write_text(cfg.to_toml(), encoding="utf-8")

    # ------------------------------------------------------------------ roster
    def roster(self, meta: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
        from privspk.secagg.he_scheme import HeScheme

        if isinstance(self.scheme, HeScheme):
            self._he_roster(meta)
        if self.settings.role == ROLE_KEYHOLDER:
            return {"ok": True}, b""
        weights = meta.get("weights")
        cid = self.settings.client_id
        if not isinstance(weights, dict) or cid not in weights:
            raise ProtocolError(f"roster without a weight for {cid}", client="server")
        registry = getattr(self.scheme, "registry", None)
        if registry is not None:
            for peer, pub_hex in sorted((meta.get("identities") or {}).items()):
                registry.register(peer, bytes.fromhex(pub_hex))  # our own key: a no-op; another key: refused
        if self.client is None or self.client.weight != float(weights[cid]):
            self.client = self._build_client(float(weights[cid]))
        return {"ok": True}, b""

    def _he_roster(self, meta: dict[str, Any]) -> None:
        """HE: register the clients' identity keys; a client also learns the key holder's verify key."""
        try:
            identities = {str(p): bytes.fromhex(h) for p, h in (meta.get("identities") or {}).items()}
            kh_key = bytes.fromhex(meta["keyholder"]) if self.settings.role == ROLE_CLIENT else None
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ProtocolError("HE roster needs hex identity keys and the key holder's verify key",
                                client="server") from None
        for peer, pub in sorted(identities.items()):
            if peer != self.settings.client_id:
                self.scheme.register(peer, pub)  # another key for a registered client: refused
        if kh_key is not None:
            self.scheme.use_keyholder(kh_key)  # another key holder mid-run: refused
            if self.endpoint is None:
                self.endpoint = self.scheme.client(self.settings.client_id, identity=self.identity)

    def _build_client(self, weight: float):
        from privspk.api import build_federated_client, plan_client_mechanism

        cfg = self.cfg
        if cfg.privacy.enabled:
            self.plan = plan_client_mechanism(cfg, self.data)
        return build_federated_client(cfg, client_id=self.settings.client_id, index=self.settings.partition,
                                      data=self.data, encoder=self.encoder, names=self.names, weight=weight,
                                      endpoint=self.endpoint, run_dir=self.run_dir, ledger=self.ledger,
                                      mechanism=self.plan if cfg.privacy.enabled else None,
                                      client_dp=self.client_dp, options=self.options, identity=self.identity,
                                      public_basis=self.public_basis)

    # ------------------------------------------------------------------ a round
    def train(self, meta: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
        import numpy as np
        import torch

        if self.client is None:
            raise ProtocolError("train request before the roster", client="server")
        round_id = meta.get("round")
        if type(round_id) is not int or round_id < 1:
            raise ProtocolError(f"train request with bad round {round_id!r}", client="server")
        vector = np.frombuffer(body, dtype=np.float64)
        if vector.size != sum(int(p.numel()) for p in self._trainable()):
            raise ProtocolError(f"global vector has {vector.size} values, the model has "
                                f"{sum(int(p.numel()) for p in self._trainable())}", client="server")
        rep = self.client.run_round(round_id, torch.from_numpy(vector.copy()))
        out = dict(vars(rep))
        out["epsilon_spent"] = self.client.epsilon()
        if self.client_dp is not None:
            out["client_epsilon_spent"] = self.client.guard.client_epsilon()
        head = self.client.signed_head(round_id)  # the server keeps it if the round is aggregated
        out["signed_head"] = {"client": self.settings.client_id, **head.to_dict()} if head is not None else None
        return out, b""

    def _trainable(self):
        return self._trainable_of(self.client.net.encoder)

    def _trainable_of(self, encoder):
        params = dict(encoder.named_parameters())
        return [params[n] for n in self.names]

    def secagg(self, meta: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
        if os.environ.get(KILL_ENV) == f"{meta.get('stage')}:{meta.get('round')}":
            import signal

            log.error("fault injected: SIGKILL at %s", os.environ[KILL_ENV])
            os.killpg(os.getpgrp(), signal.SIGKILL)
        t0 = time.perf_counter()
        reply = self.endpoint.handle(body)
        seconds = round(time.perf_counter() - t0, 4)
        stage = os.environ.get(TAMPER_ENV)
        if reply is not None and stage and meta.get("stage") == stage:
            reply = reply[:-1] + bytes([reply[-1] ^ 1])  # fault injection for the transport tests
        if reply is None:
            return {"none": True, "seconds": seconds}, b""
        return {"seconds": seconds}, reply

    def aggregated(self, meta: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
        round_id = meta.get("round")
        included = meta.get("included") or []
        cid = self.settings.client_id
        if self.client is not None and cid in included:
            if self.ledger is not None and self.ledger.row(cid, round_id) is not None:
                row = self.ledger.row(cid, round_id)
                if row.status != "aggregated":
                    self.ledger.mark_aggregated(round_id, [cid])
            self.client.forget_staged(round_id)
        return {"ok": True}, b""

    def ping(self, meta: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
        return {"ok": True, "ready": self.client is not None}, b""

    def bye(self, meta: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
        out: dict[str, Any] = {"ok": True}
        if self.client is not None:
            out["epsilon_spent"] = self.client.epsilon()
            if self.client_dp is not None:
                out["client_epsilon_spent"] = self.client.guard.client_epsilon()
        return out, b""

    def close(self) -> None:
        """Close the ledger (the agent is stopping or a new run starts)."""
        if self.ledger is not None:
            self.ledger.close()
        self.ledger = None
        self.client = None
        self.cfg = None


def describe(settings: NodeSettings) -> str:
    """One line naming the node, for logs."""
    who = settings.client_id if settings.role == ROLE_CLIENT else "key holder"
    return json.dumps({"role": settings.role, "who": who, "partition": settings.partition})
