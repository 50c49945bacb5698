"""A tiny federated job over synthetic features, built the way ``privspk.api.train`` builds a run.

Used in-process by the federation tests and, through ``federation_crash_worker.py``, in a
subprocess that the crash tests kill. Everything is deterministic from the seed, so a run
that crashed and resumed can be compared with one that never crashed.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from privspk.config import HE_TRUST, FederationSection, PrivacySection, RunConfig, SecAggSection, TrainSection
from privspk.federation import ClientRelease, ClientTraining, FederatedClient, FederatedServer, InProcessFederation
from privspk.api import open_run_ledger
from privspk.federation.guard import LedgerGuard
from privspk.models.ecapa import ECAPAEncoder
from privspk.models.finetune import apply_recipe
from privspk.privacy import Ledger, PrivacyBudget
from privspk.privacy.ledger import digest_update
from privspk.secagg import AggregateResult, RoundSpec, build_scheme
from privspk.training.data import ClientData
from privspk.privacy import Mechanism
from privspk.training.local import LocalSettings, sample_rate_for

IN_DIM = 8
RUN_ID = "fedtest"
SIGMA = 2.0  # a fixed noise multiplier keeps the accountant fast (no planning in the tests)
SPEAKERS = ((2, 3), (2, 4), (3, 2))  # per client: (speakers, utterances per speaker)
CRASH_EXIT = 87  # exit status of a crash injected into the server (the client's own hook exits with 86)


def synthetic_clients(seed: int = 0) -> dict[str, ClientData]:
    """Three clients with disjoint speakers (each a per-speaker offset) and different sizes."""
    gen = torch.Generator().manual_seed(seed)
    clients: dict[str, ClientData] = {}
    spk = 0
    for i, (n_spk, n_utt) in enumerate(SPEAKERS):
        feats: dict[str, torch.Tensor] = {}
        pairs = []
        for _ in range(n_spk):
            centre = 2.0 * torch.randn(IN_DIM, generator=gen)
            for u in range(n_utt):
                utt = f"spk{spk:02d}_{u}"
                feats[utt] = centre + torch.randn(30, IN_DIM, generator=gen)
                pairs.append((utt, f"spk{spk:02d}"))
            spk += 1
        clients[f"client{i}"] = ClientData.from_pairs(feats.__getitem__, pairs)
    return clients


def tiny_encoder(seed: int = 0) -> ECAPAEncoder:
    torch.manual_seed(seed)
    return ECAPAEncoder(IN_DIM, channels=16, embed_dim=16, dilations=(2, 3), attention_channels=8)


def job_config(*, scheme: str = "plain", rounds: int = 3, epsilon: float = 50.0, dp: bool = True,
               local_steps: int = 2) -> RunConfig:
    """The run config whose privacy settings go in the ledger (as ``api.train`` stores them)."""
    return RunConfig(
        name=RUN_ID,
        privacy=PrivacySection(enabled=dp, epsilon=epsilon, randomness="simulation"),  # runs compared bit for bit
        train=TrainSection(recipe="last", local_steps=local_steps, batch_size=4, physical_batch=4, lr=1e-2,
                           crop_frames=20, speaker_batch=2),
        # colluders = 0: these federation tests need 2-client mask sums at K = 3 (a dropout, a replayed
        # round); with one colluder tolerated such rounds are refused (tests/secagg/test_secagg_mask_collusion.py)
        secagg=SecAggSection(scheme=scheme, options={"clip": 1.0} if scheme == "mask" else
                             ({"he_trust": HE_TRUST} if scheme in ("ckks", "bfv") else {}), colluders=0),
        federation=FederationSection(n_clients=len(SPEAKERS), rounds=rounds),
    )


class CrashingServer(FederatedServer):
    """A server that kills its process at ``point`` of round ``crash_round`` (fault injection).

    Points: ``before_apply`` (sum opened, global model untouched), ``after_apply`` (model updated
    in memory, state not saved), ``after_save`` (state saved, ledger rows not yet aggregated).
    """

    def __init__(self, encoder: torch.nn.Module, names: list[str], *, run_id: str, weights: dict[str, float],
                 crash: str | None = None) -> None:
        super().__init__(encoder, names, run_id=run_id, weights=weights)
        self.crash_round, self.crash_point = (None, None)
        if crash:
            r, point = crash.split(":")
            self.crash_round, self.crash_point = int(r), point
        self.current_round = 0

    def _maybe_crash(self, point: str) -> None:
        if self.current_round == self.crash_round and self.crash_point == point:
            os._exit(CRASH_EXIT)

    def spec(self, round_id: int, clients) -> RoundSpec:
        self.current_round = round_id
        return super().spec(round_id, clients)

    def apply(self, result: AggregateResult) -> float:
        self._maybe_crash("before_apply")
        mass = super().apply(result)
        self._maybe_crash("after_apply")
        return mass

    def save(self, path, *, completed_round: int) -> None:
        super().save(path, completed_round=completed_round)
        self._maybe_crash("after_save")


@dataclass
class Job:
    """A built job: its runtime, parts and ledger (``ledger`` is ``None`` without DP)."""

    cfg: RunConfig
    fed: InProcessFederation
    server: FederatedServer
    clients: dict[str, FederatedClient]
    ledger: Ledger | None
    reports: list = field(default_factory=list)

    def run(self, *, resume: bool = False) -> list:
        """Run the rounds not yet completed (all of them unless ``resume``)."""
        first = self.fed.last_completed_round() + 1 if resume else 1
        for r in range(first, self.cfg.federation.rounds + 1):
            self.reports.append(self.fed.run_round(r))
        return self.reports

    def epsilons(self) -> dict[str, float]:
        return {cid: c.epsilon() for cid, c in self.clients.items()}

    def close(self) -> None:
        if self.ledger is not None:
            self.ledger.close()


def build_job(
    workdir: str | Path,
    *,
    scheme: str = "plain",
    rounds: int = 3,
    epsilon: float = 50.0,
    dp: bool = True,
    local_steps: int = 2,
    seed: int = 0,
    crash: str | None = None,
    on_aggregated: Callable | None = None,
    outbox: str | Path | None = None,
) -> Job:
    """Build the job in ``workdir`` (ledger, server state, client stores live there).

    ``outbox``: a file that gets one JSON line ``{client, round, digest}`` (fsync'ed) for every
    update a client hands to its scheme endpoint - what left the client, for the crash checks.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = job_config(scheme=scheme, rounds=rounds, epsilon=epsilon, dp=dp, local_steps=local_steps)
    encoder = tiny_encoder(seed)
    apply_recipe(encoder, cfg.train.recipe)
    names = [n for n, p in encoder.named_parameters() if p.requires_grad]
    data = synthetic_clients(seed)
    total = sum(len(d) for d in data.values())
    weights = {cid: len(d) / total for cid, d in data.items()}
    options = dict(cfg.secagg.options)
    if scheme == "mask":  # as api._scheme_options does
        options["colluders"] = cfg.secagg.colluders
    sch = build_scheme(scheme, options, seed=seed)
    server = CrashingServer(encoder, names, run_id=cfg.name, weights=weights, crash=crash)
    ledger = open_run_ledger(workdir / "ledger.sqlite", cfg) if dp else None
    t = cfg.train
    local = LocalSettings(batch_size=t.batch_size, physical_batch=t.physical_batch, lr=t.lr, optimizer=t.optimizer,
                          momentum=t.momentum, crop_frames=t.crop_frames, speaker_batch=t.speaker_batch,
                          margin=cfg.model.margin, scale=cfg.model.scale)
    clients = {}
    for i, (cid, cdata) in enumerate(data.items()):
        dps = guard = None
        if dp:
            q = sample_rate_for(cdata, unit="utterance", batch_size=t.batch_size, speaker_batch=t.speaker_batch)
            dps = Mechanism(unit="utterance", noise_multiplier=SIGMA, clip=cfg.privacy.clip, sample_rate=q,
                            steps=t.local_steps, delta=cfg.privacy.delta, randomness=cfg.privacy.randomness)
            guard = LedgerGuard(ledger, cid, PrivacyBudget(epsilon=epsilon, delta=cfg.privacy.delta),
                                accountant="rdp")
        clients[cid] = FederatedClient(
            cid, cdata, copy.deepcopy(encoder), names, weight=weights[cid], endpoint=sch.client(cid), guard=guard,
            store=workdir / "clients" / cid, release=ClientRelease(scheme, run_id=cfg.name),
            training=ClientTraining(local, seed=seed * 1000 + i, dp=dps, local_steps=None if dp else t.local_steps,
                                    randomness=None if dp else cfg.privacy.randomness),
        )

    def aggregated(round_id: int, included) -> None:
        if ledger is not None:
            ledger.mark_aggregated(round_id, list(included))
        if on_aggregated is not None:
            on_aggregated(round_id, included)

    if outbox is not None:
        for cid, client in clients.items():
            client.endpoint.submit = _logged_submit(Path(outbox), cid, client.endpoint.submit)
    fed = InProcessFederation(server, clients, sch, state_path=workdir / "server_state.pt", on_aggregated=aggregated)
    return Job(cfg=cfg, fed=fed, server=server, clients=clients, ledger=ledger)


def _logged_submit(path: Path, client_id: str, submit: Callable) -> Callable:
    def logged(round_id: int, update: np.ndarray) -> None:
        line = json.dumps({"client": client_id, "round": round_id,
                           "digest": digest_update(np.ascontiguousarray(update))})
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        submit(round_id, update)

    return logged


def read_outbox(path: str | Path) -> list[dict]:
    """The lines written by the ``outbox`` option (none when the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run_job(workdir: str | Path, *, resume: bool = False, scheme: str = "plain", rounds: int = 3,
            outbox: str | Path | None = None) -> dict:
    """Build and run a job; returns the final global vector, each client's epsilon and the round reports."""
    job = build_job(workdir, scheme=scheme, rounds=rounds, outbox=outbox)
    try:
        job.run(resume=resume)
        return {"vector": job.server.global_vector().numpy(), "epsilon": job.epsilons(),
                "reports": job.reports}
    finally:
        job.close()
