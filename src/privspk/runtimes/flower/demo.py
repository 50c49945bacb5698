"""``privspk deploy-demo``: the demo federation through real Flower processes on 127.0.0.1.

Starts a SuperLink (``privspk serve``), one client SuperNode per client
(``privspk join --partition i``, each with its own run directory and ledger) and, for
HE schemes, a key-holder node, as separate processes on free loopback ports; submits
the run (``privspk run``), prints the same per-round lines as ``privspk demo``, and
stops every process it started (also on Ctrl-C or an error).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from privspk.errors import PrivspkError


class LocalFederation:
    """Processes of a loopback federation (each in its own session, killed on :meth:`close`)."""

    def __init__(self, root: Path, *, data_dir: Path, clients: int, keyholder: bool, poll: float = 0.05) -> None:
        from privspk.runtimes.flower.launch import flower_env, free_port

        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.data_dir = Path(data_dir).resolve()
        self.port = free_port()
        self.superlink = f"127.0.0.1:{self.port}"
        self.clients = clients
        self.keyholder = keyholder
        self.env = flower_env(poll)
        self.procs: dict[str, subprocess.Popen] = {}

    def node_threads(self, cpus: int | None = None) -> int:
        """Torch threads of each client node: this machine's cores split between them, at least 1.

        >>> fed = LocalFederation.__new__(LocalFederation); fed.clients = 3
        >>> fed.node_threads(2), fed.node_threads(8), fed.node_threads(16)
        (1, 2, 5)
        """
        return max(1, (cpus or os.cpu_count() or 1) // max(1, self.clients))

    def _start(self, name: str, args: list[str]) -> None:
        with open(self.root / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen([sys.executable, "-W", "ignore::UserWarning", "-m", "privspk.cli",
                                                 *args], stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                                start_new_session=True)

    def start(self, *, timeout: float = 120.0) -> float:
        """Start everything; returns the seconds until the SuperLink listened."""
        t0 = time.perf_counter()
        self._start("superlink", ["serve", "--insecure", "--host", "127.0.0.1", "--port", str(self.port)])
        deadline = time.monotonic() + timeout
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            if self.procs["superlink"].poll() is not None or time.monotonic() > deadline:
                raise PrivspkError(f"the SuperLink did not start; see {self.root / 'superlink.log'}")
            time.sleep(0.1)
        up = time.perf_counter() - t0
        # every node trains at once on this one machine: split its cores (more torch threads than cores
        # makes OpenMP's threads wait on each other; 3 nodes x 2 threads on 2 cores trained 9x slower)
        threads = str(self.node_threads())
        for i in range(self.clients):
            self._start(f"client{i}", ["join", "--insecure", "--superlink", self.superlink, "--data",
                                       str(self.data_dir), "--partition", str(i), "--run-dir",
                                       str(self.root / f"node{i}"), "--threads", threads])
        if self.keyholder:
            self._start("keyholder", ["join", "--insecure", "--role", "keyholder", "--superlink", self.superlink,
                                      "--run-dir", str(self.root / "keyholder")])
        return up

    def close(self) -> None:
        """SIGTERM every process group, then SIGKILL what is left."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for proc in self.procs.values():
                if proc.poll() is None:
                    try:
                        os.killpg(proc.pid, sig)
                    except ProcessLookupError:
                        pass
            end = time.monotonic() + 3
            while time.monotonic() < end and any(p.poll() is None for p in self.procs.values()):
                time.sleep(0.1)


def deploy_demo(cfg, *, root: Path, on_line=print) -> dict:
    """Run ``cfg`` on a loopback federation under ``root``; returns the run's final event."""
    from privspk.runtimes.flower.launch import run
    keyholder = cfg.secagg.scheme in ("ckks", "bfv")
    fed = LocalFederation(root, data_dir=Path(cfg.data_dir), clients=cfg.federation.n_clients, keyholder=keyholder)
    try:
        up = fed.start()
        on_line(f"SuperLink on {fed.superlink} (up in {up:.1f} s), {cfg.federation.n_clients} client node(s)"
                f"{' + a key holder' if keyholder else ''} as separate processes; logs in {root}")
        return run(config_text=cfg.to_toml(), superlink=fed.superlink, insecure=True, ca=None, data_dir=cfg.data_dir,
                   out_dir=cfg.out_dir, name=cfg.name, on_line=on_line)
    finally:
        fed.close()
