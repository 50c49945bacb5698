"""Does federation earn its keep when the clients hold a channel domain the public data lacks?

The federation of the demo: 3 clients in the call-centre channel (``--domains`` adds others,
dealt round-robin; :mod:`privspk.audio.channels`), public speakers clean, the embedding recipe.
Each client keeps ``--val-per-client`` of its own speakers out of training as a **validation
split** (the same speakers in every run, drawn once with seed 0): validation trials between
them, in their client's channel, choose the learning rate and clip (and judge the levers);
the held-out test speakers are never looked at until the grid. Stages, each resumable (a run
already in ``<runs>/rows.jsonl`` with the same config is not run again):

1. ``tune``: on the validation split, seed 0: DP per utterance at epsilon 8 over ``TUNE_DP``
   (lr x clip) and the non-private reference over ``TUNE_NP`` (lr); pick the lowest in-domain
   validation EER of each.
2. ``levers``: on the validation split, seed 0, epsilon 8 per utterance, the tuned recipe with
   one change at a time (``LEVERS``: larger batches with fewer steps, fine-tuning only the
   embedding's normalisation layers, server momentum on the noisy aggregate, averaging the
   local iterates); each lever that beats the tuned recipe on validation is then run on the
   test trials at epsilon 8 per utterance for every seed (``confirm``).
3. ``prior``: the public-data prior (``[train] public_subspace = k``: the embedding layer's linear
   map trains only in the top-k principal subspace of its input on the public speakers,
   :mod:`privspk.training.subspace`), on the validation split, seed 0, epsilon 8, per unit
   (``--units``): ``PRIOR_GRID[unit]``'s (k, k_out, lr). The best of a unit, if it beats
   that unit's tuned recipe on validation, is run in the grid as ``<unit>+prior``.
4. ``grid``: on the held-out test trials, per seed: the non-private run and DP per utterance
   and per speaker at each epsilon, with the tuned settings; run in order of priority
   (non-private, eps 8, eps 2, eps 4, eps 1; every seed of a setting before the next) so a
   time budget cuts whole settings.

Per condition (``<domain>``: enrolment and test in the channel; ``<domain>/cross``: clean
enrolment, channel test; ``clean``):

    relative gain (non-private) = (EER_pretrain - EER_np) / EER_pretrain        (target >= 0.25)
    gain kept (DP)              = (EER_pretrain - EER_dp) / (EER_pretrain - EER_np)
                                  (targets: >= 0.60 per utterance at eps 8, >= 0.40 per speaker)

Writes ``results/domains.json`` (every run, the tuning and lever tables), ``results/domains.md``
and ``results/domains.png`` (EER vs epsilon per domain, with the pretrain-only and non-private lines).

    python benchmarks/domains.py                          # tune, levers, grid: 3 seeds, eps 1,2,4,8
    python benchmarks/domains.py --stages grid --epsilons 8,2 --seeds 0,1,2
    python benchmarks/domains.py --stages tune,prior,grid --units speaker   # the prior, per speaker
    privspk bench domains --quick                         # smoke: tuning grid cut to one point each
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

KNOWN_DOMAINS = ("callcentre", "phone", "car", "smarthome")
VAL_SEED = 0
# tuning grids (validation split, seed 0): DP per utterance at epsilon 8, and the non-private reference
TUNE_DP = [{"lr": lr, "clip": c} for lr in (3e-3, 1e-2, 3e-2) for c in (0.3, 1.0)]
TUNE_NP = [{"lr": lr} for lr in (1e-3, 3e-3, 1e-2)]
# DP per speaker at epsilon 8 (SPEAKER_UNIT sampling, the tuned clip): the learning rate
TUNE_SPEAKER = [{"lr": lr} for lr in (1e-3, 3e-3, 1e-2)]
# speaker-level DP samples whole speakers: all 40 utterances of each sampled speaker, fewer, larger steps
SPEAKER_UNIT = {"local_steps": 20, "batch_size": 640, "speaker_batch": 40}
# levers on top of the tuned DP recipe, one at a time (epsilon 8 per utterance, validation split)
LEVERS: dict[str, dict] = {
    # 4x the expected batch, a quarter of the steps: same epochs, less noise per averaged gradient
    "batch4x": {"train": {"batch_size": 1024, "local_steps": 12}},
    # only the two LayerNorms of the embedding layer (per-dimension scale and shift of the pooled
    # statistics and of the embedding): what a channel shift most needs, ~1 % of the coordinates
    "norm_only": {"train": {"recipe": "embedding_norm"}},
    # heavy-ball momentum on the server's noisy mean update (FedAvgM)
    "server_momentum": {"federation": {"server_optimizer": "momentum", "server_lr": 0.5, "server_momentum": 0.9}},
    # each client sends the exponential moving average of its local iterates (free post-processing)
    "ema": {"train": {"ema": 0.9}},
    # second round (after the first four on validation): each lever with the step size it may need
    "batch4x_lr3e-2": {"train": {"batch_size": 1024, "local_steps": 12, "lr": 3e-2}},
    "norm_only_lr3e-2": {"train": {"recipe": "embedding_norm", "lr": 3e-2}},
    "server_momentum_lr3e-3": {"train": {"lr": 3e-3},
                               "federation": {"server_optimizer": "momentum", "server_lr": 1.0, "server_momentum": 0.9}},
    "ema0.98": {"train": {"ema": 0.98}},
}
# the public-data prior ([train] public_subspace = k, public_subspace_out = k_out), on validation at epsilon 8:
# (k, k_out, lr) per privacy unit. The embedding layer's linear map is 384 x 192 on the demo encoder, so k = 16 puts
# the noise on 1/24 of its input directions; k = 384 keeps them all (only Adam's coordinates rotate: a control);
# k_out > 0 also confines the output side (k_out x k trained coordinates)
PRIOR_KS = (16, 64, 256)
PRIOR_VAL_SEEDS = (1, 2)  # the best prior and the tuned recipe also run on validation with these seeds
PRIOR_GRID = {"utterance": [(k, 0, lr) for k in PRIOR_KS for lr in (1e-2, 3e-2)] + [(384, 0, 1e-2)],
              "speaker": [(k, 0, lr) for k in PRIOR_KS for lr in (3e-3, 1e-2, 3e-2)]
              + [(k, k_out, lr) for k, k_out in ((16, 16), (64, 32)) for lr in (3e-3, 1e-2)]
              + [(384, 0, lr) for lr in (1e-3, 3e-3)]}
GRID_PRIORITY = (8.0, 2.0, 4.0, 1.0)


def base_config(args):
    """The demo run in the given domains, plain aggregation, simulation randomness (see NOTES)."""
    from privspk.config import RunConfig, SecAggSection

    cfg = RunConfig.preset("demo")
    domains = tuple(args.domains.split(",")) if isinstance(args.domains, str) else tuple(args.domains)
    return cfg.replace(
        out_dir=str(args.runs), data_dir=str(args.data), threads=args.threads,
        corpus=dataclasses.replace(cfg.corpus, domains=domains),
        federation=dataclasses.replace(cfg.federation, n_clients=max(cfg.federation.n_clients, len(domains))),
        secagg=SecAggSection(scheme="plain"),
        privacy=dataclasses.replace(cfg.privacy, randomness="simulation"),
    )


def run_config(base, *, seed: int, epsilon: float | None, unit: str, overrides: dict | None = None,
               label: str = ""):
    """The RunConfig of one run (``epsilon=None``: non-private) and its tag.

    ``overrides``: ``lr``/``clip`` (tuned values), or sections (``{"train": {...}, "federation": {...}}``).
    """
    ov = dict(overrides or {})
    train = {}
    if unit == "speaker" and epsilon is not None:
        train.update(SPEAKER_UNIT)
    if "lr" in ov:
        train["lr"] = ov["lr"]
    train.update(ov.get("train", {}))
    privacy = dict(enabled=epsilon is not None, epsilon=epsilon or 8.0, unit=unit)
    if "clip" in ov:
        privacy["clip"] = ov["clip"]
    tag = f"{label + '_' if label else ''}{unit}_{'np' if epsilon is None else f'eps{epsilon:g}'}_s{seed}"
    cfg = base.replace(
        name=f"bench_domains_{tag}", seed=seed, train=dataclasses.replace(base.train, **train),
        privacy=dataclasses.replace(base.privacy, **privacy),
        federation=dataclasses.replace(base.federation, **ov.get("federation", {})),
    )
    return cfg, tag


def validation_split(data, *, per_client: int, seed: int = VAL_SEED):
    """``(train data, validation data)``: each client keeps ``per_client`` of its speakers out of training.

    The training data are ``data`` with those speakers removed from the clients (same test trials).
    The validation data have the same clients, the removed speakers as their held-out set and
    trials between them: clean, and per client domain (only that domain's validation speakers)
    in-domain (``<domain>``) and cross-channel (``<domain>/cross``).
    """
    import numpy as np

    from privspk.corpus import SpeakerSplit
    from privspk.corpus.domains import domain_conditions
    from privspk.errors import ConfigError
    from privspk.evaluation.trials import make_trials

    if per_client < 2:
        raise ConfigError(f"--val-per-client must be >= 2 (target trials need speakers), got {per_client}")
    rng = np.random.default_rng(seed)
    clients, val_by_domain = [], {}
    for group in data.split.clients:
        g = sorted(group)
        if len(g) < per_client + 2:
            raise ConfigError(f"a client with {len(g)} speakers cannot keep {per_client} for validation")
        pick = {int(i) for i in rng.choice(len(g), size=per_client, replace=False)}
        val = [s for i, s in enumerate(g) if i in pick]
        clients.append(tuple(s for i, s in enumerate(g) if i not in pick))
        dom = data.speaker_domains.get(val[0])
        val_by_domain.setdefault(dom, []).extend(val)
    val_all = sorted(s for group in val_by_domain.values() for s in group)
    train = dataclasses.replace(data, split=SpeakerSplit(public=data.split.public, clients=tuple(clients),
                                                         heldout=data.split.heldout))

    def trials_of(speakers):
        ss = set(speakers)
        return make_trials({u: s for u, s in data.utt2spk.items() if s in ss}, n_target_per_utt=10,
                           n_nontarget_per_utt=40, seed=seed)

    domain_trials = {}
    for dom, speakers in val_by_domain.items():
        if dom is not None:
            domain_trials.update(domain_conditions(trials_of(speakers), [dom]))
    val = dataclasses.replace(data, split=SpeakerSplit(public=data.split.public, clients=tuple(clients),
                                                       heldout=tuple(val_all)),
                              trials=trials_of(val_all), domain_trials=domain_trials)
    return train, val


def _prior_label(k: int, k_out: int, lr: float) -> str:
    """The run-name label of a prior run on validation.

    >>> _prior_label(64, 0, 0.01), _prior_label(16, 16, 0.003)
    ('val_prior64_lr0.01', 'val_prior16x16_lr0.003')
    """
    return f"val_prior{k}{f'x{k_out}' if k_out else ''}_lr{lr:g}"


def _embedding_dims(base) -> tuple[int, int]:
    """The embedding layer's linear map: (input dimension d, embedding size) of the run's encoder."""
    from privspk.api import encoder_in_dim
    from privspk.models import build_encoder

    lin = build_encoder(base.model.encoder, in_dim=encoder_in_dim(base)).embedding.linear
    return lin.in_features, lin.out_features


def one_run(cfg, data) -> dict:
    from privspk.api import train

    t0 = time.perf_counter()
    cpu0 = time.process_time()
    rep = train(cfg, progress=False, overwrite=True, eval_every=0, data=data).report
    return {"pretrain": {c: r["eer"] for c, r in rep["pretrain_eval"]["domains"].items()} | {"clean": rep["pretrain_eval"]["eer"]},
            "final": {c: r["eer"] for c, r in rep["final_eval"]["domains"].items()} | {"clean": rep["final_eval"]["eer"]},
            "seconds": round(time.perf_counter() - t0, 1), "cpu_seconds": round(time.process_time() - cpu0, 1),
            "trainable": rep["trainable_parameters"],
            "sigma": (min(rep["privacy"]["noise_multiplier"].values()) if cfg.privacy.enabled else None)}


def _ms(xs):
    xs = list(xs)
    return (statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _objective(row: dict, domains) -> float:
    """Validation objective: mean in-domain EER over the client domains."""
    return statistics.mean(row["final"][d] for d in domains)


class TrunkCache:
    """Keeps the frozen trunk's pooled statistics (clients' crops, evaluated utterances) on disk between processes.

    Within a process :func:`privspk.training.trunk.pooled_crops` memoises them and the evaluator
    shares them through ``data.pooled``; this only saves the benchmark from paying the trunk
    again after a restart. Entries are keyed as in the library, with the feature source's
    process-local id left out (every run here reads the same prepared features).
    """

    def __init__(self, path: Path, data) -> None:
        self.path, self.data, self._saved = Path(path), data, (0, 0)

    def _memo(self):
        from privspk.training import trunk

        return trunk._MEMO  # noqa: SLF001 - the library's in-process memo, refilled from disk

    def load(self) -> None:
        import torch

        if not self.path.exists():
            return
        state = torch.load(self.path, weights_only=False)
        src = id(self.data.features)
        for k, v in state["crops"].items():
            self._memo()[(k[0], src, *k[1:])] = v
        for fp, d in state["pooled"].items():
            self.data.pooled.setdefault(fp, {}).update(d)
        self._saved = self._size()
        print(f"trunk cache: {len(state['crops'])} client crop sets, "
              f"{sum(len(d) for d in state['pooled'].values())} evaluated utterances from {self.path}", flush=True)

    def _size(self):
        return len(self._memo()), sum(len(d) for d in self.data.pooled.values())

    def save(self) -> None:
        import torch

        if self._size() == self._saved:
            return
        src = id(self.data.features)
        crops = {(k[0], *k[2:]): v for k, v in self._memo().items() if k[1] == src}
        tmp = self.path.with_suffix(".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"crops": crops, "pooled": self.data.pooled}, tmp)
        tmp.replace(self.path)
        self._saved = self._size()


def run_key(cfg, *, split: str) -> str:
    """A run's key in ``rows.jsonl``: the split and the config's fingerprint, wherever the checkout lives
    (``out_dir`` and ``data_dir`` left out)."""
    return f"{split}:{cfg.replace(out_dir='', data_dir='').fingerprint()}"


class Runner:
    """Runs configs, remembering every finished run in ``<runs>/rows.jsonl`` (keyed by :func:`run_key`).

    ``legacy_dirs = (out_dir, data_dir)``: rows written before the keys left the paths out were keyed
    with the fingerprint of the config holding these two paths; such a row is found too, and re-keyed.
    """

    def __init__(self, runs: Path, cache: TrunkCache | None = None,
                 legacy_dirs: tuple[str, str] | None = None) -> None:
        self.cache = cache
        self.legacy_dirs = legacy_dirs
        self.path = Path(runs) / "rows.jsonl"
        self.done: dict[str, dict] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    r = json.loads(line)
                    self.done[r["key"]] = r
        for r in list(self.done.values()):  # a re-keyed row replaces the row it was copied from
            if r.get("rekeyed_from"):
                self.done.pop(r["rekeyed_from"], None)

    def _find(self, cfg, split: str) -> dict | None:
        key = run_key(cfg, split=split)
        if key in self.done:
            return self.done[key]
        if self.legacy_dirs is not None:
            out_dir, data_dir = self.legacy_dirs
            old_key = f"{split}:{cfg.replace(out_dir=out_dir, data_dir=data_dir).fingerprint()}"
            old = self.done.pop(old_key, None)
            if old is not None:
                return self._append({**old, "key": key, "rekeyed_from": old_key})
        return None

    def _append(self, row: dict) -> dict:
        self.done[row["key"]] = row
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        return row

    def has(self, cfg, *, split: str) -> bool:
        """Whether this config already ran on this split (then :meth:`run` costs nothing)."""
        return self._find(cfg, split) is not None

    def run(self, cfg, data, *, split: str, stage: str, info: dict) -> dict:
        found = self._find(cfg, split)
        if found is not None:
            return found
        r = one_run(cfg, data)
        if self.cache is not None:
            self.cache.save()
        row = self._append({"key": run_key(cfg, split=split), "split": split, "stage": stage, "name": cfg.name,
                            **info, **r})
        print(f"[{stage}/{split}] {cfg.name} [{r['seconds']} s, {r['cpu_seconds']} s cpu]: "
              + ", ".join(f"{c} {100 * r['pretrain'][c]:.2f}->{100 * v:.2f}" for c, v in r["final"].items()),
              flush=True)
        return row


def summarise(rows: list[dict]) -> list[dict]:
    """Per condition: pretrain-only EER, non-private EER and gain, and per DP setting EER and gain kept."""
    out = []
    conds = list(rows[0]["pretrain"]) if rows else []
    settings = sorted({(r["unit"], r["epsilon"]) for r in rows if r["epsilon"] is not None},
                      key=lambda k: (k[0], k[1]))
    nps = {r["seed"]: r for r in rows if r["epsilon"] is None}
    for cond in conds:
        pre = statistics.mean(r["pretrain"][cond] for r in rows)
        np_eer = [r["final"][cond] for r in nps.values()]
        row = {"condition": cond, "eer_pretrain": pre, "eer_nonprivate": _ms(np_eer) if np_eer else None,
               "nonprivate_relative_gain": (pre - statistics.mean(np_eer)) / pre if np_eer else None, "dp": {}}
        for unit, eps in settings:
            rs = [r for r in rows if r["unit"] == unit and r["epsilon"] == eps and r["seed"] in nps]
            if not rs:
                continue
            kept = [(r["pretrain"][cond] - r["final"][cond]) / (r["pretrain"][cond] - nps[r["seed"]]["final"][cond])
                    if r["pretrain"][cond] != nps[r["seed"]]["final"][cond] else float("nan") for r in rs]
            row["dp"][f"{unit}/{eps:g}"] = {"eer": _ms([r["final"][cond] for r in rs]), "gain_kept": _ms(kept),
                                             "seeds": len(rs)}
        out.append(row)
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def markdown(payload: dict) -> str:
    m = payload["meta"]
    cols = sorted({k for s in payload["summary"] for k in s["dp"]}, key=lambda k: (k.split("/")[0], float(k.split("/")[1])))
    lines = ["# Client domains: what federation adds in the clients' channel, and what DP keeps", "",
             f"Measured {m['date']} on {m['machine']}, {m['threads']} torch thread(s); this invocation {m['minutes']} "
             f"min wall (load at its start: {m['load_start']}, at its end: {m['load_end']})"
             + (f"; all {m['runs']} runs in `rows.jsonl` (this and earlier invocations, some in parallel) took "
                f"{m['runs_wall_min']} min wall, {m['runs_cpu_min']} min CPU" if m.get("runs") else "")
             + f"; {m['clients']} clients "
             f"(domains: {', '.join(m['domains'])}) x {m['rounds']} rounds, embedding recipe; each client keeps "
             f"{m['val_per_client']} of its speakers for validation ({m['val_speakers']} speakers, {m['val_trials']} "
             f"trials per condition); test: {m['trials']} held-out trials per condition ({m['heldout']} speakers); "
             f"delta 1e-5; seeds {m['seeds']}. Command: `{m['command']}`.", ""]
    t = payload.get("tuning")
    if t:
        lines += ["## Tuning (validation split, seed 0)", "",
                  f"Chosen: DP lr {t['chosen_dp']['lr']:g}, clip {t['chosen_dp']['clip']:g}"
                  + (f" (per speaker: lr {t['chosen_speaker']['lr']:g})" if t.get("chosen_speaker") else "")
                  + "; non-private lr "
                  f"{t['chosen_np']['lr']:g}. {t['configs_dp']} DP configurations and {t['configs_np']} non-private "
                  f"ones tried, {t['minutes']} min wall (then {t.get('lever_runs', 0)} lever runs, below). Privacy cost "
                  f"of the tuning: {t['privacy_cost']}", "",
                  "| run | lr | clip | validation in-domain EER % | validation clean EER % | wall s |", "|---|---|---|---|---|---|"]
        for r in t["tried"]:
            kind = ("non-private" if r["epsilon"] is None else
                    "DP eps 8 per speaker" if r.get("unit") == "speaker" else "DP eps 8 per utterance")
            lines.append(f"| {kind} | {r['lr']:g} | "
                         f"{'' if r.get('clip') is None else format(r['clip'], 'g')} | {_pct(r['objective'])} | "
                         f"{_pct(r['final']['clean'])} | {r['seconds']} |")
        lines.append("")
    lv = payload.get("levers")
    if lv:
        lines += ["## Levers (DP eps 8 per utterance, one at a time on the tuned recipe)", "",
                  "| lever | what changes | trainable | validation in-domain EER % (seed 0) | test in-domain EER % "
                  "(mean +- std) | test gain kept | seeds |", "|---|---|---|---|---|---|---|"]
        for r in lv:
            test = r.get("test")
            lines.append(f"| {r['lever']} | `{json.dumps(r['change'])}` | {r['trainable']} | {_pct(r['val'])} | "
                         + (f"{_pct(test['eer'][0])} +- {_pct(test['eer'][1])} | {test['gain_kept'][0]:.2f} +- "
                            f"{test['gain_kept'][1]:.2f} | {test['seeds']} |" if test else "not run on test | | |"))
        lines.append("")
    pr = payload.get("prior")
    if pr:
        d_in, d_out = pr["embedding"]
        lines += ["## Public-data prior (validation split, seed 0, epsilon 8)", "",
                  f"`[train] public_subspace = k`: the embedding layer's linear map ({d_in} inputs -> {d_out}) trains "
                  f"as W0 + A P^T, P the top-k principal directions of its input on the public speakers (clean), so "
                  f"DP-SGD noises {d_out} x k instead of {d_out} x {d_in} of its coordinates (bias, LayerNorms and the "
                  f"client's head as before); same clip, sample rate, noise multiplier and steps, so the same "
                  f"epsilon. k = {d_in} keeps every direction (the same noise; only the coordinates Adam normalises "
                  f"are rotated to the public principal directions). Noised encoder coordinates: those the noise "
                  f"lands on.", "",
                  "| unit | k | k_out | lr | noised encoder coordinates | validation in-domain EER % | "
                  "validation clean EER % | wall s |", "|---|---|---|---|---|---|---|---|"]
        for r in pr["rows"]:
            lines.append(f"| {r['unit']} | {r['k']} | {r['k_out'] or 'all'} | {r['lr']:g} | {r['noised']} | "
                         f"{_pct(r['val'])} | {_pct(r['val_clean'])} | {r['seconds']} |")
        lines.append("")
        for unit, b in pr["best"].items():
            lines.append(f"- per {unit}: best k {b['k']}" + (f" x k_out {b['k_out']}" if b.get("k_out") else "")
                         + f", lr {b['lr']:g}: validation {_pct(b['val'])} % vs the tuned "
                         f"recipe's {_pct(b['baseline_val']) if b['baseline_val'] is not None else '?'} % (lr "
                         f"{b['baseline'].get('lr', 0):g}): " + ("better, run on test as `" + unit + "+prior`"
                                                                if b["helps"] else "no better, not run on test")
                         + (f"; on validation seeds 0-{b['val_seeds']['n'] - 1}: {_pct(b['val_seeds']['prior'][0])} "
                            f"+- {_pct(b['val_seeds']['prior'][1])} % vs {_pct(b['val_seeds']['baseline'][0])} +- "
                            f"{_pct(b['val_seeds']['baseline'][1])} %" if b.get("val_seeds") else ""))
        lines.append("")
    if payload["summary"]:
        lines += ["## Test (held-out speakers)", "",
                  "EER % (mean +- std over seeds); DP columns: EER % / gain kept. `<domain>`: enrolment and test in "
                  "the domain; `<domain>/cross`: clean enrolment, domain test; `clean`: the clean held-out trials.", "",
                  "| condition | pretrain only | non-private | rel. gain | " + " | ".join(f"DP {c}" for c in cols) + " |",
                  "|---|---|---|---|" + "---|" * len(cols)]
        for s in payload["summary"]:
            if s["eer_nonprivate"] is None:
                continue
            npm, nps = s["eer_nonprivate"]
            cells = []
            for c in cols:
                d = s["dp"].get(c)
                cells.append("" if d is None else f"{_pct(d['eer'][0])} +- {_pct(d['eer'][1])} / "
                             f"{d['gain_kept'][0]:.2f} +- {d['gain_kept'][1]:.2f}")
            lines.append(f"| {s['condition']} | {_pct(s['eer_pretrain'])} | {_pct(npm)} +- {_pct(nps)} | "
                         f"{100 * s['nonprivate_relative_gain']:.0f} % | " + " | ".join(cells) + " |")
    lines += ["", payload["notes"]]
    if payload.get("skipped"):
        lines += ["", "Not run (time budget): " + ", ".join(payload["skipped"])]
    return "\n".join(lines) + "\n"


def _series_label(unit: str, prior: dict | None) -> str:
    """``speaker+prior`` -> ``speaker + public basis k=384`` (the k the grid ran with).

    >>> _series_label("utterance+prior", {"best": {"utterance": {"k": 64, "k_out": 0}}})
    'utterance + public basis k=64'
    >>> _series_label("speaker", None)
    'speaker'
    """
    plain, _, tagged = unit.partition("+")
    if not tagged:
        return unit
    b = ((prior or {}).get("best") or {}).get(plain, {})
    k = f" k={b['k']}" + (f"x{b['k_out']}" if b.get("k_out") else "") if b else ""
    return f"{plain} + public basis{k}"


def plot(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    doms = payload["meta"]["domains"]
    fig, axes = plt.subplots(1, len(doms), figsize=(5 * len(doms), 3.8), squeeze=False)
    for ax, dom in zip(axes[0], doms):
        s = next((x for x in payload["summary"] if x["condition"] == dom), None)
        if s is None or s["eer_nonprivate"] is None:
            continue
        series = sorted({k.split("/")[0] for k in s["dp"]})
        for unit in series:
            pts = sorted((float(k.split("/")[1]), v) for k, v in s["dp"].items() if k.split("/")[0] == unit)
            mk = "s" if unit.startswith("speaker") else "o"
            ls = "--" if "+prior" in unit else "-"
            ax.errorbar([e for e, _ in pts], [100 * v["eer"][0] for _, v in pts],
                        yerr=[100 * v["eer"][1] for _, v in pts], marker=mk, ls=ls, capsize=3,
                        label=f"DP per {_series_label(unit, payload.get('prior'))}")
        ax.axhline(100 * s["eer_pretrain"], color="k", ls=":", label="pretrain only")
        ax.axhline(100 * s["eer_nonprivate"][0], color="g", ls="--", label="non-private")
        ax.set_xscale("log", base=2)
        ax.set_title(f"{dom}: enrolment and test in the channel")
        ax.set_xlabel("epsilon (delta 1e-5)")
        ax.set_ylabel("held-out EER (%)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


NOTES = ("Runs use simulation randomness (crops, batches and noise derived from the seed, so every run of a seed "
         "shares its clients' frozen-trunk statistics): the noise is the same Gaussian at the same sigma, the "
         "epsilon is as accounted, but a deployment must use secret randomness (the default). Plain aggregation "
         "(the sum secure aggregation opens is the same). The grid's DP runs per speaker use their own tuned lr, the "
         "tuned clip and the fixed speaker sampling of SPEAKER_UNIT (not tuned). Gain kept is computed per seed against that "
         "seed's non-private run.")


def _public_args(argv: list[str]) -> list[str]:
    """The command line as recorded: ``--legacy-dirs`` (this machine's old paths) shown as ``OLD_RUNS,OLD_DATA``.

    >>> _public_args(["--threads", "1", "--legacy-dirs", "/x/runs,/x/data", "--legacy-dirs=/y,/z"])
    ['--threads', '1', '--legacy-dirs', 'OLD_RUNS,OLD_DATA', '--legacy-dirs=OLD_RUNS,OLD_DATA']
    """
    out, hide = [], False
    for a in argv:
        if hide:
            out.append("OLD_RUNS,OLD_DATA")
            hide = False
        elif a == "--legacy-dirs":
            out.append(a)
            hide = True
        elif a.startswith("--legacy-dirs="):
            out.append("--legacy-dirs=OLD_RUNS,OLD_DATA")
        else:
            out.append(a)
    return out


def _load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def tuning_table(runner_rows: list[dict], domains, *, lever_runs: int = 0, speaker_extra: int = 0,
                 check_runs: tuple[int, int] = (0, 0)) -> dict | None:
    tried = [r for r in runner_rows if r["stage"] == "tune"]
    if not tried:
        return None
    for r in tried:
        r["objective"] = _objective(r, domains)
    dp = [r for r in tried if r["epsilon"] is not None and r.get("unit", "utterance") == "utterance"]
    spk = [r for r in tried if r["epsilon"] is not None and r.get("unit") == "speaker"]
    npr = [r for r in tried if r["epsilon"] is None]
    best_dp = min(dp, key=lambda r: r["objective"]) if dp else None
    best_np = min(npr, key=lambda r: r["objective"]) if npr else None
    best_spk = min(spk, key=lambda r: r["objective"]) if spk else None
    return {"chosen_dp": {"lr": best_dp["lr"], "clip": best_dp["clip"]} if best_dp else None,
            "chosen_np": {"lr": best_np["lr"]} if best_np else None,
            "chosen_speaker": {"lr": best_spk["lr"]} if best_spk else None,
            "configs_dp": len(dp), "configs_np": len(npr), "configs_speaker": len(spk),
            "minutes": round(sum(r["seconds"] for r in tried) / 60, 1),
            "lever_runs": lever_runs, "speaker_extra": speaker_extra, "check_runs": list(check_runs),
            "privacy_cost": (f"not accounted in the ledger. The {len(dp)} DP tuning runs and {lever_runs} lever runs "
                             f"on validation each spend epsilon 8 per utterance of the clients' training speakers "
                             f"({len(spk) + speaker_extra} more spend epsilon 8 per speaker"
                             + (f", {speaker_extra} of them the prior's" if speaker_extra else "") + ")"
                             + (f", and the seed checks of the prior on validation spend epsilon 8 {check_runs[0]} more "
                                f"times per utterance and {check_runs[1]} more times per speaker" if any(check_runs)
                                else "") + "; "
                             f"together, by basic composition, at most {8 * (len(dp) + lever_runs + check_runs[0]):g} "
                             f"per utterance "
                             f"(a loose bound; only the chosen settings leave the tuning). The validation speakers "
                             f"are never trained on; their utterances choose 1 of {len(dp) + lever_runs} (DP) and 1 "
                             f"of {len(npr)} (non-private) settings without DP (at most log2 of that many bits about "
                             f"them)."),
            "tried": tried}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", default="tune,levers,prior,grid",
                    help="any of tune, levers, prior, grid (comma separated)")
    ap.add_argument("--domains", default="callcentre")
    ap.add_argument("--epsilons", default="1,2,4,8")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--units", default="utterance,speaker")
    ap.add_argument("--val-per-client", type=int, default=4)
    ap.add_argument("--speaker-lr", type=float, default=None,
                    help="use this per-speaker lr instead of the tuned one (to start the speaker grid before its "
                         "tuning ends; rows are keyed by config, so only runs at the finally tuned lr are reported)")
    ap.add_argument("--confirm-all", action="store_true", help="run every lever on test, not only those that help")
    ap.add_argument("--time-budget-min", type=float, default=120.0)
    ap.add_argument("--quick", action="store_true", help="smoke: one tuning point each, no levers, seed 0, eps 8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default=str(ROOT / "data"))
    ap.add_argument("--runs", default=str(ROOT / "runs" / "bench_domains"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--legacy-dirs", default=None, metavar="OUT_DIR,DATA_DIR",
                    help="also find rows keyed before keys left the paths out: the --runs and --data they ran with")
    args = ap.parse_args(argv)
    global TUNE_DP, TUNE_NP
    if args.quick:
        args.stages, args.epsilons, args.seeds, args.units = "tune,grid", "8", "0", "utterance"
        TUNE_DP, TUNE_NP = [{"lr": 1e-2, "clip": 0.3}], [{"lr": 1e-3}]
    warnings.filterwarnings("ignore")
    import torch

    from privspk.prepare import prepare_data

    torch.set_num_threads(args.threads)
    stages = {s for s in args.stages.split(",") if s}
    epsilons = [float(e) for e in args.epsilons.split(",") if e]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    units = [u for u in args.units.split(",") if u]
    base = base_config(args)
    domains = list(base.corpus.domains)
    load_start = _load()
    t_prep = time.perf_counter()
    data = prepare_data(base, progress=False)
    train_data, val_data = validation_split(data, per_client=args.val_per_client)
    print(f"data ready in {time.perf_counter() - t_prep:.0f} s; clients {[len(g) for g in train_data.split.clients]} "
          f"speakers after keeping {args.val_per_client} each for validation; validation trials "
          f"{len(val_data.trials)}, test trials {len(data.trials)}; load {load_start}", flush=True)
    cache = TrunkCache(Path(args.runs) / "trunk_cache.pt", data)
    cache.load()
    runner = Runner(Path(args.runs), cache,
                    legacy_dirs=tuple(args.legacy_dirs.split(",", 1)) if args.legacy_dirs else None)
    start = time.perf_counter()
    over = lambda: (time.perf_counter() - start) / 60 > args.time_budget_min  # noqa: E731
    skipped: list[str] = []

    # 1. tuning on the validation split
    tune_rows = []
    if stages & {"tune", "levers", "prior", "grid"}:
        for ov in TUNE_DP:
            cfg, _ = run_config(base, seed=0, epsilon=8.0, unit="utterance", overrides=ov, label=f"val_lr{ov['lr']:g}_c{ov['clip']:g}")
            tune_rows.append(runner.run(cfg, val_data, split="val", stage="tune", info={"seed": 0, "epsilon": 8.0, "unit": "utterance", **ov}))
        for ov in TUNE_NP:
            cfg, _ = run_config(base, seed=0, epsilon=None, unit="utterance", overrides=ov, label=f"val_lr{ov['lr']:g}")
            tune_rows.append(runner.run(cfg, val_data, split="val", stage="tune", info={"seed": 0, "epsilon": None, "unit": "utterance", "clip": None, **ov}))
    tuning = tuning_table([dict(r) for r in tune_rows], domains)
    dp_ov = dict(tuning["chosen_dp"])
    np_ov = dict(tuning["chosen_np"])
    spk_ov = dict(dp_ov)
    if "speaker" in units and stages & {"tune", "prior"}:
        for ov in TUNE_SPEAKER:
            cfg, _ = run_config(base, seed=0, epsilon=8.0, unit="speaker", overrides={**dp_ov, **ov},
                                label=f"val_lr{ov['lr']:g}_c{dp_ov['clip']:g}")
            tune_rows.append(runner.run(cfg, val_data, split="val", stage="tune",
                                        info={"seed": 0, "epsilon": 8.0, "unit": "speaker", "clip": dp_ov["clip"], **ov}))
        tuning = tuning_table([dict(r) for r in tune_rows], domains)
        spk_ov.update(tuning["chosen_speaker"] or {})
    if args.speaker_lr is not None:
        spk_ov["lr"] = args.speaker_lr
    print(f"tuned: DP {dp_ov}, DP per speaker {spk_ov}, non-private {np_ov}", flush=True)

    def write_all(grid_rows, levers):
        payload = {"meta": {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                            "machine": f"{platform.machine()} {platform.processor() or ''}".strip() + f", {os.cpu_count()} cpus",
                            "threads": args.threads, "clients": base.federation.n_clients, "domains": domains,
                            "rounds": base.federation.rounds, "trials": len(data.trials),
                            "heldout": len(data.split.heldout), "seeds": seeds, "val_per_client": args.val_per_client,
                            "val_speakers": len(val_data.split.heldout), "val_trials": len(val_data.trials),
                            "load_start": load_start, "load_end": _load(),
                            "minutes": round((time.perf_counter() - start) / 60, 1),
                            "runs": len(runner.done),
                            "runs_wall_min": round(sum(r["seconds"] for r in runner.done.values()) / 60, 1),
                            "runs_cpu_min": round(sum(r.get("cpu_seconds", 0) for r in runner.done.values()) / 60, 1),
                            "command": " ".join(["python benchmarks/domains.py",
                                                 *_public_args(argv if argv is not None else sys.argv[1:])]),
                            "recipe": {"dp": dp_ov, "nonprivate": np_ov, "speaker": {**spk_ov, **SPEAKER_UNIT}}},
                   "tuning": tuning_table([dict(r) for r in tune_rows], domains,
                                          lever_runs=len([k for k in lever_val if k != "tuned"])
                                          + sum(1 for r in prior_rows if r["unit"] == "utterance"),
                                          speaker_extra=sum(1 for r in prior_rows if r["unit"] == "speaker"),
                                          check_runs=(sum(1 for r in seed_rows if r["unit"] == "utterance"),
                                                      sum(1 for r in seed_rows if r["unit"] == "speaker"))),
                   "levers": levers, "prior": prior_table(), "rows": grid_rows, "summary": summarise(grid_rows),
                   "skipped": skipped, "notes": NOTES}
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "domains.json").write_text(json.dumps(payload, indent=2, default=str))
        (out / "domains.md").write_text(markdown(payload))
        if payload["summary"]:
            plot(payload, out / "domains.png")
        return payload

    # 2. levers on the validation split (seed 0), the tuned DP recipe as the baseline
    lever_val = {}
    if "levers" in stages:
        base_val = next(r for r in tune_rows if r["epsilon"] is not None and r["unit"] == "utterance"
                        and r["lr"] == dp_ov["lr"] and r["clip"] == dp_ov["clip"])
        lever_val["tuned"] = base_val
        for name, change in LEVERS.items():
            cfg, _ = run_config(base, seed=0, epsilon=8.0, unit="utterance", overrides={**dp_ov, **change}, label=f"val_{name}")
            if over() and not runner.has(cfg, split="val"):
                skipped.append(f"lever {name} (validation)")
                continue
            lever_val[name] = runner.run(cfg, val_data, split="val", stage="levers", info={"seed": 0, "epsilon": 8.0, "unit": "utterance", "lever": name})

    # 3. the public-data prior on the validation split (seed 0, epsilon 8), per unit: k x lr
    prior_rows: list[dict] = []
    seed_rows: list[dict] = []  # the seed checks of the best prior and the tuned recipe (validation)
    prior_best: dict[str, dict] = {}  # unit -> the best (k, lr) and whether it beats the unit's tuned recipe
    d_in, d_out = _embedding_dims(base)

    def prior_table():
        if not prior_rows:
            return None
        return {"rows": [{"unit": r["unit"], "k": r["public_subspace"], "k_out": r.get("public_subspace_out", 0),
                          "lr": r["lr"], "val": _objective(r, domains),
                          "val_clean": r["final"]["clean"], "noised": r["noised"], "seconds": r["seconds"]}
                         for r in prior_rows], "best": prior_best, "embedding": [d_in, d_out]}

    if "prior" in stages:
        baseline = {"utterance": (dp_ov, next((r for r in tune_rows if r["epsilon"] is not None
                                               and r["unit"] == "utterance" and r["lr"] == dp_ov["lr"]
                                               and r["clip"] == dp_ov["clip"]), None)),
                    "speaker": (spk_ov, next((r for r in tune_rows if r["unit"] == "speaker"
                                              and r["lr"] == spk_ov["lr"]), None))}
        for unit in units:
            ov0, base_row = baseline[unit]
            for k, k_out, lr in PRIOR_GRID[unit]:
                ov = {**ov0, "lr": lr, "train": {"public_subspace": k, "public_subspace_out": k_out}}
                cfg, _ = run_config(base, seed=0, epsilon=8.0, unit=unit, overrides=ov,
                                    label=_prior_label(k, k_out, lr))
                if over() and not runner.has(cfg, split="val"):
                    skipped.append(f"prior k={k} k_out={k_out} lr={lr:g} {unit} (validation)")
                    continue
                r = runner.run(cfg, val_data, split="val", stage="prior",
                               info={"seed": 0, "epsilon": 8.0, "unit": unit, "lr": lr, "public_subspace": k,
                                     "public_subspace_out": k_out})
                prior_rows.append({**r, "noised": r["trainable"] - d_in * d_out + k * (k_out or d_out)})
            mine = [r for r in prior_rows if r["unit"] == unit]
            if mine:
                best = min(mine, key=lambda r: _objective(r, domains))
                base_obj = _objective(base_row, domains) if base_row is not None else None
                prior_best[unit] = {"k": best["public_subspace"], "k_out": best.get("public_subspace_out", 0),
                                    "lr": best["lr"], "val": _objective(best, domains),
                                    "baseline_val": base_obj, "baseline": {kk: v for kk, v in ov0.items()},
                                    "helps": base_obj is not None and _objective(best, domains) < base_obj}
                # how much of the seed-0 difference is the noise draw: the best and the tuned recipe on the same
                # validation split with other seeds (reported; the choice stays seed 0's, like all tuning here)
                pb = prior_best[unit]
                spread = {"baseline": [base_obj], "prior": [pb["val"]]}
                for seed in PRIOR_VAL_SEEDS:
                    for which, ov, label in (
                            ("baseline", ov0, f"val_lr{ov0['lr']:g}_c{ov0['clip']:g}"),
                            ("prior", {**ov0, "lr": pb["lr"], "train": {"public_subspace": pb["k"],
                                                                      "public_subspace_out": pb["k_out"]}},
                             _prior_label(pb["k"], pb["k_out"], pb["lr"]))):
                        cfg, _ = run_config(base, seed=seed, epsilon=8.0, unit=unit, overrides=ov, label=label)
                        if over() and not runner.has(cfg, split="val"):
                            skipped.append(f"prior seed check {which} seed {seed} {unit} (validation)")
                            continue
                        row = runner.run(cfg, val_data, split="val", stage="prior_seeds",
                                         info={"seed": seed, "epsilon": 8.0, "unit": unit, "lr": ov["lr"],
                                               "which": which})
                        seed_rows.append(row)
                        spread[which].append(_objective(row, domains))
                pb["val_seeds"] = {w: _ms(v) for w, v in spread.items()} | {"n": len(spread["prior"])}
        print(f"prior: {prior_best}", flush=True)

    # 4. the grid on the test trials
    grid_rows: list[dict] = []

    def grid_run(seed, eps, unit, ov, label="", stage="grid", setting=None):
        cfg, tag = run_config(base, seed=seed, epsilon=eps, unit=unit, overrides=ov, label=label)
        if over() and not runner.has(cfg, split="test"):
            skipped.append(f"{stage} {tag}")
            return None
        return runner.run(cfg, train_data, split="test", stage=stage,
                          info={"seed": seed, "epsilon": eps, "unit": setting or unit})

    def levers_table():
        if not lever_val:
            return None
        nps = {r["seed"]: r for r in grid_rows if r["epsilon"] is None}
        out = []
        for name, vrow in lever_val.items():
            test_rows = ([r for r in grid_rows if r["epsilon"] == 8.0 and r["unit"] == "utterance"] if name == "tuned"
                         else confirm.get(name, []))
            test = None
            rs = [r for r in test_rows if r["seed"] in nps]
            if rs:
                d = domains[0]
                test = {"eer": _ms(r["final"][d] for r in rs),
                        "gain_kept": _ms((r["pretrain"][d] - r["final"][d]) / (r["pretrain"][d] - nps[r["seed"]]["final"][d])
                                         for r in rs), "seeds": len(rs)}
            out.append({"lever": name, "change": LEVERS.get(name, dp_ov), "trainable": vrow["trainable"],
                        "val": _objective(vrow, domains), "val_clean": vrow["final"]["clean"], "test": test})
        return out

    confirm: dict[str, list] = {}
    if "grid" in stages:
        # "<unit>+prior": the unit's best public subspace and lr, where it beat the tuned recipe on validation
        units_run = units + [f"{u}+prior" for u in units if prior_best.get(u, {}).get("helps")]
        settings = [(None, "utterance")] + [(e, u) for e in GRID_PRIORITY if e in epsilons for u in units_run]
        settings += [(e, u) for e in sorted(set(epsilons) - set(GRID_PRIORITY), reverse=True) for u in units_run]
        for eps, unit in settings:
            plain_unit, _, prior = unit.partition("+")
            ov = np_ov if eps is None else (spk_ov if plain_unit == "speaker" else dp_ov)
            if prior:
                pb = prior_best[plain_unit]
                ov = {**ov, "lr": pb["lr"], "train": {"public_subspace": pb["k"], "public_subspace_out": pb["k_out"]}}
            for seed in seeds:
                r = grid_run(seed, eps, plain_unit, ov, label="prior" if prior else "", setting=unit)
                if r is not None:
                    grid_rows.append(r)
                    write_all(grid_rows, levers_table())
            if eps == 8.0 and unit == "utterance" and lever_val:
                # confirm on test the levers that beat the tuned recipe on validation
                base_obj = _objective(lever_val["tuned"], domains)
                for name, vrow in lever_val.items():
                    if name == "tuned" or not (args.confirm_all or _objective(vrow, domains) < base_obj):
                        continue
                    for seed in seeds:
                        r = grid_run(seed, 8.0, "utterance", {**dp_ov, **LEVERS[name]}, label=name, stage="confirm")
                        if r is not None:
                            confirm.setdefault(name, []).append(r)
                    write_all(grid_rows, levers_table())
    payload = write_all(grid_rows, levers_table())
    print(markdown(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
