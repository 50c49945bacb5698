"""TLS certificates and SuperNode keys for a deployment (made with ``cryptography``).

- :func:`write_pki` writes a CA, and a SuperLink certificate signed by it for the
  given host names / IP addresses (``ca.crt``, ``server.pem``, ``server.key``).
- :func:`write_node_key` writes a SuperNode authentication key pair: NIST P-384 in
  OpenSSH format, the same as ``ssh-keygen -t ecdsa -b 384`` (Flower refuses Ed25519
  node keys). The public half is what the operator registers with
  ``flwr supernode register`` (``privspk register``).
- :func:`public_key_fingerprint` is the SHA-256 of a public key's DER
  SubjectPublicKeyInfo, whatever format it came in; a node's privspk identity key
  signs it (:mod:`~privspk.runtimes.flower.identity`).

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> sorted(p.name for p in write_pki(d, hosts=["127.0.0.1"]).values())
['ca.crt', 'server.key', 'server.pem']
>>> priv, pub = write_node_key(d / "node0")
>>> pub.read_text().startswith("ecdsa-sha2-nistp384 ")
True
>>> len(public_key_fingerprint(pub.read_bytes()))
64
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from privspk.errors import ConfigError


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def write_pki(out: str | Path, *, hosts: list[str], days: int = 365) -> dict[str, Path]:
    """A CA and a SuperLink server certificate for ``hosts``; returns the three paths."""
    if not hosts:
        raise ConfigError("the SuperLink certificate needs at least one host name or IP address")
    out = Path(out)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "privspk federation CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA384()))
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA384()))
    out.mkdir(parents=True, exist_ok=True)
    paths = {"ca": out / "ca.crt", "cert": out / "server.pem", "key": out / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(paths["key"], key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    return paths


def write_node_key(path: str | Path) -> tuple[Path, Path]:
    """A SuperNode key pair (P-384, OpenSSH format) at ``path`` and ``path.pub``."""
    path = Path(path)
    key = ec.generate_private_key(ec.SECP384R1())
    _write_private(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                           serialization.NoEncryption()))
    pub = path.with_name(path.name + ".pub")
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                  serialization.PublicFormat.OpenSSH) + b"\n")
    return path, pub


def public_key_fingerprint(raw: bytes) -> str:
    """SHA-256 hex of the DER SubjectPublicKeyInfo of a public key given as OpenSSH, PEM or DER."""
    raw = bytes(raw).strip()
    key = None
    for load in (serialization.load_ssh_public_key, serialization.load_pem_public_key,
                 serialization.load_der_public_key):
        try:
            key = load(raw)
            break
        except (ValueError, TypeError, Exception):  # noqa: BLE001 - try the next format
            continue
    if key is None:
        raise ConfigError("not a public key in OpenSSH, PEM or DER format")
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()
