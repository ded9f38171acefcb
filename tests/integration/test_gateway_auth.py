"""API keys and scopes at the gateway: each scope allows exactly what it names; no spoofing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets
import yaml
from bluesky_queueserver_api.http.aio import REManagerAPI as AsyncREManagerAPI
from websockets.asyncio.client import connect

from services.gateway.auth import ALL_SCOPES, key_digest
from services.gateway.openapi import LOCAL_ROUTES
from services.gateway.routes import ROUTES
from tests.conftest import Services
from tests.integration.gateway_support import Gateway, gateway_for

SCOPES = sorted(ALL_SCOPES)
ALICE = "AliceKey1"
PROBE = b'{"not_a_parameter": 1}'  # refused by every route's validation, after the auth check


def scope_key(scope: str) -> str:
    return "Key" + scope.replace(":", "").replace("_", "")


def refused(r: httpx.Response) -> bool:
    """A valid key without the scope: 401 with the reference's "Not enough permissions"."""
    return r.status_code == 401 and r.json()["detail"].startswith("Not enough permissions")


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"ApiKey {key}"}


@pytest.fixture(scope="module")
async def gateway(module_services: Services, tmp_path_factory: pytest.TempPathFactory) -> Any:
    keys = [{"key": scope_key(s), "user": f"only-{s}", "scopes": [s]} for s in SCOPES]
    keys.append({"key_sha256": key_digest(ALICE), "user": "alice", "roles": ["user"]})
    config = tmp_path_factory.mktemp("gateway") / "gateway.yml"
    config.write_text(yaml.safe_dump({"api_keys": keys}))
    async with gateway_for(module_services, "--http-config", str(config)) as gw:
        yield gw


@pytest.fixture(scope="module")
async def http(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        yield client


ALL_ROUTES = [(r.http, r.path, r.scope) for r in ROUTES] + [
    (http.upper(), path, scope)
    for path, http, scope, _, _ in LOCAL_ROUTES
    if path != "/api/stream_console_output" and scope
]


async def test_each_scope_allows_exactly_the_routes_that_need_it(
    http: httpx.AsyncClient,
) -> None:
    wrong = []
    for method, path, needed in ALL_ROUTES:
        for scope in SCOPES:
            r = await http.request(method, path, content=PROBE, headers=auth(scope_key(scope)))
            if refused(r) != (scope != needed):
                wrong.append((method, path, scope, r.status_code))
            if refused(r):
                assert needed in r.json()["detail"]
    assert wrong == []


async def test_missing_or_wrong_credentials_are_401_and_say_why(http: httpx.AsyncClient) -> None:
    r = await http.get("/api/status")
    assert r.status_code == 401 and "Authorization: ApiKey" in r.json()["detail"]
    r = await http.get("/api/status", headers=auth("NotAKey"))
    assert r.status_code == 401 and r.json()["detail"] == "Invalid API key"
    r = await http.get("/api/status", headers={"Authorization": "Bearer abc"})
    assert r.status_code == 401 and "Could not validate credentials" in r.json()["detail"]
    r = await http.get("/api/status", params={"api_key": ALICE})
    assert r.status_code == 200


async def test_a_client_cannot_claim_another_identity(http: httpx.AsyncClient) -> None:
    spoof = {"user": "mallory", "user_group": "admin"}
    item = {"item_type": "plan", "name": "count", "args": [["det1"]]}
    r = await http.post("/api/queue/item/add", json={"item": item, **spoof}, headers=auth(ALICE))
    assert (r.json()["item"]["user"], r.json()["item"]["user_group"]) == ("alice", "primary")
    r = await http.post(
        "/api/queue/item/add/batch", json={"items": [item], **spoof}, headers=auth(ALICE)
    )
    assert r.json()["items"][0]["user"] == "alice"
    r = await http.request(
        "GET", "/api/plans/allowed", json={"user_group": "admin"}, headers=auth(ALICE)
    )
    assert r.json()["success"] and "count" in r.json()["plans_allowed"]
    key = auth(scope_key("write:lock"))
    r = await http.post(
        "/api/lock", json={"lock_key": "k", "queue": True, "user": "mallory"}, headers=key
    )
    assert r.json()["lock_info"]["user"] == "only-write:lock"
    await http.post("/api/unlock", json={"lock_key": "k"}, headers=key)
    await http.post("/api/queue/clear", headers=auth(ALICE))


async def test_whoami_and_scopes_tell_a_key_what_it_may_do(gateway: Gateway) -> None:
    RM = AsyncREManagerAPI(http_server_uri=gateway.url)
    RM.set_authorization_key(api_key=ALICE)
    try:
        who = await RM.whoami()
        assert who["identities"][0]["id"] == "alice" and who["roles"] == ["user"]
        scopes = await RM.api_scopes()
        assert (
            "write:queue:edit" in scopes["scopes"] and "write:manager:stop" not in scopes["scopes"]
        )
    finally:
        await RM.close()


async def test_roles_give_their_scopes(http: httpx.AsyncClient) -> None:
    # alice has the role `user`: she edits the queue but may not stop the manager.
    assert (await http.get("/api/queue/get", headers=auth(ALICE))).status_code == 200
    r = await http.post("/api/manager/stop", json={}, headers=auth(ALICE))
    assert refused(r) and "write:manager:stop" in r.json()["detail"]


async def test_anonymous_access_is_read_only(module_services: Services) -> None:
    async with (
        gateway_for(module_services, "--allow-anonymous") as gw,
        httpx.AsyncClient(base_url=gw.url) as http,
    ):
        assert (await http.get("/api/status")).status_code == 200
        r = await http.get("/api/queue/get")
        assert refused(r) and "read:queue" in r.json()["detail"]
        assert refused(await http.post("/api/queue/start"))
        # A wrong key is not quietly downgraded to anonymous.
        assert (await http.get("/api/status", headers=auth("Nope"))).status_code == 401


def ws_url(gateway: Gateway, path: str) -> str:
    return gateway.url.replace("http://", "ws://") + path


async def test_websockets_need_the_monitor_scope(gateway: Gateway) -> None:
    key = auth(scope_key("read:monitor"))
    async with connect(ws_url(gateway, "/api/status/ws"), additional_headers=key) as ws:
        msg = json.loads(await ws.recv())
        assert msg["msg"]["status"]["manager_state"] in ("idle", "paused", "executing_queue")
    async with connect(ws_url(gateway, "/api/info/ws"), additional_headers=key) as ws:
        assert "status" in json.loads(await ws.recv())["msg"]
    for headers, code in ((auth("Nope"), 4001), (auth(scope_key("read:status")), 4003)):
        async with connect(ws_url(gateway, "/api/status/ws"), additional_headers=headers) as ws:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == code


async def test_progress_and_documents_websockets_need_the_monitor_scope(gateway: Gateway) -> None:
    for path in ("/api/progress/ws", "/api/documents/ws?run=current"):
        for headers, code in ((auth("Nope"), 4001), (auth(scope_key("read:status")), 4003)):
            async with connect(ws_url(gateway, path), additional_headers=headers) as ws:
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await ws.recv()
                assert closed.value.rcvd is not None and closed.value.rcvd.code == code


async def test_console_stream_needs_the_console_scope(http: httpx.AsyncClient) -> None:
    r = await http.get("/api/stream_console_output", headers=auth(scope_key("read:status")))
    assert refused(r)
    headers = auth(scope_key("read:console"))
    async with http.stream("GET", "/api/stream_console_output", headers=headers) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
