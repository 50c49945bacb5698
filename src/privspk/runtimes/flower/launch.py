"""``privspk serve`` / ``join`` / ``run``: Flower's ``flower-superlink``, ``flower-supernode`` and ``flwr run``.

- ``serve`` execs ``flower-superlink`` (TLS files + node authentication, or
  ``--insecure`` on a loopback address only, with a warning).
- ``join`` runs the node's privspk agent (:mod:`~privspk.runtimes.flower.node`) and
  Flower's SuperNode in one process. The SuperNode's idle sleeps (3 s between pulls)
  become ``--poll`` seconds for a second after an exchange, then ramp to 0.15 s
  (:func:`idle_interval`); its 0.5 s waits for a local reply become 10 ms; a new task
  is handed to the SuperExec only once its message is complete, with a wake-up
  signal (:func:`patch_task_signal`).
- ``run`` writes a Flower connection for the SuperLink, submits the app in
  ``privspk/runtimes/flower/app`` with the run's settings, and prints the per-round
  lines from the run directory's ``progress.jsonl`` (when the run directory is local).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

from privspk.errors import ConfigError, PrivspkError

log = logging.getLogger(__name__)

APP_DIR = Path(__file__).with_name("app")
TASK_SOCKET = "task.sock"
MAX_SOCKET_PATH = 100
POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
TELEMETRY_ENV = "FLWR_TELEMETRY_ENABLED"
CONNECTION = "privspk"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, without port) is this machine only.

    >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("0.0.0.0"), is_loopback("10.0.0.5")
    (True, True, False, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` -> (host, port), with a clear error.

    >>> split_address("127.0.0.1:9092")
    ('127.0.0.1', 9092)
    """
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"address must be HOST:PORT, got {address!r}")
    return host, int(port)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _insecure_ok(host: str, what: str) -> None:
    if not is_loopback(host):
        raise ConfigError(f"--insecure is only allowed on a loopback address (127.0.0.1, ::1, localhost), not "
                          f"{host!r}: {what} over a network needs TLS (--ca/--cert/--key)")
    warnings.warn(f"{what} runs without TLS or node authentication (--insecure); loopback only, for demos and tests",
                  stacklevel=3)


def _flower_bin(name: str) -> str:
    exe = Path(sys.executable).with_name(name)
    found = str(exe) if exe.exists() else shutil.which(name)
    if not found:
        raise ConfigError(f"{name} not found; install privspk with the 'flower' extra (pip install 'privspk[flower]')")
    return found


# ---------------------------------------------------------------------------------------------- serve
def superlink_command(*, host: str, port: int, insecure: bool, ca: str | None = None, cert: str | None = None,
                      key: str | None = None, auth: bool = False, database: str | None = None,
                      storage: str | None = None) -> list[str]:
    """The ``flower-superlink`` command line for these settings.

    >>> superlink_command(host="127.0.0.1", port=9092, insecure=True)[1:]
    ['--host', '127.0.0.1', '--port', '9092', '--disable-runtime-dependency-installation', '--insecure']
    """
    cmd = [_flower_bin("flower-superlink"), "--host", host, "--port", str(port),
           "--disable-runtime-dependency-installation"]
    if insecure:
        if auth or ca or cert or key:
            raise ConfigError("--insecure cannot be combined with TLS files or node authentication")
        cmd.append("--insecure")
    else:
        if not (ca and cert and key):
            raise ConfigError("a SuperLink needs TLS: pass --ca, --cert and --key (or --insecure on loopback)")
        cmd += ["--ssl-ca-certfile", ca, "--ssl-certfile", cert, "--ssl-keyfile", key]
        if auth:
            cmd.append("--enable-supernode-auth")
    if database:
        cmd += ["--database", database]
    if storage:
        cmd += ["--storage-dir", storage]
    return cmd


