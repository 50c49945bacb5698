"""A federated client's round: train, record the spend, then protect and release.

The order is the privacy contract (spend-before-release), one step per method in
the manner of composable client mods:

1. ``load``      - take the global encoder (its trainable part) from the server;
2. ``authorize`` - refuse the round if its spend would take this client past its
   budget (the client enforces this itself; the server need not be trusted);
3. ``train``     - local DP-SGD on the client's own recordings and its own head;
4. ``stage``     - the weighted update is written to the client's store;
5. ``record``    - the spend is committed to the ledger;
6. ``release``   - the update is handed to the aggregation scheme (masked or encrypted there).

After a crash, a round whose spend is committed is re-released from the store
(same update, no new spend); an update staged without a committed spend is
discarded and never leaves the client. The staged update (and its folder) is
fsync'ed before the spend that points to it is committed.

One update goes into one sum. The endpoint serves this client's run only, and asks
the client before each release (:meth:`privspk.secagg.ClientEndpoint.bind`); the
client writes which run and which sum a round's update was released into to
``release_rNNNN.json`` in its store (fsync'ed before the release leaves) and refuses
to release that round into any other run or sum - a re-send after a crash goes into
the same sum or nowhere. A refused round is abandoned (its spend still counts; the
ledger row says why): two sums that differ by one client would give that client's
update away.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from privspk.errors import BudgetExceededError, CheckpointError, ConfigError, PrivspkError, ProtocolError
from privspk.models.heads import AAMHead
from privspk.secagg import ClientEndpoint
from privspk.training.data import ClientData
from privspk.privacy.mechanism import Mechanism
from privspk.training.local import LocalSettings, train_local
from privspk.training.net import SpeakerNet, flatten, trainable_state, unflatten_into

log = logging.getLogger(__name__)


class SpendGuard(Protocol):
    """What a client needs from the privacy ledger (see :mod:`privspk.privacy`)."""

    def authorize(self, *, round_id: int, mechanism: Mechanism) -> float:
        """Epsilon after a round of ``mechanism``; raises BudgetExceededError if over budget. Writes nothing."""

    def commit(self, *, round_id: int, mechanism: Mechanism, scheme: str, update: np.ndarray) -> float:
        """Durably record the spend of ``round_id`` for exactly ``update``; returns epsilon after it."""

    def committed(self, round_id: int) -> bool:
        """Whether a spend for ``round_id`` is already recorded."""

    def released(self, round_id: int, update: np.ndarray) -> None:
        """Mark the round's update as released (refused if it is not the recorded one)."""

    def abandon(self, round_id: int, reason: str) -> None:
        """Give the round up (its spend still counts); ``reason`` is kept with it."""

    def epsilon(self) -> float:
        """Epsilon spent so far."""


@dataclass
class ClientRoundReport:
    """What one client did in one round.

    >>> r = ClientRoundReport("c0", 3, "out_of_budget", reason="epsilon 8.1 > budget 8")
    >>> r.status, r.steps, r.reason
    ('out_of_budget', 0, 'epsilon 8.1 > budget 8')
    """

    client_id: str
    round_id: int
    status: str  # "sent" | "resent" | "out_of_budget" | "abandoned"
    loss: float = float("nan")
    steps: int = 0
    train_seconds: float = 0.0
    step_seconds: float = 0.0
    epsilon: float = 0.0
    reason: str = ""
    clipped: float = 0.0


def _fault(point: str, client_id: str, round_id: int) -> None:
    """Crash here if ``PRIVSPK_FAULT`` names this point (``point:client:round``); for crash tests."""
    spec = os.environ.get("PRIVSPK_FAULT")
    if spec and spec == f"{point}:{client_id}:{round_id}":
        log.error("fault injected at %s", spec)
        os._exit(86)


