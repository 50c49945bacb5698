"""Non-private pretraining of the encoder on *public* speakers.

Public pretraining is the standard recipe that makes DP fine-tuning work on small
data: the encoder starts as a speaker model, and private rounds only adapt it.

>>> import torch
>>> from privspk.models import build_encoder
>>> from privspk.training.data import ClientData
>>> torch.manual_seed(0) and None
>>> feats = {f"u{i}": torch.randn(60, 40) + (i % 2) for i in range(8)}
>>> data = ClientData.from_pairs(feats.__getitem__, [(f"u{i}", f"s{i % 2}") for i in range(8)])
>>> enc = build_encoder("ecapa_gn_c64", in_dim=40)
>>> report = pretrain(enc, data, steps=2, batch_size=4, lr=1e-3, crop_frames=40, seed=0)
>>> report.steps, len(report.losses)
(2, 2)
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from privspk.device import torch_device
from privspk.errors import ConfigError
from privspk.features.crops import CropDataset
from privspk.models.heads import AAMHead, aam_softmax_loss
from privspk.training.data import ClientData
from privspk.training.net import SpeakerNet

log = logging.getLogger(__name__)


@dataclass
class PretrainReport:
    """What pretraining did: steps, wall time, the loss curve and final training accuracy."""

    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    train_accuracy: float = float("nan")


def cosine_lr(step: int, total: int, *, warmup: int) -> float:
    """Learning-rate factor: linear warm-up then cosine decay to 5 %.

    >>> [round(cosine_lr(s, 100, warmup=10), 3) for s in (0, 9, 10, 55, 99)]
    [0.1, 1.0, 1.0, 0.525, 0.05]
    """
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def pretrain(
    encoder: nn.Module,
    data: ClientData,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    crop_frames: int,
    seed: int,
    margin: float = 0.2,
    scale: float = 30.0,
    progress: bool = False,
    device: str | torch.device = "cpu",
) -> PretrainReport:
    """Train ``encoder`` (in place) with a fresh AAM head on ``data`` for ``steps`` batches.

    The encoder and the batches go to ``device`` for training; the encoder is handed back
    on the CPU (also when training fails).
    """
    if steps < 0 or batch_size < 1:
        raise ConfigError(f"steps must be >= 0 and batch_size >= 1, got {steps}, {batch_size}")
    dev = torch_device(device)
    torch.manual_seed(seed)
    head = AAMHead(encoder.embed_dim, data.n_speakers)
    net = SpeakerNet(encoder, head).to(dev).train()
    try:
        return _pretrain_steps(net, data, steps=steps, batch_size=batch_size, lr=lr, crop_frames=crop_frames,
                               seed=seed, margin=margin, scale=scale, progress=progress, dev=dev)
    finally:
        net.to("cpu")


def _pretrain_steps(net: SpeakerNet, data: ClientData, *, steps: int, batch_size: int, lr: float, crop_frames: int,
                    seed: int, margin: float, scale: float, progress: bool, dev: torch.device) -> PretrainReport:
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    ds = CropDataset(data.getter, data.utt_ids, data.labels, n_frames=crop_frames, seed=seed)
    rng = np.random.default_rng(seed)
    losses: list[float] = []
    correct = seen = 0
    start = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc="pretrain (public speakers)", unit="step", leave=False)
    per_epoch = max(1, len(ds) // batch_size)
    order = np.array([], dtype=np.int64)
    for step in range(steps):
        if order.size < batch_size:
            ds.set_epoch(step // per_epoch)
            order = np.concatenate([order, rng.permutation(len(ds))])
        idx, order = order[:batch_size], order[batch_size:]
        xs, ys = zip(*(ds[int(i)] for i in idx))
        x = torch.stack(xs).to(dev)
        y = torch.tensor(ys).to(dev)
        for g in opt.param_groups:
            g["lr"] = lr * cosine_lr(step, steps, warmup=max(1, steps // 20))
        cos = net(x)
        loss = aam_softmax_loss(cos, y, margin=margin, scale=scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if step >= steps - max(1, steps // 10):
            correct += int((cos.argmax(1) == y).sum())
            seen += len(y)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    if bar is not None:
        bar.close()
    net.eval()
    return PretrainReport(
        steps=steps,
        seconds=time.perf_counter() - start,
        losses=losses,
        train_accuracy=correct / seen if seen else float("nan"),
    )