def flower_env(poll: float) -> dict[str, str]:
    """Environment for Flower processes: short SuperExec task polling, no telemetry, privspk importable.

    Flower sends a usage event to its telemetry server when a process starts and
    exits, a ClientApp (one per message) included, and waits up to a timeout for it at
    exit. A privacy deployment does not phone home, and the wait costs each message
    time: it is off unless ``FLWR_TELEMETRY_ENABLED`` is already set.

    >>> env = flower_env(0.05)
    >>> env["FLWR_TELEMETRY_ENABLED"] if "FLWR_TELEMETRY_ENABLED" not in os.environ else "0"
    '0'
    """
    env = dict(os.environ)
    env.setdefault(POLL_ENV, f"{max(0.01, poll):g}")
    env.setdefault(TELEMETRY_ENV, "0")
    src = str(Path(__file__).resolve().parents[3])
    if src not in env.get("PYTHONPATH", "").split(os.pathsep):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    bindir = str(Path(sys.executable).parent)  # flower-superexec / flwr-clientapp / flwr-serverapp live here
    if bindir not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = os.pathsep.join(p for p in (bindir, env.get("PATH", "")) if p)
    return env


SERVERAPP_POLL = 0.5
"""Seconds between the SuperLink SuperExec's asks for a submitted run to start (once per run)."""


def serve(*, host: str, port: int, insecure: bool, ca: str | None, cert: str | None, key: str | None,
          auth: bool, poll: float = 0.05, database: str | None = None) -> int:
    """Replace this process by ``flower-superlink`` (the ServerApp runs inside it per submitted run)."""
    if insecure:
        _insecure_ok(host, "the SuperLink")
    cmd = superlink_command(host=host, port=port, insecure=insecure, ca=ca, cert=cert, key=key, auth=auth,
                            database=database)
    print(f"privspk serve: {' '.join(cmd)}", flush=True)
    # the SuperLink's SuperExec asks it for a submitted run to start: a run starts at most
    # SERVERAPP_POLL s late, instead of the SuperLink answering 1/poll requests a second for nothing
    # (at 0.05 s that was a quarter of all the HTTP requests of a deployed run)
    env = flower_env(poll)
    env[POLL_ENV] = f"{max(poll, SERVERAPP_POLL):g}"
    os.execve(cmd[0], cmd, env)
    return 0  # not reached


# ---------------------------------------------------------------------------------------------- join
def idle_interval(idle: float, poll: float, *, fast: float = 1.0, cap: float = 0.15) -> float:
    """Seconds to wait before the next poll after ``idle`` seconds without work.

    Every ``poll`` seconds during the first ``fast`` seconds (the next stage of a round
    comes within that), then a linear ramp to ``cap`` (a node that waits for a slow
    trainer or for the server's evaluation): latency where it counts, fewer requests
    (each one costs CPU on both ends) where it does not.

    >>> [round(idle_interval(t, 0.05), 3) for t in (0.0, 0.9, 1.5, 2.0, 60.0)]
    [0.05, 0.05, 0.1, 0.15, 0.15]
    """
    if idle < fast:
        return poll
    return min(max(cap, poll), poll + (idle - fast) * 0.1)


class _CappedTime:
    """The ``time`` module of Flower's SuperNode loop, with its fixed sleeps shortened.

    The loop sleeps 3 s when the SuperLink had no message (here: :func:`idle_interval`,
    ``poll`` s at first) and 0.5 s while it waits for the ClientApp's reply or its
    objects (here: ``busy`` s, a look at the node's own in-memory state).
    """

    IDLE_SLEEP = 1.0  # Flower's idle sleep is 3 s, its waits for a local reply 0.5 s

    def __init__(self, cap: float, busy: float = 0.01) -> None:
        self._cap = cap
        self._busy = min(busy, cap)
        self._idle_since: float | None = None

    def sleep(self, seconds: float) -> None:
        seconds = float(seconds)
        if seconds < self.IDLE_SLEEP:
            self._idle_since = None  # a message is being answered: the next idle spell starts afresh
            time.sleep(min(seconds, self._busy))
            return
        now = time.monotonic()
        if self._idle_since is None:
            self._idle_since = now
        time.sleep(min(seconds, idle_interval(now - self._idle_since, self._cap)))

    def __getattr__(self, name: str):
        return getattr(time, name)