@dataclass(frozen=True)
class ClientTraining:
    """How a client trains in each round: its local settings, its DP mechanism and its randomness.

    A DP client's steps and randomness come from its mechanism; a non-private one names them.

    Args:
        local: how it trains locally (:class:`privspk.training.local.LocalSettings`).
        seed: base seed (the round's seed is derived from it and the round id).
        dp: the round's DP-SGD mechanism (``None`` = non-private); its steps, randomness and
            everything the ledger records come from it.
        local_steps: optimizer steps per round of a non-private client.
        randomness: a non-private client's randomness mode (default ``"secret"``).
        trunk_crops: with an embedding-only recipe, cache the frozen trunk's pooled statistics
            of this many random crops per utterance once and train on them (0 = off).
        fixed_head: keep the speaker head at its random initialisation (not trained).

    >>> local = LocalSettings(batch_size=8, physical_batch=8, lr=1e-3)
    >>> plain = ClientTraining(local, seed=3, local_steps=2)
    >>> plain.steps, plain.mode
    (2, 'secret')
    >>> dp = Mechanism(unit="utterance", noise_multiplier=1.0, clip=1.0, sample_rate=0.1, steps=5, delta=1e-5)
    >>> ClientTraining(local, seed=3, dp=dp).steps
    5
    >>> ClientTraining(local, seed=3, dp=dp, local_steps=4)
    Traceback (most recent call last):
    ...
    privspk.errors.ConfigError: local_steps=4 differs from the mechanism's 5 steps
    """

    local: LocalSettings
    seed: int
    dp: Mechanism | None = None
    local_steps: int | None = None
    randomness: str | None = None
    trunk_crops: int = 0
    fixed_head: bool = False

    def __post_init__(self) -> None:
        dp = self.dp
        if dp is not None and self.local_steps is not None and self.local_steps != dp.steps:
            raise ConfigError(f"local_steps={self.local_steps} differs from the mechanism's {dp.steps} steps")
        if dp is not None and self.randomness is not None and self.randomness != dp.randomness:
            raise ConfigError(f"randomness={self.randomness!r} differs from the mechanism's {dp.randomness!r}")
        if dp is None and self.local_steps is None:
            raise ConfigError("a non-private client needs local_steps")
        if self.trunk_crops < 0:
            raise ConfigError(f"trunk_crops must be >= 0, got {self.trunk_crops}")

    @property
    def steps(self) -> int:
        """Optimizer steps per round: the mechanism's, or ``local_steps`` without DP.

        >>> ClientTraining(LocalSettings(batch_size=8, physical_batch=8, lr=1e-3), seed=0, local_steps=3).steps
        3
        """
        return self.dp.steps if self.dp is not None else int(self.local_steps)  # type: ignore[arg-type]

    @property
    def mode(self) -> str:
        """The randomness mode of its crops, batches and noise (``"secret"`` or ``"simulation"``).

        >>> local = LocalSettings(batch_size=8, physical_batch=8, lr=1e-3)
        >>> ClientTraining(local, seed=0, local_steps=1, randomness="simulation").mode
        'simulation'
        """
        return self.dp.randomness if self.dp is not None else (self.randomness or "secret")


@dataclass(frozen=True)
class ClientRelease:
    """How a client's update leaves it: into which run and scheme, clipped and noised how.

    Args:
        scheme: the aggregation scheme's name (recorded with the spend).
        run_id: the run this client serves; its endpoint refuses requests of any other run
            (``None``: not checked by run id, each round still goes into one sum only).
        update_clip: the coordinate range the aggregation scheme clips to; the share of
            coordinates beyond it is reported (and logged when above 1 %).
        client_dp: a :class:`privspk.privacy.DistributedDP` encoder for client-level
            distributed DP (clip the whole update, add this client's integer noise share
            before masking); ``None`` sends the float update.

    >>> ClientRelease("mask", run_id="demo", update_clip=0.5)
    ClientRelease(scheme='mask', run_id='demo', update_clip=0.5, client_dp=None)
    """

    scheme: str
    run_id: str | None = None
    update_clip: float | None = None
    client_dp: object | None = None


