"""Cross-device benchmark: held-out EER vs user-level epsilon, and the per-round cost split.

Usage (from the repository root, under ``nice``)::

    python benchmarks/crossdevice.py --data-dir data --ks 100 --eps 8 inf --seeds 0 --rounds 5

Writes ``benchmarks/results/crossdevice.{json,md}``. Each run is the ``phones`` preset
(1,000 devices, fixed-size sampling, 10 % dropouts, DP-FedAvg with secret codewords) with the
given K, epsilon (``inf`` = no DP noise; clipping, quantisation and masking stay) and seed;
``--centroid`` adds the positives-only baseline without codewords at epsilon inf.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--ks", type=int, nargs="+", default=[100])
    ap.add_argument("--eps", type=float, nargs="+", default=[8.0, math.inf])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--centroid", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/crossdevice")
    ap.add_argument("--plot-only", action="store_true", help="redraw the plot from the saved JSON")
    args = ap.parse_args()
    if args.plot_only:
        plot(json.loads(Path(args.out + ".json").read_text(encoding="utf-8"))["runs"], args.out + ".png")
        return

    from privspk.config import RunConfig
    from privspk.crossdevice.loop import run_crossdevice
    from privspk.prepare import prepare_data

    base = RunConfig.preset("phones").replace(data_dir=args.data_dir)
    data = prepare_data(base, progress=False)
    runs = []
    grid = [(k, e, s, "codewords") for k in args.ks for e in args.eps for s in args.seeds]
    if args.centroid:
        grid += [(k, math.inf, s, "centroid") for k in args.ks for s in args.seeds]
    for k, eps, seed, objective in grid:
        cfg = base.replace(
            name=f"xdev-k{k}-e{eps}-s{seed}-{objective}", seed=seed,
            federation=dataclasses.replace(base.federation, rounds=args.rounds),
            crossdevice=dataclasses.replace(base.crossdevice, devices_per_round=k, device_epsilon=eps,
                                            objective=objective),
            privacy=dataclasses.replace(base.privacy, enabled=not math.isinf(eps), randomness="simulation"))
        t0 = time.perf_counter()
        res = run_crossdevice(cfg, progress=False, data=data, write=False, eval_every=0)
        rounds = res.rounds
        per = {key: sum(r["seconds"][key] for r in rounds) / len(rounds)
               for key in ("local_training", "key_agreement", "masking", "aggregation", "unmasking", "round")}
        row = {"k": k, "epsilon": eps, "seed": seed, "objective": objective, "rounds": args.rounds,
               "pretrain_eer": res.pretrain_eval["eer"], "final_eer": res.final_eval["eer"],
               "central_epsilon": res.report["privacy"].get("central_epsilon"),
               "noise_multiplier": res.report["privacy"].get("noise_multiplier"),
               "seconds_per_round": per, "wall_s": time.perf_counter() - t0}
        print(json.dumps(row), flush=True)
        runs.append(row)
        Path(args.out + ".json").parent.mkdir(parents=True, exist_ok=True)
        Path(args.out + ".json").write_text(json.dumps({"runs": runs}, indent=1) + "\n", encoding="utf-8")
    lines = ["| K | eps | objective | seed | rounds | EER pretrained | EER final | noise mult. | "
             "local s/round | secagg s/round (key agr. + mask + aggr. + unmask) | round s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        p = r["seconds_per_round"]
        sec = p["key_agreement"] + p["masking"] + p["aggregation"] + p["unmasking"]
        nm = r["noise_multiplier"]
        lines.append(f"| {r['k']} | {r['epsilon']} | {r['objective']} | {r['seed']} | {r['rounds']} | "
                     f"{r['pretrain_eer'] * 100:.2f} % | {r['final_eer'] * 100:.2f} % | "
                     f"{'-' if nm is None else f'{nm:.3f}'} | {p['local_training']:.1f} | {sec:.2f} | {p['round']:.1f} |")
    Path(args.out + ".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    plot(runs, args.out + ".png")


def plot(runs: list[dict], path: str) -> None:
    """Bar chart of the final EER per run, with the pretrained EER as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"K={r['k']}\neps={r['epsilon']}\n{r['objective']}" for r in runs]
    fig, ax = plt.subplots(figsize=(1.6 * len(runs) + 2, 3.5))
    ax.bar(range(len(runs)), [r["final_eer"] * 100 for r in runs])
    ax.axhline(runs[0]["pretrain_eer"] * 100, color="k", linestyle="--", label="public pretraining only")
    ax.set_xticks(range(len(runs)), labels, fontsize=8)
    ax.set_ylabel("held-out EER (%)")
    ax.set_ylim(bottom=min(r["final_eer"] for r in runs) * 100 - 0.5)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