def patch_supernode_polling(cap: float) -> bool:
    """Cap the SuperNode loop's fixed sleeps at ``cap`` s; False (stock timing) if Flower changed shape."""
    try:
        from flwr.supernode import start_client_internal as sci
    except ImportError:
        return False
    if getattr(sci, "time", None) is not time:
        log.warning("flwr.supernode.start_client_internal no longer uses `time` as expected; keeping Flower's "
                    "stock polling (each stage may then cost up to 3 s)")
        return False
    sci.time = _CappedTime(cap)  # type: ignore[assignment]
    return True


FETCH_GATE_MAX = 30.0
"""Longest time (s) the SuperNode keeps a new task from its SuperExec while it fetches the message's objects."""


def patch_task_signal(path: Path) -> bool:
    """Hand a task to the SuperExec only once its message is complete, and wake it then (at ``path``).

    Flower's SuperNode creates the ClientApp task before it fetches the message's
    objects from the SuperLink, its SuperExec finds the task by polling, and the
    ClientApp it starts polls for the objects again: on a loaded machine a ClientApp
    asked for its objects about ten times per message. Here (the SuperNode runs in
    this process) the new task cannot be claimed while the fetch is running (at most
    :data:`FETCH_GATE_MAX` s), and when the last fetched object is in the node's store
    the SuperNode signals its SuperExec
    (:func:`~privspk.runtimes.flower.fastexec.notify_task`), which then claims it at once.
    False if Flower changed shape (the SuperExec then polls, as before).
    """
    try:
        from flwr.supercore.object_store.in_memory_object_store import InMemoryObjectStore
        from flwr.supernode import start_client_internal as sci
        from flwr.supernode.nodestate.in_memory_nodestate import InMemoryNodeState
    except ImportError:
        return False
    originals = (getattr(sci, "pull_objects", None), getattr(InMemoryObjectStore, "put", None),
                 getattr(InMemoryNodeState, "create_task", None), getattr(InMemoryNodeState, "claim_task", None))
    if any(fn is None for fn in originals):
        log.warning("Flower's SuperNode changed shape; its SuperExec polls for tasks")
        return False
    original_pull, original_put, original_create, original_claim = originals
    if getattr(original_pull, "privspk_signals", False):
        return True
    from privspk.runtimes.flower.fastexec import notify_task

    fetch: dict = {"since": None, "pending": set()}  # the message being stored: fetch start, objects not yet in

    def release() -> None:
        fetch["since"] = None
        fetch["pending"] = set()
        notify_task(path)

    def create_task(self, *args, **kwargs):
        fetch["since"] = time.monotonic()
        return original_create(self, *args, **kwargs)

    def claim_task(self, task_id):
        since = fetch["since"]
        if since is not None and time.monotonic() - since < FETCH_GATE_MAX:
            return None  # its message is still being fetched: the SuperExec is woken when it is complete
        return original_claim(self, task_id)

    def pull_objects(*args, **kwargs):
        try:
            contents = original_pull(*args, **kwargs)
        except BaseException:
            release()  # the task fails: let the SuperExec see it now
            raise
        if contents:
            fetch["pending"] = set(contents)
        else:
            release()
        return contents

    def put(self, object_id, object_content):
        original_put(self, object_id, object_content)
        pending = fetch["pending"]
        if object_id in pending:
            pending.discard(object_id)
            if not pending:
                release()

    pull_objects.privspk_signals = True  # type: ignore[attr-defined]
    sci.pull_objects = pull_objects
    InMemoryObjectStore.put = put  # type: ignore[method-assign]
    InMemoryNodeState.create_task = create_task  # type: ignore[method-assign]
    InMemoryNodeState.claim_task = claim_task  # type: ignore[method-assign]
    return True


