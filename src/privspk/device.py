"""Which torch device a run trains and embeds on: ``[run] device = "auto" | "cpu" | "cuda"``.

``cpu`` is the default and the path CI checks; ``cuda`` refuses to start without a CUDA
device instead of silently falling back; ``auto`` takes CUDA when torch sees one, else the
CPU. Public pretraining, local DP-SGD and embedding extraction move their model and
batches to the resolved device and hand their results back on the CPU (before secure
aggregation, the ledger or a checkpoint sees them). Torch is imported only when a device
is resolved, so reading a config stays torch-free.

>>> resolve_device("cpu")
device(type='cpu')
>>> resolve_device("gpu")
Traceback (most recent call last):
...
privspk.errors.ConfigError: device must be one of auto|cpu|cuda, got 'gpu'
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from privspk.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

__all__ = ["DEVICES", "on_device", "resolve_device", "torch_device"]

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
"""The values ``[run] device`` accepts."""


def resolve_device(name: str) -> torch.device:
    """The torch device ``name`` (one of :data:`DEVICES`) stands for on this machine.

    ``cuda`` without a CUDA device is a :class:`~privspk.errors.ConfigError` that says so
    and what to set instead.

    >>> import torch
    >>> resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    True
    """
    if name not in DEVICES:
        raise ConfigError(f"device must be one of {'|'.join(DEVICES)}, got {name!r}")
    import torch

    if name == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if name == "cuda" and not available:
        raise ConfigError('[run] device = "cuda" but torch sees no CUDA device on this machine '
                          f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
                          'set device = "cpu" or "auto", or install a CUDA build of torch')
    return torch.device("cuda" if available else "cpu")


def torch_device(device: str | torch.device) -> torch.device:
    """``device`` as a :class:`torch.device` (a name torch knows, e.g. ``"cpu"``, ``"cuda:1"``), else ConfigError.

    This is what the training and embedding functions accept; unlike :func:`resolve_device` it
    does not check that the device exists.

    >>> torch_device("cuda:1")
    device(type='cuda', index=1)
    >>> torch_device("gpu")
    Traceback (most recent call last):
    ...
    privspk.errors.ConfigError: device must name a torch device such as 'cpu' or 'cuda', got 'gpu'
    """
    import torch

    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device must name a torch device such as 'cpu' or 'cuda', got {device!r}") from exc


@contextmanager
def on_device(module: nn.Module, device: str | torch.device) -> Iterator[torch.device]:
    """Move ``module`` to ``device`` for the ``with`` block and back to where it was afterwards.

    >>> import torch
    >>> lin = torch.nn.Linear(2, 1)
    >>> with on_device(lin, "cpu") as dev:
    ...     dev.type, lin.weight.device.type
    ('cpu', 'cpu')
    """
    dev = torch_device(device)
    first = next(module.parameters(), None)
    home = first.device if first is not None else None
    module.to(dev)
    try:
        yield dev
    finally:
        if home is not None:
            module.to(home)
