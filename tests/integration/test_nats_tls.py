"""TLS with client certificates, nkey and token users: the client and a service connect.

Certificates and the nkey are made here, for loopback only.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nkeys
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from qserver.client import AccessDenied, Client, NoAnswer
from qserver.connect import NatsAuth
from services.stack.natsserver import NatsServer
from tests.conftest import Services


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None,
    signer: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(signer, hashes.SHA256())


def make_pki(d: Path) -> Pki:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("qserver test CA", ca_key, None, ca_key, ca=True)
    out = {}
    for who, server in (("server", True), ("client", False)):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(who, key, ca.subject, ca_key, server=server)
        (d / f"{who}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[who] = (d / f"{who}.pem", _write_key(d / f"{who}-key.pem", key))
    (d / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return Pki(d / "ca.pem", *out["server"], *out["client"])


def make_nkey_seed(path: Path) -> str:
    """Write a new user seed to `path` (mode 0600); return its public key."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    path.write_bytes(seed)
    path.chmod(0o600)
    return nkeys.from_seed(bytearray(seed)).public_key.decode()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def tls_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NatsServer, Pki, Path]]:
    d = tmp_path_factory.mktemp("tls-nats")
    pki = make_pki(d)
    seed = d / "user.nk"
    public = make_nkey_seed(seed)
    conf = d / "server.conf"
    conf.write_text(
        f'tls {{\n  cert_file: "{pki.server_cert}"\n  key_file: "{pki.server_key}"\n'
        f'  ca_file: "{pki.ca}"\n  verify: true\n}}\n'
        f'authorization {{ users: [ {{ nkey: "{public}" }} ] }}\n'
    )
    server = NatsServer(d, config_file=conf).start()
    yield server, pki, seed
    server.stop()


def full_auth(pki: Pki, seed: Path) -> NatsAuth:
    return NatsAuth(
        nkey=str(seed),
        tls_ca=str(pki.ca),
        tls_cert=str(pki.client_cert),
        tls_key=str(pki.client_key),
    )


async def test_client_connects_with_tls_client_certificate_and_nkey(
    tls_nats: tuple[NatsServer, Pki, Path],
) -> None:
    server, pki, seed = tls_nats
    c = await Client.connect(server.url, auth=full_auth(pki, seed))
    try:
        assert c.nc.is_connected
        assert c.nc.connected_url is not None
        info = await c.nc.request("$JS.API.INFO", b"", timeout=2)
        assert b"streams" in info.data
    finally:
        await c.close()


async def test_without_the_ca_or_the_nkey_the_connection_fails(
    tls_nats: tuple[NatsServer, Pki, Path], tmp_path: Path
) -> None:
    server, pki, seed = tls_nats
    with pytest.raises(NoAnswer, match=r"TLS failed .* check QSERVER_NATS_TLS_CA"):
        await Client.connect(server.url, auth=NatsAuth(nkey=str(seed)))
    other = tmp_path / "other.nk"
    make_nkey_seed(other)
    auth = NatsAuth(
        nkey=str(other),
        tls_ca=str(pki.ca),
        tls_cert=str(pki.client_cert),
        tls_key=str(pki.client_key),
    )
    with pytest.raises(AccessDenied, match="authorization violation"):
        await Client.connect(server.url, auth=auth)


async def test_a_service_connects_with_tls_and_nkey_from_its_environment(
    tls_nats: tuple[NatsServer, Pki, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, pki, seed = tls_nats
    env = full_auth(pki, seed).environ()
    for k, v in env.items():
        monkeypatch.setenv(k, v)  # for the fixture's own probes and client
    # History and worker: they connect like the queue service, whose results loop keeps
    # its process alive for 10 s after a TLS connection is drained (not ours to fix here).
    svc = Services(server, tmp_path, env=env)
    svc.start("history", "worker")
    try:
        await svc.wait_ready()
        c = await svc.connect()
        r = await c.request("history_get")
        assert r["success"], r
        await c.close()
    finally:
        svc.stop_all()


async def test_token_authentication(tmp_path: Path) -> None:
    token = os.urandom(16).hex()
    conf = tmp_path / "token.conf"
    conf.write_text(f'authorization {{ token: "{token}" }}\n')
    server = NatsServer(tmp_path, config_file=conf).start()
    try:
        c = await Client.connect(server.url, auth=NatsAuth.from_env({"QSERVER_NATS_TOKEN": token}))
        assert c.nc.is_connected
        await c.close()
        with pytest.raises(AccessDenied, match="with a token"):
            await Client.connect(server.url, auth=NatsAuth(token="not-" + token))
    finally:
        server.stop()
