"""The server of a federated run: announces rounds, applies the opened sum (FedAvg).

It holds the global encoder and nothing that could open one client's update: the
aggregation scheme hands it only the sum of the included clients' weighted updates.
Clients pre-weight their update by ``n_k / sum(n)`` (sample counts are announced at
registration and are not secret); when some drop out, the sum is rescaled by the
weights that are in it, so the update is the sample-weighted mean of the survivors.

>>> import torch
>>> from torch import nn
>>> from privspk.secagg import AggregateResult
>>> enc = nn.Linear(2, 1, bias=False)
>>> srv = FederatedServer(enc, ["weight"], run_id="r", weights={"a": 0.25, "b": 0.75})
>>> srv.apply(AggregateResult(total=torch.tensor([0.25, 0.25]).numpy(), included=("a",)))
0.25
>>> bool(torch.allclose(enc.weight.detach().double(), srv.initial_vector.reshape(1, 2) + 1.0))
True
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from privspk.errors import AggregationError, CheckpointError, ConfigError
from privspk.secagg import AggregateResult, RoundSpec
from privspk.training.net import flatten, trainable_state, unflatten_into

log = logging.getLogger(__name__)


def _example_server() -> FederatedServer:
    """A server over a 3-parameter linear "encoder" with two clients of equal weight, for the doctests."""
    torch.manual_seed(0)
    return FederatedServer(nn.Linear(2, 1), ["weight", "bias"], run_id="r", weights={"c0": 0.5, "c1": 0.5})


class FederatedServer:
    """Global encoder state and the FedAvg step.

    Args:
        encoder: the global encoder (updated in place).
        names: the trainable parameter names that travel (the rest is frozen and shared).
        run_id: names the run in every message.
        weights: each client's FedAvg weight (sums to 1 over registered clients).

    >>> server = _example_server()
    >>> server.dim, server.names
    (3, ['weight', 'bias'])
    """

    def __init__(self, encoder: nn.Module, names: Sequence[str], *, run_id: str, weights: Mapping[str, float],
                 optimizer=None) -> None:
        if not names:
            raise ConfigError("no trainable encoder parameters to federate")
        self.optimizer = optimizer  # a privspk.crossdevice.loop.ServerOptimizer, or None for plain FedAvg
        self.encoder = encoder
        self.names = list(names)
        self.run_id = run_id
        self.weights = dict(weights)
        self.initial_vector = self.global_vector().clone()
        self.dim = int(self.initial_vector.numel())
        self.heads = None  # a privspk.privacy.ledger.AggregatedHeads: the signed ledger heads it aggregated

    def record_heads(self, round_id: int, heads) -> None:
        """Keep the clients' signed ledger chain heads of an aggregated round (each signature checked first).

        >>> server = _example_server(); server.record_heads(1, [None])  # no record kept: nothing to do
        >>> server.heads is None
        True
        """
        heads = [h for h in heads if h is not None]
        if self.heads is not None and heads:
            self.heads.add(round_id, heads)

    def global_vector(self) -> torch.Tensor:
        """The trainable encoder parameters as one float64 vector.

        >>> _example_server().global_vector().dtype
        torch.float64
        """
        return flatten(trainable_state(self.encoder), self.names)

    def spec(self, round_id: int, clients: Sequence[str]) -> RoundSpec:
        """The announcement of a round with these participants.

        >>> _example_server().spec(1, ["c0", "c1"]).dim
        3
        """
        return RoundSpec(run_id=self.run_id, round_id=round_id, clients=tuple(clients), dim=self.dim)

    def apply(self, result: AggregateResult) -> float:
        """Add the sample-weighted mean of the included updates to the global encoder.

        Returns the weight mass that was included (1.0 when nobody dropped).

        >>> server = _example_server(); before = server.global_vector()
        >>> server.apply(AggregateResult(total=np.ones(3), included=("c0",)))  # c1 dropped: half the mass
        0.5
        >>> [round(x, 4) for x in (server.global_vector() - before).tolist()]  # the included mean: 1 / 0.5
        [2.0, 2.0, 2.0]
        """
        if not result.included:
            raise AggregationError("the opened sum includes no client; the global model is unchanged")
        unknown = sorted(c for c in result.included if c not in self.weights)
        if unknown:
            raise AggregationError(f"the sum includes unregistered client(s) {unknown}; the global model is unchanged")
        mass = float(sum(self.weights[c] for c in result.included))
        if result.total.shape != (self.dim,):
            raise AggregationError(f"sum has shape {result.total.shape}, the model needs ({self.dim},)")
        if not np.all(np.isfinite(result.total)):
            raise AggregationError("opened sum holds NaN/inf; the global model is unchanged")
        step = torch.from_numpy(np.asarray(result.total, dtype=np.float64) / mass)
        if self.optimizer is None:
            unflatten_into(self.encoder, self.names, step, add=True)
        else:
            theta = self.global_vector()
            unflatten_into(self.encoder, self.names, self.optimizer.step(theta, step), add=False)
        return mass

    # ---- persistence for resume --------------------------------------------
    def save(self, path: str | Path, *, completed_round: int) -> None:
        """Atomically store the global vector and the last completed round.

        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "state.pt"
        >>> _example_server().save(p, completed_round=2); p.exists()
        True
        """
        path = Path(path)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:  # a Python file: a refused write is an OSError naming the path
            torch.save({"run_id": self.run_id, "round": completed_round, "names": self.names,
                        "vector": self.global_vector(),
                        "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None}, fh)
        tmp.replace(path)

    def load(self, path: str | Path) -> int:
        """Restore a saved global vector; returns the last completed round.

        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "state.pt"
        >>> _example_server().save(p, completed_round=2)
        >>> _example_server().load(p)
        2
        """
        try:
            state = torch.load(Path(path), weights_only=True)
        except Exception as exc:  # torch raises many types for a bad file
            raise CheckpointError(f"{path}: cannot read the server state ({exc}); delete it to restart") from None
        if state.get("run_id") != self.run_id or state.get("names") != self.names:
            raise CheckpointError(f"{path}: server state belongs to another run or model; refusing to resume")
        unflatten_into(self.encoder, self.names, state["vector"], add=False)
        if self.optimizer is not None:
            if state.get("optimizer") is None:
                raise CheckpointError(f"{path}: server state has no server-optimizer state; refusing to resume "
                                      "a run whose [federation] server_optimizer changed")
            self.optimizer.load_state_dict(state["optimizer"])
        return int(state["round"])
