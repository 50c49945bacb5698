"""The ``privspk`` command line.

Subcommands: ``prepare``, ``demo``, ``train``, ``eval``, ``enroll``, ``verify``,
``ledger``, ``audit`` and ``bench``; ``serve``, ``join`` and ``run`` deploy on Flower. Each
prints what it did; errors from the library are shown as one line with what was
wrong, and exit with status 2.

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
    """The run config: the TOML file (or the demo preset) with the command-line options applied.

    An option given on the command line is treated exactly like the same key in the TOML file:
    every override goes through the same checks (``--rounds 0`` is refused like ``rounds = 0``).
    """
    from privspk.config import RunConfig

    cfg = (RunConfig.load(args.config) if getattr(args, "config", None)
           else RunConfig.preset(getattr(args, "preset", None) or "demo"))
    data = cfg.to_dict()
    overrides = [
        ("data", None, "data_dir"), ("out", None, "out_dir"), ("name", None, "name"),
        ("secagg", "secagg", "scheme"), ("epsilon", "privacy", "epsilon"), ("unit", "privacy", "unit"),
        ("rounds", "federation", "rounds"), ("recipe", "train", "recipe"),
    ]
    changed = False
    for opt, section, key in overrides:
        value = getattr(args, opt, None)
        if value is None:
            continue
        (data if section is None else data[section])[key] = value
        changed = True
    if getattr(args, "no_dp", False):
        data["privacy"]["enabled"] = False
        changed = True
    return RunConfig.from_dict(data) if changed else cfg


def _check_writable(path: Path) -> None:
    """Raise the OSError a write of ``path`` would raise, now, before any work: a temporary file is made in
    its nearest existing folder and removed (no folder is created)."""
    import errno
    import tempfile

    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory", str(folder))
    with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{path.name}.probe-"):
        pass


def _pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def _eps_note(randomness: str | None) -> str:
    """What to print right after an epsilon: the simulation warning, or nothing."""
    from privspk.training.randomness import randomness_note

    note = randomness_note(randomness)
    return f" [{note}]" if note else ""


def _round_line(row: dict, total: int) -> str:
    parts = [f"round {row['round']}/{total}", f"loss {row['loss']:.3f}"]
    eps = row.get("epsilon") or {}
    if row.get("unit"):
        spent = " ".join(f"{c}={e:.2f}" for c, e in eps.items())
        parts.append(f"eps per {row['unit']} (delta {row['delta']:g}): {spent}{_eps_note(row.get('randomness'))}")
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


def _domain_label(cond: str) -> str:
    domain, _, cross = cond.partition("/")
    return (f"{domain}, clean enrolment -> {domain} test" if cross else f"{domain}, enrolment and test in {domain}")


def _print_domains(rep: dict, *, dp: bool) -> None:
    """The held-out EER per client-domain condition, before and after federated training."""
    pre, fin = rep["pretrain_eval"].get("domains") or {}, rep["final_eval"].get("domains") or {}
    if not fin:
        return
    doms = rep["config"]["corpus"]["domains"]
    print(f"client domains: {', '.join(doms)} (public speakers clean); held-out speakers through each channel:",
          flush=True)
    for cond, r in fin.items():
        print(f"  {_domain_label(cond)}: EER {_pct(pre[cond]['eer'])} pretrain only -> {_pct(r['eer'])} "
              f"federated{' DP' if dp else ''}", flush=True)


def _print_domain_gain(rep: dict, ref: dict) -> dict[str, dict]:
    """Non-private EER and the gain DP kept, per client-domain condition."""
    out = {}
    for cond, r in rep["final_eval"]["domains"].items():
        e_pre, e_dp = rep["pretrain_eval"]["domains"][cond]["eer"], r["eer"]
        e_np = ref["final_eval"]["domains"][cond]["eer"]
        gain = (e_pre - e_dp) / (e_pre - e_np) if e_pre != e_np else float("nan")
        rel = (e_pre - e_np) / e_pre if e_pre else float("nan")
        print(f"  {_domain_label(cond)}: EER pretrain {_pct(e_pre)}, non-private {_pct(e_np)} "
              f"({100 * rel:+.0f} % relative gain), DP {_pct(e_dp)}: gain kept {gain:.2f}", flush=True)
        out[cond] = {"eer_pretrain": e_pre, "eer_nonprivate": e_np, "eer_dp": e_dp, "gain_kept": gain,
                     "nonprivate_relative_gain": rel}
    return out


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
    if cfg.corpus.domains:
        print(f"client domains {', '.join(cfg.corpus.domains)}: channel features of the client and held-out "
              f"speakers [{data.seconds['domains']:.1f} s of the above]", flush=True)
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


def cmd_demo(args: argparse.Namespace) -> int:
    """Federated DP training on the built-in corpus, with the numbers that say what DP kept."""
    import torch

    from privspk.prepare import prepare_data

    cfg = _config(args)
    if cfg.federation.mode == "cross-device":
        return cmd_crossdevice(cfg, args)
    torch.set_num_threads(cfg.threads)
    data = prepare_data(cfg, progress=not args.quiet)
    p = cfg.privacy
    dp = (f"DP-SGD per {p.unit}, budget eps={p.epsilon:g} delta={p.delta:g} per client{_eps_note(p.randomness)}"
          if p.enabled else "non-private")
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
    _print_domains(rep, dp=p.enabled)
    run_seconds = time.perf_counter() - t0
    out = {"baseline_mfcc": base, "pretrain": rep["pretrain_eval"], "federated": rep["final_eval"],
           "run_seconds": round(run_seconds, 1)}
    if p.enabled:
        from privspk.privacy import Ledger

        with Ledger(res.run_dir / "ledger.sqlite", readonly=True) as led:
            print(led.table(), flush=True)
            eps = {c: led.epsilon(c) for c in led.clients()}
        print(f"epsilon spent per client (from the ledger, per {p.unit}, delta {p.delta:g}): "
              + ", ".join(f"{c} {e:.2f}" for c, e in eps.items()) + _eps_note(p.randomness), flush=True)
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
        if rep["final_eval"].get("domains"):
            out["domain_gain_kept"] = _print_domain_gain(rep, ref)
    (res.run_dir / "demo_summary.json").write_text(json.dumps(out, indent=2))
    print(f"run report: {res.run_dir / 'report.json'}  checkpoint: {res.run_dir / 'encoder.pt'}"
          f"{'  ledger: ' + str(res.run_dir / 'ledger.sqlite') if p.enabled else ''}", flush=True)
    print(f"demo training run took {run_seconds:.1f} s", flush=True)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Run a configured job (TOML)."""
    from privspk.api import train

    cfg = _config(args)
    if cfg.federation.mode == "cross-device":
        return cmd_crossdevice(cfg, args)
    total = cfg.federation.rounds
    res = train(cfg, progress=not args.quiet, resume=args.resume, overwrite=args.overwrite,
                on_round=lambda r: print(_round_line(r, total), flush=True))
    _print_eval("after public pretraining only", res.report["pretrain_eval"])
    _print_eval("final", res.report["final_eval"])
    print(f"run report: {res.run_dir / 'report.json'}  checkpoint: {res.run_dir / 'encoder.pt'}")
    return 0


