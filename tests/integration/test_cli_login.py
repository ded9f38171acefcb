"""`qserver login`, `whoami`, `logout` against a gateway with logins; tokens kept per user."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Services
from tests.integration.gateway_support import Gateway, gateway_for
from tests.integration.login_support import short_tokens, write_config


@pytest.fixture(scope="module")
async def gateway(
    module_services: Services, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Gateway]:
    # Access tokens of 2 s: `whoami` after a pause must refresh the session by itself.
    config = write_config(tmp_path_factory.mktemp("cli-login"), short_tokens(2))
    async with gateway_for(module_services, "--http-config", str(config)) as gw:
        yield gw


def qserver(home: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_CONFIG_HOME": str(home)}
    env.pop("QSERVER_HTTP_SERVER_URI", None)
    return subprocess.run(
        [sys.executable, "-m", "qserver", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


async def run(home: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(qserver, home, *args, stdin=stdin)


async def test_login_caches_tokens_for_the_user_only_and_whoami_refreshes_them(
    gateway: Gateway, tmp_path: Path
) -> None:
    url = ("--url", gateway.url)
    r = await run(tmp_path, "login", "bob", *url, "--password-stdin", stdin="wrong\n")
    assert r.returncode == 2 and "401: Incorrect username or password" in r.stderr + r.stdout
    r = await run(tmp_path, "login", "bob", *url, "--password-stdin", stdin="bob_password\n")
    assert r.returncode == 0, r.stderr
    assert "logged in" in r.stdout and "as bob (provider toy)" in r.stdout
    files = list((tmp_path / "qserver" / "logins").iterdir())
    assert len(files) == 1
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(files[0].parent.stat().st_mode) == 0o700
    first = json.loads(files[0].read_text())

    await asyncio.sleep(3)  # the access token (2 s) has expired
    r = await run(tmp_path, "whoami", *url)
    assert r.returncode == 0, r.stderr
    assert "bob (toy)" in r.stdout and "admin" in r.stdout and "admin:apikeys" in r.stdout
    refreshed = json.loads(files[0].read_text())
    assert refreshed["access_token"] != first["access_token"]

    r = await run(tmp_path, "logout", *url)
    assert r.returncode == 0 and "logged out" in r.stdout
    assert not files[0].exists()
    # The session ended at the gateway too: its refresh token is refused.
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        resp = await http.post(
            "/api/auth/session/refresh", json={"refresh_token": refreshed["refresh_token"]}
        )
        assert resp.status_code == 401
    r = await run(tmp_path, "whoami", *url)
    assert r.returncode == 2 and "not logged in" in r.stderr + r.stdout


async def test_login_to_no_gateway_says_so(tmp_path: Path) -> None:
    r = await run(
        tmp_path, "login", "bob", "--url", "http://127.0.0.1:9", "--password-stdin", stdin="x\n"
    )
    assert r.returncode == 3 and "no gateway answers" in r.stderr + r.stdout
