"""What ``[run] device = "cuda"`` buys: one pretraining step and one DP-SGD step, CPU vs CUDA.

Times the library's own code paths on synthetic features (no corpus needed): a public
pretraining step (:func:`privspk.training.pretrain.pretrain`, Adam, whole encoder) and a
client's DP-SGD step (:func:`privspk.training.local.train_local`, Opacus, utterance-level
Poisson sampling, the ``full`` recipe so the whole trunk trains; and speaker-level DP-SGD).
Each is warmed up first (CUDA context, cuDNN autotuning, Opacus hooks), then timed over
``--steps`` steps; the figure is seconds per step. With no CUDA device the CPU figures are
measured and the script says "no CUDA device" (the speed-up is then not measured).

Writes ``results/gpu_speedup.json`` and ``.md``.

Run: ``python benchmarks/gpu_speedup.py`` (``--encoder ecapa_gn_c256 --batch 128`` for a
larger model; ``--devices cuda`` to skip the CPU side).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import platform
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results"


def _data(*, speakers: int, utts: int, frames: int, bins: int, seed: int):
    import torch

    from privspk.training.data import ClientData

    gen = torch.Generator().manual_seed(seed)
    feats, pairs = {}, []
    for s in range(speakers):
        centre = torch.randn(bins, generator=gen)
        for u in range(utts):
            utt = f"s{s:03d}_u{u:03d}"
            feats[utt] = centre + torch.randn(frames, bins, generator=gen)
            pairs.append((utt, f"s{s:03d}"))
    return ClientData.from_pairs(feats.__getitem__, pairs)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_pretrain(device: str, *, encoder: str, data, bins: int, batch: int, crop: int, steps: int,
                  warmup: int) -> float:
    """Seconds per pretraining step on ``device`` (after ``warmup`` untimed steps)."""
    import torch

    from privspk.models import build_encoder
    from privspk.training.pretrain import pretrain

    torch.manual_seed(0)
    enc = build_encoder(encoder, in_dim=bins)
    pretrain(enc, data, steps=warmup, batch_size=batch, lr=1e-3, crop_frames=crop, seed=0, device=device)
    _sync(device)
    t0 = time.perf_counter()
    pretrain(enc, data, steps=steps, batch_size=batch, lr=1e-3, crop_frames=crop, seed=1, device=device)
    _sync(device)
    return (time.perf_counter() - t0) / steps


def time_dp_step(device: str, *, unit: str, encoder: str, data, bins: int, batch: int, crop: int, steps: int,
                 warmup: int) -> float:
    """Seconds per DP-SGD step of one client's round on ``device`` (``full`` recipe)."""
    import torch

    from privspk.models import build_encoder
    from privspk.models.heads import AAMHead
    from privspk.privacy import Mechanism
    from privspk.training.local import LocalSettings, sample_rate_for, train_local
    from privspk.training.net import SpeakerNet

    torch.manual_seed(0)
    enc = build_encoder(encoder, in_dim=bins)
    net = SpeakerNet(enc, AAMHead(enc.embed_dim, data.n_speakers))
    q = sample_rate_for(data, unit=unit, batch_size=batch, speaker_batch=4)
    dp = Mechanism(unit=unit, noise_multiplier=1.0, clip=1.0, sample_rate=q, steps=steps, delta=1e-5,
                   randomness="simulation")
    settings = LocalSettings(batch_size=batch, physical_batch=batch * 2, lr=1e-3, crop_frames=crop, speaker_batch=4,
                             device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_local(net, data, settings, dp=dataclasses.replace(dp, steps=warmup), seed=0)
        _sync(device)
        t0 = time.perf_counter()
        train_local(net, data, settings, dp=dp, seed=1)
        _sync(device)
    return (time.perf_counter() - t0) / steps


def measure(args: argparse.Namespace) -> dict:
    import torch

    data = _data(speakers=args.speakers, utts=args.utts, frames=args.frames, bins=args.bins, seed=0)
    devices = [d for d in args.devices.split(",") if d]
    cuda = torch.cuda.is_available()
    rows: dict[str, dict[str, float | None]] = {}
    for dev in devices:
        if dev.startswith("cuda") and not cuda:
            rows[dev] = None  # type: ignore[assignment]
            continue
        common = dict(encoder=args.encoder, data=data, bins=args.bins, batch=args.batch, crop=args.crop,
                      steps=args.steps, warmup=args.warmup)
        rows[dev] = {
            "pretrain_step_s": time_pretrain(dev, **common),
            "dp_sgd_utterance_step_s": time_dp_step(dev, unit="utterance", **common),
            "dp_sgd_speaker_step_s": time_dp_step(dev, unit="speaker", **common),
        }
        print(f"{dev}: " + ", ".join(f"{k} {v:.4f}" for k, v in rows[dev].items()), flush=True)
    speedup = None
    if rows.get("cpu") and rows.get("cuda"):
        speedup = {k: rows["cpu"][k] / rows["cuda"][k] for k in rows["cpu"]}
    return {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": {"python": platform.python_version(), "torch": torch.__version__, "cuda_available": cuda,
                 "gpu": torch.cuda.get_device_name(0) if cuda else None, "cpu_threads": torch.get_num_threads()},
        "settings": {k: getattr(args, k) for k in ("encoder", "batch", "crop", "steps", "warmup", "speakers",
                                                     "utts", "frames", "bins")},
        "seconds_per_step": rows,
        "speedup_cpu_over_cuda": speedup,
        "note": None if cuda else "no CUDA device: only the CPU side was measured; the speed-up is not measured",
    }


def markdown(doc: dict) -> str:
    s = doc["settings"]
    lines = [
        "# CPU vs CUDA: seconds per training step",
        "",
        f"Encoder {s['encoder']}, batch {s['batch']} crops of {s['crop']} frames x {s['bins']} bins, "
        f"{s['steps']} timed steps after {s['warmup']} warm-up steps; torch {doc['host']['torch']}, "
        f"GPU: {doc['host']['gpu'] or 'none'}.",
        "",
        "| step | " + " | ".join(doc["seconds_per_step"]) + " | speed-up |",
        "|---" * (len(doc["seconds_per_step"]) + 2) + "|",
    ]
    keys = ("pretrain_step_s", "dp_sgd_utterance_step_s", "dp_sgd_speaker_step_s")
    for k in keys:
        cells = []
        for row in doc["seconds_per_step"].values():
            cells.append("no CUDA device" if row is None else f"{row[k]:.4f}")
        sp = doc["speedup_cpu_over_cuda"]
        lines.append(f"| {k} | " + " | ".join(cells) + f" | {sp[k]:.1f}x |" if sp else
                     f"| {k} | " + " | ".join(cells) + " | not measured |")
    if doc["note"]:
        lines += ["", doc["note"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoder", default="ecapa_gn_c128")
    p.add_argument("--devices", default="cpu,cuda", help="comma-separated: cpu, cuda")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--crop", type=int, default=200)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--speakers", type=int, default=32)
    p.add_argument("--utts", type=int, default=8)
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--bins", type=int, default=40)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    doc = measure(args)
    if doc["note"]:
        print(doc["note"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_speedup.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    md = markdown(doc)
    (args.out / "gpu_speedup.md").write_text(md, encoding="utf-8")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
