"""Services that connect as their own NATS users, for the security tests."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from pathlib import Path

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from qserver.client import Client
from qserver.connect import NatsAuth
from services.runtime.procs import readiness_probe
from services.stack.nats_permissions import render_accounts, roles
from tests.conftest import Services


def new_passwords(prefix: str) -> dict[str, str]:
    return {r.name: secrets.token_urlsafe(16) for r in roles(prefix)}


def write_accounts(path: Path, prefix: str, passwords: dict[str, str]) -> Path:
    """The accounts config of `prefix` with these passwords (literal, for tests)."""
    literal = {role: json.dumps(pw) for role, pw in passwords.items()}
    path.write_text(render_accounts(literal, prefix=prefix))
    return path


class RoleServices(Services):
    """The core services, each connecting as its own NATS user."""

    passwords: dict[str, str]
    user_suffix = ""  # user names are `<role><suffix>`

    def role_env(self, role: str) -> dict[str, str]:
        return {
            "QSERVER_NATS_USER": role + self.user_suffix,
            "QSERVER_NATS_PASSWORD": self.passwords[role],
        }

    def auth(self, role: str) -> NatsAuth:
        return NatsAuth(user=role + self.user_suffix, password=self.passwords[role])

    def start(self, *names: str) -> None:
        common = dict(self.env)
        for name in names or ("queue", "history", "worker"):
            self.env = {**common, **self.role_env(name)}
            super().start(name)
        self.env = common

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Probe each service as a user that may: the worker's subjects are internal."""
        deadline = time.monotonic() + timeout
        for name, proc in self.procs.items():
            role = "queue" if name == "worker" else "operator"
            c = await Client.connect(self.nats.url, self.prefix, auth=self.auth(role))
            subject, body = readiness_probe(name, c.subjects)
            try:
                while True:
                    assert proc.alive(), f"service {name} exited:\n{proc.log_tail()}"
                    try:
                        await c.nc.request(subject, body, timeout=1.0)
                        break
                    except (NoRespondersError, NatsTimeout):
                        assert time.monotonic() < deadline, f"{name}:\n{proc.log_tail()}"
                        await asyncio.sleep(0.05)
            finally:
                await c.close()

    async def connect_as(self, role: str) -> Client:
        return await Client.connect(self.nats.url, self.prefix, timeout=5.0, auth=self.auth(role))