PULL_BACKOFF = (0.01, 0.1)
"""First and longest wait (s) between tries to pull a message object that is not there yet."""


def patch_object_pull_backoff(initial: float = PULL_BACKOFF[0], cap: float = PULL_BACKOFF[1]) -> bool:
    """Retry pulls of message objects after ``initial`` s (doubling up to ``cap`` s) instead of 1 s (up to 10 s).

    A Flower message becomes visible to its receiver before all its objects are
    uploaded (the ServerApp pushes a message, then its objects; a SuperNode creates the
    ClientApp task, then pulls the objects). The receiver's first pull of a missing
    object then waits Flower's initial backoff of 1 s, on each of the three hops
    (SuperLink -> SuperNode -> ClientApp -> ... -> ServerApp): about 1 s per hop per
    stage of a round, for objects that arrive milliseconds later. The total wait for
    an object keeps Flower's bound (``max_time``); the count of tries is lifted so that
    short waits cannot run out of tries before it. False if Flower changed shape.

    >>> patch_object_pull_backoff(0.01, 0.1)
    True
    >>> from flwr.supercore.inflatable import inflatable_utils as u
    >>> u.pull_objects.__kwdefaults__["initial_backoff"], u.pull_objects.__kwdefaults__["backoff_cap"]
    (0.01, 0.1)
    """
    try:
        from flwr.supercore.inflatable import inflatable_utils as u
    except ImportError:
        return False
    patched = False
    for fn in (getattr(u, "pull_objects", None), getattr(u, "pull_and_inflate_object_from_tree", None)):
        defaults = getattr(fn, "__kwdefaults__", None)
        if not defaults or "initial_backoff" not in defaults or "backoff_cap" not in defaults:
            log.warning("flwr's object pull has no initial_backoff/backoff_cap any more; keeping its stock waits")
            return False
        defaults["initial_backoff"] = float(initial)
        defaults["backoff_cap"] = float(cap)
        if "max_tries_per_object" in defaults:
            defaults["max_tries_per_object"] = None  # bounded by max_time instead
        patched = True
    return patched


def node_key_fingerprint(private_key_path: str | None) -> str:
    """SHA-256 (hex) of the SuperNode auth key's public half in DER; '' without one."""
    if not private_key_path:
        return ""
    from cryptography.hazmat.primitives import serialization

    from privspk.runtimes.flower.certs import public_key_fingerprint

    raw = Path(private_key_path).read_bytes()
    try:
        key = serialization.load_ssh_private_key(raw, password=None)
    except ValueError:
        try:
            key = serialization.load_pem_private_key(raw, password=None)
        except ValueError as exc:
            raise ConfigError(f"{private_key_path}: not an OpenSSH or PEM private key ({exc})") from None
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return public_key_fingerprint(der)


def supernode_argv(*, superlink: str, run_dir: Path, insecure: bool, root_certificates: str | None,
                   auth_key: str | None, host: str = "127.0.0.1", port: int | None = None) -> list[str]:
    """``flower-supernode`` arguments for a node whose agent lives in ``run_dir``.

    >>> supernode_argv(superlink="127.0.0.1:9092", run_dir=Path("/n0"), insecure=True, root_certificates=None,
    ...                auth_key=None, port=9100)[1:]  # doctest: +NORMALIZE_WHITESPACE
    ['--superlink', '127.0.0.1:9092', '--host', '127.0.0.1', '--port', '9100', '--node-config',
     "run-dir='/n0'", '--insecure']
    """
    argv = ["flower-supernode", "--superlink", superlink, "--host", host, "--port", str(port or free_port(host)),
            "--node-config", f"run-dir={json.dumps(str(run_dir)).replace(chr(34), chr(39))}"]
    if insecure:
        argv.append("--insecure")
    else:
        if not root_certificates:
            raise ConfigError("a node needs the SuperLink's CA certificate (--ca) unless --insecure on loopback")
        argv += ["--root-certificates", root_certificates]
        if auth_key:
            argv += ["--auth-supernode-private-key", auth_key]
    return argv


