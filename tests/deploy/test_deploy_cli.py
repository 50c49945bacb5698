"""The deployment commands parse, and refuse incomplete node settings with a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from privspk.cli import build_parser, main
from privspk.errors import ConfigError
from privspk.runtimes.flower.launch import superlink_command, supernode_argv
from privspk.runtimes.flower.node import NodeSettings


def test_parser_knows_the_deployment_commands():
    p = build_parser()
    for argv in (["serve", "--insecure"], ["join", "--superlink", "h:1", "--run-dir", "d"],
                 ["run", "--superlink", "h:1"], ["deploy-demo"], ["certs", "--out", "o", "--host", "h"],
                 ["node-key", "k"], ["register", "k.pub", "--superlink", "h:1", "--ca", "ca"]):
        args = p.parse_args(argv)
        assert args.command == argv[0] and callable(args.func)


def test_a_client_node_needs_its_data_and_partition(tmp_path):
    with pytest.raises(ConfigError, match="needs --data DIR and --partition N"):
        NodeSettings(role="client", run_root=tmp_path)
    assert NodeSettings(role="client", run_root=tmp_path, data_dir=tmp_path, partition=2).client_id == "client2"
    with pytest.raises(ConfigError, match="role must be"):
        NodeSettings(role="server", run_root=tmp_path)


def test_node_threads_are_checked_and_passed_on(tmp_path):
    for bad in (0, -1, 1.5):
        with pytest.raises(ConfigError, match="--threads must be an integer >= 1"):
            NodeSettings(role="keyholder", run_root=tmp_path, threads=bad)
    assert NodeSettings(role="keyholder", run_root=tmp_path, threads=3).threads == 3
    assert build_parser().parse_args(["join", "--superlink", "h:1", "--run-dir", "d", "--threads", "2"]).threads == 2


def test_tls_settings_are_complete_or_refused():
    with pytest.raises(ConfigError, match="needs TLS"):
        superlink_command(host="10.0.0.1", port=1, insecure=False, ca="ca", cert=None, key=None)
    cmd = superlink_command(host="10.0.0.1", port=1, insecure=False, ca="ca", cert="c", key="k", auth=True)
    assert cmd[-7:] == ["--ssl-ca-certfile", "ca", "--ssl-certfile", "c", "--ssl-keyfile", "k",
                        "--enable-supernode-auth"]
    with pytest.raises(ConfigError, match="needs the SuperLink's CA certificate"):
        supernode_argv(superlink="10.0.0.1:1", run_dir=Path("d"), insecure=False, root_certificates=None,
                       auth_key=None, port=5)


def test_join_with_insecure_off_loopback_exits_2(capsys, tmp_path):
    assert main(["join", "--insecure", "--superlink", "10.0.0.1:9092", "--run-dir", str(tmp_path)]) == 2
    assert "--insecure is only allowed on a loopback address" in capsys.readouterr().err


def test_a_resumed_run_knows_whom_to_renotify_of_the_last_aggregated_round(tmp_path):
    """After a SuperLink restart the last round's ``aggregated`` notices are posted again: to the
    clients of that round's progress row, else of the server's aggregated heads; nobody when unknown."""
    import json

    from privspk.runtimes.flower.server import _included_in

    progress = tmp_path / "progress.jsonl"
    assert _included_in(progress, 1) == []
    progress.write_text("\n".join([json.dumps({"event": "start"}),
                                   json.dumps({"event": "round", "row": {"round": 1, "included": ["client0", "client2"]}}),
                                   '{"event": "round", "row": {"rou']) + "\n")  # a line cut short by the kill
    assert _included_in(progress, 1) == ["client0", "client2"]
    assert _included_in(progress, 2) == []

    class Heads:
        rounds = {2: {"client1": object(), "client0": object()}}

    assert _included_in(progress, 2, heads=Heads()) == ["client0", "client1"]
