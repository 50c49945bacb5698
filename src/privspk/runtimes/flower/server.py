"""The server of a deployed run: the global model, and each round driven over Flower.

:class:`FlowerFederation` is :class:`privspk.federation.InProcessFederation` with the
clients on other machines: the round is the same sequence (train on every node, then
the scheme's stages, then FedAvg of the opened sum), the scheme's
:class:`~privspk.secagg.ServerRound` is the same object, only the bytes cross Flower.
Replies of a stage are fed to the round in the order of its outbox, as the in-process
driver does, so a deployed run with the same seeds opens the same sum.

:func:`serve_run` is the ServerApp's body: wait for the nodes, set them up, bind their
identity keys to their Flower node ids, run (or resume) the rounds, evaluate, and write
the run report, a ``progress.jsonl`` line per round and ``server_state.pt`` (resume).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from privspk.errors import AggregationError, ConfigError, PrivspkError, ProtocolError
from privspk.runtimes.flower.exchange import Posted, Reply, StageTiming, collect, exchange, post

log = logging.getLogger(__name__)


@dataclass
class DeploySettings:
    """The ServerApp's run config (``[tool.flwr.app.config]``, overridable with ``--run-config``)."""

    config: str = ""
    data_dir: str = "data"
    out_dir: str = "runs"
    resume: bool = False
    wait_timeout: float = 120.0
    setup_timeout: float = 600.0
    train_timeout: float = 600.0
    stage_timeout: float = 60.0
    poll: float = 0.02
    evaluate: bool = True

    @classmethod
    def from_run_config(cls, rc: Mapping[str, Any]) -> DeploySettings:
        """Read Flower's run config (keys with dashes)."""
        known = {f.replace("_", "-"): f for f in cls.__dataclass_fields__}
        unknown = sorted(set(rc) - set(known))
        if unknown:
            raise ConfigError(f"unknown run-config key(s) {unknown}; known: {sorted(known)}")
        out = cls(**{known[k]: v for k, v in rc.items()})
        for name in ("wait_timeout", "setup_timeout", "train_timeout", "stage_timeout", "poll"):
            if float(getattr(out, name)) <= 0:
                raise ConfigError(f"run-config {name.replace('_', '-')} must be > 0 seconds")
        return out

    def run_config(self):
        """The :class:`~privspk.config.RunConfig` (the demo preset when ``config`` is empty)."""
        from privspk.config import RunConfig

        cfg = RunConfig.from_toml(self.config) if self.config.strip() else RunConfig.preset("demo")
        return cfg.replace(data_dir=self.data_dir, out_dir=self.out_dir)


@dataclass
class NodeInfo:
    """A node of the run, as its setup answer describes it."""

    node_id: int
    role: str
    client_id: str = ""
    n_samples: int = 0
    identity: bytes | None = None
    setup_seconds: float = 0.0


