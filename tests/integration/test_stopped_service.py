"""A stopped service is reported at once (NATS's no-responders), an unknown method still
gets the reference's answer, and a request sent while a service restarts reaches it once."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import httpx
import pytest

from qserver.client import Client, NoAnswer
from qserver.protocol.api import REQUEST_TYPES, service_of
from tests.conftest import USER, Services, plan, report

# The client's timeout in these tests: a request that waited for it would be plainly seen.
TIMEOUT = 30.0
# What "at once" means here: the client re-sends for 1.5 s (UNAVAILABLE_WAIT), plus a busy
# machine's slack, against the 30 s a catch-all responder made it wait.
AT_ONCE = 3.0


async def test_a_method_of_a_stopped_service_fails_at_once_naming_the_service(
    services: Services,
) -> None:
    client = await Client.connect(services.nats.url, services.prefix, timeout=TIMEOUT)
    try:
        services.procs["queue"].stop()
        started = time.monotonic()
        with pytest.raises(NoAnswer, match="The queue service is not running") as e:
            await client.request("status")
        took = time.monotonic() - started
        report(f"request to a stopped queue service: NoAnswer after {took:.2f} s")
        assert took < AT_ONCE, took
        assert services.prefix in str(e.value)
        # The other services answer as before.
        assert (await client.request("history_get"))["success"]

        services.procs["history"].stop()
        started = time.monotonic()
        with pytest.raises(NoAnswer, match="The history service is not running"):
            await client.request("history_get")
        assert time.monotonic() - started < AT_ONCE
    finally:
        await client.close()


async def test_an_unknown_method_gets_the_reference_answer_with_every_service_up_or_down(
    services: Services,
) -> None:
    client = await Client.connect(services.nats.url, services.prefix, timeout=TIMEOUT)
    unknown = {"success": False, "msg": "Unknown method 'queue_item_teleport'"}
    try:
        assert await client.request("queue_item_teleport", {}) == unknown
        services.stop_all()
        started = time.monotonic()
        assert await client.request("queue_item_teleport", {}) == unknown
        assert time.monotonic() - started < AT_ONCE
    finally:
        await client.close()


async def test_each_method_is_served_by_its_own_service_and_nothing_takes_the_rest(
    services: Services,
) -> None:
    """No subscription stands in for all methods, so "no responders" means what it says."""
    client = services.client
    assert client is not None
    served: dict[str, set[str]] = {}
    for service in ("queue", "history"):
        msg = await client.nc.request(f"$SRV.INFO.qserver-{service}", b"", timeout=5)
        endpoints = json.loads(msg.data)["endpoints"]
        served[service] = {ep["subject"].rsplit(".", 1)[-1] for ep in endpoints}
    assert served["queue"] | served["history"] == set(REQUEST_TYPES)
    for service, methods in served.items():
        assert {service_of(m) for m in methods} == {service}
    monitor = f"http://127.0.0.1:{services.nats.monitor_port}/subsz"
    async with httpx.AsyncClient() as http:
        subs = (await http.get(monitor, params={"subs": 1, "limit": 100_000})).json()
    subjects = {s["subject"] for s in subs["subscriptions_list"]}
    assert f"{services.prefix}.api.status" in subjects  # the listing shows this server's
    assert f"{services.prefix}.api.>" not in subjects
    assert f"{services.prefix}.api.*" not in subjects


async def test_qserver_status_while_the_queue_service_is_down_exits_3_quickly(
    services: Services,
) -> None:
    async def qserver(*args: str) -> tuple[int, str, float]:
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "qserver.cli", "-a", services.nats.url,
            "--prefix", services.prefix, "--timeout", str(TIMEOUT), *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), 2 * TIMEOUT)
        assert proc.returncode is not None
        return proc.returncode, err.decode(), time.monotonic() - started

    rc, _, up = await qserver("status")
    assert rc == 0
    services.procs["queue"].stop()
    rc, err, down = await qserver("status")
    report(f"qserver status: {up:.2f} s with the queue service up, {down:.2f} s (exit 3) down")
    assert rc == 3, err
    assert "The queue service is not running" in err and services.prefix in err
    # The same process start-up, plus at most AT_ONCE of waiting: not the 30 s timeout.
    assert down < up + AT_ONCE, (up, down)


async def test_a_request_sent_while_the_service_is_down_reaches_it_once_it_is_back(
    services: Services,
) -> None:
    """NATS delivered the request to no one, so sending it again cannot apply it twice."""
    queue = services.procs["queue"]
    queue.stop()
    client = await Client.connect(services.nats.url, services.prefix, timeout=60.0)
    client.unavailable_wait = 60.0
    try:
        add = asyncio.create_task(
            client.request("queue_item_add", {"item": plan("count", ["det1"]), **USER})
        )
        await asyncio.sleep(0.5)
        assert not add.done()
        queue.start()
        reply = await asyncio.wait_for(add, 60)
        assert reply["success"], reply
        items = (await client.request("queue_get"))["items"]
        assert [it["item_uid"] for it in items] == [reply["item"]["item_uid"]]
    finally:
        await client.close()
