"""Every route of the first release's README, as its `http` examples call them, over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from services.stack.natsserver import NatsServer, free_port
from tests.conftest import Services, running_services
from tests.integration.gateway_support import gateway_for, running_gateway, wait_status

COUNT = {"name": "count", "args": [["det1", "det2"]]}
SCAN = {"name": "scan", "args": [["det1", "det2"], "motor", -1, 1, 10]}


@pytest.fixture(scope="module")
async def http(module_services: Services) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway without keys (`qserver stack up --no-auth`): the README's requests carry none."""
    async with (
        gateway_for(module_services, "--no-auth") as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=30) as client,
    ):
        yield client


async def ok(http: httpx.AsyncClient, method: str, path: str, **body: Any) -> dict[str, Any]:
    r = await http.request(method, path, json=body if body else None)
    assert r.status_code == 200, r.text
    reply: dict[str, Any] = r.json()
    assert reply.get("success", True), reply
    return reply


async def queue_names(http: httpx.AsyncClient) -> list[Any]:
    items = (await ok(http, "GET", "/queue/get"))["items"]
    return [(it["name"], it["kwargs"].get("num")) for it in items]


def numbered(n: int) -> dict[str, Any]:
    return {**COUNT, "kwargs": {"num": n}}


async def test_ping_and_status(http: httpx.AsyncClient) -> None:
    assert (await ok(http, "GET", "/"))["manager_state"] == "idle"
    st = await ok(http, "GET", "/status")
    assert {"manager_state", "items_in_queue", "plan_queue_uid", "re_state"} <= set(st)


async def test_plans_and_devices_allowed(http: httpx.AsyncClient) -> None:
    assert "count" in (await ok(http, "GET", "/plans/allowed"))["plans_allowed"]
    assert "det1" in (await ok(http, "GET", "/devices/allowed"))["devices_allowed"]


async def test_queue_plan_add_get_remove_and_clear_as_in_the_readme(
    http: httpx.AsyncClient,
) -> None:
    await ok(http, "POST", "/queue/clear")
    r = await ok(http, "POST", "/queue/plan/add", plan=COUNT)
    assert r["item"]["item_type"] == "plan" and r["item"]["user_group"] == "primary"
    await ok(http, "POST", "/queue/plan/add", plan=SCAN)
    await ok(http, "POST", "/queue/plan/add", plan=numbered(1), pos="front")
    await ok(http, "POST", "/queue/plan/add", plan=numbered(2), pos="back")
    await ok(http, "POST", "/queue/plan/add", plan=numbered(3), pos=2)
    await ok(http, "POST", "/queue/plan/add", plan=numbered(4), pos=-1)
    await ok(http, "POST", "/queue/plan/add", plan=numbered(5), pos=100)
    assert await queue_names(http) == [
        ("count", 1),
        ("count", None),
        ("count", 3),
        ("scan", None),
        ("count", 4),
        ("count", 2),
        ("count", 5),
    ]
    # `echo '{}' | http POST .../queue/plan/get` reads the back item.
    r = await http.post("/queue/plan/get", content=b"{}")
    assert r.json()["item"]["kwargs"] == {"num": 5}
    assert (await ok(http, "POST", "/queue/plan/get", pos="front"))["item"]["kwargs"] == {"num": 1}
    assert (await ok(http, "POST", "/queue/plan/get", pos=-2))["item"]["kwargs"] == {"num": 2}
    r = await http.post("/queue/plan/remove", content=b"{}")
    assert r.json()["item"]["kwargs"] == {"num": 5}
    await ok(http, "POST", "/queue/plan/remove", pos="front")
    await ok(http, "POST", "/queue/plan/remove", pos=-2)
    assert await queue_names(http) == [("count", None), ("count", 3), ("scan", None), ("count", 2)]
    # A position that names no item is refused with success false and status 200.
    r = await http.post("/queue/plan/remove", json={"pos": 10})
    assert r.status_code == 200 and r.json()["success"] is False
    await ok(http, "POST", "/queue/clear")
    assert await queue_names(http) == []


