"""Real Flower processes on 127.0.0.1 for the deployment tests (no Ray, no simulation).

:class:`Cluster` starts ``privspk serve`` (a SuperLink) and ``privspk join`` nodes as
separate processes on free ports, each in its own session, and kills them all (SIGKILL
after a short grace) when the test ends, whatever happened. Every process imports
``deploy_plugin`` (the tiny test encoder) through ``PRIVSPK_PLUGINS``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import privspk
from privspk.config import (
    CorpusSection,
    EvalSection,
    FeaturesSection,
    FederationSection,
    ModelSection,
    PretrainSection,
    PrivacySection,
    RunConfig,
    SecAggSection,
    SplitSection,
    TrainSection,
)
from privspk.runtimes.flower.launch import free_port

HERE = Path(__file__).resolve().parent
SRC = Path(privspk.__file__).resolve().parents[1]
PLUGIN = "deploy_plugin"
KEYHOLDER_NODE = "kh"
"""The key holder's entry in :attr:`Cluster.node_ids` and its node-key name."""


def tiny_config(data_dir: Path, out_dir: Path, *, name: str = "deployed", scheme: str = "mask", dp: bool = True,
                rounds: int = 2, epsilon: float = 3.0, options: dict | None = None) -> RunConfig:
    """The tiny run of ``tests/test_api.py`` (8 eSpeak speakers x 4 utterances, a ~6k-parameter encoder)."""
    import deploy_plugin

    return RunConfig(
        name=name, threads=1, data_dir=str(data_dir), out_dir=str(out_dir),
        corpus=CorpusSection(n_speakers=8, utts_per_speaker=4), split=SplitSection(heldout=2),
        features=FeaturesSection(n_mels=20), model=ModelSection(encoder=deploy_plugin.TINY_ENCODER),
        pretrain=PretrainSection(steps=3, batch_size=8, crop_frames=40),
        train=TrainSection(recipe="last", local_steps=2, batch_size=1, physical_batch=1, crop_frames=40,
                           speaker_batch=2),
        # simulation randomness: the deployed run is compared bit for bit with the in-process one;
        # colluders = 0: the fault tests need a 3-client mask round to survive one dropout (with the
        # default of one tolerated colluder, t = 3 of 3 and a dropout fails the round)
        privacy=PrivacySection(enabled=dp, epsilon=epsilon, randomness="simulation"),
        secagg=SecAggSection(scheme=scheme, options=dict(options or {}), colluders=0),
        federation=FederationSection(n_clients=3, rounds=rounds),
        eval=EvalSection(max_frames=200, target_per_utt=1, nontarget_per_utt=2),
    )


def prepared_data(data_dir: Path) -> Path:
    """Build the tiny corpus, features and pretrained encoder once (cached in ``data_dir``)."""
    from privspk.api import pretrained_encoder
    from privspk.prepare import prepare_data

    cfg = tiny_config(data_dir, data_dir / "unused")
    pretrained_encoder(cfg, prepare_data(cfg, progress=False), progress=False)
    return data_dir


