"""What Flower's deployment engine costs: the same run in-process and through real processes on loopback.

Runs a config (default: the demo preset, its first ``--rounds`` rounds) twice with the
same seeds:

1. in-process (``privspk.train``): clients train one after the other in this process;
2. deployed (``privspk deploy-demo`` machinery): a SuperLink and one SuperNode per
   client as separate processes on 127.0.0.1, the ServerApp driving the rounds.

Per round it records the wall time and where it goes: ``train`` (the phase from the
``train`` messages to the last report; the nodes' own training time is reported
apart, so ``train - max(node train)`` is transport and start-up of that phase),
``secagg`` (all scheme stages: crypto plus transport), the transport of the ServerApp's
push/pull loop (time inside ``push_messages`` and time waiting for replies, number of
polls) and the held-out evaluation (server side, in both runs). Start-up times (SuperLink
listening, nodes set up) are reported once. Writes ``results/deploy_cost.json`` and
``.md``; the target is a deployed round within 2x the in-process round.

Run: ``python benchmarks/deploy_cost.py --data data`` (needs ``make corpus``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LEGS = ("down", "start", "setup", "pull", "load", "app", "up")
DEFAULT_OUT = HERE / "results"
TARGET_RATIO = 2.0


def in_process(cfg) -> list[dict]:
    from privspk.api import train

    rows: list[dict] = []
    train(cfg, progress=False, overwrite=True, on_round=rows.append)
    return rows


def deployed(cfg, root: Path) -> tuple[list[dict], dict, float]:
    from privspk.runtimes.flower.demo import LocalFederation
    from privspk.runtimes.flower.launch import run

    fed = LocalFederation(root, data_dir=Path(cfg.data_dir), clients=cfg.federation.n_clients, keyholder=False)
    try:
        t0 = time.perf_counter()
        up = fed.start()
        done = run(config_text=cfg.to_toml(), superlink=fed.superlink, insecure=True, ca=None, data_dir=cfg.data_dir,
                   out_dir=cfg.out_dir, name=cfg.name, on_line=lambda s: print("  deployed:", s, flush=True))
        total = time.perf_counter() - t0
    finally:
        fed.close()
    events = [json.loads(x) for x in (Path(cfg.out_dir) / cfg.name / "progress.jsonl").read_text().splitlines()]
    start = next(e for e in events if e["event"] == "start")
    rows = [e["row"] for e in events if e["event"] == "round"]
    return rows, {"superlink_listen_s": round(up, 2), **start["startup_seconds"], "done": done.get("event")}, total


def summarise(inproc: list[dict], dep: list[dict]) -> dict:
    def mean(xs):
        return round(statistics.fmean(xs), 3) if xs else None

    out = {
        "in_process": {"round_s": mean([r["round_seconds"] for r in inproc]),
                       "train_s": mean([r["train_seconds"] for r in inproc]),
                       "secagg_s": mean([r["secagg_seconds"] for r in inproc]),
                       "eval_s": mean([r["eval"]["seconds"] for r in inproc if "eval" in r])},
        "deployed": {"round_s": mean([r["round_seconds"] for r in dep]),
                     "train_s": mean([r["train_seconds"] for r in dep]),
                     "node_train_max_s": mean([max(r["transport"]["node_train_seconds"].values() or [0])
                                              for r in dep]),
                     "secagg_s": mean([r["secagg_seconds"] for r in dep]),
                     "push_s": mean([r["transport"].get("push_seconds", 0) for r in dep]),
                     "wait_s": mean([r["transport"].get("wait_seconds", 0) for r in dep]),
                     "polls": mean([r["transport"].get("polls", 0) for r in dep]),
                     "node_crypto_s": mean([r["transport"].get("node_crypto_seconds", 0) for r in dep]),
                     "server_crypto_s": mean([r["transport"].get("server_crypto_seconds", 0) for r in dep]),
                     "eval_s": mean([r.get("eval_seconds", 0) for r in dep]),
                     "exchanges": mean([r["transport"].get("exchanges", 0) for r in dep]),
                     "legs_s": {leg: mean([r["transport"].get("legs_seconds", {}).get(leg, 0) for r in dep])
                                for leg in LEGS}},
    }
    d, i = out["deployed"], out["in_process"]
    out["ratio_round"] = round(d["round_s"] / i["round_s"], 2) if i["round_s"] else None
    out["transport_overhead_train_s"] = round(d["train_s"] - d["node_train_max_s"], 3)
    out["transport_overhead_secagg_s"] = round(d["secagg_s"] - i["secagg_s"], 3)
    out["target"] = {"ratio_max": TARGET_RATIO, "met": out["ratio_round"] is not None and
                     out["ratio_round"] <= TARGET_RATIO}
    return out


def markdown(payload: dict) -> str:
    s, meta = payload["summary"], payload["meta"]
    i, d = s["in_process"], s["deployed"]
    lines = [
        "# Deployed (Flower, loopback) vs in-process rounds",
        "",
        f"Config `{meta['config']}`, {meta['rounds']} round(s), {meta['clients']} clients, scheme "
        f"`{meta['scheme']}`; {meta['machine']}; load average (1, 5, 15 min) before the in-process run "
        f"{meta['loadavg']}, before the deployed run {meta.get('loadavg_deployed')}, at the end "
        f"{meta.get('loadavg_end')}.",
        "",
        "| per round (mean) | in-process | deployed |",
        "|---|---:|---:|",
        f"| whole round (s) | {i['round_s']} | {d['round_s']} |",
        f"| train phase (s) | {i['train_s']} | {d['train_s']} |",
        f"| slowest node's own training (s) | - | {d['node_train_max_s']} |",
        f"| secure aggregation, all stages (s) | {i['secagg_s']} | {d['secagg_s']} |",
        f"| scheme crypto: slowest node per stage, summed (s) | - | {d.get('node_crypto_s')} |",
        f"| scheme crypto: server round (s) | - | {d.get('server_crypto_s')} |",
        f"| ServerApp inside push_messages (s) | - | {d['push_s']} |",
        f"| ServerApp waiting for replies (s) | - | {d['wait_s']} |",
        f"| polls of the push/pull loop | - | {d['polls']} |",
        f"| held-out evaluation (s, not in the round) | {i['eval_s']} | {d['eval_s']} |",
        f"| Flower exchanges (one message per node each) | - | {d.get('exchanges')} |",
        "",
        "Where each exchange's time goes: the path of its last reply, summed over the round's exchanges "
        "(wall clocks of the processes; loopback only): push end -> ClientApp forked on the node (`down`: "
        "the SuperNode's poll of the SuperLink and its fetch of the message's objects, negative when the "
        "node starts before the ServerApp's push returns), fork -> ClientApp handler (`start` = `setup`: "
        "the ClientApp's HTTP client and threads, + `pull`: its pull of the message from the SuperNode, + "
        "`load`: FAB and app), handler (`app`: the node's privspk work, training included), handler end -> "
        f"reply seen by the ServerApp (`up`): {json.dumps(d.get('legs_s'))}.",
        "",
        f"Deployed / in-process round: **{s['ratio_round']}x** (target <= {TARGET_RATIO}x: "
        f"{'met' if s['target']['met'] else 'NOT met'}).",
        f"Transport and per-message start-up in the train phase: {s['transport_overhead_train_s']} s; "
        f"extra time of the scheme stages over the in-process crypto: {s['transport_overhead_secagg_s']} s.",
        "",
        "Read with care: both runs share a 2-core machine with other jobs, and the load average moved "
        "between them (recorded above and in the JSON), so the ratio mixes machine load with the "
        "runtime's cost. In-process, clients train one after the other in one process; deployed, each "
        "node trains in its own process at the same time. The transport's own cost is the scheme-stage "
        "row minus its crypto rows: every stage is one Flower round trip per node.",
        "",
        f"Start-up: {json.dumps(payload['startup'])}.",
        "",
        f"Command: `{meta['command']}`",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from privspk.config import RunConfig

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", help="run config TOML (default: the demo preset)")
    p.add_argument("--data", default="data", help="data folder (prepared with `make corpus`)")
    p.add_argument("--rounds", type=int, default=2, help="rounds to time (default 2)")
    p.add_argument("--work", help="scratch folder for runs and node state (default: a new temporary folder)")
    p.add_argument("--threads", type=int, help="torch threads of every process (default: the config's; the "
                   "results go to deploy_cost_threads<N>.json/.md)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    import signal

    # a SIGTERM (e.g. `timeout`) unwinds through LocalFederation.close: no node process is left running
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cfg = RunConfig.load(args.config) if args.config else RunConfig.preset("demo")
    if args.threads is not None:
        cfg = cfg.replace(threads=args.threads)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="privspk_deploy_cost-"))
    cfg = cfg.replace(data_dir=str(Path(args.data).resolve()), out_dir=str(work / "runs"),
                      federation=dataclasses.replace(cfg.federation, rounds=args.rounds))
    load = os.getloadavg()
    print(f"in-process: {cfg.federation.n_clients} clients x {args.rounds} rounds ...", flush=True)
    inproc = in_process(cfg.replace(name="bench_inprocess"))
    print("deployed on loopback ...", flush=True)
    load_dep = os.getloadavg()
    dep, startup, total = deployed(cfg.replace(name="bench_deployed"), work / "processes")
    load_end = os.getloadavg()
    config_label = "demo preset"  # never a path of this machine
    if args.config:
        config_label = (f"demo preset with threads = {cfg.threads} ({Path(args.config).name})"
                        if cfg.name == "demo" else Path(args.config).name)
    config_label += f", threads = {cfg.threads}"
    payload = {
        "meta": {"config": config_label, "rounds": args.rounds, "clients": cfg.federation.n_clients,
                 "scheme": cfg.secagg.scheme, "machine": f"{platform.processor() or platform.machine()}, "
                 f"{os.cpu_count()} CPUs", "loadavg": [round(x, 2) for x in load],
                 "loadavg_deployed": [round(x, 2) for x in load_dep], "loadavg_end": [round(x, 2) for x in load_end],
                 "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                 "command": f"python benchmarks/deploy_cost.py --data data --rounds {args.rounds}"
                            + (f" --config {Path(args.config).name}" if args.config else "")
                            + (f" --threads {args.threads}" if args.threads is not None else "")},
        "startup": startup, "deployed_total_s": round(total, 2),
        "rounds": {"in_process": inproc, "deployed": dep},
        "summary": summarise(inproc, dep),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "deploy_cost" if args.threads is None else f"deploy_cost_threads{args.threads}"
    (args.out / f"{stem}.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(payload))
    print(markdown(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
