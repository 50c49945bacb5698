"""Runs the tiny federated job of ``federation_support`` in its own process (a script, never imported).

The crash tests start it with ``PRIVSPK_FAULT=point:client:round`` set (the client's own
fault hook then exits with status 86) or with ``--crash round:point`` (the server exits with
status 87 during aggregation), or kill it from outside. A finished run writes
``result.npz`` (the final global vector) in the work folder; every update handed to the
scheme is logged in ``outbox.jsonl`` first.

    python federation_crash_worker.py WORKDIR [--scheme plain|mask] [--rounds N] [--resume]
                                               [--crash ROUND:POINT] [--pause SECONDS]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
import torch

from federation_support import build_job


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("workdir")
    p.add_argument("--scheme", default="plain")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--crash", default=None)
    p.add_argument("--pause", type=float, default=0.0, help="sleep after each round (outside kills)")
    args = p.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")

    def progress(round_id: int, included) -> None:
        print(json.dumps({"aggregated": round_id, "included": list(included)}), flush=True)
        time.sleep(args.pause)

    job = build_job(args.workdir, scheme=args.scheme, rounds=args.rounds, crash=args.crash,
                    on_aggregated=progress, outbox=f"{args.workdir}/outbox.jsonl")
    try:
        job.run(resume=args.resume)
        np.savez(f"{args.workdir}/result.npz", vector=job.server.global_vector().numpy(),
                 **{f"eps_{c}": np.float64(e) for c, e in job.epsilons().items()})
    finally:
        job.close()


if __name__ == "__main__":
    main()