def env(**extra: str) -> dict[str, str]:
    """Environment of every process: privspk and the plugin importable, fast Flower polling."""
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(SRC), str(HERE), e.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    e["PRIVSPK_PLUGINS"] = PLUGIN
    e["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = "0.05"
    e.update(extra)
    return e


class Cluster:
    """A SuperLink and its nodes on loopback; use as a context manager (always torn down)."""

    def __init__(self, root: Path, *, data_dir: Path, clients: int = 3, keyholder: bool = False,
                 node_env: dict[int, dict[str, str]] | None = None, tls: bool = False,
                 audit: Path | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.data_dir = Path(data_dir)
        self.port = free_port()
        self.superlink = f"127.0.0.1:{self.port}"
        self.n_clients = clients
        self.keyholder = keyholder
        self.node_env = node_env or {}
        self.procs: dict[str, subprocess.Popen] = {}
        self.tls = tls
        self.pki: dict[str, Path] = {}
        self.node_ids: dict[int | str, int] = {}  # node index (or KEYHOLDER_NODE) -> Flower node id
        self.audit = Path(audit) if audit is not None else None  # deploy_audit's records, per process
        if self.audit is not None:
            self.audit.mkdir(parents=True, exist_ok=True)
        if tls:
            from privspk.runtimes.flower.certs import write_pki

            self.pki = write_pki(self.root / "pki", hosts=["127.0.0.1"])

    def transport_args(self) -> list[str]:
        return ["--ca", str(self.pki["ca"])] if self.tls else ["--insecure"]

    def node_key(self, i: int | str) -> Path:
        """Node ``i``'s SuperNode key (P-384; ``i`` = KEYHOLDER_NODE for the key holder), made on first use."""
        from privspk.runtimes.flower.certs import write_node_key

        path = self.root / "keys" / f"node{i}"
        if not path.exists():
            write_node_key(path)
        return path

    def register(self, i: int | str) -> int:
        """Register node ``i``'s public key at the SuperLink (TLS + node auth); returns its node id."""
        from privspk.runtimes.flower.launch import register

        key = self.node_key(i)
        self.node_ids[i] = register(public_key=str(key) + ".pub", superlink=self.superlink, ca=str(self.pki["ca"]),
                                    flwr_home=self.root / "flwr_admin")
        return self.node_ids[i]

    # -- processes -----------------------------------------------------------------------------
    def _start(self, name: str, args: list[str], extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "ab")
        extra_env = dict(extra_env or {})
        if self.audit is not None:  # the ServerApp runs inside the SuperLink's process tree
            role = "server" if name == "superlink" else "keyholder" if name == "keyholder" else "client"
            extra_env.update(PRIVSPK_PLUGINS=f"{PLUGIN},deploy_audit", PRIVSPK_AUDIT_DIR=str(self.audit),
                             PRIVSPK_AUDIT_ROLE=role)
        proc = subprocess.Popen([sys.executable, "-m", "privspk.cli", *args], stdout=log, stderr=subprocess.STDOUT,
                                env=env(**extra_env), start_new_session=True, cwd=self.root)
        log.close()
        self.procs[name] = proc
        return proc

    def start_superlink(self) -> None:
        tls = (["--ca", str(self.pki["ca"]), "--cert", str(self.pki["cert"]), "--key", str(self.pki["key"]), "--auth"]
               if self.tls else ["--insecure"])
        # its state in a file: a restarted SuperLink still knows the nodes (they keep their Flower ids)
        self._start("superlink", ["serve", *tls, "--host", "127.0.0.1", "--port", str(self.port), "--database",
                                  str(self.root / "superlink.db")])
        deadline = time.monotonic() + 60
        import socket

        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"SuperLink did not listen on {self.port}: {self.log('superlink')[-2000:]}")

    def start_node(self, i: int) -> None:
        auth = ["--auth-key", str(self.node_key(i))] if self.tls else []
        self._start(f"node{i}", ["join", *self.transport_args(), *auth, "--superlink", self.superlink, "--data",
                                 str(self.data_dir), "--partition", str(i), "--run-dir", str(self.node_dir(i))],
                    self.node_env.get(i))

    def start_keyholder(self) -> None:
        auth = ["--auth-key", str(self.node_key(KEYHOLDER_NODE))] if self.tls else []
        self._start("keyholder", ["join", *self.transport_args(), *auth, "--role", "keyholder", "--superlink",
                                  self.superlink, "--run-dir", str(self.root / "kh")])

    def node_dir(self, i: int) -> Path:
        return self.root / f"n{i}"

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal a process and its whole session (SuperExec, ClientApps)."""
        proc = self.procs[name]
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def __enter__(self) -> Cluster:
        try:
            self.start_superlink()
            for i in range(self.n_clients if self.tls else 0):
                self.register(i)
            if self.tls and self.keyholder:
                self.register(KEYHOLDER_NODE)
            for i in range(self.n_clients):
                self.start_node(i)
            if self.keyholder:
                self.start_keyholder()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for name, proc in list(self.procs.items()):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def __exit__(self, *exc) -> None:
        self.close()

    # -- runs ----------------------------------------------------------------------------------
    def submit(self, cfg: RunConfig, *, resume: bool = False, follow: bool = True, wait: float = 600.0,
               timeouts: dict | None = None, evaluate: bool = False) -> dict:
        """Submit ``cfg`` through ``flwr run`` and follow it to the end (the ``done`` event)."""
        from privspk.runtimes.flower.launch import run

        old = dict(os.environ)
        os.environ.update(env())
        try:
            return run(config_text=cfg.to_toml(), superlink=self.superlink, insecure=not self.tls,
                       ca=str(self.pki["ca"]) if self.tls else None,
                       data_dir=cfg.data_dir, out_dir=cfg.out_dir, name=cfg.name, resume=resume, follow=follow,
                       timeouts=timeouts, evaluate=evaluate, on_line=lambda line: None, wait=wait)
        finally:
            os.environ.clear()
            os.environ.update(old)

    def dump_logs(self) -> str:
        return "\n".join(f"==== {n}\n{self.log(n)[-3000:]}" for n in self.procs)
