"""The ``privspk`` command line.

Subcommands: ``prepare``, ``demo``, ``train``, ``eval``, ``enroll``, ``verify``,
``ledger``, ``audit`` and ``bench``. Each prints what it did; errors from the library are
shown as one line with what was wrong, and exit with status 2.

>>> build_parser().parse_args(["demo", "--secagg", "bfv"]).secagg
'bfv'
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

from privspk.errors import PrivspkError

log = logging.getLogger("privspk")


# --------------------------------------------------------------------------- helpers
def _config(args: argparse.Namespace):
    from privspk.config import RunConfig

    cfg = RunConfig.load(args.config) if getattr(args, "config", None) else RunConfig.preset("demo")
    changes = {}
    if getattr(args, "data", None):
        changes["data_dir"] = args.data
    if getattr(args, "out", None):
        changes["out_dir"] = args.out
    if getattr(args, "name", None):
        changes["name"] = args.name
    if changes:
        cfg = cfg.replace(**changes)
    if getattr(args, "secagg", None):
        cfg = cfg.replace(secagg=dataclasses.replace(cfg.secagg, scheme=args.secagg))
    priv = {}
    if getattr(args, "epsilon", None) is not None:
        priv["epsilon"] = args.epsilon
    if getattr(args, "unit", None):
        priv["unit"] = args.unit
    if getattr(args, "no_dp", False):
        priv["enabled"] = False
    if priv:
        cfg = cfg.replace(privacy=dataclasses.replace(cfg.privacy, **priv))
    if getattr(args, "rounds", None):
        cfg = cfg.replace(federation=dataclasses.replace(cfg.federation, rounds=args.rounds))
    if getattr(args, "recipe", None):
        cfg = cfg.replace(train=dataclasses.replace(cfg.train, recipe=args.recipe))
    return cfg


def _pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def _round_line(row: dict, total: int) -> str:
    parts = [f"round {row['round']}/{total}", f"loss {row['loss']:.3f}"]
    eps = row.get("epsilon") or {}
    if row.get("unit"):
        spent = " ".join(f"{c}={e:.2f}" for c, e in eps.items())
        parts.append(f"eps per {row['unit']} (delta {row['delta']:g}): {spent}")
    else:
        parts.append("non-private")
    if "eval" in row:
        parts.append(f"held-out EER {_pct(row['eval']['eer'])}")
    parts.append(f"[train {row['train_seconds']:.1f} s, secagg {row['secagg_seconds']:.2f} s]")
    if row.get("skipped"):
        parts.append(f"SKIPPED: {row['skipped']}")
    elif row.get("dropped"):
        parts.append(f"dropped: {', '.join(row['dropped'])}")
    return "  ".join(parts)


def _print_eval(label: str, ev: dict) -> None:
    line = (f"{label}: EER {_pct(ev['eer'])}  minDCF(0.01) {ev['min_dcf_0.01']:.3f}  "
            f"minDCF(0.05) {ev['min_dcf_0.05']:.3f}")
    if "top1" in ev:
        line += f"  top-1 {_pct(ev['top1'])}"
    print(line, flush=True)


def baseline_eval(data, *, cache_dir: Path) -> dict:
    """Nearest-centroid-free MFCC baseline EER on the held-out trials (cached)."""
    from privspk.audio.io import read_audio
    from privspk.evaluation.baseline import mfcc_baseline

    path = cache_dir / f"mfcc_baseline_{data.corpus_id}_{len(data.trials)}.json"
    if path.exists():
        return json.loads(path.read_text())
    paths = {u.utt_id: u.path for u in data.corpus.utterances}
    res = mfcc_baseline(lambda utt: read_audio(paths[utt]), data.trials)
    out = {"eer": res.eer, "min_dcf_0.01": res.min_dcf[0.01], "min_dcf_0.05": res.min_dcf[0.05]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    return out


# --------------------------------------------------------------------------- commands
def cmd_prepare(args: argparse.Namespace) -> int:
    """Build the corpus, features and the pretrained public encoder (all cached)."""
    import torch

    from privspk.api import HeldoutEvaluator, pretrained_encoder
    from privspk.prepare import prepare_data

    cfg = _config(args)
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    data = prepare_data(cfg, progress=True)
    t1 = time.perf_counter()
    s = data.split
    print(f"corpus: {len(data.corpus.speakers)} speakers, {len(data.corpus)} utterances; split "
          f"{len(s.public)} public / {' + '.join(str(len(g)) for g in s.clients)} client / {len(s.heldout)} held-out "
          f"speakers; {len(data.trials)} trials  [{t1 - t0:.1f} s]", flush=True)
    base = baseline_eval(data, cache_dir=Path(cfg.data_dir) / "baselines")
    print(f"baseline (mean+std MFCC, cosine, no training): EER {_pct(base['eer'])}", flush=True)
    encoder, info = pretrained_encoder(cfg, data, progress=True)
    t2 = time.perf_counter()
    ev = HeldoutEvaluator(data, max_frames=cfg.eval.max_frames, enroll_per_speaker=cfg.eval.enroll_per_speaker,
                          seed=cfg.seed).evaluate(encoder)
    how = "cached" if info.get("cached") else f"trained {info.get('steps')} steps in {info.get('seconds')} s"
    print(f"pretrained encoder on {len(s.public)} public speakers ({how}): EER {_pct(ev['eer'])}  "
          f"[{t2 - t1:.1f} s]", flush=True)
    print(f"prepare done in {time.perf_counter() - t0:.1f} s", flush=True)
    return 0


def _run(cfg, args, *, label: str | None = None) -> dict:
    from privspk.api import train

    total = cfg.federation.rounds
    if label:
        print(f"--- {label} ---", flush=True)
    res = train(cfg, progress=not args.quiet, overwrite=True, on_round=lambda r: print(_round_line(r, total),
                                                                                        flush=True))
    return res.report


def cmd_demo(args: argparse.Namespace) -> int:
    """Federated DP training on the built-in corpus, with the numbers that say what DP kept."""
    import torch

    from privspk.prepare import prepare_data

    cfg = _config(args)
    torch.set_num_threads(cfg.threads)
    data = prepare_data(cfg, progress=not args.quiet)
    p = cfg.privacy
    dp = (f"DP-SGD per {p.unit}, budget eps={p.epsilon:g} delta={p.delta:g} per client" if p.enabled
          else "non-private")
    print(f"privspk demo: {cfg.federation.n_clients} clients x {cfg.federation.rounds} rounds, {dp}, "
          f"secure aggregation: {cfg.secagg.scheme}, fine-tuning recipe: {cfg.train.recipe}", flush=True)
    s = data.split
    print(f"corpus: built-in, {len(data.corpus.speakers)} speakers ({len(s.public)} public / "
          f"{' + '.join(str(len(g)) for g in s.clients)} on clients / {len(s.heldout)} held-out), "
          f"{len(data.trials)} held-out trials", flush=True)
    base = baseline_eval(data, cache_dir=Path(cfg.data_dir) / "baselines")
    print(f"baseline (mean+std MFCC, no training): EER {_pct(base['eer'])}", flush=True)
    t0 = time.perf_counter()
    from privspk.api import train

    total = cfg.federation.rounds
    res = train(cfg, progress=not args.quiet, overwrite=True, data=data,
                on_round=lambda r: print(_round_line(r, total), flush=True))
    rep = res.report
    _print_eval("after public pretraining only", rep["pretrain_eval"])
    _print_eval("after federated " + ("DP " if p.enabled else "") + "training", rep["final_eval"])
    run_seconds = time.perf_counter() - t0
    out = {"baseline_mfcc": base, "pretrain": rep["pretrain_eval"], "federated": rep["final_eval"],
           "run_seconds": round(run_seconds, 1)}
    if p.enabled:
        from privspk.privacy import Ledger

        with Ledger(res.run_dir / "ledger.sqlite", readonly=True) as led:
            print(led.table(), flush=True)
            eps = {c: led.epsilon(c) for c in led.clients()}
        print(f"epsilon spent per client (from the ledger, per {p.unit}, delta {p.delta:g}): "
              + ", ".join(f"{c} {e:.2f}" for c, e in eps.items()), flush=True)
        out["epsilon"] = eps
    if args.reference and p.enabled:
        ref_cfg = cfg.replace(name=cfg.name + "_nonprivate",
                              privacy=dataclasses.replace(cfg.privacy, enabled=False))
        print("--- reference: the same federated run without DP ---", flush=True)
        ref = train(ref_cfg, progress=not args.quiet, overwrite=True, data=data,
                    on_round=lambda r: print(_round_line(r, total), flush=True)).report
        _print_eval("non-private federated", ref["final_eval"])
        e_pre, e_dp, e_np = rep["pretrain_eval"]["eer"], rep["final_eval"]["eer"], ref["final_eval"]["eer"]
        gain = (e_pre - e_dp) / (e_pre - e_np) if e_pre != e_np else float("nan")
        print(f"gain kept by DP = (EER_pretrain - EER_dp) / (EER_pretrain - EER_nonprivate) = "
              f"({_pct(e_pre)} - {_pct(e_dp)}) / ({_pct(e_pre)} - {_pct(e_np)}) = {gain:.2f}", flush=True)
        out["nonprivate"] = ref["final_eval"]
        out["gain_kept"] = gain
    (res.run_dir / "demo_summary.json").write_text(json.dumps(out, indent=2))
    print(f"run report: {res.run_dir / 'report.json'}  checkpoint: {res.run_dir / 'encoder.pt'}"
          f"{'  ledger: ' + str(res.run_dir / 'ledger.sqlite') if p.enabled else ''}", flush=True)
    print(f"demo training run took {run_seconds:.1f} s", flush=True)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Run a configured job (TOML)."""
    from privspk.api import train

    cfg = _config(args)
    total = cfg.federation.rounds
    res = train(cfg, progress=not args.quiet, resume=args.resume, overwrite=args.overwrite,
                on_round=lambda r: print(_round_line(r, total), flush=True))
    _print_eval("after public pretraining only", res.report["pretrain_eval"])
    _print_eval("final", res.report["final_eval"])
    print(f"run report: {res.run_dir / 'report.json'}  checkpoint: {res.run_dir / 'encoder.pt'}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a checkpoint on the run's held-out trials, or on a Kaldi trials file."""
    import torch

    from privspk.config import RunConfig
    from privspk.models.checkpoint import load_encoder

    run = Path(args.run)
    cfg = RunConfig.load(run / "config.toml")
    if args.data:
        cfg = cfg.replace(data_dir=args.data)
    torch.set_num_threads(cfg.threads)
    encoder, _ = load_encoder(run / "encoder.pt")
    if args.trials:
        from privspk.audio.io import read_audio
        from privspk.evaluation.embed import embed_features
        from privspk.evaluation.scoring import cosine_scores, evaluate_scores
        from privspk.evaluation.trials import read_trials, write_scores
        from privspk.features.extract import extract

        import numpy as np

        trials = read_trials(args.trials)
        root = Path(args.wav_dir) if args.wav_dir else Path(".")
        ids = sorted({t.enroll for t in trials} | {t.test for t in trials})
        fcfg = cfg.features.feature_config()
        feats = ((u, extract(read_audio(root / u), fcfg)) for u in ids)
        emb = embed_features(encoder, feats, max_frames=cfg.eval.max_frames)
        scores = cosine_scores(emb, trials)
        if args.scores:
            write_scores(args.scores, trials, scores)
        flags = np.array([t.target for t in trials], dtype=bool)
        res = evaluate_scores(scores, flags)
        print(res)
        return 0
    from privspk.api import HeldoutEvaluator
    from privspk.prepare import prepare_data

    data = prepare_data(cfg, progress=not args.quiet)
    ev = HeldoutEvaluator(data, max_frames=cfg.eval.max_frames, enroll_per_speaker=cfg.eval.enroll_per_speaker,
                          seed=cfg.seed).evaluate(encoder, top1=True)
    _print_eval(f"{run.name} on {len(data.trials)} held-out trials", ev)
    return 0


def _verifier(args: argparse.Namespace, *, create: bool):
    from privspk.config import RunConfig
    from privspk.evaluation.trials import read_scores, read_trials
    from privspk.evaluation.verifier import Verifier
    from privspk.models.checkpoint import load_encoder

    run = Path(args.run)
    encoder, _ = load_encoder(run / "encoder.pt")
    store = Path(args.store)
    if (store / "verifier.json").exists():
        return Verifier.load(store, encoder), store
    if not create:
        raise PrivspkError(f"{store}: no enrolled speakers here; run `privspk enroll` first")
    cfg = RunConfig.load(run / "config.toml")
    v = Verifier(encoder, cfg.features.feature_config(), threshold=0.5)
    trials, scores = read_trials(run / "trials"), read_scores(run / "scores")
    flags = {(t.enroll, t.test): t.target for t in trials}
    tgt = [s.score for s in scores if flags[(s.enroll, s.test)]]
    non = [s.score for s in scores if not flags[(s.enroll, s.test)]]
    rule = "far" if args.far is not None else "eer"
    v.calibrate(tgt, non, rule=rule, far=args.far if args.far is not None else 0.01)
    return v, store


def cmd_enroll(args: argparse.Namespace) -> int:
    """Enroll a speaker from recordings (threshold calibrated on the run's held-out scores)."""
    v, store = _verifier(args, create=True)
    v.enroll(args.speaker, args.wavs, replace=args.replace)
    v.save(store, encoder_checkpoint=str(Path(args.run) / "encoder.pt"))
    print(f"enrolled {args.speaker!r} from {len(args.wavs)} recording(s); {len(v.speakers)} speaker(s) in {store}; "
          f"threshold {v.threshold:.4f}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Verify a claimed identity; exit status 0 if accepted, 1 if rejected."""
    v, _ = _verifier(args, create=False)
    score, accepted = v.verify(args.speaker, args.wav)
    print(f"{args.wav}: claimed {args.speaker!r} score {score:.4f} threshold {v.threshold:.4f} -> "
          f"{'ACCEPT' if accepted else 'REJECT'}")
    return 0 if accepted else 1


def cmd_ledger(args: argparse.Namespace) -> int:
    """Print, export, plot and re-check a run's privacy ledger."""
    from privspk.privacy import Ledger

    path = Path(args.run)
    if path.is_dir():
        path = path / "ledger.sqlite"
    with Ledger(path, readonly=True) as led:
        print(led.table(args.client))
        if args.json:
            print(f"wrote {led.export_json(args.json)}")
        if args.csv:
            print(f"wrote {led.export_csv(args.csv)}")
        if args.plot:
            print(f"wrote {led.plot(args.plot)}")
        if args.check:
            checks = led.recompute()
            bad = [c for c in checks if not c.ok]
            for c in checks:
                print(f"{c.client} round {c.round}: recorded {c.recorded:.6f} recomputed {c.recomputed:.6f} "
                      f"{'ok' if c.ok else 'MISMATCH'}")
            if bad:
                print(f"{len(bad)} of {len(checks)} rows do not recompute to their recorded epsilon")
                return 1
            print(f"all {len(checks)} rows recompute to their recorded epsilon")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    """Attack a trained run (membership inference, canary epsilon bound, update leakage); exit 1 on a FAIL."""
    from privspk.audit import report
    from privspk.audit.runner import audit_run

    out = Path(args.out) if args.out else Path(args.run) / "audit"
    rep = audit_run(args.run, data_dir=args.data, out_dir=out, quick=args.quick, progress=not args.quiet)
    paths = report.write(rep, out)
    print("\n".join(report.lines(rep)), flush=True)
    print(f"wrote {', '.join(str(p) for p in paths.values())}", flush=True)
    return 1 if "FAIL" in report.verdicts(rep).values() else 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Run a benchmark script of benchmarks/ (secagg cost, DP recipes)."""
    import runpy

    root = Path(__file__).resolve().parents[2] / "benchmarks"
    script = root / {"secagg": "secagg_cost.py", "dp": "dp_recipes.py"}[args.which]
    if not script.exists():
        raise PrivspkError(f"{script} not found: the benchmarks ship with the source checkout, not the wheel")
    sys.argv = [str(script), *args.rest]
    runpy.run_path(str(script), run_name="__main__")
    return 0


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``privspk``."""
    from privspk.config import TRAIN_RECIPES

    p = argparse.ArgumentParser(prog="privspk", description="Privacy-preserving federated speaker recognition.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, *, run_opts: bool = True) -> None:
        sp.add_argument("--config", help="TOML run config (default: the demo preset)")
        sp.add_argument("--data", help="data folder (corpus, features, pretrained encoders)")
        sp.add_argument("--quiet", action="store_true", help="no progress bars")
        if run_opts:
            sp.add_argument("--out", help="folder for run directories")
            sp.add_argument("--name", help="run name (its directory under --out)")
            sp.add_argument("--secagg", choices=["plain", "mask", "ckks", "bfv"], help="aggregation scheme")
            sp.add_argument("--epsilon", type=float, help="per-client epsilon budget")
            sp.add_argument("--unit", choices=["utterance", "speaker"], help="privacy unit")
            sp.add_argument("--no-dp", action="store_true", help="train without differential privacy")
            sp.add_argument("--rounds", type=int, help="federated rounds")
            sp.add_argument("--recipe", choices=TRAIN_RECIPES, help="what trains")

    sp = sub.add_parser("prepare", help="build the corpus, features and pretrained encoder")
    common(sp, run_opts=False)
    sp.set_defaults(func=cmd_prepare)

    sp = sub.add_parser("demo", help="federated DP training on the built-in corpus")
    common(sp)
    sp.add_argument("--reference", action="store_true", help="also run without DP and report the gain DP kept")
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("train", help="run a configured job")
    common(sp)
    sp.add_argument("--resume", action="store_true", help="continue an interrupted run")
    sp.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("eval", help="evaluate a run's encoder")
    sp.add_argument("--run", required=True, help="run directory")
    sp.add_argument("--data", help="data folder")
    sp.add_argument("--trials", help="Kaldi trials file (ids are wav paths relative to --wav-dir)")
    sp.add_argument("--wav-dir", help="folder the trial ids are relative to")
    sp.add_argument("--scores", help="write Kaldi scores here")
    sp.add_argument("--quiet", action="store_true")
    sp.set_defaults(func=cmd_eval)

    for name, func, hlp in (("enroll", cmd_enroll, "enroll a speaker"), ("verify", cmd_verify, "verify a claim")):
        sp = sub.add_parser(name, help=hlp)
        sp.add_argument("--run", required=True, help="run directory with encoder.pt (and its held-out scores)")
        sp.add_argument("--store", required=True, help="folder holding the enrolled templates")
        sp.add_argument("speaker")
        if name == "enroll":
            sp.add_argument("wavs", nargs="+")
            sp.add_argument("--far", type=float, help="threshold for this false-accept rate (default: EER point)")
            sp.add_argument("--replace", action="store_true", help="replace an enrolled speaker")
        else:
            sp.add_argument("wav")
        sp.set_defaults(func=func)

    sp = sub.add_parser("ledger", help="show a run's privacy ledger")
    sp.add_argument("run", help="run directory or ledger file")
    sp.add_argument("--client")
    sp.add_argument("--json")
    sp.add_argument("--csv")
    sp.add_argument("--plot", help="PNG of epsilon over rounds")
    sp.add_argument("--check", action="store_true", help="recompute every epsilon from the recorded inputs")
    sp.set_defaults(func=cmd_ledger)

    sp = sub.add_parser("audit", help="attack a trained run and put empirical numbers beside its privacy claims")
    sp.add_argument("run", help="run directory (config.toml, encoder.pt, ledger.sqlite)")
    sp.add_argument("--quick", action="store_true", help="fewer canaries, rounds and utterances (minutes)")
    sp.add_argument("--data", help="data folder (default: the run config's)")
    sp.add_argument("--out", help="output folder (default: RUN/audit)")
    sp.add_argument("--quiet", action="store_true", help="no progress bars")
    sp.set_defaults(func=cmd_audit)

    sp = sub.add_parser("bench", help="run a benchmark (secagg | dp)")
    sp.add_argument("which", choices=["secagg", "dp"])
    sp.add_argument("rest", nargs=argparse.REMAINDER)
    sp.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``privspk`` console script."""
    import warnings

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", module="opacus")
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    try:
        return args.func(args)
    except PrivspkError as exc:
        print(f"privspk {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
