"""Write an audit: ``audit.json``, ``audit.md`` and plots, each result beside the threat it tests.

Verdicts: membership ``FAIL`` when an attack provably beats ``TPR <= e^eps FPR + delta``
at the run's epsilon; canary ``FAIL`` when the lower bound exceeds the ledger's epsilon,
``INCONCLUSIVE`` when the non-private control stays far below the ceiling; leakage
is reported as numbers beside chance (no verdict: it measures what SecAgg and DP buy).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from privspk.audit.runner import THREATS, AuditReport


def _mean(values) -> float:
    return float(np.mean(list(values))) if values else float("nan")


def summary(rep: AuditReport) -> dict:
    """The JSON document of an audit (no per-utterance scores)."""
    out = {"run": rep.run, "settings": vars(rep.settings), "threats": {k: list(v) for k, v in THREATS.items()},
           "ledger": None if rep.ledger is None else {"epsilon_by_round": rep.ledger.epsilon_by_round,
                                                       "delta": rep.ledger.delta, "unit": rep.ledger.unit,
                                                       "noise_multiplier": {c: d.noise_multiplier
                                                                            for c, d in rep.ledger.dp.items()},
                                                       "sample_rate": {c: d.sample_rate for c, d in rep.ledger.dp.items()}},
           "membership": {label: {lvl: r.to_dict() for lvl, r in res.items()} for label, res in rep.membership.items()},
           "canary": rep.canary.to_dict() if rep.canary is not None else None,
           "client_canary": rep.client_canary.to_dict() if getattr(rep, "client_canary", None) is not None else None,
           "leakage": {view: {"per_client": {c: a.to_dict() for c, a in per.items()},
                              "mean_r_precision": _mean(a.r_precision for a in per.values()),
                              "mean_auc": _mean(a.auc for a in per.values()),
                              "chance": _mean(a.chance for a in per.values())}
                       for view, per in rep.leakage.items()},
           "skipped": rep.skipped, "seconds": rep.seconds}
    out["verdicts"] = verdicts(rep)
    return out


def verdicts(rep: AuditReport) -> dict:
    """One verdict per section."""
    v = {}
    if rep.membership:
        checks = [r.check.verdict for r in rep.membership.get("dp", {}).values()]
        v["membership"] = "FAIL" if "FAIL" in checks else ("PASS" if "PASS" in checks else "NO CLAIM")
    if rep.canary is not None:
        v["canary"] = rep.canary.verdict.verdict
    if getattr(rep, "client_canary", None) is not None:
        v["client_canary"] = rep.client_canary.verdict.verdict
    if rep.leakage:
        v["leakage"] = "MEASURED"
    return v


def _f(x, nd: int = 2) -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and (math.isinf(x) or math.isnan(x)):
        return str(x)
    return f"{x:.{nd}f}"


def lines(rep: AuditReport) -> list[str]:
    """The human-readable report, one line each (printed by the CLI, written to ``audit.md``)."""
    v = verdicts(rep)
    out = [f"# privspk audit of {rep.run}", ""]
    if rep.ledger:
        out.append(f"Ledger: epsilon {rep.ledger.epsilon_by_round[-1]:.2f} per {rep.ledger.unit} "
                   f"(delta {rep.ledger.delta:g}) after {len(rep.ledger.epsilon_by_round)} rounds; "
                   f"noise multiplier {', '.join(f'{c} {d.noise_multiplier:.3f}' for c, d in rep.ledger.dp.items())}.")
    else:
        out.append("Non-private run (no ledger): nothing is claimed; the numbers say what leaks.")
    out += ["", f"## 1. Membership inference on the released encoder — {v.get('membership', 'SKIPPED')} "
                f"(threats {', '.join(THREATS['membership'])})", "",
            "Score: cosine of an utterance with its speaker's other utterances' centroid, released encoder minus "
            "public pretrained encoder. Members: client utterances; non-members: held-out speakers' utterances.", "",
            "| model | level | members / non-members | AUC [95 % CI] | TPR@1%FPR | TPR@0.1%FPR | eps lower bound "
            "(TPR/FPR, 95 %) | check |", "|---|---|---|---|---|---|---|---|"]
    for label, res in rep.membership.items():
        name = "released (DP)" if label == "dp" and rep.ledger else ("released" if label == "dp" else
                                                                     "non-private control")
        for lvl, r in res.items():
            c = r.check
            claim = f"{c.verdict} vs eps {c.claimed_epsilon:.2f}" if c.claimed_epsilon is not None else c.verdict
            out.append(f"| {name} | {lvl} | {r.members} / {r.nonmembers} | {r.auc:.3f} [{r.auc_low:.3f}, "
                       f"{r.auc_high:.3f}] | {r.tpr_at_fpr['0.01']:.3f} | {r.tpr_at_fpr['0.001']:.3f} | "
                       f"{_f(c.epsilon_lower_bound)} | {claim} |")
    out += ["", f"## 2. Canary audit: lower bound on epsilon — {v.get('canary', 'SKIPPED')} "
                f"(threats {', '.join(THREATS['canary'])})", ""]
    if rep.canary is not None:
        ca = rep.canary
        out.append(f"{ca.control.m} white-box gradient canaries (each in with probability 1/2) in client0's "
                   f"DP-SGD steps, re-running {len(ca.control.released_scores)} round(s) of the run's configuration; "
                   f"scores relative to a shadow re-run without canaries. One-run bound "
                   f"(Steinke, Nasr & Jagielski 2023) at 95 %.")
        out += ["", "| re-run | view | eps lower bound | ceiling (m) / with the search | ledger eps | bound / ledger |",
                "|---|---|---|---|---|---|"]
        for run in (ca.dp_run, ca.control):
            if run is None:
                continue
            for view in (run.released, run.best_round):
                b = view.bound
                ratio = b.epsilon / view.claimed_epsilon if view.claimed_epsilon else None
                out.append(f"| {run.label} ({run.noise}) | {view.view} (round {view.round}) | {b.epsilon:.2f} | "
                           f"{b.ceiling:.2f} / {b.corrected_ceiling:.2f} | {_f(view.claimed_epsilon)} | "
                           f"{_f(ratio)} |")
        for run in (ca.dp_run, ca.control):
            if run is not None:
                e = run.estimate(delta=ca.delta)
                out.append(f"- {run.label}: Gaussian-fit estimate of the released view (Andrew et al. 2023 style, "
                           f"an estimate, not a bound): {e.epsilon:.2f} [{e.low:.2f}, {e.high:.2f}] (bootstrap 95 %)")
        out += ["", f"Verdict: {ca.verdict.verdict} — {ca.verdict.reason}"]
    else:
        out.append(f"Skipped: {rep.skipped.get('canary', 'not run')}")
    out += client_canary_lines(rep, v)
    out += ["", f"## 3. What the server learns from updates without secure aggregation — "
                f"{v.get('leakage', 'SKIPPED')} (threats {', '.join(THREATS['leakage'])})", ""]
    if rep.leakage:
        out += ["Round 1 from the public encoder; the server scores every client speaker by the energy of the "
                "embedding layer's update along the speaker's enrolment utterances and names the top ones.", "",
                "| server sees | R-precision = recall (mean over clients) | precision@5 | precision@10 | AUC | "
                "chance |", "|---|---|---|---|---|---|"]
        for view, per in rep.leakage.items():
            p5 = _mean(a.precision_at.get("5", float("nan")) for a in per.values())
            p10 = _mean(a.precision_at.get("10", float("nan")) for a in per.values())
            out.append(f"| {view} | {_mean(a.r_precision for a in per.values()):.3f} | {p5:.3f} | {p10:.3f} | "
                       f"{_mean(a.auc for a in per.values()):.3f} | {_mean(a.chance for a in per.values()):.3f} |")
    else:
        out.append(f"Skipped: {rep.skipped.get('leakage', 'not run')}")
    out += ["", "Seconds: " + ", ".join(f"{k} {s}" for k, s in rep.seconds.items())]
    return out


def client_canary_lines(rep: AuditReport, v: dict) -> list[str]:
    """Section 2b: canary clients for client-level DP (or why it does not apply)."""
    out = ["", f"## 2b. Client-level canary clients: lower bound on client-level epsilon — "
               f"{v.get('client_canary', 'SKIPPED')} (threats {', '.join(THREATS['client_canary'])})", ""]
    ca = getattr(rep, "client_canary", None)
    if ca is None:
        return out + [f"Skipped: {rep.skipped.get('client_canary', 'not run')}"]
    m = ca.control.run.m
    out += [f"{m} canary clients (random unit directions at the client clip, each in with probability 1/2) submit "
            f"through DistributedDP's quantiser; {ca.control.honest_clients} counted honest clients "
            f"({ca.honest_updates} updates) add their noise shares. Score: cosine of each direction with the "
            f"aggregate delta. One-run bound (Steinke, Nasr & Jagielski 2023) at 95 %.", "",
            "| re-run | view | eps lower bound | ceiling (m) / with the search | ledger client eps | bound / ledger |",
            "|---|---|---|---|---|---|"]
    for res in (ca.dp_run, ca.control):
        if res is None:
            continue
        for view in (res.run.released, res.run.best_round):
            b = view.bound
            ratio = b.epsilon / view.claimed_epsilon if view.claimed_epsilon else None
            out.append(f"| {res.run.label} | {view.view} (round {view.round}) | {b.epsilon:.2f} | {b.ceiling:.2f} / "
                       f"{b.corrected_ceiling:.2f} | {_f(view.claimed_epsilon)} | {_f(ratio)} |")
    for res in (ca.dp_run, ca.control):
        if res is not None:
            e = res.estimate
            out.append(f"- {res.run.label}: Andrew et al. (2023) estimate of the released view (an estimate, not a "
                       f"bound): {_f(e.epsilon)} [{_f(e.low)}, {_f(e.high)}] (bootstrap 95 %)")
    return out + ["", f"Verdict: {ca.verdict.verdict} — {ca.verdict.reason}"]


def write(rep: AuditReport, out_dir: str | Path) -> dict[str, Path]:
    """Write ``audit.json``, ``audit.md`` and the plots into ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "audit.json", "md": out / "audit.md"}
    paths["json"].write_text(json.dumps(summary(rep), indent=2, default=str), encoding="utf-8")
    paths["md"].write_text("\n".join(lines(rep)) + "\n", encoding="utf-8")
    paths.update(plots(rep, out))
    return paths