def cmd_crossdevice(cfg, args: argparse.Namespace) -> int:
    """A cross-device run (``[federation] mode = "cross-device"``, e.g. ``privspk demo --preset phones``)."""
    from privspk.crossdevice import run_crossdevice

    c, p = cfg.crossdevice, cfg.privacy
    dp = (f"{c.mechanism}, user-level eps={c.device_epsilon:g} delta={p.delta:g} per device"
          f"{_eps_note(p.randomness)}" if p.enabled else "non-private")
    print(f"privspk cross-device: {c.population} phones (one speaker each, {c.utts_per_device} utterances), "
          f"{c.devices_per_round} per round ({c.sampling}), {cfg.federation.rounds} rounds, {dp}, "
          f"{c.dropout:.0%} dropouts, objective: {c.objective}"
          f"{'' if c.domain == 'none' else f', device audio through the {c.domain} channel'}", flush=True)

    def line(r: dict) -> None:
        ev = f", EER {_pct(r['eval']['eer'])}" if "eval" in r else ""
        eps = f", central eps {r['central_epsilon']:.2f}" if "central_epsilon" in r else ""
        print(f"round {r['round']}/{cfg.federation.rounds}: {r['sampled']} sampled, {r['sat_out']} sat out, "
              f"{r.get('included', 0)} in the sum, {r.get('seconds', {}).get('round', 0.0):.1f} s{eps}{ev}", flush=True)

    res = run_crossdevice(cfg, progress=not args.quiet, overwrite=True, on_round=line)
    _print_eval("after public pretraining only", res.report["pretrain_eval"])
    _print_eval("after cross-device training", res.report["final_eval"])
    pre, fin = res.report["pretrain_eval"].get("domains") or {}, res.report["final_eval"].get("domains") or {}
    if fin:
        print(f"device domain: {c.domain} (public speakers clean); held-out speakers through it:", flush=True)
        for cond, r in fin.items():
            print(f"  {_domain_label(cond)}: EER {_pct(pre[cond]['eer'])} pretrain only -> {_pct(r['eer'])} "
                  f"cross-device{' DP' if p.enabled else ''}", flush=True)
    print(f"run report: {res.run_dir / 'report.json'}  checkpoint: {res.run_dir / 'encoder.pt'}", flush=True)
    return 0


