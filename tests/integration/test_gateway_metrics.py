"""`GET /metrics` of the gateway: requests by route, the queue, plans run and failures."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from qserver.client import Client
from services.gateway.metrics import HISTORY_FETCH_EVERY_S
from tests.conftest import USER, Services, plan
from tests.integration.gateway_support import Gateway, gateway_for

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
async def gw(services: Services) -> AsyncIterator[tuple[Gateway, httpx.AsyncClient]]:
    async with (
        gateway_for(services, "--no-auth") as g,
        httpx.AsyncClient(base_url=g.url, timeout=30) as http,
    ):
        yield g, http


async def scrape(http: httpx.AsyncClient) -> str:
    r = await http.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return r.text


async def until_metric(http: httpx.AsyncClient, name: str, want: float, **labels: str) -> str:
    async with asyncio.timeout(20):
        while True:
            text = await scrape(http)
            if value(text, name, **labels) == want:
                return text
            await asyncio.sleep(0.1)


async def test_requests_are_counted_and_timed_by_route(
    gw: tuple[Gateway, httpx.AsyncClient],
) -> None:
    _, http = gw
    for _ in range(3):
        assert (await http.get("/api/status")).status_code == 200
    assert (await http.post("/api/queue/item/add", content=b"{nope")).status_code == 400
    text = await scrape(http)
    route = {"method": "GET", "route": "/api/status"}
    assert value(text, "qserver_http_requests_total", status="200", **route) == 3
    assert value(text, "qserver_http_request_duration_seconds_count", **route) == 3
    assert value(text, "qserver_http_request_duration_seconds_sum", **route) > 0
    bad = {"method": "POST", "route": "/api/queue/item/add", "status": "400"}
    assert value(text, "qserver_http_requests_total", **bad) == 1


@contextlib.asynccontextmanager
async def environment(c: Client) -> AsyncIterator[None]:
    """The environment open (the manager idle) inside, closed after."""
    assert (await c.request("environment_open", timeout=30))["success"]
    await c.wait_for(lambda st: st["worker_environment_exists"] and st["manager_state"] == "idle")
    yield
    await c.wait_for(lambda st: st["manager_state"] == "idle", 30)
    assert (await c.request("environment_close"))["success"]
    await c.wait_for(lambda st: not st["worker_environment_exists"], 30)


async def test_queue_length_and_plans_run_come_from_events(
    services: Services, gw: tuple[Gateway, httpx.AsyncClient]
) -> None:
    _, http = gw
    c = services.client
    assert c is not None
    for _ in range(2):
        assert (await c.request("queue_item_add", {"item": plan("count", ["det1"]), **USER}))[
            "success"
        ]
    await until_metric(http, "qserver_queue_length", 2)
    async with environment(c):
        assert (await c.request("queue_start"))["success"]
        text = await until_metric(http, "qserver_plans_finished_total", 2, exit_status="completed")
        assert value(text, "qserver_plan_duration_seconds_count") == 2
        assert value(text, "qserver_plan_duration_seconds_sum") > 0
        text = await until_metric(http, "qserver_queue_length", 0)
        assert value(text, "qserver_history_length") == 2
        assert value(text, "qserver_manager_state", state="idle") == 1
        assert value(text, "qserver_manager_state", state="executing_queue") == 0


async def history_gets(c: Client) -> int:
    """How many `history_get` requests the history service has answered (nats.micro stats)."""
    reply = await c.nc.request("$SRV.STATS.qserver-history", b"", timeout=10)
    stats = json.loads(reply.data)
    return sum(e["num_requests"] for e in stats["endpoints"] if e["name"] == "history_get")


async def test_plans_ending_back_to_back_cost_one_history_fetch_a_second_not_one_each(
    services: Services, gw: tuple[Gateway, httpx.AsyncClient]
) -> None:
    _, http = gw
    c = services.client
    assert c is not None
    n = 25
    items = [plan("count", ["det1"])] * n
    assert (await c.request("queue_item_add_batch", {"items": items, **USER}))["success"]
    async with environment(c):
        before = await history_gets(c)
        started = time.monotonic()
        assert (await c.request("queue_start"))["success"]
        text = await until_metric(http, "qserver_plans_finished_total", n, exit_status="completed")
        elapsed = time.monotonic() - started
        assert value(text, "qserver_plan_duration_seconds_count") == n  # each counted once
        fetches = await history_gets(c) - before
        # One fetch as the first plan ends, then one a second at most (one per plan before).
        assert 1 <= fetches <= elapsed / HISTORY_FETCH_EVERY_S + 2, (fetches, elapsed)


async def test_unavailable_service_counts_as_a_failure(
    services: Services, gw: tuple[Gateway, httpx.AsyncClient]
) -> None:
    _, http = gw
    services.procs["history"].stop()
    r = await http.get("/api/history/get")
    assert r.status_code >= 500, r.text
    text = await scrape(http)
    assert value(text, "qserver_http_failures_total", route="/api/history/get") == 1


async def test_metrics_need_a_key_with_read_status(services: Services, tmp_path: str) -> None:
    key_file = services.log_dir / "key"
    key_file.write_text("metricskey0123456789\n")
    async with (
        gateway_for(services, "--single-user-key-file", str(key_file)) as g,
        httpx.AsyncClient(base_url=g.url, timeout=30) as http,
    ):
        assert (await http.get("/metrics")).status_code == 401
        ok = await http.get("/metrics", headers={"Authorization": "ApiKey metricskey0123456789"})
        assert ok.status_code == 200
        assert "qserver_queue_length" in ok.text
