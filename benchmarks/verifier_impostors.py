"""Does the verifier refuse what it should? Impostor voices outside the training conditions and non-speech.

Compares, on a trained run's encoder:

* **before** — the verifier as it was: whole recordings embedded (no speech detection), plain
  cosine scores, and the threshold at the EER point of the run's held-out scores;
* **after** — speech detection with minimum amounts of speech, AS-norm against a cohort of
  public speakers, and a threshold for a stated false-accept rate (``--far``) chosen on
  public-speaker impostor trials (never on the trials measured here).

Enrolled identities: the issue's "alice" (eSpeak NG ``en-us``, two sentences) and held-out
speakers of the run's corpus (two recordings each). Genuine trials: their other recordings.
Impostor voices, none of them in the training conditions: other eSpeak languages, voice
variants, and pitch / speed extremes. Non-speech: silence, dither, tones, DTMF, a chord, white /
pink / brown noise, pink noise after silence, amplitude-modulated noise, two music-like melodies,
and ten minutes of pink noise from a file. Reported: FAR on impostor voices and on non-speech at
each verifier's own threshold, FRR on genuine trials, EER, and the issue's cases one by one.

Writes ``results/verifier_impostors.json`` and ``results/verifier_impostors.md``.

    python benchmarks/verifier_impostors.py --run runs/demo            # data folder from the run's config
    python benchmarks/verifier_impostors.py --run runs/demo --data data --far 0.01
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

SENTENCES = (
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Please call me back when you reach the station tonight.",
    "My voice is my password, please verify me now.",
    "Seven green bottles were standing on the kitchen wall.",
    "We will meet again at the old library on Friday morning.",
)
# (label, accent, variant, pitch, rate_wpm) -- outside the training conditions (English accents, 125..210 wpm)
IMPOSTORS = [
    ("de", "de", None, 50, 175), ("en+Annie", "en", "Annie", 50, 175), ("en-us+m7", "en-us", "m7", 50, 175),
    ("en-us+f3", "en-us", "f3", 50, 175), ("fr", "fr", None, 50, 175), ("es", "es", None, 50, 175),
    ("it", "it", None, 50, 175), ("pl", "pl", None, 50, 175), ("ru", "ru", None, 50, 175),
    ("nl", "nl", None, 50, 175), ("sv", "sv", None, 50, 175), ("hi", "hi", None, 50, 175),
    ("cmn", "cmn", None, 50, 175), ("fi", "fi", None, 50, 175), ("en-us pitch 0", "en-us", None, 0, 175),
    ("en-us pitch 99", "en-us", None, 99, 175), ("en-us 80 wpm", "en-us", None, 50, 80),
    ("en-us 450 wpm", "en-us", None, 50, 450), ("de+klatt3", "de", "klatt3", 50, 175),
    ("fr+f5 pitch 90 300 wpm", "fr", "f5", 90, 300),
]
ISSUE_IMPOSTORS = ("de", "en+Annie", "en-us+m7", "en-us+f3")


def _speech(text: str, accent: str, variant: str | None = None, pitch: int = 50, rate: int = 175) -> torch.Tensor:
    from privspk.audio.io import resample
    from privspk.corpus.espeak import ESPEAK_SAMPLE_RATE, EspeakVoice, synthesize

    voice = EspeakVoice(accent=accent, variant=variant, pitch=pitch, rate_wpm=rate)
    raw = torch.from_numpy(synthesize(text, voice, seed=1).astype(np.float32) / 32768.0)
    return resample(raw, orig_freq=ESPEAK_SAMPLE_RATE, new_freq=16000)


class Old:
    """The verifier before issue 17: whole recordings, cosine scores, an EER threshold from test trials."""

    def __init__(self, encoder, feature_cfg, threshold: float) -> None:
        self.encoder, self.cfg, self.threshold = encoder, feature_cfg, threshold
        self.templates: dict[str, np.ndarray] = {}

    def embed(self, wav: torch.Tensor) -> np.ndarray | None:
        from privspk.errors import PrivspkError
        from privspk.evaluation.embed import embed_features
        from privspk.features.extract import extract

        try:
            return embed_features(self.encoder, [("u", extract(wav, self.cfg))])["u"].astype(np.float64)
        except PrivspkError:
            return None  # shorter than a frame: even the old verifier could not score it

    def enroll(self, name: str, embs: list[np.ndarray]) -> None:
        mean = np.mean(embs, axis=0)
        self.templates[name] = mean / max(np.linalg.norm(mean), 1e-12)

    def score(self, name: str, emb: np.ndarray | None) -> float:
        return math.nan if emb is None else float(self.templates[name] @ emb)


def _rates(genuine: list[float], impostor: list[float], threshold: float) -> dict:
    from privspk.evaluation.metrics import eer

    g = np.array(genuine, dtype=np.float64)
    i = np.array(impostor, dtype=np.float64)
    acc_g = np.nan_to_num(g, nan=-np.inf) >= threshold
    acc_i = np.nan_to_num(i, nan=-np.inf) >= threshold
    scored_g, scored_i = g[np.isfinite(g)], i[np.isfinite(i)]
    return {
        "frr": float(1 - acc_g.mean()), "far": float(acc_i.mean()),
        "false_accepts": int(acc_i.sum()), "false_rejects": int((~acc_g).sum()),
        "n_genuine": int(g.size), "n_impostor": int(i.size),
        "refused_unscored_genuine": int((~np.isfinite(g)).sum()),
        "refused_unscored_impostor": int((~np.isfinite(i)).sum()),
        "eer_scored": float(eer(scored_g, scored_i)) if scored_g.size and scored_i.size else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="run directory with encoder.pt and config.toml")
    ap.add_argument("--data", help="data folder (default: the run config's data_dir)")
    ap.add_argument("--far", type=float, default=0.01, help="false-accept rate the new threshold is set for")
    ap.add_argument("--heldout-speakers", type=int, default=30, help="held-out speakers enrolled")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)

    from privspk.audio.io import resample, write_audio
    from privspk.config import RunConfig
    from privspk.errors import PrivspkError
    from privspk.evaluation.metrics import threshold_at_eer
    from privspk.evaluation.nonspeech import colored_noise, nonspeech_signals
    from privspk.evaluation.trials import read_scores, read_trials
    from privspk.evaluation.verifier import Verifier
    from privspk.models.checkpoint import load_encoder
    from privspk.prepare import load_run_corpus
    from privspk.audio.io import read_audio

    t0 = time.perf_counter()
    run = Path(args.run)
    cfg = RunConfig.load(run / "config.toml")
    if args.data:
        cfg = cfg.replace(data_dir=args.data)
    torch.set_num_threads(cfg.threads)
    encoder, _ = load_encoder(run / "encoder.pt")
    fcfg = cfg.features.feature_config()
    corpus, split = load_run_corpus(cfg, progress=False)
    by_spk: dict[str, list[Path]] = {}
    for u in sorted(corpus.utterances, key=lambda u: u.utt_id):
        by_spk.setdefault(u.speaker, []).append(u.path)

    # ---- old threshold: the EER point of the run's held-out scores (what `enroll` used to do)
    old_source = "EER point of the run's held-out scores"
    if (run / "scores").exists():
        trials, scores = read_trials(run / "trials"), read_scores(run / "scores")
        flags = {(t.enroll, t.test): t.target for t in trials}
        old_thr = threshold_at_eer([s.score for s in scores if flags[(s.enroll, s.test)]],
                                   [s.score for s in scores if not flags[(s.enroll, s.test)]])
    else:
        old_thr, old_source = math.nan, "EER point of the held-out identities' trials below (no run scores)"
    old = Old(encoder, fcfg, old_thr)

    # ---- new: cohort and FAR threshold from public speakers (as `privspk enroll` does)
    new = Verifier(encoder, fcfg, threshold=0.0)
    public = {s: by_spk[s][:6] for s in sorted(split.public)[:40]}
    calib = new.calibrate_public(public, far=args.far, seed=cfg.seed)
    print(f"new threshold {new.threshold:.4f} "
          f"(AS-norm, FAR <= {args.far} on {calib['n_nontarget']} public impostor trials)", flush=True)

    def new_embed(wav):
        try:
            return new.embed(wav)
        except PrivspkError:
            return None

    def new_score(name, emb):
        return math.nan if emb is None else new.score_embedding(name, emb)

    cos_thr = calib["cosine_threshold"]
    raw_log: dict[tuple[str, int], float] = {}

    def new_raw(name, emb):
        return math.nan if emb is None else float(new._known(name) @ emb)

    # ---- enrolled identities: alice (raw eSpeak en-us) and held-out speakers
    alice_wavs = [_speech(t, "en-us") for t in SENTENCES]
    identities: dict[str, tuple[list, list]] = {"alice": (alice_wavs[:2], alice_wavs[2:])}
    for spk in sorted(split.heldout)[: args.heldout_speakers]:
        wavs = [read_audio(p) for p in by_spk[spk][:6]]
        identities[spk] = (wavs[:2], wavs[2:])
    old_emb, new_emb = {}, {}
    for name, (enrol, tests) in identities.items():
        old.enroll(name, [old.embed(w) for w in enrol])
        try:
            new.enroll(name, enrol)
        except PrivspkError as exc:
            print(f"  {name}: not enrolled by the new verifier ({exc})", flush=True)
        old_emb[name] = [old.embed(w) for w in tests]
        new_emb[name] = [new_embed(w) for w in tests]
    enrolled_new = set(new.speakers)
    genuine_old = [old.score(n, e) for n in identities for e in old_emb[n]]
    genuine_new = [new_score(n, e) if n in enrolled_new else math.nan for n in identities for e in new_emb[n]]
    genuine_cos = [new_raw(n, e) if n in enrolled_new else math.nan for n in identities for e in new_emb[n]]
    # held-out impostors among the identities (same conditions as training: the usual EER setting)
    same_old, same_new, same_cos = [], [], []
    for claimed in identities:
        for actual in identities:
            if claimed != actual and "alice" not in (claimed, actual):
                same_old += [old.score(claimed, e) for e in old_emb[actual][:1]]
                if claimed in enrolled_new:
                    same_new += [new_score(claimed, e) for e in new_emb[actual][:1]]
                    same_cos += [new_raw(claimed, e) for e in new_emb[actual][:1]]

    if not math.isfinite(old_thr):
        old_thr = old.threshold = threshold_at_eer(genuine_old, same_old)

    # ---- impostor voices outside the training conditions, against every identity
    imp_rows = []
    imp_old, imp_new, imp_cos = [], [], []
    for label, accent, variant, pitch, rate in IMPOSTORS:
        wavs = [_speech(t, accent, variant, pitch, rate) for t in SENTENCES[:3]]
        eo, en = [old.embed(w) for w in wavs], [new_embed(w) for w in wavs]
        row = {"voice": label, "alice_old": [old.score("alice", e) for e in eo],
               "alice_new": [new_score("alice", e) for e in en]}
        for name in identities:
            imp_old += [old.score(name, e) for e in eo]
            imp_new += [new_score(name, e) if name in enrolled_new else math.nan for e in en]
            imp_cos += [new_raw(name, e) if name in enrolled_new else math.nan for e in en]
        imp_rows.append(row)

    # ---- non-speech, against every identity
    ns_rows = []
    ns_old, ns_new, ns_cos = [], [], []
    signals = {}
    for seed in (0, 1):
        for kind, wav in nonspeech_signals(seconds=4.0, seed=seed).items():
            signals[f"{kind}#{seed}"] = wav
    tmp = Path(tempfile.mkdtemp(prefix="privspk_bench_"))
    pink_path = tmp / "pink_10min.wav"
    rng = np.random.default_rng(5)
    write_audio(pink_path, 0.5 * colored_noise(16000 * 600, exponent=1.0, rng=rng), sample_rate=16000)
    signals["pink_noise_10min_file"] = pink_path
    for label, wav in signals.items():
        w_old = read_audio(wav) if isinstance(wav, Path) else wav
        eo, en = old.embed(w_old), new_embed(wav)
        so = [old.score(n, eo) for n in identities]
        sn = [new_score(n, en) if n in enrolled_new else math.nan for n in identities]
        ns_old += so
        ns_new += sn
        ns_cos += [new_raw(n, en) if n in enrolled_new else math.nan for n in identities]
        ns_rows.append({"signal": label, "accepted_old": int(np.sum(np.nan_to_num(so, nan=-np.inf) >= old_thr)),
                        "accepted_new": int(np.sum(np.nan_to_num(sn, nan=-np.inf) >= new.threshold)),
                        "claims": len(identities)})

    # ---- the issue's cases
    cases = []
    iss = [r for r in imp_rows if r["voice"] in ISSUE_IMPOSTORS]
    n_iss = sum(len(r["alice_old"]) for r in iss)
    acc_o = sum(s >= old_thr for r in iss for s in r["alice_old"])
    acc_n = sum((s == s) and s >= new.threshold for r in iss for s in r["alice_new"])
    cases.append({"case": "alice vs de / en+Annie / en-us+m7 / en-us+f3 impostors",
                  "before": f"{acc_o} of {n_iss} accepted", "after": f"{acc_n} of {n_iss} accepted"})
    silence = torch.zeros(16000 * 3)
    old.enroll("silent", [old.embed(silence), old.embed(silence)])
    so = old.score("silent", old.embed(torch.zeros(16000 * 2)))
    sp = old.score("silent", old.embed(read_audio(pink_path, max_seconds=120.0)))
    try:
        new.enroll("silent", [silence, silence])
        after = "enrolled"
    except PrivspkError as exc:
        after = f"enrolment refused: {exc}"
    cases.append({"case": "enrol from pure silence, then a silent trial", "before":
                  f"enrolled; silent trial score {so:.3f} -> {'ACCEPT' if so >= old_thr else 'REJECT'}",
                  "after": after})
    cases.append({"case": "silence-enrolled speaker vs 10 min of pink noise", "before":
                  f"score {sp:.3f} -> {'ACCEPT' if sp >= old_thr else 'REJECT'}",
                  "after": "no silence-enrolled speaker exists; pink noise vs every enrolled speaker: "
                  f"{ns_rows[-1]['accepted_new']} of {ns_rows[-1]['claims']} accepted"})
    d = new.verify("alice", alice_wavs[2][8000:9600])
    clip_old = old.score("alice", old.embed(alice_wavs[2][8000:9600]))
    try:
        new.enroll("clip", [alice_wavs[2][8000:9600]] * 2)
        clip_enrol = "enrolled"
    except PrivspkError as exc:
        clip_enrol = f"refused ({str(exc).split(':', 1)[1].strip()[:60]}...)"
    cases.append({"case": "0.1 s clip (enrol; verify as alice)",
                  "before": f"enrols; verify score {clip_old:.3f} -> {'ACCEPT' if clip_old >= old_thr else 'REJECT'}",
                  "after": f"enrolment {clip_enrol}; verify -> {d.reason}"})
    probe = alice_wavs[3]
    write_audio(tmp / "p16.wav", probe, sample_rate=16000)
    write_audio(tmp / "p48.wav", resample(probe, orig_freq=16000, new_freq=48000), sample_rate=48000)
    o16, o48 = (old.score("alice", old.embed(read_audio(tmp / f))) for f in ("p16.wav", "p48.wav"))
    n16, n48 = (new.verify("alice", tmp / f) for f in ("p16.wav", "p48.wav"))
    cases.append({"case": "same audio through a 48 kHz round trip (score 16 kHz -> 48 kHz file)",
                  "before": f"{o16:.3f} -> {o48:.3f} (moved {abs(o48 - o16):.3f})",
                  "after": f"{n16.score:.3f} -> {n48.score:.3f} (moved {abs(n48.score - n16.score):.3f}), "
                  f"{'ACCEPT' if n16.accepted else 'REJECT'} -> {'ACCEPT' if n48.accepted else 'REJECT'}"})
    silent = (probe == 0).numpy()
    edges = np.flatnonzero(np.diff(np.concatenate([[0], silent.astype(np.int8), [0]])))
    runs = [(a, b) for a, b in zip(edges[::2], edges[1::2]) if 0 < a and b < probe.shape[0]]
    a, b = max(runs, key=lambda r: r[1] - r[0]) if runs else (probe.shape[0] // 2, probe.shape[0] // 2)
    mid = (a + b) // 2
    gap = torch.zeros(int(0.3 * 16000))
    zeros = torch.cat([gap, probe[:mid], torch.zeros(int(0.4 * 16000)), probe[mid:], gap])
    share = float((zeros == 0).float().mean())
    oz, nz = old.score("alice", old.embed(zeros)), new.verify("alice", zeros)
    o0 = old.score("alice", old.embed(probe))
    n0 = new.verify("alice", probe)
    cases.append({"case": f"exact-zero runs added to the pauses ({100 * share:.0f} % zeros)",
                  "before": f"{o0:.3f} -> {oz:.3f} (moved {abs(oz - o0):.3f})",
                  "after": f"{n0.score:.3f} -> {nz.score:.3f} (moved {abs(nz.score - n0.score):.3f})"})

    rates = {
        "impostor_voices": {"before": _rates(genuine_old, imp_old, old_thr),
                            "after": _rates(genuine_new, imp_new, new.threshold),
                            "after_cosine": _rates(genuine_cos, imp_cos, cos_thr)},
        "heldout_impostors": {"before": _rates(genuine_old, same_old, old_thr),
                              "after": _rates(genuine_new, same_new, new.threshold),
                              "after_cosine": _rates(genuine_cos, same_cos, cos_thr)},
        "non_speech": {"before": _rates(genuine_old, ns_old, old_thr),
                       "after": _rates(genuine_new, ns_new, new.threshold),
                       "after_cosine": _rates(genuine_cos, ns_cos, cos_thr)},
    }
    result = {
        "command": "python benchmarks/verifier_impostors.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor()},
        "run": run.name, "far_target": args.far, "threshold_before": old_thr, "threshold_before_source": old_source, "threshold_after": new.threshold,
        "calibration": calib, "identities": len(identities), "enrolled_after": len(enrolled_new),
        "rates": rates, "issue_cases": cases, "impostor_voices": imp_rows, "non_speech": ns_rows,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "verifier_impostors.json").write_text(json.dumps(result, indent=2, default=float))
    (out / "verifier_impostors.md").write_text(_markdown(result))
    print(_markdown(result), flush=True)
    return 0


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f} %"


def _markdown(r: dict) -> str:
    lines = [
        "# Verifier: impostor voices outside the training conditions, and non-speech",
        "",
        f"Command: `{r['command']}` ({r['date']}, {r['seconds']} s). Encoder: run `{r['run']}`.",
        "",
        f"* **before**: whole recordings, cosine scores, threshold {r['threshold_before']:.4f} "
        f"({r['threshold_before_source']}), no speech detection.",
        f"* **after**: speech detection (min 0.5 s per trial, 1.5 s per enrolment), AS-norm against "
        f"{r['calibration']['n_cohort_embeddings']} recordings of {r['calibration']['n_cohort_speakers']} public "
        f"speakers, threshold {r['threshold_after']:.4f} for FAR <= {r['far_target']} on "
        f"{r['calibration']['n_nontarget']} impostor trials among {r['calibration']['n_calibration_speakers']} "
        f"other public speakers (reached {_pct(r['calibration']['far_reached'])}).",
        f"* {r['identities']} enrolled identities (alice + held-out speakers; {r['enrolled_after']} enrolled after), "
        "genuine trials on their other recordings.",
        "",
        "| trials | FAR before | FAR after | FRR before | FRR after | EER before | EER after (scored trials) |",
        "|---|---|---|---|---|---|---|",
    ]
    names = {"impostor_voices": f"impostor voices ({len(r['impostor_voices'])} voices x 3 sentences x every identity)",
             "heldout_impostors": "held-out speakers as each other's impostors",
             "non_speech": f"non-speech ({len(r['non_speech'])} signals x every identity)"}
    for key, label in names.items():
        b, a = r["rates"][key]["before"], r["rates"][key]["after"]
        lines.append(f"| {label} | {_pct(b['far'])} ({b['false_accepts']}/{b['n_impostor']}) | "
                     f"{_pct(a['far'])} ({a['false_accepts']}/{a['n_impostor']}) | {_pct(b['frr'])} | {_pct(a['frr'])} | "
                     f"{_pct(b['eer_scored'])} | {_pct(a['eer_scored'])} |")
    lines += ["", "Ablation, the same speech detection and embeddings with plain cosine scores and a threshold "
              f"({r['calibration']['cosine_threshold']:.4f}) for the same FAR on the same public trials:", "",
              "| trials | FAR | FRR | EER (scored trials) |", "|---|---|---|---|"]
    for key, label in names.items():
        c = r["rates"][key]["after_cosine"]
        lines.append(f"| {label} | {_pct(c['far'])} ({c['false_accepts']}/{c['n_impostor']}) | {_pct(c['frr'])} | "
                     f"{_pct(c['eer_scored'])} |")
    lines += ["", "FRR after counts the genuine trials refused for too little speech as rejects "
              f"({r['rates']['impostor_voices']['after']['refused_unscored_genuine']} of "
              f"{r['rates']['impostor_voices']['after']['n_genuine']}).", "",
              "## The issue's cases", "", "| case | before | after |", "|---|---|---|"]
    lines += [f"| {c['case']} | {c['before']} | {c['after']} |" for c in r["issue_cases"]]
    lines += ["", "## Non-speech, accepted claims per signal", "", "| signal | before | after |", "|---|---|---|"]
    lines += [f"| {n['signal']} | {n['accepted_old']}/{n['claims']} | {n['accepted_new']}/{n['claims']} |"
              for n in r["non_speech"]]
    lines += ["", "## Impostor voices against alice (scores, before -> after)", "", "| voice | before | after |",
              "|---|---|---|"]
    fmt = lambda xs: ", ".join("refused" if x != x else f"{x:.3f}" for x in xs)  # noqa: E731
    lines += [f"| {v['voice']} | {fmt(v['alice_old'])} | {fmt(v['alice_new'])} |" for v in r["impostor_voices"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
