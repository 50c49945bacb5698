"""Cross-device benchmark: held-out EER vs user-level epsilon, and the per-round cost split.

Usage (from the repository root, under ``nice``)::

    python benchmarks/crossdevice.py --data-dir data --ks 100 --eps 8 inf 4 2 1 --seeds 0 1 2 --rounds 10

Writes ``benchmarks/results/crossdevice.{json,md,png}`` (the JSON after every run, so an
interrupted sweep keeps what finished; ``--plot-only`` rewrites the tables and the plot from
it; the hand-written ``crossdevice.notes.md`` beside it, with the commands and the machine
load, is appended to the markdown). Each run is the ``phones`` preset (1,000 devices, fixed-size sampling, 10 % dropouts,
DP-FedAvg with secret codewords, ``mask`` SecAgg+) with the given K, epsilon (``inf`` = no DP
noise; clipping, quantisation and masking stay) and seed; ``--set trainable=norms`` etc.
override ``[crossdevice]`` settings; ``--centroid`` adds the positives-only baseline without
codewords at epsilon inf; ``--domain phone`` (or car, callcentre, smarthome) puts every
device's audio through that channel (``[crossdevice] domain``) and scores the held-out speakers
in it: a domain row's headline EER is the in-domain condition (enrolment and test through the
channel), with the clean and the cross-channel (clean enrolment) EERs beside it. Rows are
marked with their domain (``none``: clean devices, the rows from before domains). The table gives the mean (sd) over seeds and the share of the
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
    ap.add_argument("--domain", default="none", help="device channel domain: none|callcentre|phone|car|smarthome")
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
    base = base.replace(crossdevice=dataclasses.replace(base.crossdevice, domain=args.domain, **over))
    data = prepare_data(base, progress=False)
    saved = Path(args.out + ".json")
    runs = json.loads(saved.read_text(encoding="utf-8"))["runs"] if args.append and saved.exists() else []
    grid = [(k, e, s, "codewords") for k in args.ks for e in args.eps for s in args.seeds]
    if args.centroid:
        grid += [(k, math.inf, s, "centroid") for k in args.ks for s in args.seeds]
    build = _encoder_sha256(base, data)
    # --append: a run already on record for this build of the data is not repeated (rows from before the
    # fingerprint was recorded carry none and are never matched)
    done = {(r.get("domain", "none"), r["k"], r["epsilon"], r["seed"], r["objective"], r["rounds"],
             r.get("settings", {}).get("trainable", "embedding"), r.get("pretrained_sha256")) for r in runs}
    for k, eps, seed, objective in grid:
        if (args.domain, k, eps, seed, objective, args.rounds, base.crossdevice.trainable, build) in done:
            continue
        cfg = base.replace(
            name=f"xdev-{args.domain}-k{k}-e{eps}-s{seed}-{objective}", seed=seed,
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
        dom = args.domain
        pre_d, fin_d = res.pretrain_eval.get("domains", {}), res.final_eval.get("domains", {})
        headline = ((pre_d[dom]["eer"], fin_d[dom]["eer"]) if dom != "none"
                    else (res.pretrain_eval["eer"], res.final_eval["eer"]))
        row = {"domain": dom, "k": k, "epsilon": eps, "seed": seed, "objective": objective, "rounds": args.rounds,
               "settings": {key: getattr(cfg.crossdevice, key) for key in
                            ("trainable", "local_steps", "local_lr", "server_lr", "server_momentum", "device_clip")},
               "trainable_parameters": res.report["trainable_parameters"],
               "load_1min": [round(load0, 2), round(os.getloadavg()[0], 2)],
               # headline: in-domain for a domain row (the devices' channel), clean otherwise
               "pretrain_eer": headline[0], "final_eer": headline[1],
               "clean_pretrain_eer": res.pretrain_eval["eer"], "clean_final_eer": res.final_eval["eer"],
               "cross_pretrain_eer": pre_d.get(f"{dom}/cross", {}).get("eer"),
               "cross_final_eer": fin_d.get(f"{dom}/cross", {}).get("eer"),
               "central_epsilon": res.report["privacy"].get("central_epsilon"),
               "noise_multiplier": res.report["privacy"].get("noise_multiplier"),
               "seconds_per_round": per, "wall_s": time.perf_counter() - t0, "pretrained_sha256": build}
        print(json.dumps(row), flush=True)
        runs.append(row)
        Path(args.out + ".json").parent.mkdir(parents=True, exist_ok=True)
        Path(args.out + ".json").write_text(json.dumps({"runs": runs}, indent=1) + "\n", encoding="utf-8")
    write_tables(runs, args.out)
    plot(runs, args.out + ".png")


def _encoder_sha256(cfg, data) -> str:
    """SHA-256 of the public pretrained encoder's weights: which build of the data a run used."""
    import hashlib

    from privspk.api import pretrained_encoder

    encoder, _ = pretrained_encoder(cfg, data, progress=False)
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _dom(r: dict) -> str:
    return r.get("domain", "none")


