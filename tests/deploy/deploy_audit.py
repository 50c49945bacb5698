"""Imported by deployed test processes (``PRIVSPK_PLUGINS``) when ``PRIVSPK_AUDIT_DIR`` is set: records secrets.

Every TenSEAL context the process makes (``tenseal.context``) or loads
(``tenseal.context_from``) is logged with ``has_secret_key()``; in the ServerApp, every
payload that crosses Flower (:mod:`privspk.runtimes.flower.exchange`, both directions)
is unpacked as a privspk scheme message and, if its body loads as a TenSEAL context,
logged with ``has_secret_key()`` too. One JSON line per event in
``$PRIVSPK_AUDIT_DIR/<role>-<pid>.jsonl``, ``role`` from ``PRIVSPK_AUDIT_ROLE``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

AUDIT_DIR = os.environ.get("PRIVSPK_AUDIT_DIR")
ROLE = os.environ.get("PRIVSPK_AUDIT_ROLE", "unknown")


def _log(event: dict) -> None:
    path = Path(AUDIT_DIR) / f"{ROLE}-{os.getpid()}.jsonl"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"role": ROLE, "pid": os.getpid(), **event}) + "\n")


def _patch_tenseal() -> None:
    import tenseal as ts

    make, load = ts.context, ts.context_from

    def context(*args, **kwargs):
        ctx = make(*args, **kwargs)
        _log({"event": "make_context", "secret": bool(ctx.has_secret_key())})
        return ctx

    def context_from(*args, **kwargs):
        ctx = load(*args, **kwargs)
        _log({"event": "load_context", "secret": bool(ctx.has_secret_key())})
        return ctx

    ts.context, ts.context_from = context, context_from


def _context_in(payload: bytes, direction: str, meta: dict) -> None:
    """Log the TenSEAL context a scheme message carries, if any (checked with a pristine loader)."""
    import hashlib

    import tenseal.enc_context as enc_context

    from privspk.errors import PrivspkError
    from privspk.secagg.wire import unpack

    if meta.get("kind") != "secagg" or not payload:
        return
    try:
        header, body = unpack(payload)
    except PrivspkError:
        return
    if not body or header.get("stage") not in ("setup", "pledge"):
        return  # contexts travel at setup (key holder -> server) and pledge (server -> clients)
    try:
        ctx = enc_context.Context.load(body, n_threads=1)
    except Exception:  # noqa: BLE001 - not a context (a ciphertext, a digest...)
        return
    _log({"event": "transport_context", "direction": direction, "stage": header.get("stage"),
          "round": header.get("round"), "secret": bool(ctx.has_secret_key()),
          "sha256": hashlib.sha256(body).hexdigest()})


def _patch_transport() -> None:
    import privspk.runtimes.flower.exchange as exchange

    to_content, from_content = exchange.to_content, exchange.from_content

    def audited_to(meta, body=b""):
        _context_in(bytes(body), "to_node", meta)
        return to_content(meta, body)

    def audited_from(content, **kwargs):
        meta, body = from_content(content, **kwargs)
        _context_in(body, "from_node", {"kind": "secagg", **meta})
        return meta, body

    exchange.to_content, exchange.from_content = audited_to, audited_from


if AUDIT_DIR:
    _patch_tenseal()
    if ROLE == "server":
        _patch_transport()
