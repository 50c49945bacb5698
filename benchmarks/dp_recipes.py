"""How much of what federation adds does DP keep? A sweep over recipes, epsilons, seeds and privacy units.

For every recipe and seed it runs, from the same publicly pretrained encoder, on the same
clients, rounds and data: a non-private federated run (the reference) and DP runs at each
epsilon (delta = 1e-5) for each privacy unit, then reports

    gain kept(eps) = (EER_pretrain - EER_dp(eps)) / (EER_pretrain - EER_nonprivate)

with EER and minDCF(0.01). ``--sweep`` first chooses the learning rate and clipping bound of
each recipe by a small grid at epsilon = 8 (seed 0) and writes what it tried to
``results/dp_sweep.json``; the main table then uses the chosen values.

Writes ``results/dp_recipes.json`` (one row per run), ``results/dp_recipes.md`` and
``results/dp_recipes.png`` (EER vs epsilon per recipe and unit).

    python benchmarks/dp_recipes.py                  # full run (see --help for the grid)
    python benchmarks/dp_recipes.py --quick          # smoke: one seed, epsilon 8, embedding recipe
    privspk bench dp --sweep
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

# Named recipes: what trains and how. DP and non-private runs of a recipe share everything
# except the privacy settings and, where the sweep chose them, the learning rate and clip.
RECIPES: dict[str, dict] = {
    # the default: embedding layer on the frozen public trunk (pooled statistics cached once)
    "embedding": {"recipe": "embedding", "local_steps": 50, "batch_size": 256, "physical_batch": 1024,
                  "trunk_crops": 4, "lr": 1e-2, "optimizer": "adam"},
    # the conventional recipe: last SE-Res2 block + aggregation + pooling + embedding, crops through the trunk
    "last": {"recipe": "last", "local_steps": 10, "batch_size": 64, "physical_batch": 64,
             "trunk_crops": 0, "lr": 1e-3, "optimizer": "adam"},
}
NONPRIVATE_LR = {"embedding": 3e-3, "last": 1e-3}
SWEEP = {
    "embedding": {"dp": [{"lr": lr, "clip": c} for lr in (3e-3, 1e-2, 3e-2) for c in (0.3, 1.0)],
                  "np": [{"lr": lr} for lr in (1e-3, 3e-3, 1e-2)]},
    "last": {"dp": [{"lr": lr, "clip": 1.0} for lr in (1e-3, 3e-3)], "np": [{"lr": lr} for lr in (1e-3, 3e-3)]},
}
# Speaker-level DP samples speakers: 16 expected speakers x 8 utterances per step by default.
SPEAKER_UNIT = {"batch_size": 128, "speaker_batch": 8}
# ... and --sweep tries fewer, larger speaker steps (all 40 utterances of each sampled speaker;
# q = 1 means every speaker in every step: no amplification by sampling, but the least noise per step).
SPEAKER_SWEEP = [
    {"local_steps": 50, "batch_size": 128, "speaker_batch": 8, "lr": 1e-2},
    {"local_steps": 20, "batch_size": 640, "speaker_batch": 40, "lr": 1e-2},
    {"local_steps": 20, "batch_size": 640, "speaker_batch": 40, "lr": 3e-2},
    {"local_steps": 10, "batch_size": 1240, "speaker_batch": 40, "lr": 3e-2},
]


def base_config(args):
    from privspk.config import EvalSection, ModelSection, PretrainSection, RunConfig, SecAggSection

    cfg = RunConfig.preset("demo")
    return cfg.replace(
        out_dir=str(args.runs), data_dir=str(args.data), threads=args.threads,
        corpus=dataclasses.replace(cfg.corpus, domains=()),  # this sweep is about clean clients
        model=ModelSection(encoder=cfg.model.encoder),
        pretrain=cfg.pretrain,
        secagg=SecAggSection(scheme="plain"),
        eval=EvalSection(target_per_utt=10, nontarget_per_utt=40, enroll_per_speaker=3,
                         max_frames=cfg.eval.max_frames),
    )


def run_config(base, *, recipe: str, seed: int, epsilon: float | None, unit: str, overrides: dict):
    """The RunConfig of one run (``epsilon=None``: non-private)."""
    train = dict(RECIPES[recipe])
    if unit == "speaker":
        train.update(SPEAKER_UNIT)
    train.update({k: v for k, v in overrides.items() if k != "clip"})
    clip = overrides.get("clip", 1.0)  # the privacy section's clip; only the sweep's grids set it
    tag = f"{recipe}_{unit}_{'np' if epsilon is None else f'eps{epsilon:g}'}_s{seed}"
    return base.replace(
        name=f"bench_dp_{tag}", seed=seed,
        train=dataclasses.replace(base.train, **train),
        privacy=dataclasses.replace(base.privacy, enabled=epsilon is not None, epsilon=epsilon or 8.0,
                                    unit=unit, clip=clip),
    ), tag


def one_run(cfg, data) -> dict:
    from privspk.api import train

    t0 = time.perf_counter()
    res = train(cfg, progress=False, overwrite=True, eval_every=0, data=data)
    rep = res.report
    steps = [c["step_seconds"] for r in rep["rounds"] for c in r["clients"].values() if c["status"] == "sent"]
    return {
        "eer": rep["final_eval"]["eer"], "min_dcf": rep["final_eval"]["min_dcf_0.01"],
        "top1": rep["final_eval"].get("top1"), "eer_pretrain": rep["pretrain_eval"]["eer"],
        "step_s": statistics.median(steps) if steps else None, "seconds": round(time.perf_counter() - t0, 1),
        "trainable": rep["trainable_parameters"],
        "sigma": (sorted(rep["privacy"]["noise_multiplier"].values())[0] if cfg.privacy.enabled else None),
        "epsilon_spent": (max(res.epsilon.values()) if cfg.privacy.enabled else None),
    }


def _grid(base, data, recipe, grid, *, epsilon, unit, label, tried) -> dict:
    """Run each override of ``grid`` (seed 0) and return the one with the lowest EER."""
    best = None
    for ov in grid:
        cfg, _ = run_config(base, recipe=recipe, seed=0, epsilon=epsilon, unit=unit, overrides=ov)
        r = one_run(cfg, data)
        tried.append({"recipe": recipe, "private": epsilon is not None, "unit": unit, **ov, **r})
        print(f"sweep {recipe} {label} {ov}: EER {100 * r['eer']:.2f} %", flush=True)
        if best is None or r["eer"] < best[1]:
            best = (ov, r["eer"])
    return best[0]


def sweep(args, base, data, recipes, speaker_recipes=()) -> dict:
    """Grid over lr/clip at epsilon 8 (seed 0) and over lr for the non-private reference;
    for recipes run with speaker-level DP, also over the speaker sampling (``SPEAKER_SWEEP``)."""
    chosen, tried = {}, []
    for recipe in recipes:
        ch = {}
        if recipe in speaker_recipes:
            ch["speaker"] = _grid(base, data, recipe, SPEAKER_SWEEP, epsilon=8.0, unit="speaker",
                                  label="dp per speaker eps=8", tried=tried)
        ch["dp"] = _grid(base, data, recipe, SWEEP[recipe]["dp"], epsilon=8.0, unit="utterance",
                         label="dp eps=8", tried=tried)
        ch["np"] = _grid(base, data, recipe, SWEEP[recipe]["np"], epsilon=None, unit="utterance",
                         label="non-private", tried=tried)
        chosen[recipe] = ch
    return {"chosen": chosen, "tried": tried}


def summarise(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["epsilon"] is not None:
            groups.setdefault((r["recipe"], r["unit"], r["epsilon"]), []).append(r)
    out = []
    for (recipe, unit, eps), rs in sorted(groups.items()):
        g = [r["gain_kept"] for r in rs]
        e = [r["eer"] for r in rs]
        ratio = [r["eer"] / r["eer_nonprivate"] for r in rs]
        out.append({
            "recipe": recipe, "unit": unit, "epsilon": eps, "seeds": len(rs),
            "gain_kept_mean": statistics.mean(g), "gain_kept_std": statistics.stdev(g) if len(g) > 1 else 0.0,
            "eer_mean": statistics.mean(e), "eer_std": statistics.stdev(e) if len(e) > 1 else 0.0,
            "min_dcf_mean": statistics.mean(r["min_dcf"] for r in rs),
            "eer_pretrain": statistics.mean(r["eer_pretrain"] for r in rs),
            "eer_nonprivate_mean": statistics.mean(r["eer_nonprivate"] for r in rs),
            "eer_ratio_dp_to_nonprivate": statistics.mean(ratio),
            "dp_step_s": statistics.median(r["dp_step_s"] for r in rs if r["dp_step_s"] is not None),
            "nonprivate_step_s": statistics.median(r["nonprivate_step_s"] for r in rs
                                                   if r["nonprivate_step_s"] is not None),
        })
    return out


def markdown(payload: dict) -> str:
    m = payload["meta"]
    lines = [
        "# DP fine-tuning: gain kept", "",
        f"Measured {m['date']} on {m['machine']}, {m['threads']} torch thread(s); {m['clients']} clients x "
        f"{m['rounds']} rounds on the built-in corpus; EER on {m['trials']} trials over {m['heldout']} held-out "
        "speakers; delta = 1e-5. gain kept = (EER_pretrain - EER_dp) / (EER_pretrain - EER_nonprivate), "
        "same pretrained encoder, clients, rounds and data; mean +- std over seeds.", "",
        "| recipe | unit | epsilon | seeds | gain kept | EER dp % | EER non-private % | EER pretrain % | "
        "DP/non-private EER | minDCF(0.01) dp | DP step s | non-private step s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in payload["summary"]:
        lines.append(
            f"| {s['recipe']} | {s['unit']} | {s['epsilon']:g} | {s['seeds']} | "
            f"{s['gain_kept_mean']:.2f} +- {s['gain_kept_std']:.2f} | {100 * s['eer_mean']:.2f} +- "
            f"{100 * s['eer_std']:.2f} | {100 * s['eer_nonprivate_mean']:.2f} | {100 * s['eer_pretrain']:.2f} | "
            f"{s['eer_ratio_dp_to_nonprivate']:.2f} | {s['min_dcf_mean']:.3f} | {s['dp_step_s']:.3f} | "
            f"{s['nonprivate_step_s']:.3f} |")
    if payload.get("sweep"):
        lines += ["", "Learning rate and clip chosen by the sweep (epsilon 8, seed 0, lowest EER):", ""]
        for recipe, ch in payload["sweep"]["chosen"].items():
            lines.append(f"- {recipe}: DP per utterance {ch['dp']}, non-private {ch['np']}"
                         + (f", DP per speaker {ch['speaker']}" if "speaker" in ch else ""))
    if payload.get("skipped"):
        lines += ["", "Not run (time budget): " + ", ".join(payload["skipped"])]
    if not m.get("complete", True):
        lines += ["", "(partial: the sweep was still running when this was written)"]
    return "\n".join(lines) + "\n"


def plot(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours: dict[str, str] = {}
    for (recipe, unit) in sorted({(s["recipe"], s["unit"]) for s in payload["summary"]}, key=lambda k: (k[0], k[1] != "utterance")):
        ss = [s for s in payload["summary"] if s["recipe"] == recipe and s["unit"] == unit]
        bar = ax.errorbar([s["epsilon"] for s in ss], [100 * s["eer_mean"] for s in ss],
                          yerr=[100 * s["eer_std"] for s in ss], marker="o" if unit == "utterance" else "s",
                          ls="-" if unit == "utterance" else "-.", capsize=3, color=colours.get(recipe),
                          label=f"{recipe} / DP per {unit}")
        if recipe not in colours:  # one non-private line per recipe (both units share the reference)
            colours[recipe] = bar.lines[0].get_color()
            ax.axhline(100 * ss[0]["eer_nonprivate_mean"], ls="--", lw=0.8, color=colours[recipe],
                       label=f"{recipe} non-private")
    if payload["summary"]:
        ax.axhline(100 * payload["summary"][0]["eer_pretrain"], color="k", ls=":", label="pretrain only")
    ax.set_xlabel("epsilon (delta = 1e-5)")
    ax.set_ylabel("held-out EER (%)")
    ax.set_xscale("log", base=2)
    ax.legend(fontsize=7)
    ax.set_title("DP federated fine-tuning: EER vs epsilon")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(args, argv, base, data, start, sweep_result, rows, skipped, *, final: bool) -> dict:
    """Write dp_recipes.json/.md (and the plot); called after every run, so a stopped sweep keeps its rows."""
    payload = {
        "meta": {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                 "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                 "threads": args.threads, "clients": base.federation.n_clients, "rounds": base.federation.rounds,
                 "trials": len(data.trials), "heldout": len(data.split.heldout), "encoder": base.model.encoder,
                 "delta": base.privacy.delta, "minutes": round((time.perf_counter() - start) / 60, 1),
                 "complete": final,
                 "command": " ".join(["python benchmarks/dp_recipes.py", *(argv if argv is not None else sys.argv[1:])])},
        "recipes": RECIPES, "speaker_unit": SPEAKER_UNIT,
        "sweep": sweep_result, "rows": rows, "summary": summarise(rows), "skipped": skipped,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "dp_recipes.json").write_text(json.dumps(payload, indent=2, default=str))
    if sweep_result:
        (out / "dp_sweep.json").write_text(json.dumps(sweep_result, indent=2, default=str))
    (out / "dp_recipes.md").write_text(markdown(payload))
    if payload["summary"]:
        plot(payload, out / "dp_recipes.png")
    return payload


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", default="embedding,last")
    ap.add_argument("--epsilons", default="2,4,8")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--units", default="utterance,speaker")
    ap.add_argument("--speaker-recipes", default="embedding", help="recipes also run with speaker-level DP")
    ap.add_argument("--sweep", action="store_true", help="choose lr/clip by a grid first")
    ap.add_argument("--time-budget-min", type=float, default=150.0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--from-json", help="only re-render dp_recipes.md and .png from this dp_recipes.json")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", default=str(ROOT / "data"))
    ap.add_argument("--runs", default=str(ROOT / "runs" / "bench_dp"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    if args.from_json:  # re-render the report and plot of an earlier run, without training
        payload = json.loads(Path(args.from_json).read_text())
        out = Path(args.out)
        (out / "dp_recipes.md").write_text(markdown(payload))
        plot(payload, out / "dp_recipes.png")
        print(markdown(payload))
        return 0
    if args.quick:
        args.recipes, args.epsilons, args.seeds, args.units = "embedding", "8", "0", "utterance"
    warnings.filterwarnings("ignore")
    import torch

    from privspk.prepare import prepare_data

    torch.set_num_threads(args.threads)
    recipes = [r for r in args.recipes.split(",") if r]
    epsilons = [float(e) for e in args.epsilons.split(",") if e]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    units = [u for u in args.units.split(",") if u]
    speaker_recipes = set(args.speaker_recipes.split(","))
    base = base_config(args)
    data = prepare_data(base, progress=False)
    start = time.perf_counter()
    sweep_result = (sweep(args, base, data, recipes, [r for r in recipes if r in speaker_recipes and "speaker" in units])
                    if args.sweep else None)
    chosen = (sweep_result or {}).get("chosen", {})
    rows: list[dict] = []
    skipped: list[str] = []
    for recipe in recipes:
        for seed in seeds:
            np_over = chosen.get(recipe, {}).get("np", {"lr": NONPRIVATE_LR[recipe]})
            dp_over = chosen.get(recipe, {}).get("dp", {})
            spk_over = chosen.get(recipe, {}).get("speaker", {})
            plan = [(None, "utterance")] + [(e, u) for u in units for e in epsilons
                                             if u == "utterance" or recipe in speaker_recipes]
            reference = None
            for eps, unit in plan:
                if (time.perf_counter() - start) / 60 > args.time_budget_min:
                    skipped.append(f"{recipe}/{unit}/eps={eps}/seed={seed}")
                    continue
                cfg, tag = run_config(base, recipe=recipe, seed=seed, epsilon=eps, unit=unit,
                                      overrides=np_over if eps is None else spk_over if unit == "speaker" else dp_over)
                r = one_run(cfg, data)
                if eps is None:
                    reference = r
                    print(f"{tag}: EER {100 * r['eer']:.2f} % (pretrain {100 * r['eer_pretrain']:.2f} %)", flush=True)
                    continue
                if reference is None:
                    skipped.append(f"{recipe}/{unit}/eps={eps}/seed={seed} (no reference)")
                    continue
                den = r["eer_pretrain"] - reference["eer"]
                row = {
                    "recipe": recipe, "unit": unit, "epsilon": eps, "seed": seed, "eer": r["eer"],
                    "min_dcf": r["min_dcf"], "top1": r["top1"], "eer_pretrain": r["eer_pretrain"],
                    "eer_nonprivate": reference["eer"], "min_dcf_nonprivate": reference["min_dcf"],
                    "gain_kept": (r["eer_pretrain"] - r["eer"]) / den if den else math.nan,
                    "dp_step_s": r["step_s"], "nonprivate_step_s": reference["step_s"], "sigma": r["sigma"],
                    "epsilon_spent": r["epsilon_spent"], "trainable": r["trainable"], "seconds": r["seconds"],
                    "settings": {**cfg.train.__dict__, "clip": cfg.privacy.clip},
                }
                rows.append(row)
                write_results(args, argv, base, data, start, sweep_result, rows, skipped, final=False)
                print(f"{tag}: EER {100 * r['eer']:.2f} % gain kept {row['gain_kept']:.2f} "
                      f"(sigma {r['sigma']:.3f}, eps spent {r['epsilon_spent']:.3f})", flush=True)
    payload = write_results(args, argv, base, data, start, sweep_result, rows, skipped, final=True)
    print(markdown(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