class FlowerFederation:
    """Rounds over Flower nodes (the deployed twin of ``InProcessFederation``).

    Args:
        grid: the ServerApp's Flower grid.
        server: the :class:`~privspk.federation.FederatedServer`.
        scheme: the aggregation scheme (server side).
        clients: client id -> Flower node id.
        keyholder: the key holder's node id (HE schemes), else ``None``.
        settings: timeouts and polling.
        state_path: the saved server state (resume).
        on_aggregated: ``(round_id, included)`` once a round's sum is applied.
    """

    def __init__(self, grid, server, scheme, clients: Mapping[str, int], *, keyholder: int | None,
                 settings: DeploySettings, state_path: Path | None = None, on_aggregated=None,
                 rejoin=None, identities: Mapping[str, bytes] | None = None) -> None:
        self.grid = grid
        self.server = server
        self.scheme = scheme
        self.clients = dict(clients)
        self.keyholder = keyholder
        self.settings = settings
        self.state_path = state_path
        self.on_aggregated = on_aggregated
        self.rejoin = rejoin
        self.identities = dict(identities or {})  # client id -> its bound identity key (signs its ledger heads)
        self._heads: dict[str, Any] = {}
        self.client_epsilon: dict[str, float] = {}  # client-level DP: each client's spend, from its train reply
        self._tried: set[int] = set()
        self.suspect: set[str] = set()  # clients that timed out: pinged (stage timeout) before they get work
        self._notices: Posted | None = None  # the last round's "aggregated" notices, not yet answered

    def confirm_notices(self, timing: StageTiming | None = None) -> None:
        """Wait for the answers to the last round's ``aggregated`` notices (logged when missing).

        The notices are pushed at the end of a round and their answers taken here, before
        anything else goes to the nodes: the nodes mark their ledgers while the server
        evaluates and saves, and a node still gets them before its next request.
        """
        if self._notices is None:
            return
        posted, self._notices = self._notices, None
        t0 = time.perf_counter()
        answers = collect(self.grid, posted, poll=self.settings.poll)  # no legs: answered long before, if all is well
        if timing is not None:
            timing.wait += time.perf_counter() - t0
        for node, rep in answers.items():
            if rep.error:
                log.warning("node %s did not confirm the last aggregation: %s", node, rep.error)

    def post_aggregated(self, round_id: int, included, *, to) -> None:
        """Post ``round_id``'s ``aggregated`` notices to the clients in ``to``, answered before the next
        request (:meth:`confirm_notices`). A resumed run posts the last round's again: the ServerApp may
        have died before the nodes had them, leaving their ledger rows ``released``."""
        targets = {node: ({"kind": "aggregated", "round": round_id, "included": list(included)}, b"")
                   for cid, node in self.clients.items() if cid in to}
        if targets:
            self._notices = post(self.grid, targets, timeout=self.settings.stage_timeout)

    def refresh_nodes(self) -> dict[str, int]:
        """Set up nodes that connected since the last round (a restarted node gets a new Flower id).

        ``rejoin(new_node_ids)`` sets them up and returns client id -> node id for the
        ones that passed (same client id, same identity key as registered); they replace
        the old node of that client.
        """
        if self.rejoin is None:
            return {}
        known = set(self.clients.values()) | ({self.keyholder} if self.keyholder is not None else set())
        new = sorted(int(n) for n in self.grid.get_node_ids() if int(n) not in known | self._tried)
        if not new:
            return {}
        self._tried.update(new)
        moved = self.rejoin(new)
        for cid, node in moved.items():
            log.info("%s rejoined as Flower node %s (was %s)", cid, node, self.clients.get(cid))
            self.clients[cid] = node
        return moved

    def record_heads(self, round_id: int, included) -> None:
        """Keep the included clients' signed ledger heads of ``round_id`` (``server.heads``, when it keeps them).

        A head must be signed by the identity key bound to the client's Flower node and
        must verify (:class:`~privspk.privacy.ledger.AggregatedHeads`); one that does not is
        refused with a warning and not recorded (that client's ledger then has no
        server record for the round, which ``privspk ledger --check`` reports).
        """
        from privspk.errors import LedgerError
        from privspk.privacy.ledger import SignedHead

        if getattr(self.server, "heads", None) is None:
            return
        for cid in included:
            raw = self._heads.get(cid)
            if raw is None:
                continue
            try:
                head = SignedHead(client=str(raw["client"]), round=int(raw["round"]), seq=int(raw["seq"]),
                                  head=str(raw["head"]), public_key=bytes.fromhex(raw["public_key"]),
                                  signature=bytes.fromhex(raw["signature"]))
                if head.client != cid:
                    raise LedgerError(f"head names client {head.client!r}")
                if cid in self.identities and head.public_key != self.identities[cid]:
                    raise LedgerError("head signed with another key than the identity bound to its node")
                self.server.record_heads(round_id, [head])
            except (LedgerError, KeyError, TypeError, ValueError, AttributeError) as exc:
                log.warning("round %d: %s's signed ledger head refused: %s", round_id, cid, exc)

    def last_completed_round(self) -> int:
        """The last round in the saved server state (0 when none)."""
        if self.state_path is None or not self.state_path.exists():
            return 0
        return self.server.load(self.state_path)

    def run_round(self, round_id: int):
        """One full round; returns a :class:`~privspk.federation.RoundReport` with transport timings."""
        import numpy as np

        from privspk.federation import ClientRoundReport, RoundReport
        from privspk.federation.runtime import aggregation_failed, finish_round
        from privspk.secagg import KEYHOLDER

        start = time.perf_counter()
        transport = StageTiming()
        self.confirm_notices(transport)
        moved = self.refresh_nodes()
        self.suspect -= set(moved)
        train_dropped: dict[str, str] = {}
        if self.suspect:  # a node that timed out before answers a ping first (a dead one costs one stage timeout)
            pings = exchange(self.grid, {self.clients[c]: ({"kind": "ping"}, b"") for c in sorted(self.suspect)},
                             timeout=self.settings.stage_timeout, poll=self.settings.poll, timing=transport)
            for cid in sorted(self.suspect):
                rep = pings[self.clients[cid]]
                if rep.error:
                    train_dropped[cid] = f"unreachable: {rep.error}"
                else:
                    self.suspect.discard(cid)
        active = {cid: node for cid, node in self.clients.items() if cid not in train_dropped}
        body = self.server.global_vector().numpy().astype(np.float64).tobytes()
        replies = exchange(self.grid, {node: ({"kind": "train", "round": round_id}, body)
                                       for node in active.values()},
                           timeout=self.settings.train_timeout, poll=self.settings.poll, timing=transport)
        reports: dict[str, ClientRoundReport] = {}
        for cid, node in sorted(active.items()):
            rep = replies[node]
            if rep.error:
                train_dropped[cid] = f"train: {rep.error}"
                if "timed out" in rep.error:
                    self.suspect.add(cid)
                log.warning("round %d: %s did not train: %s", round_id, cid, rep.error)
                continue
            fields = {k: rep.meta[k] for k in ClientRoundReport.__dataclass_fields__ if k in rep.meta}
            reports[cid] = ClientRoundReport(**fields)
            self._heads[cid] = rep.meta.get("signed_head")
            if rep.meta.get("client_epsilon_spent") is not None:
                self.client_epsilon[cid] = float(rep.meta["client_epsilon_spent"])
        train_seconds = time.perf_counter() - start
        senders = [cid for cid, r in reports.items() if r.status in ("sent", "resent")]
        report = RoundReport(round_id, reports, train_seconds=train_seconds)
        report.dropped = dict(train_dropped)
        extra: dict[str, Any] = {"node_train_seconds": {c: r.train_seconds for c, r in reports.items()}}
        report.transport = extra  # type: ignore[attr-defined]
        if len(senders) < 1:
            report.skipped = "no client could take part (out of budget, failed or timed out)"
            report.round_seconds = time.perf_counter() - start
            return report
        t0 = time.perf_counter()
        try:
            spec = self.server.spec(round_id, senders)
            result = self._aggregate(spec, transport)
        except (AggregationError, PrivspkError) as exc:
            return aggregation_failed(report, exc, start=start, t0=t0)
        report.secagg_seconds = time.perf_counter() - t0
        finish_round(report, result, server=self.server, record_heads=self.record_heads, state_path=self.state_path,
                     on_aggregated=self.on_aggregated, uplink_excludes={KEYHOLDER})
        # answered before the next request (confirm_notices): the nodes mark their ledgers meanwhile
        self.post_aggregated(round_id, result.included, to=senders)
        if self._notices is not None:
            transport.push += time.perf_counter() - self._notices.start
        report.round_seconds = time.perf_counter() - start
        extra.update(**transport.summary(), stages=list(result.stages),
                     node_crypto_seconds=round(self.node_crypto, 4), server_crypto_seconds=round(self.server_crypto, 4))
        return report

    def _aggregate(self, spec, transport: StageTiming):
        from privspk.secagg import KEYHOLDER

        server_round = self.scheme.server_round(spec)
        self.node_crypto = 0.0  # per stage, the slowest node's time inside its scheme endpoint, summed
        self.server_crypto = 0.0  # the server round's own receive/advance time
        gone: set[str] = set()
        bytes_up: dict[str, int] = {}
        bytes_down: dict[str, int] = {}
        stages: list[str] = []
        while True:
            stage = server_round.stage
            stages.append(stage)
            outbox = server_round.outbox()
            requests: dict[int, tuple[dict, bytes]] = {}
            order: list[tuple[str, int]] = []
            for dest, request in outbox.items():
                bytes_down[dest] = bytes_down.get(dest, 0) + len(request)
                node = self.keyholder if dest == KEYHOLDER else self.clients.get(dest)
                if node is None or dest in gone:
                    continue
                requests[node] = ({"kind": "secagg", "round": spec.round_id, "stage": stage, "dest": dest}, request)
                order.append((dest, node))
            replies = exchange(self.grid, requests, timeout=self.settings.stage_timeout, poll=self.settings.poll,
                               timing=transport) if requests else {}
            slowest = max((float(replies[n].meta.get("seconds", 0.0)) for _, n in order if not replies[n].error),
                          default=0.0)
            self.node_crypto += slowest
            t_srv = time.perf_counter()
            for dest, node in order:  # the outbox order, as the in-process driver feeds them
                rep: Reply = replies[node]
                if rep.error:
                    log.warning("round %d stage %s: %s did not answer: %s", spec.round_id, stage, dest, rep.error)
                    if "timed out" in rep.error:
                        gone.add(dest)
                        if dest in self.clients:
                            self.suspect.add(dest)
                    continue
                if rep.meta.get("none"):
                    continue
                bytes_up[dest] = bytes_up.get(dest, 0) + len(rep.body)
                try:
                    server_round.receive(dest, rep.body)
                except ProtocolError as exc:
                    log.warning("round %d: server rejected %s at %s: %s", spec.round_id, dest, stage, exc)
            more = server_round.advance()
            self.server_crypto += time.perf_counter() - t_srv
            if not more:
                break
        result = server_round.result()
        result.bytes_up = bytes_up
        result.bytes_down = bytes_down
        result.stages = tuple(stages)
        return result