def _kaldi_trials(data_dir: Path, args: argparse.Namespace) -> tuple[list, dict[str, Path]]:
    """Trials of ``privspk eval --kaldi-dir`` and each trial utterance's file from the dir's ``wav.scp``."""
    from privspk.corpus.readers import read_wav_scp
    from privspk.errors import ConfigError, CorpusError
    from privspk.evaluation.trials import read_trials

    if args.wav_dir:
        raise ConfigError("--wav-dir and --kaldi-dir exclude each other: with --kaldi-dir the trial ids are "
                          "utterance ids looked up in its wav.scp")
    if not args.trials and not (data_dir / "trials").is_file():
        raise CorpusError(f"{data_dir}: no 'trials' file in the Kaldi data dir; add one "
                          "('<enroll-utt> <test-utt> target|nontarget' per line) or pass --trials")
    wavs = read_wav_scp(data_dir)
    trials = read_trials(args.trials or data_dir / "trials")
    ids = sorted({t.enroll for t in trials} | {t.test for t in trials})
    missing = [u for u in ids if u not in wavs]
    if missing:
        raise CorpusError(f"{len(missing)} utterance id(s) of the trials have no wav.scp entry in {data_dir}, "
                          f"e.g. {missing[:3]}; list them in wav.scp or drop those trials")
    return trials, {u: wavs[u] for u in ids}


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
    if args.scores:
        _check_writable(Path(args.scores))  # before the embedding work, not after it
    if args.trials or args.kaldi_dir:
        from privspk.audio.io import read_audio
        from privspk.evaluation.embed import embed_features
        from privspk.evaluation.scoring import cosine_scores, evaluate_scores
        from privspk.evaluation.trials import read_trials, write_scores
        from privspk.features.extract import extract

        import numpy as np

        if args.kaldi_dir:
            trials, paths = _kaldi_trials(Path(args.kaldi_dir), args)
        else:
            trials = read_trials(args.trials)
            root = Path(args.wav_dir) if args.wav_dir else Path(".")
            paths = {u: root / u for t in trials for u in (t.enroll, t.test)}
        ids = sorted(paths)
        fcfg = cfg.features.feature_config()
        feats = ((u, extract(read_audio(paths[u]), fcfg)) for u in ids)
        from privspk.device import on_device, resolve_device

        with on_device(encoder, resolve_device(cfg.run.device)) as dev:
            emb = embed_features(encoder, feats, max_frames=cfg.eval.max_frames, device=dev)
        scores = cosine_scores(emb, trials)
        if args.scores:
            write_scores(args.scores, trials, scores)
        flags = np.array([t.target for t in trials], dtype=bool)
        res = evaluate_scores(scores, flags)
        print(res)
        return 0
    from privspk.api import HeldoutEvaluator
    from privspk.device import resolve_device
    from privspk.prepare import prepare_data

    data = prepare_data(cfg, progress=not args.quiet)
    ev = HeldoutEvaluator(data, max_frames=cfg.eval.max_frames, enroll_per_speaker=cfg.eval.enroll_per_speaker,
                          seed=cfg.seed, device=resolve_device(cfg.run.device)).evaluate(encoder, top1=True)
    _print_eval(f"{run.name} on {len(data.trials)} held-out trials", ev)
    return 0


#: At most this many public speakers, and recordings of each, calibrate a new enrolment store.
_CALIBRATION_SPEAKERS, _CALIBRATION_UTTS = 40, 6


