"""What secure aggregation costs: privspk's schemes side by side with Flower 1.42's SecAgg+.

For each scheme, K clients and P parameters this measures, per round, the client's
time to protect its update, the server's time to aggregate, the time to open the
sum (unmask / decrypt), key setup, the extra server time per dropped client, the
upload bytes per parameter and the largest error of the opened sum, and writes
``results/secagg_cost.json`` (rows, ratios, targets, metadata), ``.md`` and ``.png``.

How each party is timed
-----------------------
*privspk*: each scheme's stages are driven in-process by
:func:`privspk.secagg.simulate.run_round` itself, whose ``hooks`` time every call for the
party that makes it. The stage that carries the update (``collect``) gives ``client_s`` (mean of
the clients' ``handle()`` calls) and ``server_s`` (the server's ``outbox()``,
``receive()`` and ``advance()`` of that stage); stages before it are key setup
(``setup_client_s``, ``setup_server_s``); stages after it, up to the opened vector,
are ``open_s`` (server and key holder; the clients' share of it is ``open_client_s``).

*Flower*: Ray is not installed here, so ``flwr.simulation`` cannot start. The benchmark
runs Flower's own ``SecAggPlusWorkflow`` (its four stage methods, server side) and a
``ClientApp`` wrapped in Flower's ``secaggplus_mod`` (client side) unchanged, joined by
a small in-process :class:`flwr.serverapp.grid.Grid` that serialises every message with
Flower's protobuf serde (as its transport would) and delivers it. Serialisation is
timed apart (``transport_s``) and counted in neither party. The client's protect time
is the mod's ``_collect_masked_vectors`` (quantise, masks, encoding), timed by wrapping
it; the server's times are each stage's time minus the client calls and the transport
inside it. The strategy's ``aggregate_fit`` is replaced by one that returns the
unmasked result as it is (FedAvg would average K identical copies of it).

Run: ``python benchmarks/secagg_cost.py`` (full, ~25 min on one core) or ``--quick``.
The script re-executes itself once with the allocator pinned (``MALLOC_*`` variables)
and one thread per library, unless they are already set.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import importlib
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

try:
    import privspk  # noqa: F401
except ModuleNotFoundError:  # a source checkout run without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from privspk.errors import ConfigError, PrivspkError, ProtocolError
from privspk.secagg import KEYHOLDER, RoundSpec, build_scheme
from privspk.secagg.graph import default_degree, threshold_for
from privspk.secagg.mask_protocol import MaskConfig
from privspk.secagg.simulate import RoundHooks, run_round

log = logging.getLogger("secagg_cost")

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results"
DEFAULT_KS = (3, 10, 50)
DEFAULT_PARAMS = (250_000, 1_000_000)
CLIP = 1.0

PINNED_ENV = {
    "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
    "MALLOC_MMAP_THRESHOLD_": str(1 << 30),
    "MALLOC_ARENA_MAX": "2",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
"""Environment the measuring process runs under (set by re-executing the script)."""

PRIVSPK_SCHEMES = ("plain", "mask", "mask16", "mask_complete", "mask_sparse", "ckks", "bfv")
FLOWER_SCHEMES = ("flower_complete", "flower_sparse")
ALL_SCHEMES = PRIVSPK_SCHEMES + FLOWER_SCHEMES

# Stages of Flower's SecAgg+ workflow, in order, and the phase each belongs to.
FLOWER_STAGES = ("setup", "share_keys", "collect_masked_vectors", "unmask")
_FLOWER_PHASE = {"setup": "setup", "share_keys": "setup", "collect_masked_vectors": "protect", "unmask": "open"}


# --------------------------------------------------------------------------- variants


def sparse_degree(n_clients: int) -> int:
    """SecAgg+ degree ``2 ceil(log2 K)`` (at most ``K - 1``, i.e. complete for small K).

    >>> [sparse_degree(k) for k in (3, 10, 50)]
    [2, 8, 12]
    """
    return min(n_clients - 1, 2 * math.ceil(math.log2(n_clients)))


@dataclass(frozen=True)
class Variant:
    """One configuration to measure at a given K: a privspk scheme with options, or Flower's SecAgg+.

    ``holders`` is the size of the group that holds one client's shares (``degree + 1``;
    Flower's ``num_shares``) and ``threshold`` the shares that rebuild a secret; both are
    ``None`` for schemes without secret sharing. ``key`` identifies what actually runs, so
    two names that resolve to the same configuration are measured once.

    >>> v = resolve("mask", 50)
    >>> v.options["degree"], v.holders, v.threshold
    (None, 13, 8)
    >>> resolve("flower_sparse", 50).holders, resolve("flower_complete", 50).holders
    (13, 50)
    """

    name: str
    family: str
    scheme: str
    options: dict[str, Any]
    holders: int | None
    threshold: int | None
    key: tuple

    @property
    def is_flower(self) -> bool:
        """Whether this is Flower's SecAgg+."""
        return self.family == "flower"


def resolve(name: str, n_clients: int) -> Variant:
    """The concrete configuration of scheme ``name`` for a round of ``n_clients``.

    ``mask``: privspk defaults (bits ``"auto"``, complete graph up to K = 16, else
    SecAgg+); ``mask16``: 16-bit values; ``mask_complete`` / ``mask_sparse``: the graph
    forced complete / to degree ``2 ceil(log2 K)``; ``flower_complete`` /
    ``flower_sparse``: Flower with ``num_shares`` equal to the holders of those two
    and privspk's threshold (the library's: ``2t - n > colluders`` for the default
    ``colluders``, and a strict majority), capped at ``num_shares - 1`` as Flower requires.

    >>> resolve("mask_sparse", 10).holders, resolve("mask_sparse", 10).threshold
    (9, 6)
    >>> resolve("nope", 10)
    Traceback (most recent call last):
    ...
    privspk.errors.ConfigError: unknown scheme 'nope'; choose from plain, mask, mask16, mask_complete, \
mask_sparse, ckks, bfv, flower_complete, flower_sparse
    """
    if name not in ALL_SCHEMES:
        raise ConfigError(f"unknown scheme {name!r}; choose from {', '.join(ALL_SCHEMES)}")
    k = n_clients
    if name in ("plain", "ckks", "bfv"):
        opts: dict[str, Any] = {"clip": CLIP} if name != "plain" else {}
        if name in ("ckks", "bfv"):
            opts["max_clients"] = max(50, k)
            opts["he_trust"] = "no-client-colludes-with-server"  # measured under the HE trust assumption
        return Variant(name, "privspk", name, opts, None, None, (name, tuple(sorted(opts.items()))))
    if name.startswith("mask"):
        degree: int | None = {"mask": None, "mask16": None, "mask_complete": k - 1,
                              "mask_sparse": sparse_degree(k)}[name]
        bits: int | str = 16 if name == "mask16" else "auto"
        opts = {"clip": CLIP, "bits": bits, "degree": degree}
        holders = min(default_degree(k) if degree is None else degree, k - 1) + 1
        cfg = build_scheme("mask", opts).config
        t = cfg.shares_needed(k)
        key = ("mask", cfg.value_bits(k), holders)
        return Variant(name, "privspk", "mask", opts, holders, t, key)
    holders = k if name == "flower_complete" else sparse_degree(k) + 1
    # Flower needs t < num_shares: where privspk's t is all holders (K = 3), Flower runs with one fewer.
    t = min(holders - 1, threshold_for(holders, 0.5, colluders=MaskConfig().colluders))
    return Variant(name, "flower", "flower", {"num_shares": holders, "reconstruction_threshold": t},
                   holders, t, ("flower", holders, t))


