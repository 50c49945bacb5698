"""A node's privspk identity key, kept on disk, and its binding to the Flower node.

The ``mask`` scheme signs its key adverts with each client's long-term Ed25519
identity key and checks them against a registry (threat model, assumption A3). On
Flower, the SuperLink authenticates nodes by their own EC key (registered by the
operator); the node binds its identity key to that authenticated node by signing
``run | client id | Flower node id | node key fingerprint`` with it. The ServerApp
checks the signature against the node id Flower says the message came from, so an
identity key cannot be claimed through another node.

>>> import tempfile, pathlib
>>> key = load_identity(pathlib.Path(tempfile.mkdtemp()) / "identity.key")
>>> b = bind_node(key, run="r", client_id="client0", node_id=7, node_key="")
>>> check_binding(b, run="r", client_id="client0", node_id=7) == key.public_bytes()
True
>>> check_binding(b, run="r", client_id="client0", node_id=8)
Traceback (most recent call last):
...
privspk.errors.ProtocolError: client client0: identity binding is for Flower node 7, the message came from node 8
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from privspk.errors import ConfigError, ProtocolError
from privspk.secagg.keys import IdentityKey, encode_ids

DOMAIN = b"privspk/flower-node-binding/v1"


def load_identity(path: str | Path) -> IdentityKey:
    """The node's Ed25519 identity key at ``path`` (PKCS#8 PEM, mode 0600), created on first use."""
    path = Path(path)
    if path.exists():
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{path}: not a PEM private key ({exc}); move it away to create a new identity") from None
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ConfigError(f"{path}: the privspk identity key must be Ed25519")
        return IdentityKey(key)
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    os.replace(tmp, path)
    return IdentityKey(key)


def binding_message(*, run: str, client_id: str, node_id: int, node_key: str) -> bytes:
    """The bytes an identity key signs to bind itself to a Flower node."""
    return DOMAIN + encode_ids(run, client_id, str(int(node_id)), node_key)


def bind_node(identity: IdentityKey, *, run: str, client_id: str, node_id: int, node_key: str) -> dict:
    """The binding a node sends in its setup answer (JSON-able)."""
    msg = binding_message(run=run, client_id=client_id, node_id=node_id, node_key=node_key)
    return {"public": identity.public_bytes().hex(), "node_id": int(node_id), "node_key": node_key,
            "signature": identity.sign(msg).hex()}


def check_binding(binding: object, *, run: str, client_id: str, node_id: int,
                  node_key: str | None = None) -> bytes:
    """Verify a node's binding against the node Flower delivered it from; returns the public key."""
    if not isinstance(binding, dict):
        raise ProtocolError("setup answer has no identity binding", client=client_id)
    try:
        public = bytes.fromhex(binding["public"])
        signature = bytes.fromhex(binding["signature"])
        claimed_node = int(binding["node_id"])
        claimed_key = str(binding["node_key"])
    except (KeyError, ValueError, TypeError):
        raise ProtocolError("identity binding is malformed", client=client_id) from None
    if claimed_node != int(node_id):
        raise ProtocolError(f"identity binding is for Flower node {claimed_node}, the message came from node {node_id}",
                            client=client_id)
    if node_key is not None and claimed_key != node_key:
        raise ProtocolError("identity binding names another node key than the one Flower registered",
                            client=client_id)
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(public).verify(
            signature, binding_message(run=run, client_id=client_id, node_id=claimed_node, node_key=claimed_key))
    except (InvalidSignature, ValueError):
        raise ProtocolError("identity binding signature does not verify", client=client_id) from None
    return public