def _verifier(args: argparse.Namespace, *, create: bool):
    from privspk.config import RunConfig
    from privspk.evaluation.verifier import Verifier
    from privspk.models.checkpoint import load_encoder
    from privspk.prepare import load_run_corpus

    run = Path(args.run)
    encoder, _ = load_encoder(run / "encoder.pt")
    store = Path(args.store)
    if (store / "verifier.json").exists():
        return Verifier.load(store, encoder), store
    if not create:
        raise PrivspkError(f"{store}: no enrolled speakers here; run `privspk enroll` first")
    cfg = RunConfig.load(run / "config.toml")
    if getattr(args, "data", None):
        cfg = cfg.replace(data_dir=args.data)
    v = Verifier(encoder, cfg.features.feature_config(), threshold=0.0)
    # cohort and threshold from public speakers' recordings, never from the run's test trials
    corpus, split = load_run_corpus(cfg, progress=False)
    by_speaker: dict[str, list[Path]] = {}
    for utt in sorted(corpus.utterances, key=lambda u: u.utt_id):
        if utt.speaker in split.public:
            by_speaker.setdefault(utt.speaker, []).append(utt.path)
    public = {s: by_speaker[s][:_CALIBRATION_UTTS] for s in sorted(by_speaker)[:_CALIBRATION_SPEAKERS]}
    if len(public) < 4:
        raise PrivspkError(f"the run's corpus has {len(public)} public speakers; calibrating a verifier needs at "
                           "least 4 (their recordings give the cohort and the impostor trials)")
    far = args.far if args.far is not None else 0.01
    info = v.calibrate_public(public, far=far, seed=cfg.seed)
    print(f"calibrated on {info['n_calibration_speakers']} public speakers ({info['n_nontarget']} impostor trials; "
          f"cohort of {info['n_cohort_embeddings']} recordings of {info['n_cohort_speakers']} others): threshold "
          f"{v.threshold:.4f} for a false-accept rate <= {far:g} (reached {info['far_reached']:.4f}, "
          f"false rejects {info['frr_reached']:.4f})")
    return v, store