def join(*, role: str, superlink: str, run_dir: str | Path, data: str | None, partition: int | None,
         insecure: bool, ca: str | None, auth_key: str | None, poll: float = 0.05, client_id: str | None = None,
         threads: int | None = None) -> int:
    """Run this node: the privspk agent in a thread, Flower's SuperNode in the foreground."""
    from privspk.runtimes.flower.bridge import Agent
    from privspk.runtimes.flower.node import Node, NodeSettings, describe, load_plugins

    host, _ = split_address(superlink)
    if insecure:
        _insecure_ok(host, "the node's connection to the SuperLink")
    load_plugins()
    settings = NodeSettings(role=role, run_root=Path(run_dir).resolve(),
                            data_dir=Path(data).resolve() if data else None,
                            partition=partition, client_id=client_id, threads=threads)
    node = Node(settings)
    fingerprint = node_key_fingerprint(auth_key)

    def handler(meta, body):
        meta = dict(meta)
        meta["node_key_fingerprint"] = fingerprint
        return node(meta, body)

    agent = Agent(settings.run_root, handler)
    threading.Thread(target=agent.serve_forever, name="privspk-agent", daemon=True).start()
    argv = supernode_argv(superlink=superlink, run_dir=settings.run_root, insecure=insecure, root_certificates=ca,
                          auth_key=auth_key)
    os.environ.update(flower_env(poll))
    telemetry = sys.modules.get("flwr.supercore.telemetry")
    if telemetry is not None:  # read at import; this process imported Flower before the environment was set
        telemetry.FLWR_TELEMETRY_ENABLED = os.environ[TELEMETRY_ENV]
    from privspk.runtimes.flower.fastexec import install_shim

    shim = install_shim(settings.run_root / "bin")  # forks ClientApps instead of starting a Python per message
    os.environ["PATH"] = os.pathsep.join([str(shim.parent), os.environ.get("PATH", "")])
    patched = patch_supernode_polling(poll)
    patch_object_pull_backoff()
    from privspk.runtimes.flower.fastexec import TASK_SOCKET_ENV

    signal_path = settings.run_root / TASK_SOCKET
    if len(str(signal_path)) <= MAX_SOCKET_PATH and patch_task_signal(signal_path):
        os.environ[TASK_SOCKET_ENV] = str(signal_path)  # the SuperExec, started by the SuperNode, listens there
    print(f"privspk join: {describe(settings)} agent at {agent.address}; polling "
          f"{'every %gs' % poll if patched else 'Flower stock (3 s)'}", flush=True)
    from flwr.supernode.cli.flower_supernode import flower_supernode

    sys.argv = argv
    try:
        flower_supernode()
    finally:
        agent.close()
        node.close()
    return 0


# ---------------------------------------------------------------------------------------------- register
def register(*, public_key: str, superlink: str, ca: str | None, flwr_home: str | Path, name: str | None = None) -> int:
    """Register a SuperNode's public key at an authenticating SuperLink; returns its Flower node id."""
    home = Path(flwr_home)
    write_connection(home, superlink=superlink, insecure=False, ca=ca)
    cmd = [_flower_bin("flwr"), "supernode", "register", str(public_key), CONNECTION, "--format", "json"]
    if name:
        cmd += ["--name", name]
    proc = subprocess.run(cmd, env=dict(os.environ, FLWR_HOME=str(home)), capture_output=True, text=True, check=False)
    try:
        out = json.loads(proc.stdout)
    except json.JSONDecodeError:
        out = {}
    if proc.returncode != 0 or not out.get("success", True) or "node-id" not in out and "node_id" not in out:
        raise PrivspkError(f"flwr supernode register failed (exit {proc.returncode}): "
                           f"{(proc.stdout + proc.stderr).strip()[-1500:]}")
    return int(out.get("node-id", out.get("node_id")))