# ---------------------------------------------------------------------------------------------- the run
def wait_for_nodes(grid, n: int, *, timeout: float, poll: float) -> list[int]:
    """The node ids once at least ``n`` nodes are connected; ConfigError after ``timeout`` s."""
    deadline = time.perf_counter() + timeout
    while True:
        nodes = sorted(int(x) for x in grid.get_node_ids())
        if len(nodes) >= n:
            return nodes
        if time.perf_counter() >= deadline:
            raise ConfigError(f"only {len(nodes)} of the {n} nodes this run needs connected within {timeout:g} s; "
                              "start them with `privspk join`")
        time.sleep(max(poll, 0.1))


def registered_node_keys(grid) -> dict[int, str]:
    """Fingerprints of the public keys the SuperLink authenticated each node with (empty without node auth)."""
    from privspk.runtimes.flower.certs import public_key_fingerprint

    out: dict[int, str] = {}
    try:
        nodes = list(grid.get_nodes())
    except Exception as exc:  # noqa: BLE001 - an older grid without node infos: no key to bind to
        log.info("cannot list node keys (%s); identity keys are bound to node ids only", exc)
        return out
    for info in nodes:
        raw = bytes(getattr(info, "public_key", b"") or b"")
        if raw:
            try:
                out[int(info.node_id)] = public_key_fingerprint(raw)
            except ConfigError:
                log.warning("node %s: its registered key is in an unknown format", info.node_id)
    return out