def _pct(x) -> str:
    return "-" if x is None else f"{x * 100:.2f} %"


def write_tables(runs: list[dict], out: str) -> None:
    """``out.md``: the per-(domain, K, eps) summary and every run."""
    lines = summary(runs) + ["", "## Every run", "",
                             "EER pretrained / final: in-domain for a domain row (enrolment and test through the "
                             "devices' channel), clean for domain none; clean and cross-channel (clean enrolment, "
                             "channel test) final EERs beside them.", "",
                             "| domain | K | eps | objective | trainable | seed | rounds | EER pretrained | EER final | "
                             "clean EER final | cross EER final | noise mult. | "
                             "local s/round | secagg s/round (key agr. + mask + aggr. + unmask) | round s | round CPU s | "
                             "load (1 min) |",
                             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        p = r["seconds_per_round"]
        sec = p["key_agreement"] + p["masking"] + p["aggregation"] + p["unmasking"]
        nm = r["noise_multiplier"]
        dom = _dom(r)
        lines.append(f"| {dom} | {r['k']} | {r['epsilon']} | {r['objective']} | "
                     f"{r.get('settings', {}).get('trainable', 'embedding')} "
                     f"| {r['seed']} | {r['rounds']} | "
                     f"{r['pretrain_eer'] * 100:.2f} % | {r['final_eer'] * 100:.2f} % | "
                     f"{_pct(r.get('clean_final_eer')) if dom != 'none' else '='} | {_pct(r.get('cross_final_eer'))} | "
                     f"{'-' if nm is None else f'{nm:.3f}'} | {p['local_training']:.1f} | {sec:.2f} | {p['round']:.1f} | "
                     f"{p.get('round_cpu', float('nan')):.1f} | {r.get('load_1min', '-')} |")
    notes = Path(out + ".notes.md")  # hand-written: the commands, the machine load, what was not run
    if notes.exists():
        lines += ["", notes.read_text(encoding="utf-8").rstrip()]
    Path(out + ".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


def _build(r: dict) -> float:
    """The data build a run used, told apart by its public pretrained encoder's EER (in the run's headline condition).

    ``privspk prepare`` on another machine or thread count can pretrain a slightly different encoder, so runs
    on two builds are neither averaged together nor compared for the gain kept.

    >>> _build({"pretrain_eer": 0.119812}) == _build({"pretrain_eer": 0.11981249}), _build({"pretrain_eer": 0.1173})
    (True, 11.73)
    """
    return round(r["pretrain_eer"] * 100, 2)


def _groups(runs: list[dict]) -> dict:
    import statistics

    out: dict = {}
    for r in runs:
        key = (_dom(r), r["k"], r.get("settings", {}).get("trainable", "embedding"), r["objective"], r["rounds"],
               _build(r), r["epsilon"])
        out.setdefault(key, []).append(r)

    def mean(rs, name):
        vals = [x[name] for x in rs if x.get(name) is not None]
        return statistics.fmean(vals) if vals else None

    return {key: {"n": len(rs), "eer": statistics.fmean(x["final_eer"] for x in rs),
                  "sd": statistics.stdev([x["final_eer"] for x in rs]) if len(rs) > 1 else 0.0,
                  "pre": statistics.fmean(x["pretrain_eer"] for x in rs),
                  "clean": mean(rs, "clean_final_eer"), "clean_pre": mean(rs, "clean_pretrain_eer"),
                  "cross": mean(rs, "cross_final_eer"), "cross_pre": mean(rs, "cross_pretrain_eer")}
            for key, rs in out.items()}


def summary(runs: list[dict]) -> list[str]:
    """Mean EER over seeds per (domain, K, trainable, objective, rounds, data build, eps) and the share of the gain kept."""
    groups = _groups(runs)
    lines = ["# Cross-device: held-out EER vs user-level epsilon", "",
             "Mean (sd) over seeds of the final EER on the held-out speakers' trials: in the devices' domain "
             "(enrolment and test through its channel) for a domain row, clean for domain none. 'gain kept' = "
             "(pretrained - EER at eps) / (pretrained - EER at eps inf) of the same domain/K/trainable/objective/rounds "
             "and data build (runs on two builds of the data, told apart by their pretrained EER, are kept apart) "
             "(target >= 50 % at eps 8). Clean and cross-channel (clean enrolment, channel test) EERs of domain rows: "
             "pretrained -> final.", "",
             "| domain | K | trainable | objective | rounds | eps | seeds | EER pretrained | EER final | "
             "gain over pretraining | gain kept | clean EER | cross-channel EER |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(groups, key=lambda k: (k[0] != "none", k[0], k[1], k[2], k[3], k[4], -k[5], -k[6])):
        g = groups[key]
        ref = groups.get(key[:6] + (math.inf,))
        gain = g["pre"] - g["eer"]
        kept = "-"
        if ref is not None and not math.isinf(key[6]):
            full = ref["pre"] - ref["eer"]
            kept = f"{gain / full * 100:.0f} %" if full > 0 else "n/a (no non-private gain)"
        extra = ("- | -" if key[0] == "none" or g["clean"] is None else
                 f"{_pct(g['clean_pre'])} -> {_pct(g['clean'])} | {_pct(g['cross_pre'])} -> {_pct(g['cross'])}")
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {key[4]} | {key[6]} | {g['n']} | "
                     f"{g['pre'] * 100:.2f} % | {g['eer'] * 100:.2f} % ({g['sd'] * 100:.2f}) | {gain * 100:+.2f} pt | "
                     f"{kept} | {extra} |")
    return lines


def plot(runs: list[dict], path: str) -> None:
    """EER vs epsilon (inf drawn at the right end), one line per (domain, K, trainable, objective, rounds), sd bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _groups(runs)
    finite = sorted({k[6] for k in groups if not math.isinf(k[6])}) or [1.0]
    x_inf = max(finite) * 2
    fig, ax = plt.subplots(figsize=(7, 4.4))
    colours = {}
    several = {k[:5] for k in groups if len({j[5] for j in groups if j[:5] == k[:5]}) > 1}
    for line in sorted({k[:6] for k in groups}):
        pts = sorted((x_inf if math.isinf(k[6]) else k[6], g) for k, g in groups.items() if k[:6] == line)
        bar = ax.errorbar([p[0] for p in pts], [p[1]["eer"] * 100 for p in pts], yerr=[p[1]["sd"] * 100 for p in pts],
                          marker="o", capsize=3, linestyle="-" if line[0] == "none" else "--",
                          label=f"{line[0]} K={line[1]} {line[2]} {line[3]} {line[4]} rounds"
                          + (f" (build: pretrained {line[5]:.2f} %)" if line[:5] in several else ""))
        colours.setdefault((line[0], line[5]), bar[0].get_color())
    for (dom, build), colour in colours.items():  # public pretraining only, in the same condition and build
        ax.axhline(build, color=colour, linestyle=":", linewidth=1,
                   label=f"{dom}: public pretraining only ({build:.2f} %)")
    ax.set_xscale("log", base=2)
    ticks = finite + [x_inf]
    ax.set_xticks(ticks, [f"{t:g}" for t in finite] + ["inf"])
    ax.set_xlabel("user-level epsilon (delta 1e-5)")
    ax.set_ylabel("held-out EER (%), in the devices' domain")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
