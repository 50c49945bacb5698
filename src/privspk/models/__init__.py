"""Models: the GroupNorm ECAPA encoder, the AAM head and loss, presets by name, fine-tuning
recipes and checkpoints.

>>> import torch
>>> from privspk.models import AAMHead, aam_softmax_loss, build_encoder
>>> enc, head = build_encoder("ecapa_gn_c64", in_dim=40), AAMHead(192, 10)
>>> loss = aam_softmax_loss(head(enc(torch.randn(2, 50, 40))), torch.tensor([1, 7]))
>>> loss.backward(); bool(torch.isfinite(enc.front.conv.weight.grad).all())
True
"""

from __future__ import annotations

from privspk.models.checkpoint import load_encoder, save_encoder
from privspk.models.ecapa import ECAPAEncoder
from privspk.models.finetune import RECIPES, add_adapters, apply_recipe, count_parameters, trainable_parameters_for
from privspk.models.heads import AAMHead, aam_softmax_loss
from privspk.models.registry import build_encoder, list_encoders, register_encoder

__all__ = [
    "RECIPES",
    "AAMHead",
    "ECAPAEncoder",
    "aam_softmax_loss",
    "add_adapters",
    "apply_recipe",
    "build_encoder",
    "count_parameters",
    "list_encoders",
    "load_encoder",
    "register_encoder",
    "save_encoder",
    "trainable_parameters_for",
]
