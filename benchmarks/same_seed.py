"""Same seed, same figures: short simulation-randomness runs whose results must not move under a refactor.

Three tiny runs of the demo preset (threads 1, ``[privacy] randomness = "simulation"``, seed 0),
one per DP path: utterance-level DP-SGD with pairwise masks (2 rounds), speaker-level DP-SGD
with plain aggregation (1 round, 10 local steps), and client-level distributed DP over masks
(1 round). For each it keeps the final EER and minDCF, the per-round EER, each client's epsilon,
noise multiplier and sample rate, and two SHA-256 digests of the trained encoder: of its state
dict (tensor bytes in name order) and of the saved ``encoder.pt``.

Run it on two trees (``PYTHONPATH=<tree>/src``) and compare::

    PYTHONPATH=OLD/src python benchmarks/same_seed.py --label before --data data --runs runs/same_seed_old
    PYTHONPATH=src     python benchmarks/same_seed.py --label after  --data data --runs runs/same_seed_new
    python benchmarks/same_seed.py --compare before after

Writes ``results/same_seed_<label>.json`` and, with ``--compare``, ``results/same_seed_compare.md``
(identical or not, field by field). Not a timing: the seconds are only there to show the load.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
#: fields of a run that cannot repeat: client-level DP draws each client's integer noise share from the
#: operating system's entropy whatever ``randomness`` says (federation/client.py), so its weights differ
BY_DESIGN = {"clientlevel_r1": ("final_eer", "final_min_dcf_0.01", "round_eer", "state_sha256", "encoder_pt_sha256")}
FIELDS = ("final_eer", "final_min_dcf_0.01", "round_eer", "epsilon", "noise_multiplier", "sample_rate",
          "client_level", "state_sha256", "encoder_pt_sha256")


def variants(base):
    """The three runs: name -> the config changes from ``base``."""
    return {
        "utt_mask_r2": dict(federation=dataclasses.replace(base.federation, rounds=2)),
        "spk_plain_r1": dict(federation=dataclasses.replace(base.federation, rounds=1),
                             privacy=dataclasses.replace(base.privacy, unit="speaker"),
                             train=dataclasses.replace(base.train, batch_size=128, speaker_batch=8, local_steps=10),
                             secagg=dataclasses.replace(base.secagg, scheme="plain")),
        "clientlevel_r1": dict(federation=dataclasses.replace(base.federation, rounds=1),
                               privacy=dataclasses.replace(base.privacy, client_level=True)),
    }


def run(data: Path, runs: Path) -> dict:
    from privspk.api import train
    from privspk.config import RunConfig

    base = RunConfig.preset("demo")
    base = base.replace(threads=1, data_dir=str(data), out_dir=str(runs),
                        privacy=dataclasses.replace(base.privacy, randomness="simulation"))
    out = {}
    for name, change in variants(base).items():
        t = time.time()
        r = train(base.replace(name=name, **change), progress=False, overwrite=True)
        sd = r.encoder.state_dict()
        h = hashlib.sha256()
        for k in sorted(sd):
            h.update(k.encode())
            h.update(sd[k].detach().cpu().numpy().tobytes())
        priv = r.report["privacy"]
        out[name] = {"final_eer": r.final_eval["eer"], "final_min_dcf_0.01": r.final_eval["min_dcf_0.01"],
                     "round_eer": [row.get("eval", {}).get("eer") for row in r.rounds], "epsilon": r.epsilon,
                     "noise_multiplier": priv.get("noise_multiplier"), "sample_rate": priv.get("sample_rate"),
                     "client_level": priv.get("client_level"), "state_sha256": h.hexdigest(),
                     "encoder_pt_sha256": hashlib.sha256((r.run_dir / "encoder.pt").read_bytes()).hexdigest(),
                     "seconds": round(time.time() - t, 1)}
        print(name, json.dumps(out[name], default=str), flush=True)
    return out


def compare(a: dict, b: dict, labels: tuple[str, str]) -> tuple[str, bool]:
    """Markdown table of every field of every run, and whether all are identical."""
    same_all = True
    lines = [f"# Same seed, {labels[0]} vs {labels[1]}", "",
             f"`python benchmarks/same_seed.py --compare {labels[0]} {labels[1]}`; runs made on "
             f"{a.get('_meta', {}).get('commit', '?')} and {b.get('_meta', {}).get('commit', '?')} "
             f"(load: {a.get('_meta', {}).get('uptime', '?')} / {b.get('_meta', {}).get('uptime', '?')}).", "",
             f"| run | field | {labels[0]} | {labels[1]} | same |", "|---|---|---|---|---|"]
    for run_name in [k for k in a if not k.startswith("_")]:
        for f in FIELDS:
            x, y = a[run_name].get(f), b.get(run_name, {}).get(f)
            same = json.dumps(x, sort_keys=True, default=str) == json.dumps(y, sort_keys=True, default=str)
            free = f in BY_DESIGN.get(run_name, ())
            same_all &= same or free
            show = (lambda v: (str(v)[:16] + "...") if isinstance(v, str) and len(v) > 20 else
                    json.dumps(v, default=str)[:80])
            verdict = "yes" if same else ("no (by design: OS-entropy noise shares)" if free else "**NO**")
            lines.append(f"| {run_name} | {f} | {show(x)} | {show(y)} | {verdict} |")
    lines += ["", f"All fields that can repeat are identical: **{'yes' if same_all else 'NO'}**."]
    return "\n".join(lines) + "\n", same_all


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--label")
    ap.add_argument("--data", type=Path, default=Path("data"), help="prepared data folder (make demo builds it)")
    ap.add_argument("--runs", type=Path, default=Path("runs") / "same_seed")
    ap.add_argument("--commit", default="", help="the tree's commit, written with the results")
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"))
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.label:
        res = run(args.data, args.runs)
        res["_meta"] = {"commit": args.commit, "uptime": os.getloadavg()}
        (args.out / f"same_seed_{args.label}.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    if args.compare:
        a, b = (json.loads((args.out / f"same_seed_{x}.json").read_text()) for x in args.compare)
        md, same = compare(a, b, tuple(args.compare))
        (args.out / "same_seed_compare.md").write_text(md)
        print(md)
        return 0 if same else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
