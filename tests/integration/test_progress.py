"""Live progress (ADR 25): events from the environment, the status key, the gateway's
WebSockets (progress, and the open run's documents replayed then live), the client feeds."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import connect

from qserver.client import Client
from qserver.feeds import last_progress, open_run_progress
from tests.conftest import USER, Services
from tests.integration.gateway_support import Gateway, gateway_for

SCAN_POINTS = 15


def scan(num: int = SCAN_POINTS) -> dict[str, Any]:
    return {"item_type": "plan", "name": "scan", "args": [["det1", "det2"], "motor", -1, 1, num]}


def slow_count(num: int, delay: float) -> dict[str, Any]:
    return {
        "item_type": "plan",
        "name": "count",
        "args": [["det1"]],
        "kwargs": {"num": num, "delay": delay},
    }


@pytest.fixture(scope="module")
async def client(module_services: Services) -> AsyncIterator[Client]:
    c = module_services.client
    assert c is not None
    r = await c.request("environment_open", timeout=30)
    assert r["success"], r
    await c.wait_for(
        lambda st: st["worker_environment_exists"] and st["manager_state"] == "idle", timeout=60
    )
    yield c


@pytest.fixture(scope="module")
async def gateway(module_services: Services, client: Client) -> AsyncIterator[Gateway]:
    async with gateway_for(module_services, "--no-auth") as gw:
        yield gw


async def add_and_start(client: Client, item: dict[str, Any]) -> str:
    r = await client.request("queue_item_add", {"item": item, **USER})
    assert r["success"], r
    uid = str(r["item"]["item_uid"])
    r = await client.request("queue_start")
    assert r["success"], r
    return uid


async def collect_until_done(events: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    async for ev in events:
        out.append(ev)
        if ev["done"]:
            return out
    return out


async def idle(client: Client) -> None:
    await client.wait_for(
        lambda st: st["manager_state"] == "idle" and st["running_item_uid"] is None, timeout=60
    )


async def test_a_scan_reports_each_point_up_to_n_with_motor_positions_and_ends_done(
    client: Client,
) -> None:
    async with client.subscription(client.subjects.progress_event) as live:

        async def events() -> AsyncIterator[dict[str, Any]]:
            async for msg in live:
                yield json.loads(msg.data)

        uid = await add_and_start(client, scan())
        got = await asyncio.wait_for(collect_until_done(events()), 60)
    await idle(client)
    last = got[-1]
    assert last["done"] and last["exit_status"] == "success"
    assert last["point"] == last["num_points"] == SCAN_POINTS
    assert last["item_uid"] == uid and last["plan_name"] == "scan"
    assert last["motors"] == ["motor"] and last["detectors"] == ["det1", "det2"]
    assert last["positions"]["motor"] == pytest.approx(1.0)
    assert last["eta"] == 0.0 and last["elapsed"] > 0
    assert len({ev["run_uid"] for ev in got}) == 1
    points = [ev["point"] for ev in got]
    assert points == sorted(points) and points[0] <= 1
    assert [ev for ev in got if ev["done"]] == [last]


async def test_progress_is_at_most_ten_events_a_second_per_run(client: Client) -> None:
    """A count of 300 fast points (~4 ms each): far fewer events than points, each at least
    0.1 s after the one before (the stated bound, measured on the environment's clock)."""
    async with client.subscription(client.subjects.progress_event) as live:

        async def events() -> AsyncIterator[dict[str, Any]]:
            async for msg in live:
                yield json.loads(msg.data)

        await add_and_start(client, slow_count(300, 0.0))
        got = await asyncio.wait_for(collect_until_done(events()), 120)
    await idle(client)
    assert got[-1]["point"] == 300
    gaps = [b["time"] - a["time"] for a, b in itertools.pairwise(got)]
    # time.time() and the monotonic clock that spaces them can differ by a clock step only.
    assert min(gaps, default=1.0) >= 0.095, gaps
    span = got[-1]["time"] - got[0]["time"]
    assert len(got) <= span * 10 + 2


async def test_the_status_carries_a_compact_progress_while_a_run_is_open(client: Client) -> None:
    uid = await add_and_start(client, slow_count(8, 0.5))
    st = await client.wait_for(
        lambda st: (st.get("progress") or {}).get("point", 0) >= 2, timeout=60
    )
    p = st["progress"]
    assert set(p) == {"run_uid", "point", "num_points", "elapsed", "eta"}
    assert p["num_points"] == 8 and p["eta"] is not None and p["eta"] > 0
    assert st["running_item_uid"] == uid
    await idle(client)
    assert (await client.request("status"))["progress"] is None


async def test_the_progress_websocket_gives_the_open_runs_last_event_then_live(
    client: Client, gateway: Gateway
) -> None:
    url = gateway.url.replace("http://", "ws://") + "/api/progress/ws"
    await add_and_start(client, slow_count(8, 0.5))
    st = await client.wait_for(lambda st: (st.get("progress") or {}).get("point", 0) >= 2, 60)
    run_uid = st["progress"]["run_uid"]
    async with connect(url) as ws:
        first = json.loads(await asyncio.wait_for(ws.recv(), 30))
        assert first["msg"]["run_uid"] == run_uid and first["msg"]["point"] >= 2
        assert isinstance(first["time"], float)
        msgs = [first["msg"]]
        while not msgs[-1]["done"]:
            msgs.append(json.loads(await asyncio.wait_for(ws.recv(), 30))["msg"])
    assert msgs[-1]["point"] == 8 and msgs[-1]["exit_status"] == "success"
    assert [m["point"] for m in msgs] == sorted(m["point"] for m in msgs)
    await idle(client)


async def test_documents_websocket_replays_the_open_run_from_its_start_then_goes_live(
    client: Client, gateway: Gateway
) -> None:
    url = gateway.url.replace("http://", "ws://") + "/api/documents/ws?run=current"
    await add_and_start(client, slow_count(8, 0.5))
    r = await client.request("queue_item_add", {"item": slow_count(2, 0.0), **USER})
    assert r["success"], r  # the next run, after the one the socket opens in
    st = await client.wait_for(lambda st: (st.get("progress") or {}).get("point", 0) >= 3, 60)
    run_uid = st["progress"]["run_uid"]
    docs: list[dict[str, Any]] = []
    async with connect(url) as ws:
        while [d["name"] for d in docs].count("stop") < 2:
            docs.append(json.loads(await asyncio.wait_for(ws.recv(), 30))["msg"])
    await idle(client)
    second = next(i for i, d in enumerate(docs) if d["name"] == "start" and i > 0)
    nxt, docs = docs[second:], docs[:second]
    assert nxt[0]["doc"]["uid"] != run_uid and nxt[-1]["name"] == "stop"
    assert len([d for d in nxt if d["name"] == "event"]) == 2  # the next run, live
    assert docs[0]["name"] == "start" and docs[0]["doc"]["uid"] == run_uid
    assert docs[-1]["doc"]["run_start"] == run_uid and docs[-1]["doc"]["exit_status"] == "success"
    events = [d["doc"] for d in docs if d["name"] == "event"]
    # Read back, then live: every point once, in order, none lost at the seam.
    assert [e["seq_num"] for e in events] == list(range(1, 9))
    assert all(isinstance(e["data"]["det1"], float) for e in events)


async def test_documents_websocket_refuses_an_unknown_run(gateway: Gateway) -> None:
    import websockets

    url = gateway.url.replace("http://", "ws://") + "/api/documents/ws?run=yesterday"
    async with connect(url) as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_the_client_feed_starts_with_the_open_run_then_follows_it(client: Client) -> None:
    await add_and_start(client, slow_count(6, 0.5))
    st = await client.wait_for(lambda st: (st.get("progress") or {}).get("point", 0) >= 2, 60)
    feed = client.progress_feed()
    first = await asyncio.wait_for(anext(feed), 30)
    assert first["run_uid"] == st["progress"]["run_uid"] and first["point"] >= 2
    rest = await asyncio.wait_for(collect_until_done(feed), 60)
    await feed.aclose()
    assert rest and rest[-1]["point"] == 6
    await idle(client)


@pytest.mark.timeout(240)
async def test_a_restarted_queue_service_shows_the_progress_of_a_paused_plan(
    services: Services,
) -> None:
    """The queue service SIGKILLed while a plan is paused (no new progress events come): the
    new one reads the last event back from the progress stream; the plan then finishes."""
    client = services.client
    assert client is not None
    r = await client.request("environment_open", timeout=30)
    assert r["success"], r
    await client.wait_for(
        lambda st: st["worker_environment_exists"] and st["manager_state"] == "idle", timeout=60
    )
    uid = await add_and_start(client, slow_count(10, 0.5))
    await client.wait_for(lambda st: (st.get("progress") or {}).get("point", 0) >= 2, 60)
    r = await client.request("re_pause", {"option": "immediate"})
    assert r["success"], r
    paused = await client.wait_for(lambda st: st["manager_state"] == "paused", 60)
    before = paused["progress"]
    assert before is not None and before["point"] >= 2

    services.kill("queue")
    services.start("queue")
    await services.wait_ready()
    st = await client.wait_for(
        lambda st: st["manager_state"] == "paused" and st["progress"] is not None, 60
    )
    assert st["running_item_uid"] == uid
    assert (st["progress"]["run_uid"], st["progress"]["point"]) == (
        before["run_uid"],
        before["point"],
    )
    r = await client.request("re_resume")
    assert r["success"], r
    await idle(client)
    assert (await client.request("status"))["progress"] is None
    done = (await client.request("history_get"))["items"][-1]
    assert done["item_uid"] == uid and done["result"]["exit_status"] == "completed"


def monitor_argv(svc: Services) -> list[str]:
    return [sys.executable, "-m", "qserver.cli", "-a", svc.nats.url, "--prefix", svc.prefix]


async def test_qserver_monitor_progress_draws_a_bar_per_event_until_done(
    module_services: Services, client: Client
) -> None:
    argv = [*monitor_argv(module_services), "monitor", "progress"]
    idle_once = await asyncio.create_subprocess_exec(
        *argv, "--once", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(idle_once.communicate(), 60)
    assert idle_once.returncode == 0, err
    assert out.decode().strip() == "no run in progress"

    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    try:
        # Whether the monitor is subscribed before the run starts or not, it shows the open
        # run (its last event first) and follows it.
        await add_and_start(client, slow_count(10, 0.5))
        lines = []
        async with asyncio.timeout(60):
            while not lines or "done:" not in lines[-1]:
                lines.append((await proc.stdout.readline()).decode())
    finally:
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 60)
    await idle(client)
    assert lines[-1].startswith("scan ") and " count  [" in lines[-1]
    assert "10/10 100%" in lines[-1] and "done: success" in lines[-1]
    assert all("count" in line for line in lines)


async def test_the_status_drops_the_progress_of_a_run_whose_environment_was_destroyed(
    services: Services,
) -> None:
    """No stop document ever comes (so no `done` event): the item's end clears it."""
    client = services.client
    assert client is not None
    assert (await client.request("environment_open", timeout=30))["success"]
    await client.wait_for(
        lambda st: st["worker_environment_exists"] and st["manager_state"] == "idle", timeout=60
    )
    await add_and_start(client, slow_count(20, 0.5))
    await client.wait_for(lambda st: (st.get("progress") or {}).get("point", 0) >= 2, 60)
    assert (await client.request("environment_destroy", timeout=30))["success"]
    st = await client.wait_for(
        lambda st: not st["worker_environment_exists"] and st["running_item_uid"] is None, 60
    )
    assert st["progress"] is None
    assert (await client.request("status"))["progress"] is None
    # The stream's last event is that run's, never `done`; the feeds know it is over.
    last = await last_progress(client)
    assert last is not None and not last["done"]
    ended = await open_run_progress(client)
    assert ended is not None and ended["done"] and ended["run_uid"] == last["run_uid"]


@pytest.mark.timeout(240)
async def test_progress_goes_on_to_the_end_while_the_worker_service_is_killed(
    services: Services,
) -> None:
    """The environment publishes progress itself: the worker service SIGKILLed mid-run
    changes nothing for its subscribers (ADR 12: the environment outlives it)."""
    client = services.client
    assert client is not None
    assert (await client.request("environment_open", timeout=30))["success"]
    await client.wait_for(
        lambda st: st["worker_environment_exists"] and st["manager_state"] == "idle", timeout=60
    )
    async with client.subscription(client.subjects.progress_event) as live:

        async def events() -> AsyncIterator[dict[str, Any]]:
            async for msg in live:
                yield json.loads(msg.data)

        feed = events()
        uid = await add_and_start(client, slow_count(10, 0.5))
        async with asyncio.timeout(60):
            while (await anext(feed))["point"] < 1:
                pass
        services.kill("worker")
        rest = await asyncio.wait_for(collect_until_done(feed), 60)
    assert rest[-1]["done"] and rest[-1]["exit_status"] == "success"
    assert rest[-1]["point"] == 10 and rest[-1]["item_uid"] == uid
    services.start("worker")
    await services.wait_ready()

    def recorded(st: dict[str, Any]) -> bool:
        return st["running_item_uid"] is None and st["items_in_history"] >= 1

    await client.wait_for(recorded, 90)
    done = (await client.request("history_get"))["items"][-1]
    assert done["item_uid"] == uid and done["result"]["exit_status"] == "completed"
