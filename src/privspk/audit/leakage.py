"""What the server learns from updates: which speakers a client holds (probe re-identification).

Without secure aggregation the server sees each client's update. It also has, or
can collect, enrolment audio of candidate speakers (the population the clients
draw from), and it knows the frozen part of the encoder. The update of a linear
layer is a sum of outer products ``g_i x_i^T`` over the client's training inputs
``x_i`` (gradient leakage, as in the label-leakage attacks RLG/LLG on a last
layer), so it responds most strongly to inputs like the client's own speakers'.
The server feeds each candidate's enrolment utterances through the frozen trunk
to the layer's input, measures the update's energy along them
(:func:`linear_probe_scores`), and names the top-scoring candidates as the
client's speakers.

The attack is run on three views of round 1 (the same client, the same global
encoder): the client's plain update, its DP-SGD update, and the opened sum of a
``mask`` round over all clients (what the server sees with secure aggregation,
opened by the real pairwise-mask protocol). Reported: precision at the top
``k`` candidates, R-precision (precision = recall when naming as many candidates
as the client has speakers) and AUC, each beside its chance level.

>>> scores = {"a": 3.0, "b": 2.0, "c": 1.0, "d": 0.0}
>>> r = attribution(scores, {"a", "c"}, ks=(1,))
>>> r.r_precision, r.precision_at["1"], r.chance
(0.5, 1.0, 0.5)
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from torch import nn

from privspk.audit.metrics import roc_auc
from privspk.errors import ConfigError
from privspk.secagg import ClientEndpoint

if TYPE_CHECKING:
    from privspk.training.local import LocalSettings


class CaptureEndpoint(ClientEndpoint):
    """A client endpoint that keeps what the client hands over (the attacker's copy of a plain upload).

    >>> ep = CaptureEndpoint("c0"); ep.submit(1, np.ones(2)); ep.updates[1].tolist()
    [1.0, 1.0]
    """

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.updates: dict[int, np.ndarray] = {}

    def submit(self, round_id: int, update: np.ndarray) -> None:
        """Keep the float update."""
        self.updates[round_id] = np.asarray(update, dtype=np.float64).copy()

    def submit_integers(self, round_id: int, codes: np.ndarray, *, min_survivors: int | None = None) -> None:
        """Distributed-DP integer codes are not float updates: not supported here."""
        raise ConfigError("the leakage attack reads float updates; client-level DP codes are not supported")

    def handle(self, request: bytes) -> bytes | None:
        """Never asked: the audit reads the captured update directly."""
        raise ConfigError("CaptureEndpoint takes part in no protocol")


def round_one_updates(
    encoder: nn.Module, names: Sequence[str], clients_data: Mapping[str, object], *, dp: Mapping[str, object] | None,
    weights: Mapping[str, float], local: LocalSettings, local_steps: int, trunk_crops: int,
    fixed_head: bool = False, client_seed_base: int = 0, store, randomness: str = "secret",
) -> dict[str, np.ndarray]:
    """Each client's weighted round-1 update from ``encoder`` (plain when ``dp`` is None, else DP-SGD).

    ``randomness`` is the plain clients' (a DP client's is its mechanism's)."""
    from privspk.federation import ClientRelease, ClientTraining, FederatedClient
    from privspk.training.net import flatten, trainable_state

    start = flatten(trainable_state(encoder), list(names))
    out = {}
    for i, (cid, cdata) in enumerate(clients_data.items()):
        ep = CaptureEndpoint(cid)
        training = ClientTraining(local, seed=client_seed_base + i, dp=None if dp is None else dp[cid],
                                  local_steps=None if dp is not None else local_steps,
                                  randomness=None if dp is not None else randomness,
                                  trunk_crops=0 if getattr(cdata, "pooled", None) is not None else trunk_crops,
                                  fixed_head=fixed_head)
        client = FederatedClient(cid, cdata, copy.deepcopy(encoder), list(names), weight=weights[cid], endpoint=ep,
                                 guard=None, store=f"{store}/{cid}", training=training,
                                 release=ClientRelease("plain"))
        client.run_round(1, start)
        out[cid] = ep.updates[1]
    return out


def opened_mask_sum(updates: Mapping[str, np.ndarray], *, options: Mapping[str, object], run_id: str = "audit",
                    seed: int = 0) -> np.ndarray:
    """The sum a ``mask`` round opens for these updates (real key agreement, masking and unmasking).

    >>> ups = {c: np.full(4, 0.01 * (i + 1)) for i, c in enumerate(("a", "b", "c"))}
    >>> bool(np.allclose(opened_mask_sum(ups, options={"clip": 0.5}), 0.06, atol=1e-3))
    True
    """
    from privspk.secagg import RoundSpec, build_scheme
    from privspk.secagg.simulate import run_round

    if len(updates) < 3:
        raise ConfigError(f"the opened sum of fewer than 3 clients tells too much; got {len(updates)}")
    scheme = build_scheme("mask", dict(options), seed=seed)
    dim = len(next(iter(updates.values())))
    spec = RoundSpec(run_id=run_id, round_id=1, clients=tuple(updates), dim=dim)
    endpoints = {c: scheme.client(c) for c in updates}
    for c, u in updates.items():
        endpoints[c].submit(1, u)
    res = run_round(scheme, spec, endpoints)
    if set(res.included) != set(updates):
        raise ConfigError(f"the mask round dropped {sorted(set(updates) - set(res.included))}")
    return np.asarray(res.total, dtype=np.float64)


def tensor_step(names: Sequence[str], shapes: Mapping[str, tuple[int, ...]], step: np.ndarray,
                tensor: str) -> np.ndarray:
    """The slice of a flattened update that belongs to ``tensor``, in its shape.

    >>> tensor_step(["a", "w"], {"a": (2,), "w": (2, 3)}, np.arange(8.0), "w").tolist()
    [[2.0, 3.0, 4.0], [5.0, 6.0, 7.0]]
    """
    offset = 0
    for n in names:
        size = int(np.prod(shapes[n]))
        if n == tensor:
            return np.asarray(step[offset:offset + size], dtype=np.float64).reshape(shapes[n])
        offset += size
    raise ConfigError(f"{tensor!r} is not one of the update's tensors {list(names)}")


def linear_probe_scores(weight_step: np.ndarray, inputs: Mapping[str, np.ndarray],
                        utt2spk: Mapping[str, str]) -> dict[str, float]:
    """Per candidate speaker: the energy of a linear layer's update along its probe utterances' inputs.

    A linear layer's gradient is ``sum_i g_i x_i^T`` over the training inputs ``x_i``,
    so its update ``dW`` responds most to inputs like the ones it was trained on:
    ``||dW (x - mean)||^2 / ||x - mean||^2``, averaged over a speaker's probe
    utterances (``mean``: over all probes, removing what every input shares).

    >>> dw = np.array([[1.0, 0.0, 0.0]])
    >>> x = {"a1": np.array([1.0, 0.0, 0.0]), "b1": np.array([0.0, 1.0, 0.0]), "c1": np.array([0.0, 0.0, 1.0])}
    >>> s = linear_probe_scores(dw, x, {"a1": "a", "b1": "b", "c1": "c"})
    >>> max(s, key=s.get)
    'a'
    """
    keys = list(inputs)
    X = np.stack([np.asarray(inputs[u], dtype=np.float64) for u in keys])
    if X.shape[1] != weight_step.shape[1]:
        raise ConfigError(f"probe inputs have {X.shape[1]} features, the layer takes {weight_step.shape[1]}")
    D = X - X.mean(0)
    energy = np.sum((D @ weight_step.T) ** 2, axis=1) / (np.sum(D**2, axis=1) + 1e-12)
    acc: dict[str, list[float]] = {}
    for u, e in zip(keys, energy):
        acc.setdefault(utt2spk[u], []).append(float(e))
    return {s: float(np.mean(v)) for s, v in acc.items()}


@dataclass(frozen=True)
class Attribution:
    """How well the top-scoring candidates match the speakers a client holds."""

    candidates: int
    held: int
    r_precision: float
    precision_at: dict[str, float]
    auc: float
    chance: float

    def to_dict(self) -> dict:
        """JSON-able fields."""
        return dict(vars(self))


def attribution(scores: Mapping[str, float], held: set[str], *, ks: Sequence[int] = (5, 10)) -> Attribution:
    """R-precision (= recall at as many names as the client holds), precision at top ``k``, AUC."""
    held = set(held)
    missing = held - set(scores)
    if missing or not held or len(held) == len(scores):
        raise ConfigError(f"the held speakers must be a proper, non-empty subset of the scored candidates "
                          f"(missing: {sorted(missing)[:3]})")
    order = sorted(scores, key=lambda s: (-scores[s], s))
    n = len(held)
    r_prec = len(set(order[:n]) & held) / n
    prec = {str(k): len(set(order[:k]) & held) / k for k in ks if k <= len(order)}
    auc = roc_auc(np.array([scores[s] for s in held]), np.array([scores[s] for s in scores if s not in held]))
    return Attribution(candidates=len(scores), held=n, r_precision=r_prec, precision_at=prec, auc=auc,
                       chance=n / len(scores))
