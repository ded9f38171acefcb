"""Two gateway replicas share logins, keys and revocations (through the auth bucket).

The gateways connect as the `gateway` NATS user of the production permissions, whose
JetStream rights reach the auth bucket only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from services.stack.natsserver import NatsServer
from tests.conftest import report
from tests.integration.gateway_support import Gateway, gateway_for
from tests.integration.login_support import TOY, write_config
from tests.integration.nats_roles_support import RoleServices, new_passwords, write_accounts

PREFIX = "qs.replicas"
PASSWORDS = new_passwords(PREFIX)
REVOKE_BOUND_S = 1.0  # the bound: a revocation holds on every gateway within a second


@pytest.fixture(scope="module")
def secure_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    d = tmp_path_factory.mktemp("replicas-nats")
    server = NatsServer(d, config_file=write_accounts(d / "accounts.conf", PREFIX, PASSWORDS))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def two(
    secure_nats: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Gateway, Gateway]]:
    svc = RoleServices(secure_nats, tmp_path_factory.mktemp("logs"), prefix=PREFIX)
    svc.passwords = PASSWORDS
    svc.start("queue")
    config = write_config(tmp_path_factory.mktemp("toy"), TOY)
    env = svc.role_env("gateway")
    try:
        await svc.wait_ready()
        args = ("--http-config", str(config))
        async with gateway_for(svc, *args, env=env) as a, gateway_for(svc, *args, env=env) as b:
            yield a, b
    finally:
        svc.stop_all()


async def login(http: httpx.AsyncClient, user: str = "bob") -> dict[str, str]:
    r = await http.post(
        "/api/auth/provider/toy/token", data={"username": user, "password": f"{user}_password"}
    )
    assert r.status_code == 200, r.text
    tokens: dict[str, str] = r.json()
    return tokens


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def refused_within(http: httpx.AsyncClient, headers: dict[str, str], start: float) -> float:
    """Seconds from `start` until the credentials are refused (401) on this gateway."""
    while True:
        r = await http.get("/api/status", headers=headers)
        if r.status_code == 401:
            return time.monotonic() - start
        assert time.monotonic() - start < 30, r.text
        await asyncio.sleep(0.01)


async def test_a_login_on_one_gateway_works_on_the_other(two: tuple[Gateway, Gateway]) -> None:
    a, b = two
    async with httpx.AsyncClient(base_url=a.url) as ha, httpx.AsyncClient(base_url=b.url) as hb:
        tokens = await login(ha)
        r = await hb.get("/api/status", headers=bearer(tokens["access_token"]))
        assert r.status_code == 200, r.text
        r = await hb.post(
            "/api/auth/session/refresh", json={"refresh_token": tokens["refresh_token"]}
        )
        assert r.status_code == 200, r.text
        r = await hb.post(
            "/api/auth/apikey", json={"expires_in": 600}, headers=bearer(tokens["access_token"])
        )
        key = r.json()["secret"]
        r = await ha.get("/api/status", headers={"Authorization": f"ApiKey {key}"})
        assert r.status_code == 200, r.text
        who_a = (await ha.get("/api/auth/whoami", headers=bearer(tokens["access_token"]))).json()
        who_b = (await hb.get("/api/auth/whoami", params={"api_key": key})).json()
        assert who_a["uuid"] == who_b["uuid"]
    for gw in (a, b):
        assert "permissions violation" not in gw.log().lower(), gw.log()


async def test_a_revoked_session_and_a_deleted_key_stop_working_on_both_within_a_second(
    two: tuple[Gateway, Gateway],
) -> None:
    a, b = two
    async with httpx.AsyncClient(base_url=a.url) as ha, httpx.AsyncClient(base_url=b.url) as hb:
        tokens = await login(hb, "alice")
        access = bearer(tokens["access_token"])
        key = (await ha.post("/api/auth/apikey", json={"expires_in": 600}, headers=access)).json()
        key_header = {"Authorization": f"ApiKey {key['secret']}"}
        for http in (ha, hb):  # both gateways have used (and cached) both credentials
            assert (await http.get("/api/status", headers=access)).status_code == 200
            assert (await http.get("/api/status", headers=key_header)).status_code == 200

        sid = (await ha.get("/api/auth/whoami", headers=access)).json()["sessions"][-1]["uuid"]
        start = time.monotonic()
        r = await ha.delete(f"/api/auth/session/revoke/{sid}", headers=key_header)
        assert r.json() == {"success": True, "msg": ""}
        took = await refused_within(hb, access, start)
        r = await hb.post(
            "/api/auth/session/refresh", json={"refresh_token": tokens["refresh_token"]}
        )
        assert r.status_code == 401 and "Session has expired" in r.json()["detail"]
        report(f"revoked session refused on the other gateway after {took * 1000:.0f} ms")
        assert took < REVOKE_BOUND_S

        start = time.monotonic()
        r = await hb.request(
            "DELETE",
            "/api/auth/apikey",
            params={"first_eight": key["first_eight"]},
            headers=key_header,
        )
        assert r.json() == {"success": True, "msg": ""}
        took = await refused_within(ha, key_header, start)
        report(f"deleted API key refused on the other gateway after {took * 1000:.0f} ms")
        assert took < REVOKE_BOUND_S


async def test_the_first_logins_of_a_user_on_both_gateways_at_once_make_one_principal(
    two: tuple[Gateway, Gateway], tmp_path: Path
) -> None:
    a, b = two
    async with httpx.AsyncClient(base_url=a.url) as ha, httpx.AsyncClient(base_url=b.url) as hb:
        tokens = await asyncio.gather(*(login(h, "tom") for h in (ha, hb, ha, hb)))
        uuids = set()
        for t, h in zip(tokens, (ha, hb, ha, hb), strict=True):
            who = (await h.get("/api/auth/whoami", headers=bearer(t["access_token"]))).json()
            uuids.add(who["uuid"])
        assert len(uuids) == 1
