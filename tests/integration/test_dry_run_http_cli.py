"""`item_dry_run` over HTTP (`POST /api/item/dry_run`, its scope, the key's group) and from
the CLI (`qserver queue item dry-run`), against real services (ADR 31)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import yaml
from nats.aio.msg import Msg

from qserver.client import AccessDenied, Client
from qserver.protocol.api import REQUEST_TYPES
from tests.conftest import Services
from tests.integration.gateway_support import Gateway, gateway_for
from tests.integration.test_cli import ok, qs
from tests.integration.test_dry_run import scan
from tests.integration.test_execution import add, open_env
from tests.integration.test_stack import Stacks

EDITOR, READER = "DryRunEditorKey1", "DryRunReaderKey1"


@pytest.fixture
async def gateway(services: Services, tmp_path: Path) -> AsyncIterator[Gateway]:
    keys = [
        {"key": EDITOR, "user": "ed", "user_group": "test_user", "scopes": ["write:queue:edit"]},
        {"key": READER, "user": "rita", "roles": ["observer"]},
    ]
    config = tmp_path / "gateway.yml"
    config.write_text(yaml.safe_dump({"api_keys": keys}))
    async with gateway_for(services, "--http-config", str(config)) as gw:
        yield gw


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"ApiKey {key}"}


async def test_the_http_route_checks_the_item_as_the_keys_group_and_needs_its_scope(
    services: Services, gateway: Gateway
) -> None:
    assert services.client is not None
    await open_env(services.client)
    queued = await add(services.client, scan("motor", 0, 3, 4))
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as http:
        # The group is the key's (test_user), whatever the body says: motor1 is not its.
        body = {"item": scan("motor1", 0, 1, 2), "user_group": "primary", "user": "mallory"}
        r = await http.post("/api/item/dry_run", json=body, headers=auth(EDITOR))
        assert r.status_code == 200 and not r.json()["success"], r.text
        assert "motor1" in r.json()["msg"]
        r = await http.post(
            "/api/item/dry_run", json={"item": scan("motor_limited", 0, 9, 4)}, headers=auth(EDITOR)
        )
        reply = r.json()
        assert r.status_code == 200 and reply["success"], r.text
        assert (reply["item"]["user"], reply["item"]["user_group"]) == ("ed", "test_user")
        assert reply["report"]["violations"][0]["device"] == "motor_limited"
        r = await http.post(
            "/api/item/dry_run", json={"uid": queued["item_uid"]}, headers=auth(EDITOR)
        )
        assert r.json()["success"] and r.json()["report"]["num_points"] == 4, r.text
        # An observer may not; nobody without a key may.
        r = await http.post("/api/item/dry_run", json={"uid": "x"}, headers=auth(READER))
        assert r.status_code == 401 and "write:queue:edit" in r.json()["detail"]
        r = await http.post("/api/item/dry_run", json={"uid": "x"})
        assert r.status_code == 401
        # A parameter the method does not have is a 400 naming it.
        r = await http.post("/api/item/dry_run", json={"pos": 1}, headers=auth(EDITOR))
        assert r.status_code == 400 and "pos" in r.json()["detail"], r.text


async def test_the_cli_dry_runs_a_queued_item_or_a_plan_and_says_why_it_cannot(
    services: Services,
) -> None:
    assert services.client is not None
    queued = await add(services.client, scan("motor", -1, 1, 5))
    refused = await qs(services, "queue", "item", "dry-run", queued["item_uid"])
    assert refused.rc == 2 and "environment is not open" in refused.err, refused
    await open_env(services.client)
    r = await ok(services, "queue", "item", "dry-run", queued["item_uid"])
    assert r["source"] == "queue" and r["report"]["num_points"] == 5
    assert r["report"]["motors"][0]["min"] == -1.0 and r["report"]["motors"][0]["max"] == 1.0
    plan = json.dumps({"name": "scan", "args": [["det1"], "motor_limited", -7, 0], "kwargs": {
        "num": 8}})  # fmt: skip
    r = await ok(services, "queue", "item", "dry-run", "plan", plan)
    assert r["source"] == "item" and r["report"]["violations"][0]["values"][0] == -7.0
    table = await qs(services, "--format", "table", "queue", "item", "dry-run", "plan", plan)
    assert table.rc == 0, table
    assert "scan (the item given): 8 points, 1 run(s)" in table.out, table.out
    assert "motor motor_limited: -7 .. 0 (8 moves, from 0) limits [-5, 5]: OUTSIDE LIMITS" in (
        table.out
    )
    assert "VIOLATION motor_limited: 2 of 8 moves outside its limits" in table.out
    assert "detectors: det1" in table.out and "estimated duration: 0.0 s" in table.out
    bad = await qs(services, "queue", "item", "dry-run", "plan", '{"name": "no_such_plan"}')
    assert bad.rc == 2 and "no_such_plan" in bad.err, bad
    wrong = await qs(services, "queue", "item", "dry-run", "one", "two", "three")
    assert wrong.rc == 1 and "Dry run takes" in wrong.err, wrong


@pytest.mark.skipif("proposal_get" in REQUEST_TYPES, reason="proposals exist: their tests cover it")
async def test_a_proposal_is_taken_from_the_proposals_method(services: Services) -> None:
    """Until proposals are merged, a responder on `proposal_get` stands in for them."""
    client = services.client
    assert client is not None
    await open_env(client)
    asked: list[Any] = []

    async def answer(msg: Msg) -> None:
        asked.append(msgspec.json.decode(msg.data))
        if asked[-1].get("uid") != "p-1":
            await msg.respond(b'{"success": false, "msg": "Proposal \'p-2\' is not found"}')
            return
        item = {**scan("motor", 2, 4, 3), "item_uid": "p-1", "user": "agent"}
        item["user_group"] = "primary"
        reply = {"success": True, "msg": "", "proposal": {"item": item}}
        await msg.respond(json.dumps(reply).encode())

    sub = await client.nc.subscribe(client.subjects.api("proposal_get"), cb=answer)
    try:
        r = await client.request("item_dry_run", {"proposal_uid": "p-1"})
        assert r["success"] and r["source"] == "proposal", r
        assert r["item"]["item_uid"] == "p-1" and r["report"]["num_points"] == 3
        r = await client.request("item_dry_run", {"proposal_uid": "p-2"})
        assert not r["success"] and "'p-2' is not found" in r["msg"], r
        assert asked == [{"uid": "p-1"}, {"uid": "p-2"}]
    finally:
        await sub.unsubscribe()


@pytest.mark.timeout(240)
async def test_over_nats_an_item_is_dry_run_as_the_group_nats_vouches_for(stacks: Stacks) -> None:
    """The embedded stack's client is the NATS user `operator`, in group `primary` (ADR 24)."""
    stack = stacks.start("--no-kafka")
    info = await stack.wait_info()
    async with await Client.connect(info["nats_url"], info["prefix"], timeout=60) as client:
        assert client.act_as == "operator"
        await open_env(client)
        item = scan("motor_limited", 0, 6, 3)
        r = await client.request("item_dry_run", {"item": item, "user": "mallory"})
        assert r["success"], r
        assert (r["item"]["user"], r["item"]["user_group"]) == ("operator", "primary")
        assert r["report"]["violations"][0]["device"] == "motor_limited"
        # A group the user is not in: NATS refuses the request.
        with pytest.raises(AccessDenied):
            await client.request("item_dry_run", {"item": item, "user_group": "test_user"})
        assert (await client.request("environment_close", {}))["success"]