def paused(st: dict[str, Any]) -> bool:
    return bool(st["manager_state"] == "paused")


def running(st: dict[str, Any]) -> bool:
    return bool(st["re_state"] == "running")


def idle(st: dict[str, Any]) -> bool:
    return bool(st["manager_state"] == "idle")


async def start_and_pause(http: httpx.AsyncClient, option: str = "immediate") -> None:
    await ok(http, "POST", "/queue/plan/add", plan={**COUNT, "kwargs": {"num": 50, "delay": 0.1}})
    await ok(http, "POST", "/queue/start")
    await wait_status(http, running)
    await ok(http, "POST", "/re/pause", option=option)
    await wait_status(http, paused)


async def collect_console(http: httpx.AsyncClient, out: list[dict[str, Any]]) -> None:
    """Every message of the console WebSocket, appended to `out`."""
    url = str(http.base_url).replace("http://", "ws://").rstrip("/") + "/api/console_output/ws"
    async with connect(url) as ws:
        async for msg in ws:
            out.append(json.loads(msg))


async def test_environment_queue_and_run_engine_control(http: httpx.AsyncClient) -> None:
    console: list[dict[str, Any]] = []
    listener = asyncio.create_task(collect_console(http, console))
    await ok(http, "POST", "/queue/clear")
    await ok(http, "POST", "/environment/open")
    await wait_status(http, lambda st: st["worker_environment_exists"] and idle(st))

    await start_and_pause(http)
    await ok(http, "POST", "/re/resume")
    await wait_status(http, running)
    await ok(http, "POST", "/re/pause", option="deferred")
    await wait_status(http, paused)
    await ok(http, "POST", "/re/stop")
    await wait_status(http, idle)
    for path in ("/re/abort", "/re/halt", "/re_halt"):
        await ok(http, "POST", "/queue/clear")
        await start_and_pause(http)
        await ok(http, "POST", path)
        await wait_status(http, idle)

    # stop after the current plan, then change one's mind
    await ok(http, "POST", "/queue/clear")
    await ok(http, "POST", "/queue/plan/add", plan={**COUNT, "kwargs": {"num": 5, "delay": 0.1}})
    await ok(http, "POST", "/queue/start")
    await ok(http, "POST", "/queue/stop")
    assert (await wait_status(http, lambda st: st["queue_stop_pending"]))["queue_stop_pending"]
    await ok(http, "POST", "/queue/stop/cancel")
    await wait_status(http, lambda st: not st["queue_stop_pending"])
    await wait_status(http, idle)

    history = (await ok(http, "GET", "/history/get"))["items"]
    exits = [h["result"]["exit_status"] for h in history]
    assert exits[:4] == ["stopped", "aborted", "halted", "halted"] and exits[-1] == "completed"
    await ok(http, "POST", "/history/clear")
    assert (await ok(http, "GET", "/history/get"))["items"] == []

    # What the environment printed, from the gateway's console buffer.
    assert "Starting a plan 'count'" in (await ok(http, "GET", "/api/console_output"))["text"]
    r = await http.request("GET", "/api/console_output_update", json={"last_msg_uid": "ALL"})
    msgs = r.json()["console_output_msgs"]
    assert any("completed" in m["msg"] for m in msgs) and r.json()["last_msg_uid"]
    # The same lines, live on the WebSocket.
    listener.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await listener
    assert any("Starting a plan 'count'" in m["msg"] for m in console)

    await ok(http, "POST", "/environment/close")
    await wait_status(http, lambda st: not st["worker_environment_exists"] and idle(st))
    await ok(http, "POST", "/environment/open")
    await wait_status(http, lambda st: st["worker_environment_exists"] and idle(st))
    await ok(http, "POST", "/environment/destroy")
    await wait_status(http, lambda st: not st["worker_environment_exists"] and idle(st))


