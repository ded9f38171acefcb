"""A plain `status` answered by nats-server from the last status event (ADR 35)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from qserver.client import Client, NoAnswer
from services.queue.status_store import BACKSTOP_S
from services.stack.natsserver import NatsServer
from tests.conftest import USER, Services, plan, running_services

T = 60.0


async def direct_hit(c: Client) -> dict[str, object]:
    """A status that nats-server answered (on a busy machine the copy may be a moment old or
    late for a write: then the client asks the service, and this asks again)."""
    deadline = time.monotonic() + T
    while True:
        hits = c.direct_hits
        st = await c.request("status")
        if c.direct_hits == hits + 1:
            return st
        assert time.monotonic() < deadline, f"nats-server never answered: {c.direct_status}"
        await asyncio.sleep(0.1)


async def test_a_plain_status_is_answered_by_nats_server_and_shows_each_write(
    services: Services, client: Client
) -> None:
    assert client.mirror is None and client.direct_status
    st = await direct_hit(client)
    assert st["items_in_queue"] == 0
    for i in range(1, 51):
        r = await client.request("queue_item_add", {"item": plan("count", ["det1"]), **USER})
        assert r["success"], r
        # Read-your-writes: the stored status is taken only if it shows this add.
        assert (await client.request("status"))["items_in_queue"] == i
    assert client.direct_hits > 1
    # What nats-server gives is what the queue service says.
    nats_says = await direct_hit(client)
    client.direct_status = False
    service_says = await client.request("status")
    assert nats_says["status_uid"] == service_says["status_uid"]
    assert nats_says == {**service_says, "time": nats_says["time"]}


async def test_a_cleanly_stopped_queue_service_is_not_answered_for(
    services: Services,
) -> None:
    c = await Client.connect(services.nats.url, services.prefix, timeout=5.0)
    try:
        await direct_hit(c)
        services.procs["queue"].stop()  # SIGTERM: it empties the stream as it goes
        hits = c.direct_hits
        with pytest.raises(NoAnswer, match="not running"):
            await c.request("status")
        assert c.direct_hits == hits
    finally:
        await c.close()


async def test_a_hung_queue_services_status_is_not_given_out_past_its_age(
    services: Services,
) -> None:
    c = await Client.connect(services.nats.url, services.prefix, timeout=2.0)
    pid = services.procs["queue"].pid
    assert pid is not None
    try:
        await direct_hit(c)
        os.kill(pid, signal.SIGSTOP)
        # The last status is taken for the heartbeat plus a margin after it was stored
        # (nats-server keeps it for 60 s); then the client asks the stopped service, which
        # does not answer. Half the stream's backstop, so that only the client's check can
        # make this pass.
        deadline = time.monotonic() + BACKSTOP_S / 2
        with pytest.raises(NoAnswer, match="did not answer"):
            while time.monotonic() < deadline:
                await c.request("status")
                await asyncio.sleep(0.1)
    finally:
        os.kill(pid, signal.SIGCONT)
        await c.close()


@pytest.fixture
async def services_own_nats(own_nats: NatsServer, tmp_path: Path) -> AsyncIterator[Services]:
    async with running_services(own_nats, tmp_path) as s:
        yield s


async def test_the_stored_status_comes_back_after_nats_server_restarts(
    services_own_nats: Services,
) -> None:
    services = services_own_nats
    c = await Client.connect(services.nats.url, services.prefix, timeout=5.0)
    await direct_hit(c)
    await c.close()
    services.nats.restart()  # the memory stream is gone; the leader makes it again
    deadline = time.monotonic() + T
    while True:
        try:
            c = await Client.connect(services.nats.url, services.prefix, timeout=5.0)
            break
        except Exception:
            assert time.monotonic() < deadline, services.logs()
            await asyncio.sleep(0.2)
    try:
        st = await direct_hit(c)
        assert st["manager_state"] == "idle"
    finally:
        await c.close()