def cmd_enroll(args: argparse.Namespace) -> int:
    """Enroll a speaker from recordings (a new store is calibrated on the run's public speakers)."""
    v, store = _verifier(args, create=True)
    _check_writable(Path(store) / "verifier.json")  # before the recordings are embedded
    v.enroll(args.speaker, args.wavs, replace=args.replace)
    v.save(store, encoder_checkpoint=str(Path(args.run) / "encoder.pt"))
    print(f"enrolled {args.speaker!r} from {len(args.wavs)} recording(s); {len(v.speakers)} speaker(s) in {store}; "
          f"threshold {v.threshold:.4f}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Verify a claimed identity; exit status 0 if accepted, 1 if rejected."""
    v, _ = _verifier(args, create=False)
    d = v.verify(args.speaker, args.wav)
    score = "n/a" if d.score != d.score else f"{d.score:.4f}"
    print(f"{args.wav}: claimed {args.speaker!r} score {score} threshold {v.threshold:.4f} -> "
          f"{'ACCEPT' if d.accepted else 'REJECT'} ({d.reason}; {d.speech_seconds:.2f} s of speech)")
    return 0 if d.accepted else 1


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
            checks = [c for c in led.recompute() if args.client is None or c.client == args.client]
            if args.client is not None and args.client not in led.clients():
                print(f"no row of client {args.client!r} in this ledger (clients: {', '.join(led.clients()) or 'none'})")
                return 1
            bad = [c for c in checks if not c.ok]
            for c in checks:
                note = _eps_note(led.row(c.client, c.round).randomness)
                print(f"{c.client} round {c.round}: recorded {c.recorded:.6f} recomputed {c.recomputed:.6f} "
                      f"{'ok' if c.ok else 'MISMATCH'}{note}")
            if bad:
                print(f"{len(bad)} of {len(checks)} rows do not recompute to their recorded epsilon")
            else:
                print(f"all {len(checks)} rows recompute to their recorded epsilon")
            return 1 if _check_chain(led, path, args.server_record, client=args.client) or bad else 0
    return 0


def _record_of(record, client: str):
    """``record`` (an ``AggregatedHeads``) cut down to one client's heads and key (read-only use)."""
    import copy

    own = copy.copy(record)
    own.rounds = {r: {client: heads[client]} for r, heads in record.rounds.items() if client in heads}
    own.keys = {c: k for c, k in record.keys.items() if c == client}
    return own


def _check_chain(led, ledger_path: Path, record_path: str | None, *, client: str | None = None) -> bool:
    """Print the hash-chain verdict of ``privspk ledger --check``; True when something is wrong.

    With ``client`` only that client is checked: its chain, and the server record's heads of
    that client (a node's ledger holds its own client only, the server's record all of them).
    """
    from privspk.api import AGGREGATED_HEADS
    from privspk.privacy.ledger import AggregatedHeads

    default = ledger_path.parent / AGGREGATED_HEADS
    record = None
    if record_path is not None or default.exists():
        record = AggregatedHeads.load(record_path if record_path is not None else default)
    others: list[str] = []
    if record is not None and client is not None:
        record = _record_of(record, client)
    elif record is not None:
        others = sorted(set(record.by_client()) - set(led.clients()))
    findings = led.verify_chain(record)
    if client is not None:
        findings = [f for f in findings if f.client in (None, client)]
    for f in findings:
        print(f"TAMPERED: {f}")
    if findings:
        print(f"{len(findings)} problem(s) in the ledger's hash chain, round sequence or signatures")
        if others:
            print(f"(the server record also covers client(s) {', '.join(others)} that have no row in this ledger; "
                  "on a node, whose ledger holds its own client only, check that client with --client ID)")
        return True
    clients = [c for c in led.clients() if client is None or c == client]
    signed = sum(1 for c in clients if (h := led.signed_head(c, led.last_round(c))) and h.signature)
    who = f"client {client}" if client is not None else f"{len(clients)} client(s)"
    print(f"hash chain intact: {who}, rounds in sequence, {signed} with signed chain heads")
    if record is None:
        print(f"no server record of aggregated heads ({default.name}): a truncated tail cannot be detected; "
              "pass --server-record")
    elif client is not None:
        print(f"matches the server's record of {len(record.rounds)} aggregated round(s) of {client}")
    else:
        print(f"matches the server's record of {len(record.rounds)} aggregated round(s)")
    return False


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
    script = root / {"secagg": "secagg_cost.py", "dp": "dp_recipes.py", "domains": "domains.py"}[args.which]
    if not script.exists():
        raise PrivspkError(f"{script} not found: the benchmarks ship with the source checkout, not the wheel")
    sys.argv = [str(script), *args.rest]
    runpy.run_path(str(script), run_name="__main__")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Start a Flower SuperLink for privspk runs (``flower-superlink``)."""
    from privspk.runtimes.flower.launch import serve

    return serve(host=args.host, port=args.port, insecure=args.insecure, ca=args.ca, cert=args.cert, key=args.key,
                 auth=args.auth, poll=args.poll, database=args.database)


def cmd_join(args: argparse.Namespace) -> int:
    """Join a federation as a node (privspk agent + ``flower-supernode``)."""
    from privspk.runtimes.flower.launch import join

    return join(role=args.role, superlink=args.superlink, run_dir=args.run_dir, data=args.data,
                partition=args.partition, insecure=args.insecure, ca=args.ca, auth_key=args.auth_key, poll=args.poll,
                client_id=args.client_id, threads=args.threads)


def cmd_run(args: argparse.Namespace) -> int:
    """Submit a run to a SuperLink and print its rounds."""
    from privspk.runtimes.flower.launch import run

    cfg = _config(args)
    total = cfg.federation.rounds
    p = cfg.privacy
    print(f"privspk run on {args.superlink}: {cfg.federation.n_clients} client nodes x {total} rounds, "
          f"{'DP-SGD per ' + p.unit + f' eps={p.epsilon:g}' if p.enabled else 'non-private'}, "
          f"secure aggregation: {cfg.secagg.scheme}", flush=True)
    timeouts = {k: v for k, v in (("stage-timeout", args.stage_timeout), ("train-timeout", args.train_timeout),
                                  ("wait-timeout", args.wait_timeout)) if v is not None}
    done = run(config_text=cfg.to_toml(), superlink=args.superlink, insecure=args.insecure, ca=args.ca,
               data_dir=cfg.data_dir, out_dir=cfg.out_dir, name=cfg.name, resume=args.resume,
               follow=not args.detach, timeouts=timeouts, on_line=lambda line: print(line, flush=True))
    if done.get("event") == "done":
        ev = done.get("final_eval") or {}
        if ev:
            _print_eval("after federated " + ("DP " if p.enabled else "") + "training (deployed)", ev)
        eps = done.get("epsilon_spent") or {}
        if eps:
            print("epsilon spent per client (from each node's ledger): "
                  + ", ".join(f"{c} {e:.2f}" for c, e in eps.items() if e is not None), flush=True)
        print(f"run report: {done.get('report')}", flush=True)
    else:
        print(json.dumps(done), flush=True)
    return 0


def cmd_deploy_demo(args: argparse.Namespace) -> int:
    """The demo federation through a SuperLink and client SuperNodes on 127.0.0.1 (separate processes)."""
    import warnings

    from privspk.runtimes.flower.demo import deploy_demo

    warnings.filterwarnings("ignore", message=".*--insecure")
    cfg = _config(args)
    if not args.name:
        cfg = cfg.replace(name=cfg.name + "_deployed")
    p = cfg.privacy
    dp = (f"DP-SGD per {p.unit}, budget eps={p.epsilon:g} delta={p.delta:g} per client" if p.enabled
          else "non-private")
    print(f"privspk deploy-demo: {cfg.federation.n_clients} client nodes x {cfg.federation.rounds} rounds, {dp}, "
          f"secure aggregation: {cfg.secagg.scheme}, fine-tuning recipe: {cfg.train.recipe}", flush=True)
    t0 = time.perf_counter()
    done = deploy_demo(cfg, root=Path(cfg.out_dir) / (cfg.name + "_processes"), on_line=lambda s: print(s, flush=True))
    if done.get("pretrain_eval"):
        _print_eval("after public pretraining only", done["pretrain_eval"])
    if done.get("final_eval"):
        _print_eval("after federated " + ("DP " if p.enabled else "") + "training (deployed)", done["final_eval"])
    if done.get("pretrain_eval") and done.get("final_eval"):
        _print_domains({"pretrain_eval": done["pretrain_eval"], "final_eval": done["final_eval"],
                        "config": cfg.to_dict()}, dp=p.enabled)
    eps = done.get("epsilon_spent") or {}
    if eps:
        print(f"epsilon spent per client (from each node's own ledger, per {p.unit}, delta {p.delta:g}): "
              + ", ".join(f"{c} {e:.2f}" for c, e in eps.items() if e is not None), flush=True)
    print(f"run report: {done.get('report')}", flush=True)
    print(f"deployed demo took {time.perf_counter() - t0:.1f} s", flush=True)
    return 0


def cmd_certs(args: argparse.Namespace) -> int:
    """Write a CA and a SuperLink TLS certificate for the given hosts."""
    from privspk.runtimes.flower.certs import write_pki

    paths = write_pki(args.out, hosts=args.host)
    print(f"wrote {paths['ca']} (give it to every node), {paths['cert']} and {paths['key']} (keep on the SuperLink)")
    return 0


def cmd_node_key(args: argparse.Namespace) -> int:
    """Write a SuperNode authentication key pair (NIST P-384, OpenSSH format)."""
    from privspk.runtimes.flower.certs import write_node_key

    priv, pub = write_node_key(args.path)
    print(f"wrote {priv} (private: stays on this node) and {pub} (send it to the SuperLink's operator)")
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    """Register a SuperNode's public key at a SuperLink started with --auth."""
    from privspk.runtimes.flower.launch import register

    home = Path(args.flwr_home) if args.flwr_home else Path.home() / ".privspk" / "flwr"
    node_id = register(public_key=args.public_key, superlink=args.superlink, ca=args.ca, flwr_home=home,
                       name=args.name)
    print(f"registered {args.public_key}: Flower node id {node_id}")
    return 0


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``privspk``."""
    from privspk.config import SECAGG_SCHEMES, TRAIN_RECIPES, TRAIN_UNITS

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
            sp.add_argument("--secagg", choices=SECAGG_SCHEMES,
                            help="aggregation scheme; use mask for deployments (ckks/bfv start only with "
                                 "[secagg.options] he_trust = \"no-client-colludes-with-server\": one client "
                                 "colluding with the server can get the round's HE key)")
            sp.add_argument("--epsilon", type=float, help="per-client epsilon budget")
            sp.add_argument("--unit", choices=TRAIN_UNITS, help="privacy unit")
            sp.add_argument("--no-dp", action="store_true", help="train without differential privacy")
            sp.add_argument("--rounds", type=int, help="federated rounds")
            sp.add_argument("--recipe", choices=TRAIN_RECIPES, help="what trains")

    sp = sub.add_parser("prepare", help="build the corpus, features and pretrained encoder")
    common(sp, run_opts=False)
    sp.set_defaults(func=cmd_prepare)

    sp = sub.add_parser("demo", help="federated DP training on the built-in corpus")
    common(sp)
    sp.add_argument("--reference", action="store_true", help="also run without DP and report the gain DP kept")
    sp.add_argument("--preset", help="a shipped config instead of the demo one (phones: the cross-device mode)")
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("train", help="run a configured job")
    common(sp)
    sp.add_argument("--resume", action="store_true", help="continue an interrupted run")
    sp.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("eval", help="evaluate a run's encoder")
    sp.add_argument("--run", required=True, help="run directory")
    sp.add_argument("--data", help="data folder")
    sp.add_argument("--trials", help="Kaldi trials file (ids: wav paths relative to --wav-dir, or "
                                          "utterance ids of --kaldi-dir's wav.scp)")
    sp.add_argument("--wav-dir", help="folder the trial ids are relative to")
    sp.add_argument("--kaldi-dir", help="Kaldi data dir: wav.scp (utterance id -> wav path) and, unless "
                                        "--trials is given, trials by utterance id")
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
            sp.add_argument("--far", type=float,
                            help="false-accept rate the threshold is set for, on public speakers (default 0.01)")
            sp.add_argument("--data", help="data folder of the run (public speakers for calibration)")
            sp.add_argument("--replace", action="store_true", help="replace an enrolled speaker")
        else:
            sp.add_argument("wav")
        sp.set_defaults(func=func)

    sp = sub.add_parser("ledger", help="show a run's privacy ledger")
    sp.add_argument("run", help="run directory or ledger file")
    sp.add_argument("--client", help="show (and with --check, check) this client only: on a node, whose ledger "
                    "holds its own client, checks it against that client's part of --server-record")
    sp.add_argument("--json")
    sp.add_argument("--csv")
    sp.add_argument("--plot", help="PNG of epsilon over rounds")
    sp.add_argument("--check", action="store_true",
                    help="recompute every epsilon, verify the hash chain, round sequence and signed chain heads")
    sp.add_argument("--server-record", help="the server's record of aggregated chain heads (default: "
                    "aggregated_heads.json beside the ledger)")
    sp.set_defaults(func=cmd_ledger)

    sp = sub.add_parser("audit", help="attack a trained run and put empirical numbers beside its privacy claims")
    sp.add_argument("run", help="run directory (config.toml, encoder.pt, ledger.sqlite)")
    sp.add_argument("--quick", action="store_true", help="fewer canaries, rounds and utterances (minutes)")
    sp.add_argument("--data", help="data folder (default: the run config's)")
    sp.add_argument("--out", help="output folder (default: RUN/audit)")
    sp.add_argument("--quiet", action="store_true", help="no progress bars")
    sp.set_defaults(func=cmd_audit)

    sp = sub.add_parser("bench", help="run a benchmark (secagg | dp | domains)")
    sp.add_argument("which", choices=["secagg", "dp", "domains"])
    sp.add_argument("rest", nargs=argparse.REMAINDER)
    sp.set_defaults(func=cmd_bench)

    def transport(sp, *, server: bool = False) -> None:
        sp.add_argument("--insecure", action="store_true", help="no TLS (loopback addresses only; warns)")
        sp.add_argument("--ca", help="CA certificate (PEM) the SuperLink's certificate is signed by")
        sp.add_argument("--poll", type=float, default=0.05 if server else 0.05,
                        help="seconds between Flower polls (default 0.05)")

    sp = sub.add_parser("deploy-demo", help="the demo through a SuperLink + client SuperNodes on 127.0.0.1")
    common(sp)
    sp.set_defaults(func=cmd_deploy_demo)

    sp = sub.add_parser("serve", help="start a Flower SuperLink for privspk runs (flower-superlink)")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=9092)
    transport(sp, server=True)
    sp.add_argument("--cert", help="the SuperLink's TLS certificate (PEM)")
    sp.add_argument("--key", help="the SuperLink's TLS private key (PEM)")
    sp.add_argument("--auth", action="store_true",
                    help="only admit registered SuperNode keys (`privspk register`)")
    sp.add_argument("--database", help="SuperLink state database (default: in memory)")
    sp.set_defaults(func=cmd_serve)

    sp = sub.add_parser("certs", help="write a CA and the SuperLink's TLS certificate")
    sp.add_argument("--out", required=True, help="folder for ca.crt, server.pem, server.key")
    sp.add_argument("--host", action="append", required=True, help="the SuperLink's IP or DNS name (repeatable)")
    sp.set_defaults(func=cmd_certs)

    sp = sub.add_parser("node-key", help="write a SuperNode key pair (P-384) for node authentication")
    sp.add_argument("path", help="private key path (the public key goes to PATH.pub)")
    sp.set_defaults(func=cmd_node_key)

    sp = sub.add_parser("register", help="register a SuperNode public key at the SuperLink (flwr supernode register)")
    sp.add_argument("public_key")
    sp.add_argument("--superlink", required=True, help="HOST:PORT of the SuperLink")
    sp.add_argument("--ca", required=True, help="the SuperLink's CA certificate")
    sp.add_argument("--name", help="a name for the node")
    sp.add_argument("--flwr-home", help="folder for the Flower connection config (default ~/.privspk/flwr)")
    sp.set_defaults(func=cmd_register)

    sp = sub.add_parser("join", help="join a federation as a node (privspk agent + flower-supernode)")
    sp.add_argument("--role", choices=["client", "keyholder"], default="client")
    sp.add_argument("--superlink", required=True, help="HOST:PORT of the SuperLink")
    sp.add_argument("--data", help="this node's data folder (client nodes)")
    sp.add_argument("--partition", type=int, help="which client share of the corpus is this node's (client nodes)")
    sp.add_argument("--client-id", help="the node's client id (default client<partition>)")
    sp.add_argument("--threads", type=int, help="torch threads on this node (default: the run config's `threads`); "
                    "nodes that share one machine should split its cores between them")
    sp.add_argument("--run-dir", required=True, help="this node's own folder: ledger, identity key, private head")
    sp.add_argument("--auth-key", help="the node's EC P-384 private key registered at the SuperLink")
    transport(sp)
    sp.set_defaults(func=cmd_join)

    sp = sub.add_parser("run", help="submit a run to a SuperLink and print its rounds")
    common(sp)
    sp.add_argument("--superlink", required=True, help="HOST:PORT of the SuperLink")
    transport(sp)
    sp.add_argument("--resume", action="store_true", help="continue the run from the server's saved state")
    sp.add_argument("--detach", action="store_true", help="submit and return")
    sp.add_argument("--stage-timeout", type=float, help="seconds a node has to answer a scheme stage")
    sp.add_argument("--train-timeout", type=float, help="seconds a node has to train")
    sp.add_argument("--wait-timeout", type=float, help="seconds to wait for the nodes to connect")
    sp.set_defaults(func=cmd_run)
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
    except OSError as exc:
        print(f"privspk {args.command}: error: {os_error_line(exc)}", file=sys.stderr)
        return 2


def os_error_line(exc: OSError) -> str:
    """One line for a file-system error: the path, what the system said, and what to do.

    >>> import errno
    >>> os_error_line(OSError(errno.EROFS, "Read-only file system", "runs/demo/config.toml"))
    'runs/demo/config.toml: Read-only file system - the folder cannot be written: make it writable or choose another folder (--out / --store / --scores)'
    """
    import errno

    path = exc.filename if exc.filename is not None else exc.filename2
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        todo = "the disk is full: free some space or choose a folder on another disk, then run the command again"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        todo = "the folder cannot be written: make it writable or choose another folder (--out / --store / --scores)"
    elif exc.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        todo = "a file stands where a folder is needed (or the reverse): choose another path"
    elif exc.errno == errno.ENOENT:
        todo = "no such file or folder: check the path"
    else:
        todo = "check the path and the disk, then run the command again"
    return f"{path}: {reason} - {todo}" if path is not None else f"{reason} - {todo}"


if __name__ == "__main__":
    sys.exit(main())