class FederatedClient:
    """One client: its data, its private head, its ledger guard and its scheme endpoint.

    Args:
        client_id: the client's name.
        data: its local utterances.
        encoder: its own copy of the global encoder (same recipe applied).
        names: trainable encoder parameter names (the shared part).
        weight: its FedAvg weight ``n_k / sum(n)``.
        endpoint: its side of the aggregation scheme.
        guard: ledger access enforcing its budget (``None`` for non-private runs).
        store: folder for its private state (head, staged updates).
        training: how it trains each round (:class:`ClientTraining`).
        release: how its update leaves it (:class:`ClientRelease`).

    A round on synthetic data, released through the ``plain`` scheme (a server would open the
    sum of several clients' updates; here the one update is all there is):

    >>> import tempfile
    >>> from privspk.secagg import build_scheme
    >>> from privspk.training.net import flatten, trainable_state
    >>> enc, names = _example_encoder()
    >>> scheme = build_scheme("plain", {}, seed=0)
    >>> training = ClientTraining(_EXAMPLE_LOCAL, seed=0, local_steps=1)
    >>> c = FederatedClient("client0", _example_data(0), enc, names, weight=1.0, guard=None,
    ...                     endpoint=scheme.client("client0"), store=tempfile.mkdtemp(),
    ...                     training=training, release=ClientRelease("plain"))
    >>> rep = c.run_round(1, flatten(trainable_state(enc), names))
    >>> rep.status, rep.steps, rep.epsilon
    ('sent', 1, 0.0)
    """

    def __init__(
        self,
        client_id: str,
        data: ClientData,
        encoder: nn.Module,
        names: list[str],
        *,
        weight: float,
        endpoint: ClientEndpoint,
        guard: SpendGuard | None,
        store: str | Path,
        training: ClientTraining,
        release: ClientRelease,
    ) -> None:
        self.client_id = client_id
        self.data = data
        self.names = list(names)
        self.weight = float(weight)
        self.endpoint = endpoint
        endpoint.bind(run_id=release.run_id, gate=self._release_gate)
        self.guard = guard
        self.training = training
        self.release = release
        self.dp = training.dp
        self.store = Path(store)
        self.store.mkdir(parents=True, exist_ok=True)
        self.local = training.local
        self.local_steps = training.steps
        self.randomness = training.mode
        self.scheme = release.scheme
        self.seed = int(training.seed)
        self.client_dp = release.client_dp
        self.update_clip = release.update_clip
        if self.client_dp is not None:
            from privspk.privacy.noise import make_rng

            self._noise_rng = make_rng()  # OS entropy: noise shares are never reproducible
        torch.manual_seed(self.seed)
        from privspk.training.trunk import embedding_only, pooled_crops

        if training.trunk_crops and embedding_only(encoder):
            from privspk.training.randomness import RoundSeeds

            # the trunk is frozen for the whole run: its pooled statistics are computed once, here, from
            # crops drawn like the rounds' (secret unless the randomness is "simulation")
            crop_seed = RoundSeeds.draw(self.randomness, seed=self.seed).crops
            data = data.with_pooled(pooled_crops(encoder, data.getter, data.utt_ids, crops=training.trunk_crops,
                                                 crop_frames=self.local.crop_frames, seed=crop_seed,
                                                 device=self.local.device))
            self.data = data
        self.net = SpeakerNet(encoder, AAMHead(encoder.embed_dim, data.n_speakers))
        if training.fixed_head:
            self.net.head.weight.requires_grad_(False)
        self._load_head()

    # ---- private state ----------------------------------------------------
    def _head_path(self) -> Path:
        return self.store / "head.pt"

    def _staged_path(self, round_id: int) -> Path:
        return self.store / f"update_r{round_id:04d}.npy"

    def _release_path(self, round_id: int) -> Path:
        return self.store / f"release_r{round_id:04d}.json"

    def _load_head(self) -> None:
        path = self._head_path()
        if path.exists():
            try:
                self.net.head.load_state_dict(torch.load(path, weights_only=True))
            except Exception as exc:
                raise CheckpointError(f"{path}: cannot load this client's head ({exc})") from None

    def _save_head(self) -> None:
        tmp = self._head_path().with_suffix(".tmp")
        with open(tmp, "wb") as fh:  # a Python file: a refused write is an OSError naming the path
            torch.save(self.net.head.state_dict(), fh)
        tmp.replace(self._head_path())

    def epsilon(self) -> float:
        """Epsilon this client has spent (0 when non-private).

        >>> client, _ = _example_client()
        >>> client.epsilon()
        0.0
        """
        return self.guard.epsilon() if self.guard is not None else 0.0

    # ---- the round ----------------------------------------------------------
    def run_round(self, round_id: int, global_vector: torch.Tensor) -> ClientRoundReport:
        """Do this client's part of ``round_id`` up to handing the update to the scheme.

        A client whose spend of ``round_id`` is already in its ledger (it crashed after the record)
        re-sends the recorded update instead of training again (status ``"resent"``).

        >>> client, start = _example_client()
        >>> rep = client.run_round(1, start)
        >>> rep.status, rep.steps, sorted(client.endpoint._updates)
        ('sent', 1, [1])

        """
        staged = self._staged_path(round_id)
        refused = (self._read_release(round_id) or {}).get("abandoned")
        if refused:  # this round's update went into one sum already and was refused another
            return ClientRoundReport(self.client_id, round_id, "abandoned", epsilon=self.epsilon(), reason=refused)
        if self.guard is not None and self.guard.committed(round_id):
            # resumed after a crash between record and release: send the recorded update again
            if not staged.exists():
                raise CheckpointError(
                    f"client {self.client_id}: round {round_id} has a recorded spend but its staged update "
                    f"{staged} is missing; the round cannot be resent without a second spend"
                )
            vector = np.load(staged)
            self.guard.released(round_id, vector)  # checks the digest before anything leaves
            self._submit(round_id, vector)
            return ClientRoundReport(self.client_id, round_id, "resent", epsilon=self.epsilon())
        staged.unlink(missing_ok=True)  # staged without a spend: never released

        unflatten_into(self.net.encoder, self.names, global_vector, add=False)  # 1. load
        if self.guard is not None and self.dp is not None:  # 2. authorize
            try:
                self.guard.authorize(round_id=round_id, mechanism=self.dp)
            except BudgetExceededError as exc:
                log.info("client %s sits out round %d: %s", self.client_id, round_id, exc)
                return ClientRoundReport(self.client_id, round_id, "out_of_budget", epsilon=self.epsilon(),
                                         reason=str(exc))
        result = train_local(self.net, self.data, self.local, dp=self.dp, steps=self.local_steps,  # 3. train
                             seed=self.seed * 100_003 + round_id, randomness=self.randomness)
        new = flatten(trainable_state(self.net.encoder), self.names)
        vector = ((new - global_vector) * self.weight).numpy()
        clipped = float(np.mean(np.abs(vector) > self.update_clip)) if self.update_clip and vector.size else 0.0
        if clipped > 0.01:
            log.warning("client %s round %d: %.1f %% of the update lies beyond the scheme's range +-%g and "
                        "will be clipped; raise [federation] update_clip", self.client_id, round_id,
                        100 * clipped, self.update_clip)
        if self.client_dp is not None:  # clip the whole update, add this client's integer noise share
            vector = self.client_dp.encode(vector, rng=self._noise_rng)
        write_durably(staged, lambda fh: np.save(fh, vector))  # 4. stage (fsync'ed before the spend points to it)
        _fault("before_spend", self.client_id, round_id)
        eps = 0.0
        if self.guard is not None and self.dp is not None:  # 5. record
            eps = self.guard.commit(round_id=round_id, mechanism=self.dp, scheme=self.scheme, update=vector)
        # the head is kept only once the round's spend is recorded: a head trained in a round whose
        # spend never got recorded would carry that round's (unaccounted) data into later updates
        self._save_head()
        _fault("after_spend", self.client_id, round_id)
        if self.guard is not None and self.dp is not None:  # 6. release
            self.guard.released(round_id, vector)
        self._submit(round_id, vector)
        return ClientRoundReport(self.client_id, round_id, "sent", loss=result.loss, steps=result.steps,
                                 train_seconds=result.seconds, step_seconds=result.step_seconds, epsilon=eps,
                                 clipped=clipped)

    def _submit(self, round_id: int, vector: np.ndarray) -> None:
        if vector.dtype.kind in "iu":  # distributed-DP integer codes go in as they are
            # the endpoint refuses a round that cannot guarantee the survivors whose noise the ledger counts
            need = self.client_dp.required_survivors if self.client_dp is not None else None
            self.endpoint.submit_integers(round_id, vector, min_survivors=need)
        else:
            self.endpoint.submit(round_id, vector)

    # ---- one update, one sum ---------------------------------------------------
    def _read_release(self, round_id: int) -> dict | None:
        path = self._release_path(round_id)
        if not path.exists():
            return None
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
            return rec
        except (OSError, ValueError) as exc:  # unreadable: which sum it went into is unknown - refuse them all
            return {"run": None, "sum": None, "damaged": f"{path} is unreadable ({exc})"}

    def _release_gate(self, *, run_id: str, round_id: int, context: str, opens: bool) -> None:
        """The endpoint asks before each release of round ``round_id``'s update (see the module doc)."""
        rec = self._read_release(round_id)
        if rec is not None and rec.get("abandoned"):
            raise ProtocolError(f"round {round_id} was abandoned: {rec['abandoned']}", client=self.client_id)
        if rec is None:
            rec = {"run": run_id, "round": round_id, "sum": context if opens else None}
        else:
            before, same_run = rec.get("sum"), rec.get("run") == run_id
            if not (same_run and (before == context or (opens and before is None))):
                was = rec.get("damaged") or (
                    f"run {rec.get('run')!r}, " + (f"sum {before}" if before is not None else
                                                   "a sum it never learnt (sent, survivor set not confirmed)"))
                reason = (f"round {round_id}'s update was already released into {was}; refusing to release it "
                          f"into another sum (run {run_id!r}, {context}): the difference of two sums would be an "
                          "individual update. The round is abandoned; its spend still counts")
                self._abandon(round_id, rec, reason)
                raise ProtocolError(reason, client=self.client_id)
            if opens:
                rec["sum"] = context
        try:
            write_durably(self._release_path(round_id), lambda fh: fh.write(json.dumps(rec, sort_keys=True).encode()))
        except OSError as exc:
            raise CheckpointError(f"client {self.client_id}: cannot record where round {round_id}'s update goes "
                                  f"({exc}); not releasing it") from None

    def _abandon(self, round_id: int, rec: dict, reason: str) -> None:
        log.warning("client %s: %s", self.client_id, reason)
        try:
            write_durably(self._release_path(round_id),
                          lambda fh: fh.write(json.dumps({**rec, "abandoned": reason}, sort_keys=True).encode()))
        except OSError as exc:
            log.error("client %s: cannot record that round %d is abandoned: %s", self.client_id, round_id, exc)
        if self.guard is not None and self.guard.committed(round_id):
            try:
                self.guard.abandon(round_id, reason)
            except PrivspkError as exc:
                log.error("client %s: round %d refused, but the ledger was not marked abandoned: %s",
                          self.client_id, round_id, exc)

    def signed_head(self, round_id: int):
        """This client's signed ledger chain head after its spend of ``round_id`` (``None`` when it keeps none).

        The server keeps the heads it aggregated, so the client's ledger cannot later lose a round unseen.

        >>> client, _ = _example_client()  # non-private: no ledger, no head to sign
        >>> client.signed_head(1) is None
        True
        """
        get = getattr(self.guard, "signed_head", None)
        return get(round_id) if get is not None else None

    def forget_staged(self, round_id: int) -> None:
        """Drop the staged update once the round is aggregated.

        >>> client, start = _example_client()
        >>> _ = client.run_round(1, start)
        >>> staged = client.store / "update_r0001.npy"
        >>> staged.exists(), client.forget_staged(1), staged.exists()
        (True, None, False)
        """
        self._staged_path(round_id).unlink(missing_ok=True)


