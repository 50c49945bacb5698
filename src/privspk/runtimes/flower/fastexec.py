"""A SuperNode's SuperExec that forks each ClientApp instead of starting a new Python.

Flower's SuperExec starts ``flwr-clientapp`` as a fresh interpreter for every message;
importing Flower there costs about 1.5 s of CPU, which on a small machine dominates a
privspk stage (the bridge itself takes milliseconds). ``privspk join`` puts a
``flower-superexec`` on the SuperNode's ``PATH`` that runs Flower's own SuperExec with
one change: a ClientApp task is run by ``run_clientapp`` in a child forked from this
already-initialised process (same arguments, same token, same Runtime API; the child
exits when the task ends). Other task types keep Flower's subprocess launch. Set
``PRIVSPK_FORK_CLIENTAPP=0`` to use Flower's stock launcher.
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


def install_shim(bin_dir: Path) -> Path:
    """Write a ``flower-superexec`` into ``bin_dir`` that runs :func:`main` with this interpreter."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / "flower-superexec"
    path.write_text(f"#!{sys.executable}\nfrom privspk.runtimes.flower.fastexec import main\nmain()\n",
                    encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _forking_launch(original):
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor.types import LaunchResult

    def launch(self, spec):
        if spec.task_type != TaskType.CLIENT_APP:
            return original(self, spec)
        pid = os.fork()
        if pid:
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
        import privspk.runtimes.flower.clientapp  # noqa: F401

        from privspk.runtimes.flower.launch import patch_object_pull_backoff

        patch_object_pull_backoff()  # the forked ClientApps pull their message from the SuperNode
        cls = subprocess_executor.SubprocessExecutor
        cls.launch = _forking_launch(cls.launch)
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    sys.argv[0] = "flower-superexec"
    sys.exit(flower_superexec())
