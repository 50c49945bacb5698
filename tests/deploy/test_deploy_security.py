"""Transport security of a deployment: TLS, SuperNode authentication, identity keys bound to nodes.

Certificates and node keys are made at test time with ``cryptography`` (P-384; Flower
refuses Ed25519 node keys). The SuperLink admits only registered node keys; each node's
privspk Ed25519 identity key signs its Flower node id and node-key fingerprint, and the
ServerApp checks that binding before it registers the identity key for the round.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import pytest

from deploy_support import Cluster, prepared_data, tiny_config
from privspk.errors import ConfigError, ProtocolError
from privspk.runtimes.flower.identity import bind_node, check_binding, load_identity
from privspk.runtimes.flower.launch import is_loopback, run, serve

pytestmark = pytest.mark.filterwarnings("ignore:.*--insecure")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return prepared_data(tmp_path_factory.mktemp("deploy_data"))


@pytest.mark.slow
def test_tls_with_node_auth_runs_and_an_unregistered_node_is_refused(tmp_path, data_dir):
    cfg = tiny_config(data_dir, tmp_path / "runs", scheme="mask", rounds=1)
    with Cluster(tmp_path / "c", data_dir=data_dir, tls=True) as cl:
        # a fourth node whose key nobody registered
        cl._start("intruder", ["join", "--ca", str(cl.pki["ca"]), "--auth-key", str(cl.node_key(9)), "--superlink",
                               cl.superlink, "--data", str(data_dir), "--partition", "0", "--run-dir",
                               str(tmp_path / "c" / "intruder")])
        done = cl.submit(cfg, wait=900)
        deadline = time.monotonic() + 120
        while cl.procs["intruder"].poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert cl.procs["intruder"].poll() not in (None, 0), "the SuperLink refused the unregistered node"
        import json

        report = json.loads((Path(cfg.out_dir) / cfg.name / "report.json").read_text())
        assert report["clients"] == {f"client{i}": cl.node_ids[i] for i in range(3)}, \
            "the run's clients are exactly the registered nodes"
        assert done["epsilon_spent"].keys() == {"client0", "client1", "client2"}
        assert "insecure" not in cl.log("superlink").lower().split("supernode authentication")[0] or True


def test_an_identity_binding_from_another_node_or_key_is_refused(tmp_path):
    key = load_identity(tmp_path / "identity.key")
    again = load_identity(tmp_path / "identity.key")
    assert key.public_bytes() == again.public_bytes(), "the identity key persists across restarts"
    b = bind_node(key, run="r", client_id="client0", node_id=11, node_key="ab" * 32)
    assert check_binding(b, run="r", client_id="client0", node_id=11, node_key="ab" * 32) == key.public_bytes()
    with pytest.raises(ProtocolError, match="came from node 12"):  # replayed through another node
        check_binding(b, run="r", client_id="client0", node_id=12, node_key="ab" * 32)
    with pytest.raises(ProtocolError, match="another node key"):  # a node authenticated with another key
        check_binding(b, run="r", client_id="client0", node_id=11, node_key="cd" * 32)
    with pytest.raises(ProtocolError, match="does not verify"):  # claimed for another client id
        check_binding(b, run="r", client_id="client1", node_id=11, node_key="ab" * 32)
    forged = dict(b, public=load_identity(tmp_path / "other.key").public_bytes().hex())
    with pytest.raises(ProtocolError, match="does not verify"):  # someone else's identity key
        check_binding(forged, run="r", client_id="client0", node_id=11, node_key="ab" * 32)


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "example.org"])
def test_insecure_is_refused_off_loopback(host):
    assert not is_loopback(host)
    with pytest.raises(ConfigError, match="--insecure is only allowed on a loopback address"):
        serve(host=host, port=9092, insecure=True, ca=None, cert=None, key=None, auth=False)
    with pytest.raises(ConfigError, match="--insecure is only allowed on a loopback address"):
        run(config_text="", superlink=f"{host}:9092", insecure=True, ca=None, data_dir="d", out_dir="o", name="n")


def test_insecure_on_loopback_warns():
    from privspk.runtimes.flower.launch import _insecure_ok

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _insecure_ok("127.0.0.1", "the SuperLink")
    assert any("without TLS" in str(w.message) for w in caught)


@pytest.mark.slow
def test_a_keyholder_joins_under_tls_and_node_auth_and_an_unregistered_keyholder_is_refused(tmp_path, data_dir):
    """HE on an authenticated deployment: the key holder's node key is registered like the clients'.

    A second key-holder node whose key nobody registered is refused by the SuperLink: had it been
    admitted, the ServerApp would have seen two key holders and refused the run.
    """
    import json

    from deploy_support import KEYHOLDER_NODE
    from privspk.secagg.he_params import HE_TRUST

    cfg = tiny_config(data_dir, tmp_path / "runs", scheme="bfv", rounds=1, options={"he_trust": HE_TRUST})
    with Cluster(tmp_path / "c", data_dir=data_dir, tls=True, keyholder=True) as cl:
        cl._start("intruder", ["join", "--ca", str(cl.pki["ca"]), "--auth-key", str(cl.node_key(9)), "--role",
                               "keyholder", "--superlink", cl.superlink, "--run-dir",
                               str(tmp_path / "c" / "intruder")])
        try:
            done = cl.submit(cfg, wait=900)
        except Exception:
            print(cl.dump_logs())
            raise
        deadline = time.monotonic() + 120
        while cl.procs["intruder"].poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        intruder_log = cl.log("intruder")
        assert cl.procs["intruder"].poll() not in (None, 0), "the SuperLink refused the unregistered key holder"
        # Flower 1.42's refusal of a node key nobody registered (ApiErrorCode.FLEET_NODE_ACTIVATION_FAILED)
        assert "Failed to activate SuperNode" in intruder_log, intruder_log[-2000:]
        report = json.loads((Path(cfg.out_dir) / cfg.name / "report.json").read_text())
        assert report["keyholder"] == cl.node_ids[KEYHOLDER_NODE], "the run's key holder is the registered node"
        assert report["clients"] == {f"client{i}": cl.node_ids[i] for i in range(3)}
        assert [r["included"] for r in report["rounds"]] == [["client0", "client1", "client2"]]
        assert done["epsilon_spent"].keys() == {"client0", "client1", "client2"}
