"""A SuperNode's SuperExec that forks each ClientApp instead of starting a new Python.

Flower's SuperExec starts ``flwr-clientapp`` as a fresh interpreter for every message;
importing Flower there costs about 1.5 s of CPU, which on a small machine dominates a
privspk stage (the bridge itself takes milliseconds). ``privspk join`` puts a
``flower-superexec`` on the SuperNode's ``PATH`` that runs Flower's own SuperExec with
one change: a ClientApp task is run by ``run_clientapp`` in a child forked from this
already-initialised process (same arguments, same token, same Runtime API; the child
exits when the task ends). Other task types keep Flower's subprocess launch. Set
``PRIVSPK_FORK_CLIENTAPP=0`` to use Flower's stock launcher.

Its task loop does not poll while a ClientApp runs (it sleeps on the child's pidfd)
nor while the node is idle: the SuperNode wakes it when a message is complete
(:class:`TaskSignal`), with a slow poll as fallback. The FAB is installed once per node
(:func:`patch_fab_install`).
"""

from __future__ import annotations

import os
import signal
import stat
import sys
import time
from pathlib import Path

FORK_ENV = "PRIVSPK_FORK_CLIENTAPP"
FORKED_AT: float | None = None
"""In a forked ClientApp child: the wall-clock time of the fork (for the transport breakdown)."""
PULLED: list[float] = []
"""In a forked ClientApp child: wall-clock start and end of its pull of the message from the SuperNode."""


