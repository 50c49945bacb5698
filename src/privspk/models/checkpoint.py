"""Save and load encoders as (registry name, sizes, weights, JSON-able metadata).

A checkpoint is a ``torch.save`` file holding only plain types and tensors, read back with
``torch.load(weights_only=True)`` (no arbitrary pickles run on load). The encoder is rebuilt
from its registry name and ``in_dim`` (plus adapters, when it had them) and its weights loaded
strictly; a SHA-256 of the weights, stored beside them, catches silent corruption.

>>> import tempfile, os, torch
>>> from privspk.models.registry import build_encoder
>>> enc = build_encoder("ecapa_gn_c64", in_dim=40)
>>> with tempfile.TemporaryDirectory() as d:
...     save_encoder(os.path.join(d, "enc.pt"), enc, name="ecapa_gn_c64", in_dim=40, extra={"round": 3})
...     model, meta = load_encoder(os.path.join(d, "enc.pt"))
>>> meta["extra"], bool(torch.equal(model.front.conv.weight, enc.front.conv.weight))
({'round': 3}, True)
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import secrets
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from privspk.errors import CheckpointError, ConfigError, ModelError
from privspk.models.finetune import add_adapters, adapter_rank, count_parameters
from privspk.models.registry import build_encoder

__all__ = ["CHECKPOINT_FORMAT", "load_encoder", "save_encoder", "state_sha256"]

#: Value of the ``format`` field of every encoder checkpoint.
CHECKPOINT_FORMAT = "privspk-encoder"
_VERSION = 1


def state_sha256(state: Mapping[str, Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a state dict, in name order.

    >>> import torch
    >>> a = state_sha256({"w": torch.zeros(2)})
    >>> a == state_sha256({"w": torch.zeros(2)}), a == state_sha256({"w": torch.ones(2)})
    (True, False)
    """
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _unwrap(model: nn.Module) -> nn.Module:
    # Opacus' GradSampleModule keeps the wrapped model in ``_module``.
    inner = getattr(model, "_module", None)
    return inner if isinstance(inner, nn.Module) else model


def _build(name: str, in_dim: int, rank: int | None) -> nn.Module:
    model = build_encoder(name, in_dim=in_dim)
    if rank is not None:
        add_adapters(model, rank=rank)
    return model


def save_encoder(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    name: str,
    in_dim: int,
    extra: Mapping[str, object] | None = None,
) -> None:
    """Write ``model``'s weights and metadata to ``path`` (atomically: a temp file, then a rename).

    ``name`` and ``in_dim`` must rebuild the same architecture with :func:`build_encoder`
    (checked now, so a wrong name fails at save time, not at load time). ``extra`` is any
    JSON-able mapping (round number, corpus, privacy spend...). A model wrapped by Opacus is
    unwrapped. Raises :class:`~privspk.errors.ModelError` for a mismatch and
    :class:`~privspk.errors.ConfigError` for ``extra`` that JSON cannot hold.

    Example:
        >>> import tempfile, os
        >>> from privspk.models.registry import build_encoder
        >>> enc = build_encoder("ecapa_gn_c64", in_dim=40)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     save_encoder(os.path.join(d, "x.pt"), enc, name="ecapa_gn_c128", in_dim=40)
        Traceback (most recent call last):
        ...
        privspk.errors.ModelError: model does not match encoder 'ecapa_gn_c128' with in_dim=40: 134 tensors differ in shape, e.g. front.conv.weight: (64, 40, 5) vs (128, 40, 5); pass the name and in_dim the model was built with
    """
    model = _unwrap(model)
    extra_dict = dict(extra or {})
    try:
        extra_json = json.loads(json.dumps(extra_dict, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"checkpoint extra must be JSON-able (str keys, finite numbers, lists, dicts): {exc}") from exc
    if extra_json != extra_dict:
        raise ConfigError(
            "checkpoint extra would change through JSON (non-str keys or tuples?); "
            "use str keys and lists so it loads back equal"
        )
    state = {key: value.detach().cpu().clone() for key, value in model.state_dict().items()}
    rank = adapter_rank(model)
    reference = _build(name, in_dim, rank).state_dict()
    missing = sorted(set(reference) - set(state))
    unexpected = sorted(set(state) - set(reference))
    mismatched = [k for k in reference if k in state and reference[k].shape != state[k].shape]
    if missing or unexpected or mismatched:
        detail = []
        if missing:
            detail.append(f"missing {missing[:3]}")
        if unexpected:
            detail.append(f"unexpected {unexpected[:3]}")
        if mismatched:
            k = mismatched[0]
            detail.append(
                f"{len(mismatched)} tensors differ in shape, e.g. {k}: "
                f"{tuple(state[k].shape)} vs {tuple(reference[k].shape)}"
            )
        raise ModelError(
            f"model does not match encoder {name!r} with in_dim={in_dim}: {'; '.join(detail)}; "
            "pass the name and in_dim the model was built with"
        )
    meta = {
        "name": name,
        "in_dim": in_dim,
        "embed_dim": int(getattr(model, "embed_dim", 0)),
        "adapter_rank": rank,
        "n_parameters": count_parameters(model),
        "torch_version": str(torch.__version__),
        "extra": extra_json,
    }
    blob = {
        "format": CHECKPOINT_FORMAT,
        "version": _VERSION,
        "meta": meta,
        "state_sha256": state_sha256(state),
        "state_dict": state,
    }
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as fh:  # a Python file: a refused write is an OSError naming the path
            torch.save(blob, fh)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_encoder(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, object]]:
    """Rebuild the encoder saved at ``path``; return ``(model, meta)`` with the model in eval mode.

    ``meta`` has ``name``, ``in_dim``, ``embed_dim``, ``adapter_rank``, ``n_parameters``,
    ``torch_version`` and ``extra``. Raises :class:`~privspk.errors.CheckpointError` for a
    missing, truncated, altered or foreign file, or one that does not fit its architecture.

    Example:
        >>> import tempfile, os
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = os.path.join(d, "bad.pt")
        ...     with open(p, "wb") as fh:
        ...         _ = fh.write(b"not a checkpoint")
        ...     load_encoder(p)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        privspk.errors.CheckpointError: .../bad.pt is not a readable torch checkpoint (...); it is truncated or not a privspk encoder file
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        raise CheckpointError(
            f"{path} is not a readable torch checkpoint ({type(exc).__name__}); "
            "it is truncated or not a privspk encoder file"
        ) from exc
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a privspk encoder checkpoint (no format {CHECKPOINT_FORMAT!r})")
    if blob.get("version") != _VERSION:
        raise CheckpointError(f"{path}: checkpoint version {blob.get('version')!r}, this privspk reads {_VERSION}")
    meta, state = blob.get("meta"), blob.get("state_dict")
    if not isinstance(meta, dict) or not isinstance(state, dict):
        raise CheckpointError(f"{path}: checkpoint lacks its meta or state_dict")
    if state_sha256(state) != blob.get("state_sha256"):
        raise CheckpointError(f"{path}: weights do not match their SHA-256; the file is corrupt, restore it")
    name, in_dim, rank = meta.get("name"), meta.get("in_dim"), meta.get("adapter_rank")
    try:
        model = _build(name, in_dim, rank)  # type: ignore[arg-type]
    except (ModelError, ConfigError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild encoder {name!r} (in_dim={in_dim!r}): {exc}") from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit encoder {name!r}: {exc}") from exc
    model.eval()
    return model, meta
