"""Cross-device benchmark: held-out EER vs user-level epsilon, and the per-round cost split.

Usage (from the repository root, under ``nice``)::

    python benchmarks/crossdevice.py --data-dir data --ks 100 --eps 8 inf 4 2 1 --seeds 0 1 2 --rounds 10

Writes ``benchmarks/results/crossdevice.{json,md,png}`` (the JSON after every run, so an
interrupted sweep keeps what finished; ``--plot-only`` rewrites the tables and the plot from
it). Each run is the ``phones`` preset (1,000 devices, fixed-size sampling, 10 % dropouts,
DP-FedAvg with secret codewords, ``mask`` SecAgg+) with the given K, epsilon (``inf`` = no DP
noise; clipping, quantisation and masking stay) and seed; ``--set trainable=norms`` etc.
override ``[crossdevice]`` settings; ``--centroid`` adds the positives-only baseline without
codewords at epsilon inf. The table gives the mean (sd) over seeds and the share of the
non-private gain over public pretraining that each epsilon keeps. Settings are chosen on the
validation split with ``benchmarks/crossdevice_tune.py``, never here.
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
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a [crossdevice] setting of the preset (e.g. trainable=norms)")
    ap.add_argument("--append", action="store_true", help="add to the saved JSON's runs instead of replacing them")
    ap.add_argument("--out", default="benchmarks/results/crossdevice")
    ap.add_argument("--plot-only", action="store_true", help="redraw the plot from the saved JSON")
    args = ap.parse_args()
    if args.plot_only:  # redraw the plot and rewrite the tables from the saved runs
        runs = json.loads(Path(args.out + ".json").read_text(encoding="utf-8"))["runs"]
        write_tables(runs, args.out)
        plot(runs, args.out + ".png")
        return

    from privspk.config import RunConfig
    from privspk.crossdevice.loop import run_crossdevice
    from privspk.prepare import prepare_data

    import os

    base = RunConfig.preset("phones").replace(data_dir=args.data_dir)
    over = {}
    for item in args.set:
        key, _, value = item.partition("=")
        field_type = type(getattr(base.crossdevice, key))
        over[key] = field_type(value)
    base = base.replace(crossdevice=dataclasses.replace(base.crossdevice, **over))
    data = prepare_data(base, progress=False)
    saved = Path(args.out + ".json")
    runs = json.loads(saved.read_text(encoding="utf-8"))["runs"] if args.append and saved.exists() else []
    grid = [(k, e, s, "codewords") for k in args.ks for e in args.eps for s in args.seeds]
    if args.centroid:
        grid += [(k, math.inf, s, "centroid") for k in args.ks for s in args.seeds]
    done = {(r["k"], r["epsilon"], r["seed"], r["objective"], r["rounds"]) for r in runs}
    for k, eps, seed, objective in grid:
        if (k, eps, seed, objective, args.rounds) in done:  # --append: a run already on record is not repeated
            continue
        cfg = base.replace(
            name=f"xdev-k{k}-e{eps}-s{seed}-{objective}", seed=seed,
            federation=dataclasses.replace(base.federation, rounds=args.rounds),
            crossdevice=dataclasses.replace(base.crossdevice, devices_per_round=k, device_epsilon=eps,
                                            objective=objective),
            privacy=dataclasses.replace(base.privacy, enabled=not math.isinf(eps), randomness="simulation"))
        t0 = time.perf_counter()
        load0 = os.getloadavg()[0]
        res = run_crossdevice(cfg, progress=False, data=data, write=False, eval_every=0)
        rounds = [r for r in res.rounds if "seconds" in r]
        per = {key: sum(r["seconds"][key] for r in rounds) / len(rounds)
               for key in ("local_training", "key_agreement", "masking", "aggregation", "unmasking", "round",
                           "round_cpu")}
        row = {"k": k, "epsilon": eps, "seed": seed, "objective": objective, "rounds": args.rounds,
               "settings": {key: getattr(cfg.crossdevice, key) for key in
                            ("trainable", "local_steps", "local_lr", "server_lr", "server_momentum", "device_clip")},
               "trainable_parameters": res.report["trainable_parameters"],
               "load_1min": [round(load0, 2), round(os.getloadavg()[0], 2)],
               "pretrain_eer": res.pretrain_eval["eer"], "final_eer": res.final_eval["eer"],
               "central_epsilon": res.report["privacy"].get("central_epsilon"),
               "noise_multiplier": res.report["privacy"].get("noise_multiplier"),
               "seconds_per_round": per, "wall_s": time.perf_counter() - t0}
        print(json.dumps(row), flush=True)
        runs.append(row)
        Path(args.out + ".json").parent.mkdir(parents=True, exist_ok=True)
        Path(args.out + ".json").write_text(json.dumps({"runs": runs}, indent=1) + "\n", encoding="utf-8")
    write_tables(runs, args.out)
    plot(runs, args.out + ".png")


def write_tables(runs: list[dict], out: str) -> None:
    """``out.md``: the per-(K, eps) summary and every run."""
    lines = summary(runs) + ["", "## Every run", "",
                             "| K | eps | objective | trainable | seed | rounds | EER pretrained | EER final | noise mult. | "
                             "local s/round | secagg s/round (key agr. + mask + aggr. + unmask) | round s | round CPU s | "
                             "load (1 min) |",
                             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        p = r["seconds_per_round"]
        sec = p["key_agreement"] + p["masking"] + p["aggregation"] + p["unmasking"]
        nm = r["noise_multiplier"]
        lines.append(f"| {r['k']} | {r['epsilon']} | {r['objective']} | {r.get('settings', {}).get('trainable', 'embedding')} "
                     f"| {r['seed']} | {r['rounds']} | "
                     f"{r['pretrain_eer'] * 100:.2f} % | {r['final_eer'] * 100:.2f} % | "
                     f"{'-' if nm is None else f'{nm:.3f}'} | {p['local_training']:.1f} | {sec:.2f} | {p['round']:.1f} | "
                     f"{p.get('round_cpu', float('nan')):.1f} | {r.get('load_1min', '-')} |")
    Path(out + ".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


def _groups(runs: list[dict]) -> dict:
    import statistics

    out: dict = {}
    for r in runs:
        key = (r["k"], r.get("settings", {}).get("trainable", "embedding"), r["objective"], r["rounds"], r["epsilon"])
        out.setdefault(key, []).append(r)
    return {key: {"n": len(rs), "eer": statistics.fmean(x["final_eer"] for x in rs),
                  "sd": statistics.stdev([x["final_eer"] for x in rs]) if len(rs) > 1 else 0.0,
                  "pre": statistics.fmean(x["pretrain_eer"] for x in rs)} for key, rs in out.items()}


def summary(runs: list[dict]) -> list[str]:
    """Mean EER over seeds per (K, trainable, objective, rounds, eps) and the share of the non-private gain kept."""
    groups = _groups(runs)
    lines = ["# Cross-device: held-out EER vs user-level epsilon", "",
             "Mean (sd) over seeds of the final EER on the held-out speakers' trials; 'gain kept' = (pretrained - "
             "EER at eps) / (pretrained - EER at eps inf) of the same K/trainable/objective/rounds (target >= 50 % "
             "at eps 8).", "",
             "| K | trainable | objective | rounds | eps | seeds | EER pretrained | EER final | gain over pretraining | "
             "gain kept |", "|---|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(groups, key=lambda k: (k[0], k[1], k[2], k[3], -k[4])):
        g = groups[key]
        ref = groups.get(key[:4] + (math.inf,))
        gain = g["pre"] - g["eer"]
        kept = "-"
        if ref is not None and not math.isinf(key[4]):
            full = ref["pre"] - ref["eer"]
            kept = f"{gain / full * 100:.0f} %" if full > 0 else "n/a (no non-private gain)"
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {key[4]} | {g['n']} | {g['pre'] * 100:.2f} % | "
                     f"{g['eer'] * 100:.2f} % ({g['sd'] * 100:.2f}) | {gain * 100:+.2f} pt | {kept} |")
    return lines


def plot(runs: list[dict], path: str) -> None:
    """EER vs epsilon (inf drawn at the right end), one line per (K, trainable, objective, rounds), sd bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _groups(runs)
    finite = sorted({k[4] for k in groups if not math.isinf(k[4])}) or [1.0]
    x_inf = max(finite) * 2
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for line in sorted({k[:4] for k in groups}):
        pts = sorted((x_inf if math.isinf(k[4]) else k[4], g) for k, g in groups.items() if k[:4] == line)
        ax.errorbar([p[0] for p in pts], [p[1]["eer"] * 100 for p in pts], yerr=[p[1]["sd"] * 100 for p in pts],
                    marker="o", capsize=3, label=f"K={line[0]} {line[1]} {line[2]} {line[3]} rounds")
    ax.axhline(runs[0]["pretrain_eer"] * 100, color="k", linestyle="--", label="public pretraining only")
    ax.set_xscale("log", base=2)
    ticks = finite + [x_inf]
    ax.set_xticks(ticks, [f"{t:g}" for t in finite] + ["inf"])
    ax.set_xlabel("user-level epsilon (delta 1e-5)")
    ax.set_ylabel("held-out EER (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