_EXAMPLE_LOCAL = LocalSettings(batch_size=4, physical_batch=4, lr=1e-3, crop_frames=30, speaker_batch=2)


def _example_encoder() -> tuple[nn.Module, list[str]]:
    """A small encoder over 20-dim features and its parameter names, for the doctests."""
    from privspk.models.ecapa import ECAPAEncoder

    torch.manual_seed(0)
    enc = ECAPAEncoder(20, channels=16, embed_dim=8, dilations=(2,), attention_channels=8)
    return enc, [n for n, _ in enc.named_parameters()]


def _example_data(seed: int) -> ClientData:
    """Three synthetic speakers of four 40-frame utterances each, for the doctests."""
    g = torch.Generator().manual_seed(seed)
    feats = {f"s{seed}{k}-{u}": torch.randn(40, 20, generator=g) + k for k in range(3) for u in range(4)}
    return ClientData.from_pairs(feats.__getitem__, [(u, u.split("-")[0]) for u in feats])


def _example_client() -> tuple[FederatedClient, torch.Tensor]:
    """A non-private client on synthetic data with the ``plain`` scheme, and the global vector, for the doctests."""
    import tempfile

    from privspk.secagg import build_scheme

    enc, names = _example_encoder()
    client = FederatedClient("client0", _example_data(0), enc, names, weight=1.0, guard=None,
                             endpoint=build_scheme("plain", {}, seed=0).client("client0"), store=tempfile.mkdtemp(),
                             training=ClientTraining(_EXAMPLE_LOCAL, seed=0, local_steps=1),
                             release=ClientRelease("plain"))
    return client, flatten(trainable_state(enc), names)


def write_durably(path: Path, write: Callable) -> None:
    """Write ``path`` through a temporary file: ``write(fh)``, fsync the data, rename, fsync the folder.

    Once this returns the file survives a crash or power loss (as far as the file system
    honours fsync), so a ledger commit made afterwards never points to a missing file.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "x.bin"
    >>> write_durably(p, lambda fh: fh.write(b"abc")); p.read_bytes()
    b'abc'
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