def setup_nodes(grid, cfg, encoder_bytes: bytes, node_ids: list[int], *, settings: DeploySettings
                ) -> tuple[dict[str, NodeInfo], NodeInfo | None]:
    """Send the run to every node; returns client id -> node and the key holder (if any)."""
    from privspk.runtimes.flower.identity import check_binding
    from privspk.runtimes.flower.node import ROLE_CLIENT, ROLE_KEYHOLDER
    from privspk.secagg import KEYHOLDER

    meta = {"kind": "setup", "config": cfg.to_toml()}
    node_keys = registered_node_keys(grid)
    replies = exchange(grid, {n: (dict(meta), encoder_bytes) for n in node_ids}, timeout=settings.setup_timeout,
                       poll=settings.poll)
    clients: dict[str, NodeInfo] = {}
    keyholder: NodeInfo | None = None
    for node in node_ids:
        rep = replies[node]
        if rep.error:
            log.warning("node %s failed its setup: %s", node, rep.error)
            continue
        role = rep.meta.get("role")
        if role == ROLE_KEYHOLDER:
            if keyholder is not None:
                raise ConfigError(f"two key-holder nodes ({keyholder.node_id} and {node}); start exactly one")
            try:  # its verify key, bound to this Flower node (and its registered node key) like a client's
                binding = rep.meta.get("identity")
                signed_key = binding.get("node_key") if isinstance(binding, dict) else None
                identity = check_binding(binding, run=cfg.name, client_id=KEYHOLDER, node_id=node,
                                         node_key=node_keys.get(node) if signed_key else None)
            except ProtocolError as exc:
                log.warning("key-holder node %s refused: %s", node, exc)
                continue
            keyholder = NodeInfo(node, role, identity=identity,
                                 setup_seconds=float(rep.meta.get("setup_seconds", 0.0)))
            continue
        if role != ROLE_CLIENT:
            log.warning("node %s answered setup with role %r; ignored", node, role)
            continue
        cid = str(rep.meta.get("client_id", ""))
        if not cid or cid in clients:
            raise ConfigError(f"node {node} claims client id {cid!r}, which is empty or already taken by node "
                              f"{clients[cid].node_id if cid in clients else '-'}; give each node its own --partition")
        identity = None
        if "identity" in rep.meta:
            try:
                binding = rep.meta["identity"]
                # a node started with its auth key signs that key's fingerprint: it must be the registered one
                signed_key = binding.get("node_key") if isinstance(binding, dict) else None
                identity = check_binding(binding, run=cfg.name, client_id=cid, node_id=node,
                                         node_key=node_keys.get(node) if signed_key else None)
            except ProtocolError as exc:
                log.warning("node %s refused: %s", node, exc)
                continue
        clients[cid] = NodeInfo(node, role, cid, int(rep.meta.get("n_samples", 0)), identity,
                                float(rep.meta.get("setup_seconds", 0.0)))
    return dict(sorted(clients.items())), keyholder


