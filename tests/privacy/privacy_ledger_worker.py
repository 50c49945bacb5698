"""A small client/server process for the ledger fault-injection tests (run as a script, never imported).

It follows the spend-before-release protocol against a real ledger file and can
kill itself (``os._exit`` or SIGKILL) at a named point of a named round:

client, per round r
    ``before_spend`` -> store the protected update (fsync) -> record the spend with
    the update's digest -> ``after_spend`` -> "send" (atomic file in the outbox)
    -> ``after_send`` -> mark released -> ``after_release``.
    On resume: a round with no row is done afresh (new noise: nothing had left);
    a ``spent`` row re-sends the *stored* update (same digest), never a fresh one;
    a released/aggregated row is skipped.
server, per round r
    check every update against the ledger (``check_update``), write the sum
    -> ``during_aggregation`` -> mark the round aggregated.
torn
    begins a ledger write transaction by hand and dies before COMMIT.

Epsilons are synthetic (0.25 per round) so that no process imports Opacus/torch;
the accounting itself is tested in-process.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path

from privspk.privacy.ledger import Ledger, Spend, digest_update
from privspk.privacy.mechanism import Mechanism

SETTINGS = {"epsilon": 8.0, "delta": 1e-5, "unit": "utterance", "accountant": "rdp"}
EPS_PER_ROUND = 0.25


def die(how: str) -> None:
    sys.stdout.flush()
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(137)


def maybe_crash(args: argparse.Namespace, rnd: int, point: str) -> None:
    if args.crash == f"{rnd}:{point}":
        die(args.kill)
    if args.pause:
        time.sleep(args.pause)  # widens the windows an outside kill can land in


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def run_client(args: argparse.Namespace) -> None:
    store = Path(args.store)
    outbox = Path(args.outbox)
    store.mkdir(parents=True, exist_ok=True)
    outbox.mkdir(parents=True, exist_ok=True)
    with Ledger(args.db, run_id=args.run, settings=SETTINGS, timeout_s=30.0) as led:
        print("ready", flush=True)
        for rnd in range(1, args.rounds + 1):
            row = led.row(args.client, rnd)
            kept = store / f"{args.client}-{rnd}.bin"
            if row is None:
                maybe_crash(args, rnd, "before_spend")
                update = os.urandom(64)  # a fresh noisy update: new noise on every attempt
                atomic_write(kept, update)
                led.record_spend(
                    Spend(
                        client=args.client, round=rnd, epsilon_after=EPS_PER_ROUND * rnd, scheme="mask",
                        mechanism=Mechanism(noise_multiplier=1.0, sample_rate=0.1, steps=10, delta=1e-5, clip=1.0),
                        update_digest=digest_update(update),
                    )
                )
                maybe_crash(args, rnd, "after_spend")
            elif row.status == "spent":
                update = kept.read_bytes()
                if digest_update(update) != row.update_digest:
                    raise SystemExit(f"stored update of round {rnd} does not match its spend")
            else:
                continue
            atomic_write(outbox / f"{args.client}-{rnd}.bin", update)
            maybe_crash(args, rnd, "after_send")
            led.mark_released(args.client, rnd, update_digest=digest_update(update))
            maybe_crash(args, rnd, "after_release")
            print(f"released {args.client} {rnd}", flush=True)


def run_server(args: argparse.Namespace) -> None:
    outbox = Path(args.outbox)
    clients = args.clients.split(",")
    with Ledger(args.db, run_id=args.run, settings=SETTINGS, timeout_s=30.0) as led:
        for rnd in range(1, args.rounds + 1):
            rows = [led.row(c, rnd) for c in clients]
            if all(r is not None and r.status == "aggregated" for r in rows):
                continue
            total = 0
            for c in clients:
                blob = (outbox / f"{c}-{rnd}.bin").read_bytes()
                led.check_update(c, rnd, update_digest=digest_update(blob))
                total += sum(blob)
            atomic_write(outbox / f"sum-{rnd}.json", json.dumps({"round": rnd, "sum": total}).encode())
            maybe_crash(args, rnd, "during_aggregation")
            led.mark_aggregated(rnd, clients)
            print(f"aggregated {rnd}", flush=True)


def run_torn(args: argparse.Namespace) -> None:
    conn = sqlite3.connect(args.db, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(
        "INSERT INTO spends (run_id, client, round, unit, accountant, noise_multiplier, sample_rate, steps, delta, "
        "epsilon_after, clip, scheme, status, created_at, updated_at) "
        "VALUES (?, ?, 99, 'utterance', 'rdp', 1.0, 0.1, 10, 1e-5, 9.0, 1.0, 'mask', 'spent', 't', 't')",
        (args.run, args.client),
    )
    die(args.kill)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=["client", "server", "torn"])
    ap.add_argument("--db", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--client", default="c0")
    ap.add_argument("--clients", default="c0")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--outbox", default="outbox")
    ap.add_argument("--store", default="store")
    ap.add_argument("--crash", default="")
    ap.add_argument("--kill", choices=["exit", "sigkill"], default="exit")
    ap.add_argument("--pause", type=float, default=0.0)
    args = ap.parse_args()
    {"client": run_client, "server": run_server, "torn": run_torn}[args.role](args)


if __name__ == "__main__":
    main()
