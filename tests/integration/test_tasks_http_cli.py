"""Tasks over HTTP (the gateway's routes, `REManagerAPI` unchanged) and the `qserver` CLI."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from bluesky_queueserver_api import BFunc
from bluesky_queueserver_api.http import REManagerAPI

from tests.conftest import Services
from tests.integration.gateway_support import Gateway, gateway_for
from tests.integration.test_cli import ok, qs
from tests.integration.test_execution import idle, open_env, until
from tests.integration.test_stack import Stacks
from tests.integration.test_stack_security import clean_env, qserver
from tests.integration.zmq_support import running_bridge, zmq_client

KEY = "SingleUserKeyForTaskTests1"
SINGLE_USER = "UNAUTHENTICATED_SINGLE_USER"


@pytest.fixture
async def gateway(services: Services) -> AsyncIterator[Gateway]:
    env = {"QSERVER_HTTP_SERVER_SINGLE_USER_API_KEY": KEY}
    async with gateway_for(services, env=env) as gw:
        yield gw


def http_session(gateway: Gateway) -> None:
    RM = REManagerAPI(http_server_uri=gateway.url)
    RM.set_authorization_key(api_key=KEY)
    try:
        # The gateway sets the user and group from the key, whatever the client sends.
        r = RM.function_execute(BFunc("function_sleep", 2), user="someone", user_group="test_user")
        assert r["success"] and r["msg"] == "", r
        assert (r["item"]["user"], r["item"]["user_group"]) == (SINGLE_USER, "primary")
        assert RM.status()["manager_state"] == "executing_task"
        assert RM.task_status(r["task_uid"])["status"] == "running"
        RM.wait_for_idle(timeout=60)
        result = RM.task_result(r["task_uid"])
        assert result["status"] == "completed"
        assert result["result"]["return_value"] == {"success": True, "time": 2}
        # Background, beside nothing; the script's plan appears in the lists.
        r = RM.script_upload(
            "def sleep_for_a_few_sec(tt=1):\n    yield from bps.sleep(tt)\n",
            run_in_background=True,
        )
        assert RM.wait_for_completed_task(r["task_uid"], timeout=60) == {r["task_uid"]: "completed"}
        assert RM.task_result(r["task_uid"])["result"]["success"] is True
        assert "sleep_for_a_few_sec" in RM.plans_allowed()["plans_allowed"]
        r = RM.environment_update(run_in_background=True)
        assert RM.wait_for_completed_task(r["task_uid"], timeout=60)[r["task_uid"]] == "completed"
        # Refusals are HTTP 200 with the reason, as bluesky-httpserver answers them.
        with pytest.raises(RM.RequestFailedError, match="is not allowed for users"):
            RM.function_execute(BFunc("push_buffer_element", 1))
        RM.environment_close()
        RM.wait_for_idle(timeout=60)
    finally:
        RM.close()


async def test_tasks_over_http_with_the_reference_client(
    services: Services, gateway: Gateway
) -> None:
    assert services.client is not None
    # Opened over NATS: its reply may take longer than the HTTP client's 5 s on a busy
    # machine (not the point here).
    await open_env(services.client)
    await asyncio.to_thread(http_session, gateway)


async def test_task_routes_take_json_bodies_and_need_their_scopes(
    services: Services, gateway: Gateway
) -> None:
    assert services.client is not None
    await open_env(services.client)
    headers = {"Authorization": f"ApiKey {KEY}"}
    async with httpx.AsyncClient(base_url=gateway.url, headers=headers, timeout=30) as http:
        r = await http.post("/api/script/upload", json={"script": "raise ValueError('bad')"})
        assert r.status_code == 200 and r.json()["success"], r.text
        task_uid = r.json()["task_uid"]
        # GET with a JSON body, as bluesky-httpserver reads it.
        for _ in range(600):
            r = await http.request("GET", "/api/task/status", json={"task_uid": [task_uid]})
            if r.json()["status"][task_uid] == "completed":
                break
            await asyncio.sleep(0.1)
        r = await http.request("GET", "/api/task/result", json={"task_uid": task_uid})
        result = r.json()["result"]
        assert result["success"] is False and "ValueError: bad" in result["traceback"]
        r = await http.post("/api/function/execute", json={"item": {"name": "function_sleep"}})
        assert r.status_code == 200 and "'item_type' key is not found" in r.json()["msg"]
        r = await http.request("GET", "/api/task/status", json={"task_uid": 1, "x": 2})
        assert r.status_code == 400 and "x" in r.json()["detail"]
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as anonymous:
        for method, path in (
            ("POST", "/api/function/execute"),
            ("POST", "/api/script/upload"),
            ("GET", "/api/task/status"),
            ("GET", "/api/task/result"),
        ):
            assert (await anonymous.request(method, path, json={})).status_code == 401, path


async def test_tasks_from_the_cli(services: Services, tmp_path: Path) -> None:
    assert services.client is not None
    client = services.client
    await ok(services, "environment", "open")
    await until(client, lambda st: st["worker_environment_exists"] and idle(st))
    r = await ok(services, "function", "execute", '{"name": "function_sleep", "args": [1]}')
    task_uid = r["task_uid"]
    assert r["item"]["item_type"] == "function"
    await until(client, idle)
    assert (await ok(services, "task", "status", task_uid))["status"] == "completed"
    result = (await ok(services, "task", "result", task_uid))["result"]
    assert result["return_value"] == {"success": True, "time": 1}

    script = tmp_path / "script.py"
    script.write_text("from ophyd import Device\ncli_dev = Device(name='cli_dev')\n")
    r = await ok(services, "script", "upload", str(script), "background", "keep-lists")
    await wait_completed(services, r["task_uid"])
    assert "cli_dev" not in (await client.request("devices_existing"))["devices_existing"]
    r = await ok(services, "environment", "update", "background")
    await wait_completed(services, r["task_uid"])
    assert "cli_dev" in (await client.request("devices_existing"))["devices_existing"]
    r = await ok(services, "script", "upload", str(script), "update-re")
    await wait_completed(services, r["task_uid"])

    refused = await qs(services, "function", "execute", '{"name": "clear_buffer"}')
    assert refused.rc != 0 and "is not allowed for users from 'primary' group" in (
        refused.out + refused.err
    )
    await ok(services, "environment", "close")
    await until(client, lambda st: not st["worker_environment_exists"] and idle(st))
    refused = await qs(services, "script", "upload", str(script))
    assert refused.rc != 0 and "RE Worker environment is not open" in refused.out + refused.err


async def wait_completed(services: Services, task_uid: str) -> dict[str, Any]:
    for _ in range(600):
        r = await ok(services, "task", "result", task_uid)
        if r["status"] == "completed":
            assert r["result"]["success"], r
            return r
        await asyncio.sleep(0.1)
    raise AssertionError(f"task {task_uid} did not complete")


async def test_tasks_on_the_secure_embedded_stack(stacks: Stacks) -> None:
    """With a NATS user per role: the environment (as the worker) writes results that the
    queue service reads, and the CLI (as the operator) runs tasks."""
    proc = stacks.start("--no-kafka")
    info = await proc.wait_info(timeout=60)
    env = clean_env(Path(info["data_dir"]))
    try:
        rc, out = await qserver(env, "environment", "open")
        assert rc == 0, out
        for _ in range(600):
            rc, out = await qserver(env, "status")
            if '"worker_environment_exists": true' in out and '"manager_state": "idle"' in out:
                break
            await asyncio.sleep(0.1)
        rc, out = await qserver(env, "function", "execute", '{"name":"function_sleep","args":[0]}')
        assert rc == 0, out
        task_uid = json.loads(out)["task_uid"]
        for _ in range(600):
            rc, out = await qserver(env, "task", "result", task_uid)
            if json.loads(out)["status"] == "completed":
                break
            await asyncio.sleep(0.1)
        assert json.loads(out)["result"]["return_value"] == {"success": True, "time": 0}, out
    finally:
        proc.proc.send_signal(signal.SIGTERM)
        await proc.wait_exit(30)


async def test_tasks_over_the_zmq_bridge(services: Services) -> None:
    """The reference's wire (0MQ `{method, params}`), through the bridge in front of NATS."""
    assert services.client is not None
    await open_env(services.client)
    async with running_bridge(services) as bridge, zmq_client(bridge.control) as z:
        item = {"item_type": "function", "name": "function_sleep", "args": [1]}
        r = await z.request(
            "function_execute", {"item": item, "user": "z", "user_group": "primary"}
        )
        assert r["success"] and r["item"]["user"] == "z", r
        assert (await z.request("status"))["manager_state"] == "executing_task"
        for _ in range(600):
            done = await z.request("task_result", {"task_uid": r["task_uid"]})
            if done["status"] == "completed":
                break
            await asyncio.sleep(0.1)
        assert done["result"]["return_value"] == {"success": True, "time": 1}, done
        r = await z.request("script_upload", {"script": "zmq_value = 1", "run_in_background": True})
        assert r["success"], r
        status = await z.request("task_status", {"task_uid": [r["task_uid"]]})
        assert status["status"][r["task_uid"]] in ("running", "completed")
        refused = await z.request("task_status", {"task_uid": 5})
        assert refused["success"] is False and refused["status"] is None
        assert refused["msg"].startswith("Error: 'task_uid' must be a string")