# ---------------------------------------------------------------------------------------------- run
def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a TOML basic string


def write_connection(flwr_home: Path, *, superlink: str, insecure: bool, ca: str | None) -> None:
    """A Flower ``config.toml`` with one connection named ``privspk``."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    lines = [f"[superlink.{CONNECTION}]", f"address = {_toml_str(superlink)}"]
    if insecure:
        lines.append("insecure = true")
    else:
        if not ca:
            raise ConfigError("submitting to a TLS SuperLink needs its CA certificate (--ca)")
        lines.append(f"root-certificates = {_toml_str(str(Path(ca).resolve()))}")
    lines += ["", "[superlink]", f"default = {_toml_str(CONNECTION)}"]
    (flwr_home / "config.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")


def run(*, config_text: str, superlink: str, insecure: bool, ca: str | None, data_dir: str, out_dir: str, name: str,
        resume: bool = False, follow: bool = True, timeouts: dict | None = None, poll: float = 0.02,
        evaluate: bool = True, on_line=print, wait: float = 3600.0) -> dict:
    """Submit a run and (``follow``) print its round lines until it finishes; returns the final event."""
    host, _ = split_address(superlink)
    if insecure:
        _insecure_ok(host, "submitting the run")
    out = Path(out_dir).resolve()
    run_dir = out / name
    flwr_home = out / ".flwr" / name
    write_connection(flwr_home, superlink=superlink, insecure=insecure, ca=ca)
    overrides = {"config": config_text, "data-dir": str(Path(data_dir).resolve()), "out-dir": str(out),
                 "resume": resume, "poll": poll, "evaluate": evaluate, **(timeouts or {})}
    lines = []
    for k, v in overrides.items():
        val = ("true" if v else "false") if isinstance(v, bool) else (_toml_str(v) if isinstance(v, str) else repr(v))
        lines.append(f"{k} = {val}")
    run_cfg = flwr_home / "run-config.toml"
    run_cfg.write_text("\n".join(lines) + "\n", encoding="utf-8")
    progress = run_dir / "progress.jsonl"
    seen = progress.stat().st_size if (resume and progress.exists()) else 0
    if not resume:
        progress.unlink(missing_ok=True)
    env = dict(os.environ, FLWR_HOME=str(flwr_home))
    env.setdefault(TELEMETRY_ENV, "0")
    cmd = [_flower_bin("flwr"), "run", str(APP_DIR), CONNECTION, "--run-config", str(run_cfg), "--format", "json"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise PrivspkError(f"flwr run failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()[-2000:]}")
    try:
        submitted = json.loads(proc.stdout)
    except json.JSONDecodeError:
        submitted = {"output": proc.stdout.strip()}
    if not follow:
        return {"event": "submitted", **submitted}
    return follow_progress(progress, offset=seen, on_line=on_line, wait=wait)


def follow_progress(progress: Path, *, offset: int = 0, on_line=print, wait: float = 3600.0) -> dict:
    """Print each round line of ``progress.jsonl`` as it appears; returns the ``done`` event."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if progress.exists():
            with open(progress, encoding="utf-8") as fh:
                fh.seek(offset)
                chunk = fh.read()
            complete = chunk[: chunk.rfind("\n") + 1]
            offset += len(complete.encode("utf-8"))
            for raw in complete.splitlines():
                event = json.loads(raw)
                if event.get("event") == "round":
                    on_line(event["line"])
                elif event.get("event") == "done":
                    return event
                elif event.get("event") == "error":
                    raise PrivspkError(f"the run failed on the server: {event.get('error')}")
        time.sleep(0.2)
    raise PrivspkError(f"the run did not finish within {wait:g} s; see the SuperLink's log")
