"""Cross-device tuning on the validation split: EER on the corpus' client speakers (non-private or at --eps).

The cross-device mode trains on the simulated phones and reports on the held-out speakers'
trials; the built-in corpus' client speakers take part in neither (nor in pretraining), so
their trials are the validation set (:func:`privspk.crossdevice.loop.validation_evaluator`).
This script never scores a test trial. Each variant is the ``phones`` preset with some
``[crossdevice]`` / ``[federation]`` settings changed, run without DP noise (or, with ``--eps``,
DP-FedAvg at that user-level epsilon under ``mask``) and otherwise with the
``plain`` sum (the ``mask`` scheme opens exactly the same integer sum, see
``tests/crossdevice/test_secagg_crossdevice.py``; it only costs time), K devices per round,
10 % dropouts, clipping and 16-bit quantisation as in the real runs.

Usage (from the repository root, under ``nice``)::

    python benchmarks/crossdevice_tune.py --data-dir data --rounds 20 --eval-every 5 [--domain phone] \\
        --variant base --variant "server_lr=3" --variant "local_steps=10,local_lr=1.0"

Writes ``benchmarks/results/crossdevice_tune.{json,md}`` (appends to the JSON's runs, so a
tuning session's cost is all on record).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import math
import os
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def parse_variant(text: str) -> dict:
    """``"a=1,b=x"`` -> ``{"a": 1, "b": "x"}`` (ints, floats, else strings); ``base`` -> ``{}``."""
    if text in ("", "base"):
        return {}
    out = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        for cast in (int, float):
            try:
                out[key.strip()] = cast(value)
                break
            except ValueError:
                continue
        else:
            out[key.strip()] = value.strip()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eps", type=float, default=float("inf"),
                    help="user-level epsilon of the tuning runs (inf: no DP noise, plain sum; finite: DP-FedAvg "
                         "with its noise shares under mask SecAgg+, as in the real runs)")
    ap.add_argument("--domain", default="none", help="device channel domain ([crossdevice] domain); the validation "
                    "EER is then the in-domain one (validation speakers' enrolment and test through the channel)")
    ap.add_argument("--variant", action="append", default=[], help="k=v,... over [crossdevice] (rounds=N too)")
    ap.add_argument("--out", type=Path, default=RESULTS / "crossdevice_tune")
    a = ap.parse_args()

    from privspk.config import RunConfig
    from privspk.crossdevice.loop import run_crossdevice
    from privspk.prepare import prepare_data

    base = RunConfig.preset("phones").replace(data_dir=a.data_dir)
    base = base.replace(crossdevice=dataclasses.replace(base.crossdevice, domain=a.domain))
    data = prepare_data(base, progress=False)
    path = a.out.with_suffix(".json")
    saved = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"runs": []}
    for text in a.variant or ["base"]:
        over = parse_variant(text)
        rounds = int(over.pop("rounds", a.rounds))
        private = not math.isinf(a.eps)
        if private:
            over.setdefault("device_epsilon", a.eps)
        cfg = base.replace(
            name=f"tune-{text}", seed=a.seed,
            federation=dataclasses.replace(base.federation, rounds=rounds),
            crossdevice=dataclasses.replace(base.crossdevice, devices_per_round=a.k, **over),
            secagg=dataclasses.replace(base.secagg, scheme="plain" if private is False else "mask"),
            privacy=dataclasses.replace(base.privacy, enabled=private, randomness="simulation"))
        curve = []

        def eer(ev: dict) -> float:  # in-domain with a device domain, clean otherwise
            return ev["domains"][a.domain]["eer"] if a.domain != "none" else ev["eer"]

        t0 = time.perf_counter()
        res = run_crossdevice(cfg, progress=False, data=data, write=False, eval_every=a.eval_every,
                              evaluate_on="validation",
                              on_round=lambda row: curve.append((row["round"], eer(row["eval"])))
                              if "eval" in row else None)
        row = {"variant": text, "domain": a.domain, "epsilon": a.eps, "settings": over, "k": a.k, "rounds": rounds, "seed": a.seed,
               "val_eer_pretrained": eer(res.pretrain_eval), "val_eer_final": eer(res.final_eval),
               "val_curve": curve, "wall_s": round(time.perf_counter() - t0, 1),
               "local_s_per_round": round(sum(r["seconds"]["local_training"] for r in res.rounds if "seconds" in r)
                                          / max(1, len(res.rounds)), 2),
               "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               "load": os.getloadavg()[0]}
        print(json.dumps(row), flush=True)
        saved["runs"].append(row)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(saved, indent=1) + "\n", encoding="utf-8")
    lines = ["# Cross-device tuning on the validation split (client speakers; no test trial scored)", "",
             "eps inf: non-private, plain sum; finite eps: DP-FedAvg with its noise shares under mask. 10 % dropouts, "
             "clipping + 16-bit quantisation as in the real runs. "
             "EER on the validation trials; 'curve' = (round, EER) every few rounds.", "",
             "With a device domain the validation EER is the in-domain one (enrolment and test through the "
             "devices' channel).", "",
             "| domain | eps | variant | K | rounds | seed | val EER pretrained | val EER final | curve | wall s | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in saved["runs"]:
        curve = " ".join(f"{n}:{e * 100:.2f}" for n, e in r["val_curve"])
        lines.append(f"| {r.get('domain', 'none')} | {r.get('epsilon', float('inf'))} | {r['variant']} | {r['k']} | {r['rounds']} | {r['seed']} | {r['val_eer_pretrained'] * 100:.2f} % "
                     f"| {r['val_eer_final'] * 100:.2f} % | {curve} | {r['wall_s']} | {r['load']:.1f} |")
    total = sum(r["wall_s"] for r in saved["runs"])
    lines += ["", f"Tuning cost on record: {len(saved['runs'])} runs, {total / 60:.1f} min wall in all."]
    a.out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