# --------------------------------------------------------------------------- timing


@dataclass
class Tally:
    """CPU (``time.process_time``) and wall seconds accumulated by one party in one phase.

    >>> t = Tally(); t.add(0.5, 0.75); t.add(0.25, 0.25); (t.cpu, t.wall)
    (0.75, 1.0)
    """

    cpu: float = 0.0
    wall: float = 0.0

    def add(self, cpu: float, wall: float) -> None:
        """Accumulate one timed span."""
        self.cpu += cpu
        self.wall += wall


class Clock:
    """Per-(party, phase) tallies; ``party`` is ``"server"``, ``"keyholder"``, ``"transport"`` or a client id.

    >>> c = Clock()
    >>> with c.span("server", "protect"):
    ...     _ = sum(range(1000))
    >>> c.get("server", "protect").wall > 0, c.get("server", "open").wall
    (True, 0.0)
    """

    def __init__(self) -> None:
        self.tallies: dict[tuple[str, str], Tally] = defaultdict(Tally)

    @contextlib.contextmanager
    def span(self, party: str, phase: str) -> Iterator[None]:
        """Time the enclosed block for ``party`` in ``phase``."""
        c0, w0 = time.process_time(), time.perf_counter()
        try:
            yield
        finally:
            self.tallies[(party, phase)].add(time.process_time() - c0, time.perf_counter() - w0)

    def get(self, party: str, phase: str) -> Tally:
        """The tally of ``party`` in ``phase`` (zero if it never ran)."""
        return self.tallies.get((party, phase), Tally())

    def clients_mean(self, clients: Sequence[str], phase: str) -> Tally:
        """Mean tally over the ``clients`` that ran in ``phase`` (zero if none did)."""
        ran = [self.tallies[(c, phase)] for c in clients if (c, phase) in self.tallies]
        if not ran:
            return Tally()
        return Tally(sum(t.cpu for t in ran) / len(ran), sum(t.wall for t in ran) / len(ran))


def _put(m: dict[str, float], name: str, t: Tally) -> None:
    m[f"{name}_s"] = t.cpu
    m[f"{name}_wall_s"] = t.wall


# --------------------------------------------------------------------------- inputs


def make_inputs(n_clients: int, dim: int, *, seed: int) -> np.ndarray:
    """Client updates, uniform in ``[-CLIP, CLIP]``, as float32 (exact in float64, so no scheme
    pays for rounding its input); row ``i`` is client ``i``'s update.

    >>> x = make_inputs(3, 5, seed=0)
    >>> x.shape, x.dtype.name, bool(np.abs(x).max() <= CLIP)
    ((3, 5), 'float32', True)
    """
    rng = np.random.default_rng(seed)
    return rng.uniform(-CLIP, CLIP, size=(n_clients, dim)).astype(np.float32)


def exact_sum(inputs: np.ndarray, rows: Sequence[int]) -> np.ndarray:
    """Float64 sum of the given rows (the reference every opened sum is compared with).

    >>> exact_sum(np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=np.float32), [0, 2]).tolist()
    [6.0, 8.0]
    """
    total = np.zeros(inputs.shape[1], dtype=np.float64)
    for r in rows:
        total += inputs[r]
    return total


def client_ids(n_clients: int) -> list[str]:
    """privspk client ids ``c00``, ``c01``, ... (sorted like their row order).

    >>> client_ids(3)
    ['c00', 'c01', 'c02']
    """
    width = max(2, len(str(n_clients - 1)))
    return [f"c{i:0{width}d}" for i in range(n_clients)]


