"""The in-process runtime: every client and the server in one process, bytes between them.

It is the default runtime (demo, tests, benchmarks). The protocol lives in the
clients, the server and the aggregation scheme; this module only calls them in
order and carries the scheme's messages with :func:`privspk.secagg.simulate.run_round`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from privspk.errors import AggregationError
from privspk.federation.client import ClientRoundReport, FederatedClient
from privspk.federation.server import FederatedServer
from privspk.secagg import AggregateResult, Scheme
from privspk.secagg.simulate import run_round

log = logging.getLogger(__name__)


@dataclass
class RoundReport:
    """One round: what each client did, who is in the sum, and where the time went.

    ``loss`` averages the clients that sent an update; ``to_dict`` is the round's JSON row.

    >>> from privspk.federation.client import ClientRoundReport
    >>> rep = RoundReport(1, {"c0": ClientRoundReport("c0", 1, "sent", loss=2.0),
    ...                       "c1": ClientRoundReport("c1", 1, "sent", loss=4.0),
    ...                       "c2": ClientRoundReport("c2", 1, "out_of_budget")},
    ...                   included=("c0", "c1"), dropped={"c2": "out of budget"})
    >>> rep.loss
    3.0
    >>> row = rep.to_dict()
    >>> row["round"], row["included"], row["dropped"]
    (1, ['c0', 'c1'], {'c2': 'out of budget'})
    """

    round_id: int
    clients: dict[str, ClientRoundReport]
    included: tuple[str, ...] = ()
    dropped: dict[str, str] = field(default_factory=dict)
    weight_mass: float = 0.0
    train_seconds: float = 0.0
    secagg_seconds: float = 0.0
    round_seconds: float = 0.0
    bytes_up: int = 0
    skipped: str = ""

    @property
    def loss(self) -> float:
        """Mean local loss over the clients that trained.

        >>> _example_report().loss
        3.0
        """
        losses = [r.loss for r in self.clients.values() if r.status == "sent"]
        return sum(losses) / len(losses) if losses else float("nan")

    def to_dict(self) -> dict:
        """JSON-able summary (the round's row, before the runtime adds epsilon and the evaluation).

        >>> row = _example_report().to_dict()
        >>> row["round"], row["loss"], row["included"], row["dropped"]
        (1, 3.0, ['c0', 'c1'], {'c2': 'out of budget'})
        """
        return {
            "round": self.round_id,
            "loss": self.loss,
            "included": list(self.included),
            "dropped": self.dropped,
            "weight_mass": self.weight_mass,
            "train_seconds": round(self.train_seconds, 3),
            "secagg_seconds": round(self.secagg_seconds, 3),
            "round_seconds": round(self.round_seconds, 3),
            "bytes_up": self.bytes_up,
            "skipped": self.skipped,
            "clients": {c: vars(r) for c, r in self.clients.items()},
        }


def _example_report() -> RoundReport:
    """A round of three clients, two in the sum, for the doctests."""
    return RoundReport(1, {"c0": ClientRoundReport("c0", 1, "sent", loss=2.0),
                           "c1": ClientRoundReport("c1", 1, "sent", loss=4.0),
                           "c2": ClientRoundReport("c2", 1, "out_of_budget")},
                       included=("c0", "c1"), dropped={"c2": "out of budget"})


def aggregation_failed(report: RoundReport, exc: Exception, *, start: float, t0: float) -> RoundReport:
    """Close ``report`` as a round whose sum was not opened (``start``: round start, ``t0``: aggregation start)."""
    report.skipped = f"aggregation failed, nothing opened: {exc}"
    report.secagg_seconds = time.perf_counter() - t0
    report.round_seconds = time.perf_counter() - start
    log.warning("round %d: %s", report.round_id, report.skipped)
    return report


def finish_round(report: RoundReport, result: AggregateResult, *, server: FederatedServer,
                 record_heads: Callable[[int, tuple[str, ...]], None], state_path: Path | None = None,
                 on_aggregated: Callable[[int, tuple[str, ...]], None] | None = None,
                 uplink_excludes: Collection[str] = ()) -> None:
    """Close a round whose sum was opened, the same way in every runtime (nothing here moves bytes).

    In this order: the FedAvg step (:meth:`FederatedServer.apply`), who is in the sum and who
    dropped, the bytes sent up (without the parties in ``uplink_excludes``), the included
    clients' signed ledger heads (``record_heads(round_id, included)``), the saved server
    state, then ``on_aggregated(round_id, included)`` (the ledgers' rows become
    ``aggregated``). The heads are recorded before the round counts as done: a crash in
    between re-runs the round, whose clients re-send the same rows (the record takes the
    same heads again).

    >>> import numpy as np, torch
    >>> from torch import nn
    >>> srv = FederatedServer(nn.Linear(2, 1, bias=False), ["weight"], run_id="r", weights={"a": 0.5, "b": 0.5})
    >>> rep, seen = RoundReport(1, {}), []
    >>> res = AggregateResult(total=np.zeros(2), included=("a",), dropped={"b": "no reply at stage collect"},
    ...                       bytes_up={"a": 10, "keyholder": 5})
    >>> finish_round(rep, res, server=srv, record_heads=lambda r, inc: seen.append(("heads", r, inc)),
    ...              on_aggregated=lambda r, inc: seen.append(("ledger", r, inc)), uplink_excludes={"keyholder"})
    >>> rep.weight_mass, rep.included, sorted(rep.dropped), rep.bytes_up, seen
    (0.5, ('a',), ['b'], 10, [('heads', 1, ('a',)), ('ledger', 1, ('a',))])
    """
    round_id = report.round_id
    report.weight_mass = server.apply(result)
    report.included = result.included
    report.dropped.update(result.dropped)
    report.bytes_up = int(sum(v for k, v in result.bytes_up.items() if k not in uplink_excludes))
    record_heads(round_id, result.included)
    if state_path is not None:
        server.save(state_path, completed_round=round_id)
    if on_aggregated is not None:
        on_aggregated(round_id, result.included)


def round_row(report: RoundReport, privacy, *, epsilon: Mapping[str, float],
              client_epsilon: Mapping[str, float] | None = None) -> dict:
    """A round's JSON row, from which every runtime prints its per-round line (``privspk.cli``).

    ``privacy`` is the run's ``[privacy]`` section; ``epsilon`` each client's spend so far.

    >>> from privspk.config import PrivacySection
    >>> row = round_row(RoundReport(2, {}), PrivacySection(enabled=False), epsilon={"a": 0.0})
    >>> row["round"], row["epsilon"], row["unit"], row["delta"], row["randomness"]
    (2, {'a': 0.0}, None, None, 'secret')
    """
    row = report.to_dict()
    row["epsilon"] = dict(epsilon)
    if client_epsilon is not None:
        row["client_epsilon"] = dict(client_epsilon)
    row["delta"] = privacy.delta if privacy.enabled else None
    row["unit"] = privacy.unit if privacy.enabled else None
    row["randomness"] = privacy.randomness
    return row


class InProcessFederation:
    """Runs rounds over in-process clients and a server with one aggregation scheme.

    Args:
        server: the server.
        clients: client id -> client.
        scheme: the aggregation scheme (its endpoints are the clients' ``endpoint``).
        state_path: where the server state is saved after each round (for resume).
        on_aggregated: called with ``(round_id, included)`` once a round's sum is applied
            (the runtime marks ledger rows aggregated through it).

    Three non-private clients on synthetic data, pairwise masking; in round 2 one client drops
    out before its masked update is collected, and the round still opens the other two's sum
    (their masks with it are recovered from the survivors' shares):

    >>> import copy, tempfile
    >>> from privspk.federation.client import ClientRelease, ClientTraining, _example_data, _example_encoder
    >>> from privspk.secagg import build_scheme
    >>> from privspk.training.local import LocalSettings
    >>> enc, names = _example_encoder()
    >>> scheme, store = build_scheme("mask", {"clip": 1.0, "colluders": 0}, seed=0), tempfile.mkdtemp()
    >>> local = LocalSettings(batch_size=4, physical_batch=4, lr=1e-3, crop_frames=30, speaker_batch=2)
    >>> clients = {cid: FederatedClient(cid, _example_data(i), copy.deepcopy(enc), names, weight=1 / 3,
    ...                                 endpoint=scheme.client(cid), guard=None, store=f"{store}/{cid}",
    ...                                 training=ClientTraining(local, seed=i, local_steps=1),
    ...                                 release=ClientRelease("mask", run_id="doc"))
    ...            for i, cid in enumerate(("c0", "c1", "c2"))}
    >>> server = FederatedServer(copy.deepcopy(enc), names, run_id="doc", weights={c: 1 / 3 for c in clients})
    >>> fed = InProcessFederation(server, clients, scheme, state_path=f"{store}/server_state.pt")
    >>> rep = fed.run_round(1)
    >>> rep.included, rep.skipped, fed.last_completed_round()  # the server state is saved after each round
    (('c0', 'c1', 'c2'), '', 1)
    >>> rep = fed.run_round(2, silent={"c2": "collect"})
    >>> rep.included, sorted(rep.dropped), round(rep.weight_mass, 3)
    (('c0', 'c1'), ['c2'], 0.667)
    """

    def __init__(
        self,
        server: FederatedServer,
        clients: Mapping[str, FederatedClient],
        scheme: Scheme,
        *,
        state_path: str | Path | None = None,
        on_aggregated=None,
    ) -> None:
        self.server = server
        self.clients = dict(clients)
        self.scheme = scheme
        self.state_path = Path(state_path) if state_path else None
        self.on_aggregated = on_aggregated

    def last_completed_round(self) -> int:
        """The last round completed according to the saved server state (0 when none; rounds count from 1).

        >>> fed = _example_federation()
        >>> fed.last_completed_round(), fed.run_round(1).skipped, fed.last_completed_round()
        (0, '', 1)
        """
        if self.state_path is None or not self.state_path.exists():
            return 0
        return self.server.load(self.state_path)

    def run_round(self, round_id: int, *, silent: Mapping[str, str] | None = None) -> RoundReport:
        """One full round. ``silent`` drops clients from a scheme stage on (tests, benchmarks).

        >>> rep = _example_federation().run_round(1, silent={"c1": "collect"})
        >>> rep.included, rep.dropped["c1"].startswith("no reply"), sorted(rep.clients)
        (('c0', 'c2'), True, ['c0', 'c1', 'c2'])
        """
        start = time.perf_counter()
        global_vector = self.server.global_vector()
        reports = {cid: c.run_round(round_id, global_vector) for cid, c in self.clients.items()}
        train_seconds = time.perf_counter() - start
        senders = [cid for cid, r in reports.items() if r.status in ("sent", "resent")]
        report = RoundReport(round_id, reports, train_seconds=train_seconds)
        if not senders:
            report.skipped = "no client could take part (all out of budget)"
            report.round_seconds = time.perf_counter() - start
            return report
        spec = self.server.spec(round_id, senders)
        t0 = time.perf_counter()
        endpoints = {cid: self.clients[cid].endpoint for cid in senders}
        try:
            result = run_round(self.scheme, spec, endpoints, silent=silent)
        except AggregationError as exc:
            return aggregation_failed(report, exc, start=start, t0=t0)
        report.secagg_seconds = time.perf_counter() - t0

        def record_heads(rid: int, included) -> None:
            self.server.record_heads(rid, [self.clients[cid].signed_head(rid) for cid in included])

        finish_round(report, result, server=self.server, record_heads=record_heads, state_path=self.state_path,
                     on_aggregated=self.on_aggregated)
        for cid in senders:
            self.clients[cid].forget_staged(round_id)
        report.round_seconds = time.perf_counter() - start
        return report


def _example_federation() -> InProcessFederation:
    """Three non-private clients on synthetic data with pairwise masking (no colluders), for the doctests."""
    import copy
    import tempfile

    from privspk.federation.client import (_EXAMPLE_LOCAL, ClientRelease, ClientTraining, _example_data,
                                           _example_encoder)
    from privspk.secagg import build_scheme

    enc, names = _example_encoder()
    scheme, store = build_scheme("mask", {"clip": 1.0, "colluders": 0}, seed=0), tempfile.mkdtemp()
    clients = {cid: FederatedClient(cid, _example_data(i), copy.deepcopy(enc), names, weight=1 / 3,
                                    endpoint=scheme.client(cid), guard=None, store=f"{store}/{cid}",
                                    training=ClientTraining(_EXAMPLE_LOCAL, seed=i, local_steps=1),
                                    release=ClientRelease("mask", run_id="doc"))
               for i, cid in enumerate(("c0", "c1", "c2"))}
    server = FederatedServer(copy.deepcopy(enc), names, run_id="doc", weights={c: 1 / 3 for c in clients})
    return InProcessFederation(server, clients, scheme, state_path=f"{store}/server_state.pt")