@pytest.mark.parametrize(
    ("path", "body", "problem"),
    [
        ("/queue/plan/add", b'{"plan": ', "malformed JSON"),
        ("/queue/plan/add", b"[1, 2]", "must be a JSON object"),
        ("/queue/plan/add", b'{"plan": {"name": "count"}, "where": 1}', "unknown field `where`"),
        ("/queue/plan/add", b'{"plan": "count"}', "Expected `object`, got `str`"),
        ("/queue/plan/get", b'{"pos": "middle"}', "`$.pos`"),
        ("/re/pause", b'{"option": "now"}', "`$.option`"),
        ("/manager/stop", b'{"option": 1}', "`$.option`"),
        ("/api/queue/item/add", b'{"item": {"name": "count"}, "posx": 1}', "`posx`"),
        ("/api/history/get", b'{"limit": "ten"}', "`$.limit`"),
    ],
)
async def test_bad_input_is_a_400_naming_the_problem(
    http: httpx.AsyncClient, path: str, body: bytes, problem: str
) -> None:
    method = "GET" if path == "/api/history/get" else "POST"
    r = await http.request(method, path, content=body)
    assert r.status_code == 400, r.text
    assert problem in r.json()["detail"]


async def test_unknown_routes_and_methods_are_4xx_with_a_detail(http: httpx.AsyncClient) -> None:
    r = await http.get("/queue/nothing")
    assert r.status_code == 404 and r.json()["detail"]
    r = await http.get("/queue/plan/add")
    assert r.status_code == 405 and r.json()["detail"]
    r = await http.post("/queue/plan/add", content=b"x" * (600 * 1024))
    assert r.status_code in (400, 413) and r.json()["detail"]


async def test_manager_stop_and_kill(nats_server: NatsServer, tmp_path: Path) -> None:
    async with (
        running_services(nats_server, tmp_path) as svc,
        gateway_for(svc, "--no-auth", "--timeout", "1") as gw,
        httpx.AsyncClient(base_url=gw.url) as http,
    ):
        r = await http.post("/manager/stop", json={"option": "bogus"})
        assert r.status_code == 400
        await ok(http, "POST", "/test/manager/kill")
        # Nothing supervises the queue service here: it stays down, and the gateway says so
        # once its last status event is stale (1.5 s).
        async with asyncio.timeout(10):
            while (r := await http.get("/status")).status_code == 200:
                await asyncio.sleep(0.1)
        assert r.status_code == 503 and "The queue service is not running" in r.json()["detail"]

    async with (
        running_services(nats_server, tmp_path) as svc,
        gateway_for(svc, "--no-auth") as gw,
        httpx.AsyncClient(base_url=gw.url) as http,
    ):
        r = await http.post("/manager/stop", content=b"{}")
        assert r.json() == {"success": True, "msg": ""}
        assert svc.procs["queue"].proc is not None
        assert svc.procs["queue"].proc.wait(10) == 0


async def test_nats_down_is_a_503_not_a_hang(own_nats: NatsServer, tmp_path: Path) -> None:
    async with (
        running_gateway(own_nats.url, "qs.nobody", tmp_path, "--no-auth", "--timeout", "1") as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=5) as http,
    ):
        r = await http.get("/status")
        assert r.status_code == 503 and "no service answers 'status'" in r.json()["detail"]
        own_nats.stop()
        r = await http.get("/api/status")
        assert r.status_code == 503 and "not connected to NATS" in r.json()["detail"]


async def test_a_gateway_without_nats_still_answers_503(tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    async with (
        running_gateway(url, "qs.nobody", tmp_path, "--no-auth") as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=5) as http,
    ):
        r = await http.post("/queue/start")
        assert r.status_code == 503 and url in r.json()["detail"]
        assert gw.proc.stop() == 0  # SIGTERM is a clean stop, as for every service


