"""The local hop between a node's ClientApp processes and its long-lived privspk agent.

Flower runs each message in a fresh ``flwr-clientapp`` process, but a node's round
state (its scheme endpoint's keys, its model, its ledger) must outlive one message.
The agent holds it and listens on a Unix socket in the node's run directory; the
ClientApp forwards ``(meta, body)`` there and returns the answer. The socket is
guarded by :mod:`multiprocessing.connection`'s HMAC challenge with a random key kept
in a ``0600`` file next to it, and carries raw bytes only (``send_bytes``; nothing is
pickled).

>>> import tempfile, threading
>>> d = tempfile.mkdtemp()
>>> agent = Agent(d, lambda meta, body: ({"echo": meta["kind"]}, body[::-1]))
>>> t = threading.Thread(target=agent.serve_forever, daemon=True); t.start()
>>> call(d, {"kind": "ping"}, b"abc")
({'echo': 'ping'}, b'cba')
>>> agent.close()
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
from collections.abc import Callable
from multiprocessing.connection import Client, Listener
from pathlib import Path
from typing import Any

from privspk.errors import ConfigError, PrivspkError, ProtocolError

log = logging.getLogger(__name__)

SOCKET_NAME = "agent.sock"
KEY_NAME = "agent.key"
MAX_SOCKET_PATH = 100  # AF_UNIX paths are limited to ~108 bytes

Handler = Callable[[dict[str, Any], bytes], tuple[dict[str, Any], bytes]]


def socket_path(run_dir: str | Path) -> Path:
    """Where the agent of the node whose run directory is ``run_dir`` listens."""
    path = Path(run_dir).resolve() / SOCKET_NAME
    if len(str(path)) > MAX_SOCKET_PATH:
        raise ConfigError(f"node run directory {run_dir} is too deep for a Unix socket "
                          f"({len(str(path))} > {MAX_SOCKET_PATH} characters); choose a shorter --run-dir")
    return path


class Agent:
    """Serves ``handler(meta, body) -> (meta, body)`` to local ClientApp processes, one call at a time.

    A handler's :class:`~privspk.errors.PrivspkError` goes back as ``{"error": ...}``;
    any other exception too (with its type), so the ClientApp can turn it into a Flower
    error reply and the server counts the node out of that stage.
    """

    def __init__(self, run_dir: str | Path, handler: Handler) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.run_dir, 0o700)
        self.handler = handler
        self.address = socket_path(self.run_dir)
        self.address.unlink(missing_ok=True)
        key_path = self.run_dir / KEY_NAME
        key = secrets.token_bytes(32)
        fd = os.open(key_path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key)
        os.replace(key_path.with_suffix(".tmp"), key_path)
        self._listener = Listener(str(self.address), family="AF_UNIX", authkey=key)
        self._lock = threading.Lock()
        self._closed = False

    def serve_forever(self) -> None:
        """Accept and answer connections until :meth:`close`."""
        while not self._closed:
            try:
                conn = self._listener.accept()
            except (OSError, EOFError) as exc:  # closed, or a client failed the HMAC challenge
                if self._closed:
                    return
                log.warning("agent: refused a local connection (%s)", exc)
                continue
            with conn, self._lock:
                try:
                    meta = json.loads(conn.recv_bytes())
                    body = conn.recv_bytes()
                    out_meta, out_body = self._answer(meta, body)
                    conn.send_bytes(json.dumps(out_meta).encode())
                    conn.send_bytes(out_body)
                except (OSError, EOFError, ValueError) as exc:
                    log.warning("agent: local connection failed (%s)", exc)

    def _answer(self, meta: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
        try:
            return self.handler(meta, body)
        except PrivspkError as exc:
            log.warning("node refused %s request: %s", meta.get("kind"), exc)
            return {"error": f"{type(exc).__name__}: {exc}"}, b""
        except Exception as exc:  # noqa: BLE001 - reported to the server as this node's failure
            log.exception("node failed on %s request", meta.get("kind"))
            return {"error": f"{type(exc).__name__}: {exc}"}, b""

    def close(self) -> None:
        """Stop listening and remove the socket."""
        self._closed = True
        self._listener.close()
        self.address.unlink(missing_ok=True)


def call(run_dir: str | Path, meta: dict[str, Any], body: bytes = b"", *, timeout: float = 600.0
         ) -> tuple[dict[str, Any], bytes]:
    """Ask the agent of the node at ``run_dir``; ProtocolError when it is not running.

    >>> import tempfile
    >>> call(tempfile.mkdtemp(), {"kind": "ping"})
    Traceback (most recent call last):
    ...
    privspk.errors.ProtocolError: client node: no privspk agent is running for this node (start it with `privspk join`)
    """
    address = socket_path(run_dir)
    try:
        key = (Path(run_dir) / KEY_NAME).read_bytes()
        conn = Client(str(address), family="AF_UNIX", authkey=key)
    except (OSError, EOFError):
        raise ProtocolError("no privspk agent is running for this node (start it with `privspk join`)",
                            client="node") from None
    with conn:
        conn.send_bytes(json.dumps(meta).encode())
        conn.send_bytes(bytes(body))
        if not conn.poll(timeout):
            raise ProtocolError(f"the node's agent did not answer within {timeout:g} s", client="node")
        out = json.loads(conn.recv_bytes())
        return out, conn.recv_bytes()