def install_shim(bin_dir: Path) -> Path:
    """Write a ``flower-superexec`` into ``bin_dir`` that runs :func:`main` with this interpreter."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / "flower-superexec"
    path.write_text(f"#!{sys.executable}\nfrom privspk.runtimes.flower.fastexec import main\nmain()\n",
                    encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


_RUNNING: list[int] = []
"""In the SuperExec: ClientApp children forked and maybe still running."""

CHILD_WAIT_MAX = 1.0
"""Longest wait (s) on a running ClientApp child before the SuperExec asks its SuperNode for a task again."""


def wait_for_children(limit: float = CHILD_WAIT_MAX) -> float:
    """Block until the forked ClientApp children have exited, at most ``limit`` s; returns the seconds waited.

    A SuperNode hands its SuperExec one task at a time and makes the next one only after
    the running ClientApp has pushed its reply, so while a child runs there is nothing to
    acquire: instead of asking the SuperNode every poll interval (an HTTP request on each
    side, CPU taken from the node's training), the SuperExec sleeps on the child's pidfd
    and wakes the moment it exits.

    >>> pid = os.fork()
    >>> if pid == 0:
    ...     time.sleep(0.2); os._exit(0)
    >>> _RUNNING.append(pid)
    >>> 0.1 < wait_for_children(5.0) < 4.0, _RUNNING
    (True, [])
    """
    import select

    t0 = time.monotonic()
    while _RUNNING:
        pid = _RUNNING[0]
        left = limit - (time.monotonic() - t0)
        if left <= 0:
            break
        try:
            fd = os.pidfd_open(pid)
        except (ProcessLookupError, AttributeError, OSError):  # gone already (or no pidfd: poll as before)
            _RUNNING.pop(0)
            continue
        try:
            ready, _, _ = select.select([fd], [], [], left)
        finally:
            os.close(fd)
        if ready:
            _RUNNING.pop(0)
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
    return time.monotonic() - t0


TASK_SOCKET_ENV = "PRIVSPK_TASK_SOCKET"
"""Path of the Unix datagram socket on which the SuperExec hears that its SuperNode has a new task."""

SIGNAL_FALLBACK = (1.0, 2.0)
"""With the task signal: asks the SuperNode anyway every 1 s (a lost signal), ramping to 2 s while idle."""


class TaskSignal:
    """The SuperExec's end of the local "a task is ready" signal (a Unix datagram socket, no payload).

    The SuperNode (``privspk join``, same machine, same user) sends one empty datagram
    once it has stored a message with all its objects (:func:`notify_task`); the
    SuperExec, instead of asking for a task every few milliseconds, sleeps on the
    socket and asks right away. Asking still happens at the fallback pace, so a lost
    datagram costs latency, never a message. The socket lives in the node's run folder
    (mode 0700); a datagram carries no data, only a wake-up.

    >>> import tempfile
    >>> sig = TaskSignal(Path(tempfile.mkdtemp()) / "task.sock")
    >>> sig.wait(0.05)
    False
    >>> t0 = time.monotonic(); notify_task(sig.path); sig.wait(5.0), time.monotonic() - t0 < 4.0
    (True, True)
    >>> sig.close()
    """

    def __init__(self, path: Path) -> None:
        import socket

        self.path = Path(path)
        self.path.unlink(missing_ok=True)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.path))
        self._sock.setblocking(False)

    def wait(self, timeout: float) -> bool:
        """True as soon as a signal arrives (all pending ones drained), False after ``timeout`` s."""
        import select

        ready, _, _ = select.select([self._sock], [], [], max(timeout, 0.0))
        if not ready:
            return False
        while True:
            try:
                self._sock.recv(16)
            except (BlockingIOError, InterruptedError):
                return True

    def close(self) -> None:
        self._sock.close()
        self.path.unlink(missing_ok=True)


def notify_task(path: str | Path) -> None:
    """Wake the SuperExec listening at ``path`` (nothing happens when none listens)."""
    import socket

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            s.sendto(b"", str(path))
    except OSError:
        pass


class _ChildAwareTime:
    """The ``time`` module of Flower's SuperExec loop: its poll sleep first waits out a running ClientApp.

    Then, with a :class:`TaskSignal`, it sleeps until the SuperNode signals a task (or
    the :data:`SIGNAL_FALLBACK` pace); without one it asks for the next task every poll
    interval during the first second after a ClientApp ended and ramps to 0.15 s while
    the node stays idle (:func:`~privspk.runtimes.flower.launch.idle_interval`).
    """

    def __init__(self, signal_path: str | None = None) -> None:
        self._idle_since = time.monotonic()
        self._signal = None
        if signal_path:
            try:
                self._signal = TaskSignal(Path(signal_path))
            except OSError:  # e.g. a path too long for a Unix socket: poll as before
                self._signal = None

    def sleep(self, seconds: float) -> None:
        from privspk.runtimes.flower.launch import idle_interval

        if _RUNNING:
            wait_for_children()
            self._idle_since = time.monotonic()
        idle = time.monotonic() - self._idle_since
        if self._signal is not None:
            self._signal.wait(idle_interval(idle, SIGNAL_FALLBACK[0], cap=SIGNAL_FALLBACK[1]))
        else:
            time.sleep(idle_interval(idle, float(seconds)))

    def __getattr__(self, name: str):
        return getattr(time, name)


FAB_CACHE = "privspk-installed-fabs"
"""Folder in the node's Flower home: one file per FAB installed, named by its SHA-256, holding the path."""


def patch_fab_install() -> bool:
    """Install each FAB once per node instead of once per message; False if Flower changed shape.

    Flower's ClientApp process unzips and hash-checks the run's FAB and installs it
    under the Flower home for every message (and finds it installed from the second
    on). This wrapper remembers, per SHA-256 of the FAB's bytes, where it was installed,
    and returns that folder while it exists; a FAB with other bytes is installed as before.

    >>> patch_fab_install()
    True
    """
    import hashlib

    try:
        from flwr.supernode.runtime import run_clientapp as rc
        from flwr.supercore.utils import get_flwr_home
    except ImportError:
        return False
    original = getattr(rc, "install_from_fab", None)
    if original is None:
        return False
    if getattr(original, "privspk_cached", False):
        return True

    def install_from_fab(fab_file, install_dir=None, skip_prompt=False):
        if not isinstance(fab_file, bytes) or install_dir is not None:
            return original(fab_file, install_dir, skip_prompt)
        marker = Path(get_flwr_home()) / FAB_CACHE / hashlib.sha256(fab_file).hexdigest()
        try:
            done = Path(marker.read_text(encoding="utf-8"))
            if done.is_dir():
                return done
        except OSError:
            pass
        path = original(fab_file, install_dir, skip_prompt)
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_suffix(f".{os.getpid()}")
        tmp.write_text(str(path), encoding="utf-8")
        os.replace(tmp, marker)
        return path

    install_from_fab.privspk_cached = True  # type: ignore[attr-defined]
    rc.install_from_fab = install_from_fab
    return True


def _time_message_pull() -> None:
    """Record in :data:`PULLED` when the ClientApp's pull of its message starts and ends (breakdown only)."""
    from flwr.supernode.runtime import run_clientapp as rc

    original = getattr(rc, "pull_task_input", None)
    if original is None or getattr(original, "privspk_timed", False):
        return

    def pull_task_input(*args, **kwargs):
        PULLED[:] = [time.time()]
        try:
            return original(*args, **kwargs)
        finally:
            PULLED.append(time.time())

    pull_task_input.privspk_timed = True  # type: ignore[attr-defined]
    rc.pull_task_input = pull_task_input


def _forking_launch(original):
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor.types import LaunchResult

    def launch(self, spec):
        if spec.task_type != TaskType.CLIENT_APP:
            return original(self, spec)
        pid = os.fork()
        if pid:
            _RUNNING.append(pid)
            return LaunchResult.accepted()
        global FORKED_AT
        FORKED_AT = time.time()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        code = 0
        try:  # the child: Flower's own ClientApp process body
            from flwr.supernode.runtime.run_clientapp import run_clientapp

            certificates = None
            if not spec.insecure and spec.root_certificates_path is not None:
                certificates = Path(spec.root_certificates_path).read_bytes()
            run_clientapp(runtime_api_address=spec.runtime_api_address, token=spec.token, insecure=spec.insecure,
                          certificates=certificates, parent_pid=spec.parent_pid,
                          runtime_dependency_install=spec.runtime_dependency_install)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # noqa: BLE001 - a child must never return into the parent's loop
            code = 1
        finally:
            os._exit(code)

    return launch


def main() -> None:
    """Flower's ``flower-superexec`` with ClientApps forked (see the module docstring)."""
    from flwr.supercore.cli import flower_superexec

    if os.environ.get(FORK_ENV, "1") != "0":
        from flwr.supercore.superexec.executor import subprocess_executor

        import flwr.supernode.runtime.run_clientapp  # noqa: F401 - imported once, before forking
        import privspk.runtimes.flower.bridge  # noqa: F401 - what the ClientApp's handler imports
        import privspk.runtimes.flower.clientapp  # noqa: F401
        import privspk.runtimes.flower.messages  # noqa: F401

        from privspk.runtimes.flower.launch import patch_object_pull_backoff

        patch_object_pull_backoff()  # the forked ClientApps pull their message from the SuperNode
        patch_fab_install()
        _time_message_pull()
        cls = subprocess_executor.SubprocessExecutor
        cls.launch = _forking_launch(cls.launch)
        from flwr.supercore.superexec import run_superexec

        if getattr(run_superexec, "time", None) is time:
            run_superexec.time = _ChildAwareTime(os.environ.get(TASK_SOCKET_ENV))  # type: ignore[assignment]
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    sys.argv[0] = "flower-superexec"
    sys.exit(flower_superexec())
