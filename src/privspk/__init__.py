"""privspk: privacy-preserving federated speaker recognition.

Clients train a shared speaker encoder with DP-SGD (Opacus) on their own
recordings; their updates are quantised and masked or homomorphically encrypted,
and only the sum is ever opened; every round's privacy spend is recorded per
client before an update leaves it.

The public API is imported lazily so that ``import privspk`` stays fast:

>>> import privspk
>>> privspk.__version__
'0.1.0'
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "PrivspkError": "privspk.errors",
    "PrivacyBudget": "privspk.privacy",
    "RunConfig": "privspk.config",
    "train": "privspk.api",
    "TrainResult": "privspk.api",
    "Verifier": "privspk.evaluation",
    "load_corpus": "privspk.corpus",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'privspk' has no attribute {name!r}")