async def test_docs_render_from_local_assets(http: httpx.AsyncClient) -> None:
    page = (await http.get("/docs")).text
    assert "https://" not in page and "cdn" not in page.lower()
    for asset in ("/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"):
        r = await http.get(asset)
        assert r.status_code == 200 and len(r.content) > 10_000
    schema = (await http.get("/openapi.json")).json()
    assert schema["openapi"].startswith("3.1")
    assert {"/queue/plan/add", "/api/queue/item/add", "/api/console_output"} <= set(schema["paths"])


async def test_the_web_page_uses_only_the_gateway(http: httpx.AsyncClient) -> None:
    r = await http.get("/ui")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "/api/status/ws" in r.text and "/api/console_output/ws" in r.text
    assert "https://" not in r.text and "http://" not in r.text


async def test_two_gateways_serve_one_queue_server(module_services: Services) -> None:
    async with (
        gateway_for(module_services, "--no-auth") as one,
        gateway_for(module_services, "--no-auth") as two,
        httpx.AsyncClient(base_url=one.url) as a,
        httpx.AsyncClient(base_url=two.url) as b,
    ):
        uid = (await ok(a, "POST", "/queue/plan/add", plan=COUNT))["item"]["item_uid"]
        assert uid in [it["item_uid"] for it in (await ok(b, "GET", "/queue/get"))["items"]]
        await ok(b, "POST", "/queue/clear")


async def test_closed_streams_release_their_subscriptions(
    own_nats: NatsServer, tmp_path: Path
) -> None:
    monitor = f"http://127.0.0.1:{own_nats.monitor_port}/subsz"
    async with (
        running_gateway(own_nats.url, "qs.streams", tmp_path, "--no-auth") as gw,
        httpx.AsyncClient(base_url=gw.url) as http,
    ):
        ws = gw.url.replace("http://", "ws://")
        # The first JetStream request of the account makes the server's own reply
        # subscription (`_R_.<id>.>`), once: not one of the gateway's.
        async with connect(ws + "/api/progress/ws"):
            pass
        await asyncio.sleep(0.5)
        before = (await http.get(monitor)).json()["num_subscriptions"]
        for _ in range(5):
            async with http.stream("GET", "/api/stream_console_output"):
                pass
            for path in (
                "/api/status/ws",
                "/api/console_output/ws",
                "/api/info/ws",
                "/api/progress/ws",
                "/api/documents/ws?run=current",
            ):
                async with connect(ws + path):
                    pass
        async with asyncio.timeout(5):  # the last ones may still be closing
            while (await http.get(monitor)).json()["num_subscriptions"] != before:
                await asyncio.sleep(0.05)


async def test_status_comes_from_the_pushed_event_and_expires_with_it(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with (
        running_services(nats_server, tmp_path) as svc,
        gateway_for(svc, "--no-auth", "--timeout", "1") as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=5) as http,
    ):
        await asyncio.sleep(1.2)  # a heartbeat event has reached the gateway
        before = (await http.get("/api/status")).json()
        # A change shows in the very next status: its event comes before the reply.
        r = await http.post("/api/queue/item/add", json={"item": {**COUNT, "item_type": "plan"}})
        assert r.json()["success"], r.text
        after = (await http.get("/api/status")).json()
        assert after["items_in_queue"] == before["items_in_queue"] + 1
        assert after["plan_queue_uid"] != before["plan_queue_uid"]

        # The queue service hangs: its last event is served while fresh, then 503.
        queue = svc.procs["queue"].proc
        assert queue is not None
        queue.send_signal(signal.SIGSTOP)
        try:
            assert (await http.get("/api/status")).status_code == 200
            await asyncio.sleep(1.6)
            r = await http.get("/api/status")
            assert r.status_code == 503, r.text
        finally:
            queue.send_signal(signal.SIGCONT)