def plots(rep: AuditReport, out: Path) -> dict[str, Path]:
    """Score distributions of the membership attack; epsilon lower bound vs the ledger's over rounds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {}
    if rep.membership:
        fig, axes = plt.subplots(len(rep.membership), 2, figsize=(10, 3.2 * len(rep.membership)), squeeze=False)
        for row, (label, res) in enumerate(rep.membership.items()):
            for col, lvl in enumerate(("utterance", "speaker")):
                r, ax = res[lvl], axes[row][col]
                bins = np.histogram_bin_edges(np.concatenate([r.member_scores, r.nonmember_scores]), bins=40)
                ax.hist(r.nonmember_scores, bins=bins, alpha=0.6, density=True, label="non-members")
                ax.hist(r.member_scores, bins=bins, alpha=0.6, density=True, label="members")
                ax.set_title(f"{label}: {lvl} level, AUC {r.auc:.3f}")
                ax.set_xlabel("calibrated centroid score")
                ax.legend()
        fig.tight_layout()
        paths["membership_png"] = out / "membership_scores.png"
        fig.savefig(paths["membership_png"], dpi=110)
        plt.close(fig)
    if rep.canary is not None:
        ca = rep.canary
        fig, ax = plt.subplots(figsize=(7, 4))
        for run, style in ((ca.dp_run, "-"), (ca.control, "--")):
            if run is None:
                continue
            rel = [v for v in run.views if v.view == "released"]
            agg = [v for v in run.views if v.view == "round aggregate"]
            ax.plot([v.round for v in rel], [v.bound.epsilon for v in rel], "o" + style, label=f"{run.label}: released")
            ax.plot([v.round for v in agg], [v.bound.epsilon for v in agg], "s" + style, alpha=0.6,
                    label=f"{run.label}: round aggregate")
        if ca.claimed:
            ax.plot(range(1, len(ca.claimed) + 1), ca.claimed, "k^-", label="ledger epsilon")
        ceiling = ca.control.released.bound
        ax.axhline(ceiling.ceiling, color="grey", ls=":", label=f"ceiling of m={ceiling.m}")
        ax.axhline(ceiling.corrected_ceiling, color="grey", ls="-.", label="ceiling with the guess search")
        ax.set_xlabel("round")
        ax.set_ylabel("epsilon (95 % lower bound)")
        ax.set_yscale("symlog", linthresh=1.0)
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths["canary_png"] = out / "canary_epsilon.png"
        fig.savefig(paths["canary_png"], dpi=110)
        plt.close(fig)
    return paths