def dropped_rows(n_clients: int, n_drop: int) -> list[int]:
    """Which clients drop out: spread over the client list so no neighbourhood loses them all.

    >>> dropped_rows(10, 3), dropped_rows(10, 0)
    ([0, 3, 6], [])
    """
    if n_drop == 0:
        return []
    step = max(1, n_clients // n_drop)
    return [i * step for i in range(n_drop)]


# --------------------------------------------------------------------------- privspk rounds


def _phase_of(stage: str, collect_seen: bool) -> str:
    if stage == "collect":
        return "protect"
    return "open" if collect_seen else "setup"


class _Timers(RoundHooks):
    """Times privspk's own round loop (:func:`privspk.secagg.simulate.run_round`) by party and phase."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.up: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.down: dict[str, int] = defaultdict(int)
        self.phase = "setup"
        self._collect_seen = False

    def stage(self, stage: str) -> None:
        self.phase = _phase_of(stage, self._collect_seen)
        self._collect_seen = self._collect_seen or stage == "collect"

    def span(self, party: str, stage: str) -> contextlib.AbstractContextManager[None]:
        return self.clock.span(party, self.phase)

    def message(self, party: str, stage: str, *, up: bool, n_bytes: int) -> None:
        if party == KEYHOLDER:
            return
        if up:
            self.up[party][self.phase] += n_bytes
        else:
            self.down[party] += n_bytes


class PrivspkSession:
    """One privspk scheme with K client endpoints, reused over rounds (as in a run).

    A warm-up round over a tiny vector runs first, so per-run work (HE clients loading the
    key holder's public context, first-use imports) is not billed to the measured rounds.
    """

    def __init__(self, variant: Variant, n_clients: int, *, seed: int) -> None:
        self.variant = variant
        self.ids = client_ids(n_clients)
        clock = Clock()
        with clock.span("init", "init"):
            self.scheme = build_scheme(variant.scheme, variant.options, seed=seed)
            self.clients = {c: self.scheme.client(c) for c in self.ids}
            self.scheme.keyholder()
        self.init = clock.get("init", "init")
        self._round = 0
        self.run_round(np.zeros((n_clients, 8), dtype=np.float32))

    def run_round(self, inputs: np.ndarray, *, drop: Sequence[int] = (), drop_stage: str = "collect"
                  ) -> dict[str, float]:
        """Run one round on ``inputs`` (row i = client i) and return its measurements.

        ``drop`` lists the rows of clients that stop answering from ``drop_stage`` on.
        """
        k, dim = inputs.shape
        rid = self._round
        self._round += 1
        for i, c in enumerate(self.ids):
            self.clients[c].submit(rid, inputs[i].astype(np.float64))
        spec = RoundSpec(run_id="bench", round_id=rid, clients=tuple(self.ids), dim=dim)
        silent = {self.ids[i]: drop_stage for i in drop}
        hooks = _Timers()
        result = run_round(self.scheme, spec, self.clients, silent=silent, hooks=hooks)
        clock, up, down = hooks.clock, hooks.up, hooks.down
        included = [self.ids.index(c) for c in result.included]
        truth = exact_sum(inputs, included)
        m: dict[str, float] = {"included": float(len(included))}
        _put(m, "setup_client", clock.clients_mean(self.ids, "setup"))
        setup_server = clock.get("server", "setup")
        setup_server.add(clock.get("keyholder", "setup").cpu, clock.get("keyholder", "setup").wall)
        _put(m, "setup_server", setup_server)
        _put(m, "client", clock.clients_mean(self.ids, "protect"))
        _put(m, "server", clock.get("server", "protect"))
        opening = Tally(clock.get("server", "open").cpu + clock.get("keyholder", "open").cpu,
                        clock.get("server", "open").wall + clock.get("keyholder", "open").wall)
        _put(m, "open", opening)
        _put(m, "open_client", clock.clients_mean(self.ids, "open"))
        senders = [c for c in self.ids if up[c]["protect"]]
        m["bytes_protect"] = statistics.fmean(up[c]["protect"] for c in senders)
        m["bytes_up_total"] = statistics.fmean(sum(up[c].values()) for c in senders)
        m["bytes_down_total"] = statistics.fmean(down[c] for c in senders)
        m["max_err"] = float(np.abs(result.total - truth).max())
        return m


# --------------------------------------------------------------------------- Flower rounds


class FlowerSession:
    """Flower 1.42's ``SecAggPlusWorkflow`` and ``secaggplus_mod``, run in-process (see the module doc).

    Flower's settings: clipping range ``CLIP`` (as privspk), quantisation range 2**22 and
    modulus 2**32 (its defaults), ``num_shares`` and ``reconstruction_threshold`` from the
    variant, every client reporting ``num_examples = max_weight`` so weighting loses no
    precision. Its stochastic rounding draws from numpy's global generator, seeded here.
    """

    QUANT_RANGE = 1 << 22
    MOD_RANGE = 1 << 32
    MAX_WEIGHT = 1000

    _warmed = False

    def __init__(self, variant: Variant, n_clients: int, *, seed: int) -> None:
        import flwr

        logging.getLogger("flwr").setLevel(logging.ERROR)
        self.version = flwr.__version__
        self.variant = variant
        self.n = n_clients
        self.seed = seed
        self.init = Tally()
        self._round = 0
        if not FlowerSession._warmed:
            # Once per process, on 3 clients: a warm-up at K = 50 would cost a full round of
            # Shamir work; what needs warming (imports, first-use caches) does not depend on K.
            FlowerSession._warmed = True
            FlowerSession(resolve("flower_complete", 3), 3, seed=seed).run_round(np.zeros((3, 8), np.float32))

    def run_round(self, inputs: np.ndarray, *, drop: Sequence[int] = (), drop_stage: str = "collect"
                  ) -> dict[str, float]:
        """Run one SecAgg+ round of Flower on ``inputs``; ``drop_stage``: ``collect`` or ``unmask``."""
        from flwr.app import ConfigRecord, Context, Message, RecordDict
        from flwr.client import NumPyClient
        from flwr.clientapp import ClientApp
        from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
        from flwr.common.constant import SUPERLINK_NODE_ID
        from flwr.common.serde import message_from_proto, message_to_proto
        from flwr.compat.common import recorddict_compat as compat
        from flwr.proto.message_pb2 import Message as ProtoMessage
        from flwr.server import ServerConfig
        from flwr.server.client_manager import SimpleClientManager
        from flwr.server.compat.grid_client_proxy import GridClientProxy
        from flwr.server.compat.legacy_context import LegacyContext
        from flwr.server.strategy import FedAvg
        from flwr.server.workflow import SecAggPlusWorkflow
        from flwr.server.workflow import constant as wf_const
        from flwr.serverapp.grid import Grid
        from flwr.supercore.task_identity import TaskIdentity

        # The packages re-export the functions under the modules' names: fetch the modules themselves.
        mod_module = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
        wf_module = importlib.import_module("flwr.server.workflow.secure_aggregation.secaggplus_workflow")
        k, dim = inputs.shape
        rnd = self._round
        self._round += 1
        np.random.seed((self.seed * 1_000_003 + rnd) % (1 << 32))
        nids = [1000 + i for i in range(k)]
        row_of = {nid: i for i, nid in enumerate(nids)}
        dropped = {nids[i] for i in drop}
        drop_from = {"collect": "collect_masked_vectors", "unmask": "unmask"}[drop_stage]
        clock = Clock()
        current = {"stage": "setup"}
        up: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        down: dict[int, int] = defaultdict(int)
        captured: dict[str, Any] = {}

        class _Client(NumPyClient):
            def __init__(self, update: np.ndarray) -> None:
                self.update = update

            def fit(self, parameters: Any, config: Any) -> tuple[list[np.ndarray], int, dict]:
                return [self.update], FlowerSession.MAX_WEIGHT, {}

        def client_fn(context: Context) -> Any:
            return _Client(inputs[row_of[context.node_id]]).to_client()

        app = ClientApp(client_fn=client_fn, mods=[mod_module.secaggplus_mod])
        contexts = {nid: Context(run_id=1, node_id=nid, node_config={}, state=RecordDict(), run_config={})
                    for nid in nids}

        def wire(msg: Any) -> tuple[Any, int]:
            with clock.span("transport", _FLOWER_PHASE[current["stage"]]):
                blob = message_to_proto(msg).SerializeToString()
                return message_from_proto(ProtoMessage.FromString(blob)), len(blob)

        class _InProcessGrid(Grid):
            """Delivers each message to its node's ClientApp through Flower's protobuf serde."""

            def set_run(self, run: Any) -> None:
                self._run = run

            @property
            def run(self) -> Any:
                return self._run

            def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                               ttl: float | None = None) -> Message:
                return Message(content, dst_node_id, message_type, group_id=group_id, ttl=ttl)

            def get_node_ids(self) -> list[int]:
                return list(nids)

            def push_messages(self, messages: Any) -> list[str]:
                raise NotImplementedError("use send_and_receive")

            def pull_messages(self, message_ids: Any) -> list[Message]:
                raise NotImplementedError("use send_and_receive")

            def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Message]:
                stage = current["stage"]
                phase = _FLOWER_PHASE[stage]
                late = FLOWER_STAGES.index(stage) >= FLOWER_STAGES.index(drop_from)
                replies = []
                for msg in messages:
                    nid = msg.metadata.dst_node_id
                    inbound, size = wire(msg)
                    down[nid] += size
                    if nid in dropped and late:
                        continue  # what a timeout makes of a silent node: no reply
                    with clock.span(str(nid), phase):
                        reply = app(inbound, contexts[nid])
                    reply, size = wire(reply)
                    up[nid][phase] += size
                    replies.append(reply)
                return replies

        class _Keep(FedAvg):
            """Returns the unmasked parameters as they are (FedAvg would average K copies)."""

            def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> tuple[Any, dict]:
                captured["parameters"] = results[0][1].parameters
                captured["n"] = len(results)
                return results[0][1].parameters, {}

        grid = _InProcessGrid()
        manager = SimpleClientManager()
        for nid in nids:
            manager.register(GridClientProxy(nid, grid, 1))
        strategy = _Keep(fraction_fit=1.0, min_fit_clients=k, min_available_clients=k, fraction_evaluate=0.0)
        server_ctx = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
        context = LegacyContext(server_ctx, config=ServerConfig(num_rounds=1), strategy=strategy,
                                client_manager=manager)
        context.state.config_records[wf_const.MAIN_CONFIGS_RECORD] = ConfigRecord(
            {wf_const.Key.CURRENT_ROUND: 1})
        context.state.array_records[wf_const.MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
            ndarrays_to_parameters([np.zeros(dim, dtype=np.float32)]), keep_input=True)
        workflow = SecAggPlusWorkflow(num_shares=self.variant.options["num_shares"],
                                      reconstruction_threshold=self.variant.options["reconstruction_threshold"],
                                      max_weight=float(self.MAX_WEIGHT), clipping_range=CLIP,
                                      quantization_range=self.QUANT_RANGE, modulus_range=self.MOD_RANGE)
        state = wf_module.WorkflowState()

        protect = Clock()
        inner = {"shamir": Tally(), "prg": Tally()}
        originals = (mod_module._collect_masked_vectors, wf_module.combine_shares, wf_module.pseudo_rand_gen)

        def timed_collect(state_: Any, *args: Any) -> Any:
            with protect.span(str(state_.nid), "protect"):
                return originals[0](state_, *args)

        def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
            def wrapper(*args: Any) -> Any:
                c0, w0 = time.process_time(), time.perf_counter()
                try:
                    return fn(*args)
                finally:
                    inner[name].add(time.process_time() - c0, time.perf_counter() - w0)
            return wrapper

        stages = (("setup", workflow.setup_stage), ("share_keys", workflow.share_keys_stage),
                  ("collect_masked_vectors", workflow.collect_masked_vectors_stage),
                  ("unmask", workflow.unmask_stage))
        totals: dict[str, Tally] = defaultdict(Tally)
        identity = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
        # What Flower's ServerApp runtime sets before running a workflow (it stamps new messages).
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
        mod_module._collect_masked_vectors = timed_collect
        wf_module.combine_shares = timed("shamir", originals[1])
        wf_module.pseudo_rand_gen = timed("prg", originals[2])
        try:
            for stage, step in stages:
                current["stage"] = stage
                c0, w0 = time.process_time(), time.perf_counter()
                ok = step(grid, context, state)
                totals[_FLOWER_PHASE[stage]].add(time.process_time() - c0, time.perf_counter() - w0)
                if not ok:
                    raise RuntimeError(f"Flower's SecAgg+ workflow halted at stage {stage!r}")
        finally:
            mod_module._collect_masked_vectors, wf_module.combine_shares, wf_module.pseudo_rand_gen = originals
            TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = identity

        ids = [str(n) for n in nids]
        m: dict[str, float] = {}
        for phase in ("setup", "protect", "open"):
            spent = totals[phase]
            for who in [*ids, "transport"]:
                t = clock.get(who, phase)
                spent = Tally(spent.cpu - t.cpu, spent.wall - t.wall)
            totals[phase] = spent
        _put(m, "setup_client", clock.clients_mean(ids, "setup"))
        _put(m, "setup_server", totals["setup"])
        _put(m, "client", protect.clients_mean(ids, "protect"))
        _put(m, "client_stage", clock.clients_mean(ids, "protect"))
        _put(m, "server", totals["protect"])
        _put(m, "open", totals["open"])
        _put(m, "open_client", clock.clients_mean(ids, "open"))
        _put(m, "shamir", inner["shamir"])
        _put(m, "prg", inner["prg"])
        transport = Tally()
        for phase in ("setup", "protect", "open"):
            t = clock.get("transport", phase)
            transport.add(t.cpu, t.wall)
        _put(m, "transport", transport)
        senders = [n for n in nids if up[n]["protect"]]
        m["bytes_protect"] = statistics.fmean(up[n]["protect"] for n in senders)
        m["bytes_up_total"] = statistics.fmean(sum(up[n].values()) for n in senders)
        m["bytes_down_total"] = statistics.fmean(down[n] for n in senders)
        n_in = len(senders)
        mean = parameters_to_ndarrays(captured["parameters"])[0].astype(np.float64)
        truth = exact_sum(inputs, [row_of[n] for n in senders])
        m["included"] = float(n_in)
        m["max_err"] = float(np.abs(mean * n_in - truth).max())
        return m


# --------------------------------------------------------------------------- measuring


def make_session(variant: Variant, n_clients: int, *, seed: int) -> PrivspkSession | FlowerSession:
    """A session (scheme + clients, or Flower's apps) for ``variant`` at ``n_clients``."""
    cls = FlowerSession if variant.is_flower else PrivspkSession
    return cls(variant, n_clients, seed=seed)


def median_of(rounds: Sequence[dict[str, float]]) -> dict[str, float]:
    """Median of each measurement over rounds; ``max_err`` is the largest, not the median.

    >>> median_of([{"client_s": 1.0, "max_err": 0.1}, {"client_s": 3.0, "max_err": 0.3},
    ...            {"client_s": 2.0, "max_err": 0.2}])
    {'client_s': 2.0, 'max_err': 0.3}
    """
    keys = rounds[0].keys()
    out = {k: float(statistics.median(r[k] for r in rounds)) for k in keys}
    out["max_err"] = max(r["max_err"] for r in rounds)
    return out


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ``ys`` on ``xs``.

    >>> slope([0, 1, 2, 3], [1.0, 3.0, 5.0, 7.0])
    2.0
    """
    x = np.asarray(xs, dtype=np.float64)
    y = np.asarray(ys, dtype=np.float64)
    xc = x - x.mean()
    return float((xc * (y - y.mean())).sum() / (xc * xc).sum())


def slope_se(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float | None]:
    """Least-squares slope and its standard error (``None`` with fewer than 3 points).

    >>> b, se = slope_se([0, 1, 2, 3], [1.0, 3.0, 5.0, 7.0]); (b, se)
    (2.0, 0.0)
    """
    b = slope(xs, ys)
    n = len(xs)
    if n < 3:
        return b, None
    x = np.asarray(xs, dtype=np.float64)
    y = np.asarray(ys, dtype=np.float64)
    resid = y - (y.mean() + b * (x - x.mean()))
    return b, float(math.sqrt((resid * resid).sum() / (n - 2) / ((x - x.mean()) ** 2).sum()))


def dropout_tolerance(variant: Variant, n_clients: int) -> int:
    """Dropouts a round of ``variant`` always survives (holders minus threshold; K - 1 without sharing).

    >>> dropout_tolerance(resolve("mask", 10), 10), dropout_tolerance(resolve("flower_sparse", 50), 50)
    (4, 5)
    """
    if variant.holders is None:
        return n_clients - 2
    return variant.holders - variant.threshold


@dataclass
class Plan:
    """What to run: repeats, when a configuration counts as slow, and the dropout sweeps.

    >>> Plan().repeats, Plan(repeats=1).max_drop
    (3, 3)
    """

    repeats: int = 3
    slow_round_s: float = 20.0
    max_drop: int = 3
    dropout_params: tuple[int, ...] = (1_000_000,)
    late_drop: int = 3
    drop_budget_s: float = 20.0
    drop_cycles: int = 5
    seed: int = 0
    progress: Callable[[str], None] = field(default=lambda line: None)


def repeat_rounds(session: PrivspkSession | FlowerSession, inputs: np.ndarray, *, most: int, budget_s: float,
                  drop: Sequence[int] = (), drop_stage: str = "collect") -> list[dict[str, float]]:
    """Run at least one round, and up to ``most`` while the rounds so far plus one more fit ``budget_s`` (wall).

    Cheap configurations get every repeat; one whose single round is slow runs once.
    """
    rounds: list[dict[str, float]] = []
    spent = 0.0
    while len(rounds) < most:
        w0 = time.perf_counter()
        rounds.append(session.run_round(inputs, drop=drop, drop_stage=drop_stage))
        took = time.perf_counter() - w0
        spent += took
        if spent + took > budget_s:
            break
    return rounds


def dropout_sweep(session: PrivspkSession | FlowerSession, inputs: np.ndarray, variant: Variant, plan: Plan,
                  *, first: dict[str, float]) -> dict[str, Any]:
    """Extra server time per client that shared keys but never sent its update.

    Rounds run in cycles ``d = 0, 1, .., dmax`` (``dmax = min(plan.max_drop, tolerance)``),
    interleaved so a drift in the machine's load touches every ``d`` alike; the first
    cycle reuses ``first`` (the last measured full round) as its ``d = 0``. Cycles repeat
    while they fit ``(dmax + 1) * plan.drop_budget_s`` seconds, up to ``plan.drop_cycles``.
    The figure is the least-squares slope of server aggregate + open CPU seconds on ``d``
    (with its standard error). Then one round with ``plan.late_drop`` clients silent right
    after sending their update (privspk: from ``confirm``; Flower: from ``unmask``).
    """
    k = inputs.shape[0]
    tol = dropout_tolerance(variant, k)
    dmax = min(plan.max_drop, tol)
    xs: list[float] = []
    ys: list[float] = []
    yw: list[float] = []
    errs: list[float] = []

    def take(d: int, r: dict[str, float]) -> None:
        if r["included"] != k - d:
            raise RuntimeError(f"{variant.name}: {k - d} clients should be in the sum, got {r['included']:.0f}")
        xs.append(float(d))
        ys.append(r["server_s"] + r["open_s"])
        yw.append(r["server_wall_s"] + r["open_wall_s"])
        if d:
            errs.append(r["max_err"])

    take(0, first)
    budget = (dmax + 1) * plan.drop_budget_s
    spent, cycles = 0.0, 0
    while cycles < plan.drop_cycles:
        w0 = time.perf_counter()
        for d in range(0 if cycles else 1, dmax + 1):
            take(d, session.run_round(inputs, drop=dropped_rows(k, d), drop_stage="collect"))
        took = time.perf_counter() - w0
        spent += took
        cycles += 1
        if spent + took * (dmax + 1) / dmax > budget:
            break
    b, se = slope_se(xs, ys)
    out: dict[str, Any] = {
        "drop_counts": list(range(1, dmax + 1)),
        "drop_cycles": cycles,
        "drop_server_s": [statistics.median(y for x, y in zip(xs, ys) if x == d) for d in range(dmax + 1)],
        "drop_server_s_per_client": b,
        "drop_server_s_per_client_se": se,
        "drop_server_wall_s_per_client": slope(xs, yw),
        "drop_max_err": max(errs),
    }
    late = min(plan.late_drop, tol)
    if late >= 1:
        r = session.run_round(inputs, drop=dropped_rows(k, late),
                              drop_stage="unmask" if variant.is_flower else "confirm")
        if r["included"] != k:
            raise RuntimeError(f"{variant.name}: clients that sent their update must stay in the sum")
        out["late_drop_count"] = late
        out["late_drop_server_s"] = r["server_s"] + r["open_s"]
        out["late_drop_server_s_per_client"] = (r["server_s"] + r["open_s"] - out["drop_server_s"][0]) / late
        out["late_drop_max_err"] = r["max_err"]
    return out


def measure(variant: Variant, n_clients: int, dim: int, plan: Plan, inputs: np.ndarray) -> dict[str, Any]:
    """Measure one (variant, K, P): repeated rounds, then the dropout sweeps; returns a result row.

    Rounds are repeated ``plan.repeats`` times while they fit ``plan.repeats *
    plan.slow_round_s`` seconds, else fewer (at least one; ``repeats`` in the row says
    how many). Schemes with secret sharing at ``dim`` in ``plan.dropout_params`` then
    get a :func:`dropout_sweep`.
    """
    session = make_session(variant, n_clients, seed=plan.seed)
    t0 = time.perf_counter()
    rounds = repeat_rounds(session, inputs, most=plan.repeats, budget_s=plan.repeats * plan.slow_round_s)
    row: dict[str, Any] = {
        "scheme": variant.name, "family": variant.family, "K": n_clients, "params": dim,
        "holders": variant.holders, "threshold": variant.threshold, "repeats": len(rounds),
        "options": dict(variant.options), "init_s": session.init.cpu,
    }
    row.update(median_of(rounds))
    row["bytes_per_param"] = row["bytes_protect"] / dim
    row["bytes_per_param_total"] = row["bytes_up_total"] / dim
    row["server_open_s"] = row["server_s"] + row["open_s"]
    row["server_open_wall_s"] = row["server_wall_s"] + row["open_wall_s"]
    tol = dropout_tolerance(variant, n_clients)
    row["drop_server_s_per_client"] = None
    row["late_drop_server_s_per_client"] = None
    if variant.holders is not None and dim in plan.dropout_params and tol >= 1:
        row.update(dropout_sweep(session, inputs, variant, plan, first=rounds[-1]))
    row["bench_wall_s"] = time.perf_counter() - t0
    return row


# --------------------------------------------------------------------------- ratios and targets


def flower_peer(variant: Variant, n_clients: int) -> str | None:
    """The Flower row a privspk row is compared with: the one with the same graph (holders).

    Plain and HE have no graph; they are compared with Flower's complete graph.

    >>> flower_peer(resolve("mask", 50), 50), flower_peer(resolve("mask", 10), 10)
    ('flower_sparse', 'flower_complete')
    >>> flower_peer(resolve("ckks", 50), 50), flower_peer(resolve("flower_sparse", 50), 50)
    ('flower_complete', None)
    """
    if variant.is_flower:
        return None
    return "flower_complete" if variant.holders is None or variant.holders == n_clients else "flower_sparse"


RATIO_FIELDS = ("client_s", "server_s", "open_s", "server_open_s", "setup_client_s", "setup_server_s",
                "bytes_per_param", "drop_server_s_per_client")


def _ratio(a: Any, b: Any) -> float | None:
    if a is None or b is None or not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or b <= 0:
        return None
    return float(a) / float(b)


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Add ``ratio_to_plain_*`` and ``ratio_to_flower_*`` (Flower with the same graph) to every row."""
    index = {(r["scheme"], r["K"], r["params"]): r for r in rows}
    for r in rows:
        plain = index.get(("plain", r["K"], r["params"]))
        peer_name = r.get("flower_peer")
        peer = index.get((peer_name, r["K"], r["params"])) if peer_name else None
        for f in RATIO_FIELDS:
            r[f"ratio_to_plain_{f}"] = _ratio(r.get(f), plain.get(f)) if plain else None
            r[f"ratio_to_flower_{f}"] = _ratio(r.get(f), peer.get(f)) if peer else None


@dataclass(frozen=True)
class Target:
    """One target of the issue: a figure, its limit, and whether it was met.

    ``low``/``high`` (optional) bound the figure (about 95 %: two standard errors of
    a regression each way); then the target passes only if ``high`` meets the limit,
    misses only if ``low`` fails it, and is *inconclusive* in between.

    >>> Target("t", "x", 0.1, 0.2).status, Target("t", "x", None, 0.2).status
    ('pass', 'not measured')
    >>> Target("t", "x", 0.1, 0.2, low=0.0, high=0.4).status, Target("t", "x", 0.5, 0.2, low=0.3, high=0.9).status
    ('inconclusive', 'MISS')
    """

    name: str
    what: str
    value: float | None
    limit: float
    op: str = "<="
    note: str = ""
    low: float | None = None
    high: float | None = None

    def _ok(self, v: float) -> bool:
        return v <= self.limit if self.op == "<=" else v >= self.limit

    @property
    def met(self) -> bool | None:
        """True/False, or None when the figure was not measured or its bounds straddle the limit."""
        if self.value is None:
            return None
        if self.low is None or self.high is None:
            return self._ok(self.value)
        worst, best = (self.high, self.low) if self.op == "<=" else (self.low, self.high)
        if self._ok(worst):
            return True
        return None if self._ok(best) else False

    @property
    def status(self) -> str:
        """``pass``, ``MISS``, ``inconclusive`` or ``not measured``."""
        if self.value is None:
            return "not measured"
        met = self.met
        return "inconclusive" if met is None else ("pass" if met else "MISS")

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"target": self.name, "what": self.what, "value": self.value, "limit": self.limit, "op": self.op,
                "low": self.low, "high": self.high, "status": self.status, "note": self.note}


def ratio_bounds(ours: float, ours_se: float | None, theirs: float, theirs_se: float | None
                 ) -> tuple[float | None, float | None]:
    """Bounds of ``ours / theirs`` from two standard errors each way (``inf`` when ``theirs`` may be 0).

    >>> ratio_bounds(1.0, 0.1, 10.0, 1.0)
    (0.06666666666666667, 0.15)
    >>> ratio_bounds(1.0, 0.1, 1.0, 0.6)[1]
    inf
    """
    if ours_se is None or theirs_se is None:
        return None, None
    lo_t, hi_t = theirs - 2 * theirs_se, theirs + 2 * theirs_se
    high = math.inf if lo_t <= 0 else (ours + 2 * ours_se) / lo_t
    low = max(0.0, ours - 2 * ours_se) / hi_t if hi_t > 0 else None
    return low, high


def targets(rows: list[dict[str, Any]], *, target_params: int = 1_000_000) -> list[Target]:
    """The issue's targets evaluated on the rows at ``target_params`` (one core, CPU seconds)."""
    idx = {(r["scheme"], r["K"]): r for r in rows if r["params"] == target_params}
    ks = sorted({r["K"] for r in rows if r["params"] == target_params})
    out: list[Target] = []

    def val(scheme: str, k: int, f: str) -> float | None:
        r = idx.get((scheme, k))
        v = r.get(f) if r else None
        return float(v) if isinstance(v, (int, float)) else None

    for k in ks:
        lim = 2.1 if k <= 16 else 4.1
        out.append(Target(f"mask bytes/param, K={k}", "upload bytes per parameter (masked vector incl. header)",
                          val("mask", k, "bytes_per_param"), lim))
    pairs = [("mask_complete", "flower_complete"), ("mask_sparse", "flower_sparse"), ("mask", None)]

    def ratio_target(name: str, what: str, k: int, field_: str, limit: float) -> None:
        for ours, theirs in pairs:
            r = idx.get((ours, k))
            if r is None:
                continue
            if theirs is None:
                theirs = r.get("flower_peer")
            same = r.get("same_as")
            if same and same != ours and (same, k) in idx and ours != "mask":
                continue
            peer = idx.get((theirs, k))
            v = _ratio(r.get(field_), peer.get(field_)) if peer else None
            low = high = None
            if v is not None:
                low, high = ratio_bounds(r[field_], r.get(f"{field_}_se"), peer[field_], peer.get(f"{field_}_se"))
            note = (f"{ours} {_pm(r.get(field_), r.get(f'{field_}_se'))} s vs {theirs} "
                    f"{_pm(peer.get(field_), peer.get(f'{field_}_se'))} s"
                    if peer and r.get(field_) is not None and peer.get(field_) is not None
                    else f"{theirs} not measured")
            if high is not None:
                note += f"; ratio within [{_fmt(low, 2)}, {_fmt(high, 2)}] (2 standard errors)"
            out.append(Target(f"{name} ({ours} vs {theirs}, holders {r.get('holders')}), K={k}", what, v, limit,
                              note=note, low=low, high=high))

    if 10 in ks:
        ratio_target("client protect / Flower", "client protect CPU s, ratio", 10, "client_s", 0.2)
    if 50 in ks:
        ratio_target("server aggregate+open / Flower", "server aggregate + open CPU s, ratio", 50,
                     "server_open_s", 0.25)
    for k in ks:
        if k >= 10:
            ratio_target("extra server s per dropped client / Flower",
                         "slope of server aggregate+open CPU s over dropped clients, ratio", k,
                         "drop_server_s_per_client", 0.25)
    for k in ks:
        out.append(Target(f"bfv bytes/param, K={k}", "upload bytes per parameter", val("bfv", k, "bytes_per_param"),
                          8.0))
        err = val("ckks", k, "max_err")
        out.append(Target(f"ckks bytes/param, K={k}", "upload bytes per parameter (with max error <= 1e-6)",
                          val("ckks", k, "bytes_per_param"), 32.0, note=f"max error {_fmt(err, 2)}"))
        out.append(Target(f"ckks max error, K={k}", "largest error of the opened sum", err, 1e-6))
        for he in ("ckks", "bfv"):
            c = val(he, k, "client_s")
            out.append(Target(f"{he} client encrypt per 1M params, K={k}", "client protect CPU s per 1M parameters",
                              None if c is None else c * 1e6 / target_params, 1.0))
    return out


# --------------------------------------------------------------------------- outputs


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    if isinstance(v, float) and math.isinf(v):
        return "∞"
    if isinstance(v, float) and (v == 0 or 1e-3 <= abs(v) < 1e4):
        return f"{v:.{digits}g}"
    if isinstance(v, float):
        return f"{v:.2g}"
    return str(v)


def _pm(value: Any, err: Any) -> str:
    """``value ± err`` (or just the value).

    >>> _pm(0.0123, 0.004), _pm(None, None)
    ('0.0123 ± 0.004', '–')
    """
    if value is None or err is None:
        return _fmt(value)
    return f"{_fmt(value)} ± {_fmt(err, 1)}"


def markdown(payload: dict[str, Any]) -> str:
    """The results as markdown: one table per (P, K), then the targets."""
    meta = payload["metadata"]
    lines = [
        "# Secure aggregation cost: privspk vs Flower 1.42 SecAgg+",
        "",
        f"Measured {meta['date']} on {meta['machine']}; CPU seconds (`time.process_time`, one thread) unless "
        "marked wall; medians over `repeats` rounds; `client` = mean per client.",
        f"Flower: {meta['flower_method']}",
        "",
        "Columns: *holders/t* = clients holding one client's shares (degree + 1; Flower's num_shares) / shares "
        "that rebuild a secret; *bytes/param up* = the client's upload carrying its update, per parameter; "
        "*client protect* = mean per client of the stage that sends the update; *server aggregate* = server "
        "time in that stage; *open* = server (and HE key holder) time after it, up to the opened sum; *setup* "
        "= key advertisement and share exchange; *extra server s per dropout* = slope of aggregate + open over "
        "clients that shared keys but never sent their update; *max err* = largest |opened sum - exact sum|. "
        "A name with (= other) resolved to the same configuration as *other* and repeats its figures.",
        "",
    ]
    rows = payload["rows"]
    for p in sorted({r["params"] for r in rows}):
        for k in sorted({r["K"] for r in rows if r["params"] == p}):
            sel = [r for r in rows if r["params"] == p and r["K"] == k]
            lines += [f"## P = {p:,}, K = {k}", "",
                      "| scheme | holders/t | bytes/param up | client protect s | server aggregate s | open s | "
                      "setup client/server s | extra server s per dropout | max err | × Flower (client, srv+open, "
                      "dropout) | × plain srv+open | repeats |",
                      "|---|---|---|---|---|---|---|---|---|---|---|---|"]
            for r in sel:
                ht = f"{r['holders']}/{r['threshold']}" if r.get("holders") else "–"
                name = r["scheme"] + (f" (= {r['same_as']})" if r.get("same_as") else "")
                fl = ", ".join(_fmt(r.get(f"ratio_to_flower_{f}"), 2)
                               for f in ("client_s", "server_open_s", "drop_server_s_per_client"))
                drop = _pm(r.get("drop_server_s_per_client"), r.get("drop_server_s_per_client_se"))
                lines.append(
                    f"| {name} | {ht} | {_fmt(r['bytes_per_param'])} | {_fmt(r['client_s'])} | "
                    f"{_fmt(r['server_s'])} | {_fmt(r['open_s'])} | {_fmt(r['setup_client_s'])} / "
                    f"{_fmt(r['setup_server_s'])} | {drop} | "
                    f"{_fmt(r['max_err'], 2)} | {fl if r['family'] != 'flower' else '–'} | "
                    f"{_fmt(r.get('ratio_to_plain_server_open_s'), 2)} | {r['repeats']} |")
            lines.append("")
    lines += [f"## Targets (P = {meta.get('target_params', 1_000_000):,}, one core, CPU seconds)", "",
              "| target | value | limit | status | note |", "|---|---|---|---|---|"]
    for t in payload["targets"]:
        lines.append(f"| {t['target']} | {_fmt(t['value'])} | {t['op']} {_fmt(t['limit'])} | {t['status']} | "
                     f"{t['note']} |")
    lines.append("")
    return "\n".join(lines)


def plot(payload: dict[str, Any], path: Path) -> bool:
    """Grouped bars (log scale) of client / server / open CPU s per scheme at the largest P for
    K = 10 and 50, and bytes per parameter; returns False when there is nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = payload["rows"]
    if not rows:
        return False
    p = max(r["params"] for r in rows)
    ks = [k for k in (10, 50) if any(r["K"] == k and r["params"] == p for r in rows)]
    if not ks:
        ks = [max(r["K"] for r in rows if r["params"] == p)]
    fig, axes = plt.subplots(1, len(ks) + 1, figsize=(6.5 * (len(ks) + 1), 5.2))
    parts = (("client_s", "client protect"), ("server_s", "server aggregate"), ("open_s", "open"))
    for ax, k in zip(axes, ks):
        sel = [r for r in rows if r["K"] == k and r["params"] == p and not r.get("same_as")]
        x = np.arange(len(sel))
        for j, (f, label) in enumerate(parts):
            ax.bar(x + (j - 1) * 0.27, [r[f] if r[f] > 0 else np.nan for r in sel], 0.27, label=label)
        ax.set_yscale("log")
        ax.set_xticks(x, [r["scheme"] for r in sel], rotation=35, ha="right")
        ax.set_ylabel("CPU seconds (one core)")
        ax.set_title(f"K = {k}, P = {p:,}")
        ax.grid(axis="y", which="major", alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[-1]
    names = [n for n in ALL_SCHEMES if any(r["scheme"] == n and r["params"] == p for r in rows)]
    x = np.arange(len(names))
    for j, k in enumerate(ks):
        vals = []
        for n in names:
            r = next((r for r in rows if r["scheme"] == n and r["K"] == k and r["params"] == p), None)
            vals.append(r["bytes_per_param"] if r else 0.0)
        ax.bar(x + (j - (len(ks) - 1) / 2) * 0.4, vals, 0.4, label=f"K = {k}")
    ax.set_xticks(x, names, rotation=35, ha="right")
    ax.set_ylabel("upload bytes per parameter")
    ax.set_title("upload per client")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------- driver


def run_benchmark(schemes: Sequence[str], ks: Sequence[int], params: Sequence[int], plan: Plan
                  ) -> list[dict[str, Any]]:
    """Measure every (scheme, K, P); configurations that resolve alike are measured once (``same_as``)."""
    rows: list[dict[str, Any]] = []
    for p in params:
        for k in ks:
            inputs = make_inputs(k, p, seed=plan.seed + 7919 * k + p)
            done: dict[tuple, dict[str, Any]] = {}
            for name in schemes:
                variant = resolve(name, k)
                if variant.key in done:
                    row = dict(done[variant.key])
                    row["same_as"] = row.get("same_as") or row["scheme"]
                    row["scheme"] = name
                else:
                    plan.progress(f"P={p:,} K={k} {name} ...")
                    row = measure(variant, k, p, plan, inputs)
                    done[variant.key] = row
                    plan.progress(f"P={p:,} K={k} {name}: client {row['client_s']:.4f} s, server "
                                  f"{row['server_s']:.4f} s, open {row['open_s']:.4f} s, "
                                  f"{row['bytes_per_param']:.2f} B/param, err {row['max_err']:.2g} "
                                  f"({row['bench_wall_s']:.1f} s)")
                row["flower_peer"] = flower_peer(variant, k)
                rows.append(row)
            del inputs
    add_ratios(rows)
    return rows


def metadata(plan: Plan, argv: Sequence[str], started: float) -> dict[str, Any]:
    """Where, when and how the figures were taken."""
    import cryptography
    import tenseal

    try:
        import flwr

        flwr_version = flwr.__version__
    except ModuleNotFoundError:
        flwr_version = None
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {cpu}, {os.cpu_count()} logical CPUs, {platform.system()} "
                   f"{platform.release()}",
        "python": platform.python_version(),
        "versions": {"numpy": np.__version__, "tenseal": tenseal.__version__, "cryptography": cryptography.__version__,
                     "flwr": flwr_version},
        "argv": list(argv),
        "timing": "time.process_time() (CPU, all threads of the process) as *_s and time.perf_counter() as "
                  "*_wall_s; medians over the repeats; max_err is the largest over them",
        "threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
        "malloc_env": {k: os.environ.get(k) for k in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_",
                                                     "MALLOC_ARENA_MAX")},
        "malloc_note": "the script re-executes itself with these set (if absent) so glibc keeps freed blocks "
                       "on its heap instead of unmapping them between rounds (50 allocations of 8 MB: 407 page "
                       "faults pinned vs 1850 with glibc's defaults); an earlier helper found ~40 % "
                       "round-to-round noise from allocation on this VM without them",
        "cpu_affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "repeats": plan.repeats,
        "slow_round_s": plan.slow_round_s,
        "repeats_note": f"each configuration runs up to {plan.repeats} rounds while they fit "
                        f"{plan.repeats} x {plan.slow_round_s} s wall (at least one): slow ones (Flower's complete "
                        "graph and CKKS at K = 50) run fewer; each row's 'repeats' says how many",
        "dropouts": f"at P in {list(plan.dropout_params)}: d = 1..{plan.max_drop} clients (capped at the "
                    "dropout tolerance) stop answering from the stage that carries the masked update (they "
                    "shared keys, never send it: the server must rebuild their pair masks); rounds run in "
                    f"interleaved cycles d = 0..{plan.max_drop} (the first reuses the last measured full round as "
                    f"d = 0), repeated while they fit (d_max + 1) x {plan.drop_budget_s} s wall, at most "
                    f"{plan.drop_cycles} ('drop_cycles'); drop_server_s_per_client = least-squares slope of server "
                    "aggregate+open CPU s on d (with its standard error, *_se); drop_server_s = median per d. "
                    f"late_drop_*: one round with {plan.late_drop} clients silent right after sending their "
                    "masked update (privspk: from 'confirm'; Flower: from 'unmask'), per client vs d = 0",
        "inputs": f"uniform in [-{CLIP}, {CLIP}], float32 (exact in float64); max_err = largest |opened sum - "
                  "float64 sum of the included clients' inputs|",
        "flower_method": "Flower's own SecAggPlusWorkflow stage methods (server) and a ClientApp wrapped in "
                         "secaggplus_mod (clients), unmodified, joined by an in-process Grid that serialises "
                         "each message with flwr.common.serde (protobuf) and calls the ClientApp; "
                         "flwr.simulation needs Ray, which is not installed here. Client protect = the mod's "
                         "_collect_masked_vectors (wrapped to time it); server = stage time minus client calls "
                         "and serialisation (transport_s); the strategy returns the unmasked parameters without "
                         "FedAvg's averaging. Settings: clipping_range 1.0, quantization_range 2^22, "
                         "modulus_range 2^32, max_weight = num_examples = 1000, num_shares and "
                         "reconstruction_threshold as privspk's holders and t.",
        "privspk_method": "each scheme's ServerRound and client endpoints driven in-process like "
                          "privspk.secagg.simulate.run_round, each call timed for its party; one warm-up round "
                          "over 8 values before the measured rounds",
        "total_wall_s": time.perf_counter() - started,
    }


def _reexec_pinned(argv: Sequence[str]) -> None:
    """Re-execute this script once with :data:`PINNED_ENV` set, unless it already is."""
    missing = {k: v for k, v in PINNED_ENV.items() if k not in os.environ}
    if not missing or os.environ.get("PRIVSPK_BENCH_REEXEC") == "1":
        return
    env = {**os.environ, **missing, "PRIVSPK_BENCH_REEXEC": "1"}
    script = str(Path(__file__).resolve())
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, script, *argv], env)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="secagg_cost", description=__doc__.split("\n", 1)[0])
    p.add_argument("--quick", action="store_true", help="smoke run: P = 0.25M, K in {3, 10}, one repeat")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: benchmarks/results)")
    p.add_argument("--schemes", default=",".join(ALL_SCHEMES), help=f"comma list of {', '.join(ALL_SCHEMES)}")
    p.add_argument("--ks", default=None, help="comma list of client counts (default 3,10,50)")
    p.add_argument("--params", default=None, help="comma list of parameter counts (default 250000,1000000)")
    p.add_argument("--repeats", type=int, default=None, help="rounds per configuration (default 3; --quick 1)")
    p.add_argument("--slow-round-s", type=float, default=20.0,
                   help="rounds repeat while they fit repeats x this many wall seconds (at least one)")
    p.add_argument("--max-drop", type=int, default=3, help="largest number of dropped clients in the sweep")
    p.add_argument("--dropout-params", default=None, help="P values with a dropout sweep (default: the largest)")
    p.add_argument("--drop-budget-s", type=float, default=20.0,
                   help="wall seconds per dropout count: sweep cycles repeat while they fit (at least one)")
    p.add_argument("--drop-cycles", type=int, default=5, help="most interleaved cycles d = 0..max-drop")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-reexec", action="store_true", help="do not re-execute with the pinned environment")
    return p.parse_args(list(argv))


def _ints(text: str | None, default: Sequence[int]) -> tuple[int, ...]:
    if text is None:
        return tuple(default)
    try:
        vals = tuple(int(float(x)) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"expected a comma list of integers, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise ConfigError(f"expected positive integers, got {text!r}")
    return vals


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write JSON, markdown and PNG to ``--out``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if not args.no_reexec:
        _reexec_pinned(argv)
    started = time.perf_counter()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("privspk").setLevel(logging.WARNING)
    schemes = [s.strip() for s in args.schemes.split(",") if s.strip()]
    for s in schemes:
        resolve(s, 10)  # unknown names fail before anything runs
    ks = _ints(args.ks, (3, 10) if args.quick else DEFAULT_KS)
    params = _ints(args.params, (250_000,) if args.quick else DEFAULT_PARAMS)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    plan = Plan(repeats=repeats, slow_round_s=args.slow_round_s, max_drop=args.max_drop,
                dropout_params=_ints(args.dropout_params, (max(params),)), seed=args.seed,
                late_drop=min(3, args.max_drop), drop_budget_s=args.drop_budget_s, drop_cycles=args.drop_cycles,
                progress=log.info)
    rows = run_benchmark(schemes, ks, params, plan)
    target_p = 1_000_000 if 1_000_000 in params else max(params)
    payload = {"metadata": metadata(plan, argv, started), "rows": rows,
               "targets": [t.as_dict() for t in targets(rows, target_params=target_p)]}
    payload["metadata"]["target_params"] = target_p
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "secagg_cost.json").write_text(json.dumps(payload, indent=1, default=float) + "\n")
    (out / "secagg_cost.md").write_text(markdown(payload))
    plot(payload, out / "secagg_cost.png")
    for t in payload["targets"]:
        log.info("%-70s %-10s %s", t["target"], t["status"], _fmt(t["value"]))
    log.info("wrote %s (%.0f s)", out / "secagg_cost.json", time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