def serve_run(grid, run_config: Mapping[str, Any], *, on_round=None) -> dict:
    """The ServerApp's body (see the module docstring). Returns the run report.

    A failure is also written to ``progress.jsonl`` (``{"event": "error"}``) so that
    ``privspk run`` stops following and shows it.
    """
    settings = DeploySettings.from_run_config(run_config)
    progress = Path(settings.out_dir) / settings.run_config().name / "progress.jsonl"
    try:
        return _serve_run(grid, settings, on_round=on_round)
    except Exception as exc:
        progress.parent.mkdir(parents=True, exist_ok=True)
        with open(progress, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"event": "error", "error": f"{type(exc).__name__}: {exc}"}) + "\n")
        raise


def _included_in(progress: Path, round_id: int, *, heads=None) -> list[str]:
    """The clients whose updates went into ``round_id``'s sum: from its ``progress.jsonl`` row, else
    from the aggregated ledger heads the server keeps; empty when neither knows (no notice is then sent)."""
    if progress.exists():
        for line in reversed(progress.read_text(encoding="utf-8").splitlines()):
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line cut short by the kill
            row = event.get("row") or {}
            if event.get("event") == "round" and row.get("round") == round_id and row.get("included"):
                return list(row["included"])
    if heads is not None and round_id in getattr(heads, "rounds", {}):
        return sorted(heads.rounds[round_id])
    return []


