"""Stand-ins shared by the training tests: a tiny encoder and synthetic, separable speakers."""

from __future__ import annotations

import torch

from privspk.models.ecapa import ECAPAEncoder
from privspk.models.heads import AAMHead
from privspk.training.data import ClientData
from privspk.training.net import SpeakerNet

IN_DIM = 8


def tiny_encoder(seed: int = 0) -> ECAPAEncoder:
    """A ~10k-parameter GroupNorm ECAPA encoder (8 bins in, 16-dim embeddings out)."""
    torch.manual_seed(seed)
    return ECAPAEncoder(IN_DIM, channels=16, embed_dim=16, dilations=(2, 3), attention_channels=8)


def synthetic_features(
    n_speakers: int, utts_per_speaker: int, *, frames: int = 40, seed: int = 0, offset: float = 2.0
) -> tuple[dict[str, torch.Tensor], list[tuple[str, str]]]:
    """``utt_id -> (frames, IN_DIM)`` features and ``(utt_id, speaker)`` pairs.

    Each speaker has its own mean vector (a per-speaker offset of size ``offset``), so the
    speakers are separable; utterance lengths vary around ``frames``.
    """
    gen = torch.Generator().manual_seed(seed)
    feats: dict[str, torch.Tensor] = {}
    pairs: list[tuple[str, str]] = []
    for s in range(n_speakers):
        centre = offset * torch.randn(IN_DIM, generator=gen)
        for u in range(utts_per_speaker):
            n = frames + int(torch.randint(-frames // 4, frames // 4 + 1, (1,), generator=gen))
            utt = f"s{s:02d}_u{u:02d}"
            feats[utt] = centre + torch.randn(n, IN_DIM, generator=gen)
            pairs.append((utt, f"s{s:02d}"))
    return feats, pairs


def client_data(n_speakers: int, utts_per_speaker: int, *, frames: int = 40, seed: int = 0) -> ClientData:
    """A client's :class:`ClientData` over synthetic features."""
    feats, pairs = synthetic_features(n_speakers, utts_per_speaker, frames=frames, seed=seed)
    return ClientData.from_pairs(feats.__getitem__, pairs)


def tiny_net(n_speakers: int, *, seed: int = 0, freeze_front: bool = False) -> SpeakerNet:
    """Tiny encoder + AAM head; ``freeze_front`` freezes the front TDNN and the first block."""
    enc = tiny_encoder(seed)
    torch.manual_seed(seed + 1)
    net = SpeakerNet(enc, AAMHead(enc.embed_dim, n_speakers))
    if freeze_front:
        for name, p in net.named_parameters():
            if name.startswith(("encoder.front", "encoder.block1")):
                p.requires_grad_(False)
    return net


def state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of every parameter, by name."""
    return {n: p.detach().clone() for n, p in net.named_parameters()}
