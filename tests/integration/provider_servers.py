"""Real identity back ends for the login tests: a PAM user, slapd, an OIDC provider.

Each is made by its fixture on this machine (loopback only) and removed at the end.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.stack.natsserver import free_port

BASE_DN = "dc=example,dc=org"
ADMIN_DN = f"cn=admin,{BASE_DN}"
ADMIN_PASSWORD = "admin-secret"
LDAP_USERS = {"alice": "alice-ldap-pw", "bob": "bob-ldap-pw"}
OPERATORS = f"cn=operators,ou=groups,{BASE_DN}"  # alice is in it, bob is not


def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {port}:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ----- PAM -----


@dataclass(frozen=True)
class PamUser:
    name: str
    password: str
    service: str


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("making a PAM user and service needs root (CI and `make test` run as root)")


@contextlib.contextmanager
def pam_user() -> Iterator[PamUser]:
    """A system user with a password, and a PAM service that checks it with pam_unix."""
    needs_root()
    name = f"qst{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(12)
    service = f"qserver-test-{name}"
    pam_file = Path("/etc/pam.d") / service
    pam_file.write_text("auth required pam_unix.so\naccount required pam_unix.so\n")
    subprocess.run(
        ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True
    )
    try:
        subprocess.run(["chpasswd"], input=f"{name}:{password}\n".encode(), check=True)
        yield PamUser(name, password, service)
    finally:
        subprocess.run(["userdel", name], check=False)
        pam_file.unlink(missing_ok=True)


# ----- LDAP (slapd) -----


def ldif() -> str:
    entries = [
        f"dn: {BASE_DN}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example",
        f"dn: ou=users,{BASE_DN}\nobjectClass: organizationalUnit\nou: users",
        f"dn: ou=groups,{BASE_DN}\nobjectClass: organizationalUnit\nou: groups",
    ]
    for uid, pw in LDAP_USERS.items():
        entries.append(
            f"dn: uid={uid},ou=users,{BASE_DN}\nobjectClass: inetOrgPerson\nuid: {uid}\n"
            f"cn: {uid.title()}\nsn: {uid.title()}\nuserPassword: {pw}"
        )
    entries.append(
        f"dn: {OPERATORS}\nobjectClass: groupOfNames\ncn: operators\n"
        f"member: uid=alice,ou=users,{BASE_DN}"
    )
    return "\n\n".join(entries) + "\n"


@contextlib.contextmanager
def slapd(directory: Path) -> Iterator[int]:
    """slapd (Debian's, installed by `make test`) on a free loopback port: its port."""
    binary = shutil.which("slapd") or "/usr/sbin/slapd"
    if not Path(binary).exists():
        pytest.fail("slapd is not installed: run `make .venv/.apt-test` (as root)")
    (directory / "db").mkdir(parents=True)
    conf = directory / "slapd.conf"
    schemas = "".join(
        f"include /etc/ldap/schema/{s}.schema\n" for s in ("core", "cosine", "inetorgperson", "nis")
    )
    conf.write_text(
        f"{schemas}modulepath /usr/lib/ldap\nmoduleload back_mdb\n"
        f"pidfile {directory}/slapd.pid\nargsfile {directory}/slapd.args\n"
        f'database mdb\nsuffix "{BASE_DN}"\nrootdn "{ADMIN_DN}"\nrootpw {ADMIN_PASSWORD}\n'
        f"directory {directory}/db\n"
    )
    data = directory / "data.ldif"
    data.write_text(ldif())
    subprocess.run(
        [str(Path(binary).with_name("slapadd")), "-f", str(conf), "-l", str(data)],
        check=True,
        capture_output=True,
    )
    port = free_port()
    log = directory / "slapd.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [binary, "-f", str(conf), "-h", f"ldap://127.0.0.1:{port}/", "-d", "0"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
    try:
        wait_port(port, proc, log)
        yield port
    finally:
        stop(proc)


# ----- OIDC -----


@dataclass(frozen=True)
class Oidc:
    url: str
    discovery: dict[str, Any]
    jwks: list[dict[str, Any]]


@contextlib.contextmanager
def oidc_provider(directory: Path) -> Iterator[Oidc]:
    """oidc-provider-mock (a real OpenID provider, for tests) on a free loopback port."""
    port = free_port()
    log = directory / "oidc.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "oidc_provider_mock", "-p", str(port), "-H", "127.0.0.1"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
    try:
        wait_port(port, proc, log)
        url = f"http://127.0.0.1:{port}"
        discovery = httpx.get(f"{url}/.well-known/openid-configuration", timeout=10).json()
        jwks = httpx.get(discovery["jwks_uri"], timeout=10).json()["keys"]
        yield Oidc(url, discovery, jwks)
    finally:
        stop(proc)