def _serve_run(grid, settings: DeploySettings, *, on_round=None) -> dict:
    import torch

    from privspk.api import HeldoutEvaluator, _scheme_options, pretrained_encoder, server_optimizer_for
    from privspk.cli import _round_line
    from privspk.federation import FederatedServer
    from privspk.federation.runtime import round_row
    from privspk.models.finetune import apply_recipe
    from privspk.prepare import prepare_data
    from privspk.runtimes.flower.node import encoder_to_bytes, load_plugins
    from privspk.secagg import build_scheme

    load_plugins()
    t_start = time.perf_counter()
    cfg = settings.run_config()
    torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.out_dir) / cfg.name
    state_path = run_dir / "server_state.pt"
    if run_dir.exists() and not settings.resume and state_path.exists():
        raise ConfigError(f"run directory {run_dir} holds a run; submit with --run-config 'resume=true' to continue "
                          "it, or choose another name")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(cfg.to_toml(), encoding="utf-8")
    progress = run_dir / "progress.jsonl"
    if not settings.resume:
        progress.unlink(missing_ok=True)

    def emit(event: dict) -> None:
        with open(progress, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(event, default=str) + "\n")

    data = prepare_data(cfg, progress=False)
    base, pretrain_info = pretrained_encoder(cfg, data, progress=False)
    evaluator = HeldoutEvaluator(data, max_frames=cfg.eval.max_frames,
                                 enroll_per_speaker=cfg.eval.enroll_per_speaker, seed=cfg.seed)
    # the public model's held-out figures (and in the clients' domains), to set the federation's against
    pretrain_eval = evaluator.evaluate(base, top1=True) if settings.evaluate else {}
    t_data = time.perf_counter()
    encoder = copy.deepcopy(base)
    apply_recipe(encoder, cfg.train.recipe)
    names = [n for n, p in encoder.named_parameters() if p.requires_grad]
    options = _scheme_options(cfg)
    if cfg.privacy.client_level:  # the mask options that carry the integer noise, planned as every node plans them
        from privspk.api import plan_client_level

        _, options = plan_client_level(cfg, dim=sum(int(p.numel()) for p in encoder.parameters() if p.requires_grad))
    scheme = build_scheme(cfg.secagg.scheme, options, seed=cfg.seed)
    from privspk.secagg.he_scheme import HeScheme

    needs_keyholder = isinstance(scheme, HeScheme)  # never scheme.keyholder() here: that makes a secret key
    n_nodes = cfg.federation.n_clients + (1 if needs_keyholder else 0)
    node_ids = wait_for_nodes(grid, n_nodes, timeout=settings.wait_timeout, poll=settings.poll)
    t_nodes = time.perf_counter()
    encoder_bytes = encoder_to_bytes(base)
    clients, keyholder = setup_nodes(grid, cfg, encoder_bytes, node_ids, settings=settings)
    if needs_keyholder and keyholder is None:
        raise ConfigError(f"scheme {cfg.secagg.scheme!r} needs a key-holder node (`privspk join --role keyholder`)")
    if not clients:
        raise ConfigError("no client node completed its setup")
    total = sum(c.n_samples for c in clients.values())
    weights = {cid: c.n_samples / total for cid, c in clients.items()}
    registry = getattr(scheme, "registry", None)
    if registry is not None:
        for cid, c in clients.items():
            registry.register(cid, c.identity)
    roster = {"kind": "roster", "weights": weights,
              "identities": {cid: c.identity.hex() for cid, c in clients.items() if c.identity is not None}}
    if needs_keyholder:  # HE: the server and the clients trust the key holder node's bound verify key
        scheme.use_keyholder(keyholder.identity)
        for cid, c in clients.items():
            scheme.register(cid, c.identity)
        roster["keyholder"] = keyholder.identity.hex()
    nodes = {cid: c.node_id for cid, c in clients.items()}
    targets = list(nodes.values()) + ([keyholder.node_id] if keyholder else [])
    acks = exchange(grid, {n: (roster, b"") for n in targets}, timeout=settings.setup_timeout, poll=settings.poll)
    for node, rep in acks.items():
        if rep.error:
            log.warning("node %s refused the roster: %s", node, rep.error)
    t_setup = time.perf_counter()
    server = FederatedServer(encoder, names, run_id=cfg.name, weights=weights,
                             optimizer=server_optimizer_for(cfg.federation))
    if cfg.privacy.enabled:  # the signed ledger heads it aggregates, as in-process (`privspk ledger --check`)
        from privspk.api import AGGREGATED_HEADS
        from privspk.privacy.ledger import AggregatedHeads

        server.heads = AggregatedHeads(run_dir / AGGREGATED_HEADS, run_id=cfg.name)

    def rejoin(new_nodes: list[int]) -> dict[str, int]:
        back, _ = setup_nodes(grid, cfg, encoder_bytes, new_nodes, settings=settings)
        moved = {}
        for cid, info in back.items():
            if cid not in clients:
                log.warning("node %s claims %s, which is not a client of this run; ignored", info.node_id, cid)
                continue
            if clients[cid].identity != info.identity:
                log.warning("node %s claims %s with another identity key; refused", info.node_id, cid)
                continue
            ack = exchange(grid, {info.node_id: (roster, b"")}, timeout=settings.setup_timeout, poll=settings.poll)
            if ack[info.node_id].error:
                log.warning("node %s refused the roster: %s", info.node_id, ack[info.node_id].error)
                continue
            moved[cid] = info.node_id
        return moved

    fed = FlowerFederation(grid, server, scheme, nodes, keyholder=keyholder.node_id if keyholder else None,
                           settings=settings, state_path=state_path, rejoin=rejoin,
                           identities={cid: c.identity for cid, c in clients.items() if c.identity is not None})
    last_done = fed.last_completed_round() if settings.resume else 0
    if last_done:
        included = _included_in(progress, last_done, heads=getattr(server, "heads", None))
        if included:
            fed.post_aggregated(last_done, included, to=included)
    emit({"event": "start", "clients": nodes, "keyholder": keyholder.node_id if keyholder else None,
          "resume_from": last_done, "startup_seconds": {
              "data": round(t_data - t_start, 3), "wait_nodes": round(t_nodes - t_data, 3),
              "setup": round(t_setup - t_nodes, 3),
              "node_setup": {cid: c.setup_seconds for cid, c in clients.items()}}})
    rounds: list[dict] = []
    for r in range(last_done + 1, cfg.federation.rounds + 1):
        rep = fed.run_round(r)
        row = round_row(rep, cfg.privacy, epsilon={cid: c.epsilon for cid, c in rep.clients.items()},
                        client_epsilon=dict(fed.client_epsilon) if cfg.privacy.client_level else None)
        row["transport"] = getattr(rep, "transport", {})
        if settings.evaluate:
            t_eval = time.perf_counter()
            row["eval"] = evaluator.evaluate(server.encoder)
            row["eval_seconds"] = round(time.perf_counter() - t_eval, 3)
        rounds.append(row)
        line = _round_line(row, cfg.federation.rounds)
        log.info("%s", line)
        emit({"event": "round", "row": row, "line": line})
        if on_round is not None:
            on_round(row)
    final_eval = evaluator.evaluate(server.encoder, top1=True, write_to=run_dir) if settings.evaluate else {}
    from privspk.models.checkpoint import save_encoder

    in_dim = cfg.features.n_mels if cfg.features.kind == "fbank" else cfg.features.n_mfcc
    save_encoder(run_dir / "encoder.pt", server.encoder, name=cfg.model.encoder, in_dim=in_dim,
                 extra={"run": cfg.name, "recipe": cfg.train.recipe})
    fed.confirm_notices()
    nodes = dict(fed.clients)  # restarted nodes rejoined under new Flower ids
    byes = exchange(grid, {n: ({"kind": "bye"}, b"") for n in nodes.values()}, timeout=settings.stage_timeout,
                    poll=settings.poll)
    eps = {cid: byes[n].meta.get("epsilon_spent") for cid, n in nodes.items() if not byes[n].error}
    client_eps = ({cid: byes[n].meta.get("client_epsilon_spent") for cid, n in nodes.items() if not byes[n].error}
                  if cfg.privacy.client_level else None)
    report = {"run": cfg.name, "runtime": "flower", "config": cfg.to_dict(), "clients": nodes,
              "keyholder": keyholder.node_id if keyholder else None, "pretrain": pretrain_info,
              "secagg": {"scheme": cfg.secagg.scheme, "options": options}, "rounds": rounds,
              "pretrain_eval": pretrain_eval, "final_eval": final_eval, "epsilon_spent": eps,
              "client_epsilon_spent": client_eps,
              "seconds": {"total": round(time.perf_counter() - t_start, 1)}}
    (run_dir / "report.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    emit({"event": "done", "pretrain_eval": pretrain_eval, "final_eval": final_eval, "epsilon_spent": eps,
          "client_epsilon_spent": client_eps,
          "report": str(run_dir / "report.json")})
    return report
