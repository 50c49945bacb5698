"""What the HE collusion mitigations of issue 19 (finding 1) cost: time per round and bytes per parameter.

Mitigations measured (see threat_model/README.md, T10 and A2):

* a fresh key pair per round - the key holder's keygen + public-context serialisation per round;
* commit-before-reveal - the ``pledge`` and ``freeze`` stages (one more message per client and
  one more key-holder request per round), measured as whole-round time and bytes against the code
  before the change when ``--compare-src`` points at its ``src`` folder;
* the BFV check bit - bytes per parameter of the plan with and without it (exact, from the plan).

Flooding for statistical security is not measured: against a chosen ciphertext the key-dependent
part of a release may be as large as the whole valid range (the range check admits it), so noise
2**lambda times larger than that leaves no signal at any size (see the markdown output).

Usage::

    python benchmarks/he_collusion_cost.py [--clients 10] [--dim 131072] [--rounds 3] [--compare-src DIR]

Prints a table and writes ``benchmarks/results/he_collusion_cost.{json,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
TRUST = "no-client-colludes-with-server"


def _options(name: str, k: int) -> dict[str, Any]:
    from privspk.secagg.base import _SCHEMES

    opts: dict[str, Any] = {"max_clients": max(50, k)}
    if "he_trust" in {f.name for f in dataclasses.fields(_SCHEMES[name].Config)}:
        opts["he_trust"] = TRUST
    return opts


def measure_rounds(name: str, *, k: int, dim: int, rounds: int) -> dict[str, Any]:
    """Whole rounds through run_round: seconds per round, upload/download bytes per parameter."""
    from privspk.secagg import RoundSpec, build_scheme
    from privspk.secagg.simulate import run_round

    scheme = build_scheme(name, _options(name, k), seed=0)
    ids = tuple(f"c{i}" for i in range(k))
    clients = {c: scheme.client(c) for c in ids}
    rng = np.random.default_rng(0)
    times, up, down, stages = [], [], [], ()
    for r in range(rounds + 1):  # round 0 warms up (imports, first context load)
        spec = RoundSpec(run_id="bench", round_id=r, clients=ids, dim=dim)
        for c in ids:
            clients[c].submit(r, rng.uniform(-1, 1, dim))
        t0 = time.perf_counter()
        res = run_round(scheme, spec, clients)
        if r:
            times.append(time.perf_counter() - t0)
            up.append(statistics.mean(res.bytes_up.values()) / dim)
            down.append(statistics.mean(res.bytes_down.values()) / dim)
        stages = res.stages
    return {"scheme": name, "clients": k, "dim": dim, "rounds": rounds, "round_s": statistics.median(times),
            "round_s_all": times, "up_bytes_per_param": statistics.mean(up),
            "down_bytes_per_param": statistics.mean(down), "stages": list(stages)}


def measure_keygen(name: str, *, repeats: int = 5) -> float:
    """Seconds for one key pair as the key holder makes it (context, public bytes, frame)."""
    from privspk.secagg import build_scheme
    from privspk.secagg.he_common import public_context_bytes

    codec = build_scheme(name, _options(name, 2)).codec
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ctx = codec.make_context()
        public_context_bytes(ctx)
        codec.frame(ctx)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bfv_check_bit_cost() -> list[dict[str, Any]]:
    """Bytes per parameter of the default BFV plans with 0 and 1 check bit (exact)."""
    import privspk.secagg.bfv as bfv

    rows = []
    for bits in (16, 12):
        got = {}
        saved = bfv.CHECK_BITS
        try:
            for check in (0, 1):
                bfv.CHECK_BITS = check
                plan = bfv.BfvConfig(bits=bits).plan
                got[check] = (plan.bytes_per_param, plan.plain_modulus.bit_length(), plan.chain)
        finally:
            bfv.CHECK_BITS = saved
        rows.append({"bits": bits, "without": got[0][0], "with": got[1][0], "t_bits": [got[0][1], got[1][1]],
                     "chain": [list(got[0][2]), list(got[1][2])]})
    return rows


def collect(k: int, dim: int, rounds: int) -> dict[str, Any]:
    import privspk.secagg.he_keyholder as he

    out: dict[str, Any] = {"fresh_key_per_round": hasattr(he.KeyHolder, "_new_key"), "rounds": {}, "keygen_s": {}}
    for name in ("ckks", "bfv"):
        out["rounds"][name] = measure_rounds(name, k=k, dim=dim, rounds=rounds)
        out["keygen_s"][name] = measure_keygen(name)
    if hasattr(__import__("privspk.secagg.bfv", fromlist=["x"]), "CHECK_BITS"):
        out["bfv_check_bit"] = bfv_check_bit_cost()
    return out


def _secs(row: dict[str, Any]) -> str:
    return f"{row['round_s']:.2f} ({min(row['round_s_all']):.2f})"


def markdown(now: dict[str, Any], before: dict[str, Any] | None, args: argparse.Namespace) -> str:
    lines = ["# Cost of the HE collusion mitigations (issue 19, finding 1)", "",
             f"K = {args.clients} clients, {args.dim} parameters, median of {args.rounds} rounds after a warm-up "
             f"round, in-process (`run_round`), {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} CPUs (shared machine: times are indicative).", "",
             "Round seconds are median (min) over the rounds; other jobs shared the CPUs, so a difference "
             "smaller than the spread of `round_s_all` in the JSON is noise.", "",
             "| scheme | round s (before) | round s (now) | upload B/param (before) | upload B/param (now) | "
             "download B/param (before) | download B/param (now) | keygen s per round (fresh key) |",
             "|---|---|---|---|---|---|---|---|"]
    for name in ("ckks", "bfv"):
        r = now["rounds"][name]
        b = before["rounds"][name] if before else None
        lines.append(f"| {name} | {_secs(b)} | " if b else f"| {name} | - | ")
        lines[-1] += (f"{_secs(r)} | {b['up_bytes_per_param']:.4f} | " if b else f"{_secs(r)} | - | ")
        lines[-1] += f"{r['up_bytes_per_param']:.4f} | " + (f"{b['down_bytes_per_param']:.4f} | " if b else "- | ")
        lines[-1] += f"{r['down_bytes_per_param']:.4f} | {now['keygen_s'][name]:.4f} |"
    lines += ["", f"Stages now: {', '.join(now['rounds']['ckks']['stages'])}"
              + (f"; before: {', '.join(before['rounds']['ckks']['stages'])}." if before else "."), ""]
    if "bfv_check_bit" in now:
        lines += ["BFV check bit (exact, from the plan, K = 50):", "",
                  "| code bits | B/param without | B/param with | t bits | data primes |", "|---|---|---|---|---|"]
        for row in now["bfv_check_bit"]:
            lines.append(f"| {row['bits']} | {row['without']:.4f} | {row['with']:.4f} | {row['t_bits'][0]} -> "
                         f"{row['t_bits'][1]} | {row['chain'][0][:-1]} -> {row['chain'][1][:-1]} |")
        lines.append("")
    lines += ["Flooding for statistical security: not measured. A chosen ciphertext such as (0, A) adds A*s to the",
              "release, and the range check admits any release inside n*clip, so A*s may take the whole valid range;",
              "noise 2^lambda times larger than that (lambda = 40) leaves no signal at any modulus size. Flooding",
              "only protects releases of honestly formed sums (Li & Micciancio), which the existing CKKS flood does.",
              ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--dim", type=int, default=131072)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--compare-src", default=None, help="src folder of the code before the change (baseline)")
    ap.add_argument("--json-only", action="store_true", help="print the measurements as JSON and stop")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    now = collect(args.clients, args.dim, args.rounds)
    if args.json_only:
        print(json.dumps(now))
        return 0
    before = None
    if args.compare_src:
        env = {**os.environ, "PYTHONPATH": args.compare_src}
        proc = subprocess.run([sys.executable, __file__, "--json-only", "--clients", str(args.clients), "--dim",
                               str(args.dim), "--rounds", str(args.rounds)], env=env, capture_output=True, text=True,
                              check=True)
        before = json.loads(proc.stdout.strip().splitlines()[-1])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"config": {"clients": args.clients, "dim": args.dim, "rounds": args.rounds}, "now": now, "before": before}
    (out / "he_collusion_cost.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    md = markdown(now, before, args)
    (out / "he_collusion_cost.md").write_text(md, encoding="utf-8")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
