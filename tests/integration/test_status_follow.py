"""Status from the client's side of the push, and concurrent adds stored together (ADR 29)."""

from __future__ import annotations

import asyncio
import itertools
import time

import msgspec
import pytest
from nats.aio.msg import Msg

from qserver.client import Client, NoAnswer
from qserver.jsutil import read_stream
from qserver.protocol.status import STATUS_SEQ_HEADER, parse_status_seq
from services.queue.service import HEARTBEAT_S
from tests.conftest import USER, Services, plan
from tests.integration.test_execution import idle, open_env, quick, until
from tests.integration.test_history import write_record

T = 60.0


async def followed(services: Services) -> Client:
    c = await Client.connect(services.nats.url, services.prefix, timeout=30.0)
    mirror = await c.follow_status()
    deadline = time.monotonic() + T
    while mirror.seq is None:  # the first event (the heartbeat brings one within a second)
        assert time.monotonic() < deadline, "no status event came"
        await asyncio.sleep(0.05)
    return c


async def test_a_followed_client_answers_status_from_the_last_event(
    services: Services, client: Client
) -> None:
    c = await followed(services)
    try:
        assert c.mirror is not None
        deadline = time.monotonic() + T
        while True:
            hits = c.mirror.hits
            pushed = await c.request("status")
            asked = await client.request("status")  # a client that does not follow
            if c.mirror.hits == hits + 1 and pushed["status_uid"] == asked["status_uid"]:
                break
            # Not from the copy (an event late on a busy machine), or the status changed in
            # between (a service starting beside): again.
            assert time.monotonic() < deadline, (pushed, asked)
            await asyncio.sleep(0.2)
        assert pushed == asked
    finally:
        await c.close()


async def test_a_followed_client_reads_its_own_writes(services: Services) -> None:
    c = await followed(services)
    try:
        assert c.mirror is not None
        for i in range(1, 101):
            r = await c.request("queue_item_add", {"item": plan(f"p{i}"), **USER})
            assert r["success"], r
            st = await c.request("status")
            assert st["items_in_queue"] == i, (i, st)
            got = await c.request("queue_get")
            assert st["plan_queue_uid"] == got["plan_queue_uid"]
        # Most were answered from the pushed event (each one that came in time).
        assert c.mirror.hits > 0
    finally:
        await c.close()


async def test_every_reply_of_the_queue_service_numbers_the_last_status(
    client: Client,
) -> None:
    subject = client.subjects.api("queue_item_add")
    body = msgspec.json.encode({"item": plan("a"), **USER})
    first = await client.nc.request(subject, body, timeout=T)
    second = await client.nc.request(subject, body, timeout=T)
    a = parse_status_seq((first.headers or {}).get(STATUS_SEQ_HEADER))
    b = parse_status_seq((second.headers or {}).get(STATUS_SEQ_HEADER))
    assert a is not None and b is not None
    assert a[0] == b[0] and b[1] > a[1]


async def test_a_history_clear_sends_the_next_status_to_the_queue_service(
    services: Services, client: Client
) -> None:
    c = await followed(services)
    try:
        assert c.mirror is not None
        for i in range(3):
            await write_record(client, f"r{i}")
        await c.wait_for(lambda st: st["items_in_history"] == 3, T)
        r = await c.request("history_clear")
        assert r["success"], r
        hits = c.mirror.hits
        st = await c.request("status")
        assert st["items_in_history"] == 0, st
        assert c.mirror.hits == hits  # asked of the queue service, not taken from the copy
    finally:
        await c.close()


async def test_a_stopped_queue_service_is_not_answered_for_from_the_last_event(
    services: Services,
) -> None:
    c = await followed(services)
    try:
        await c.request("status")
        services.procs["queue"].stop()
        deadline = time.monotonic() + T
        with pytest.raises(NoAnswer):
            while time.monotonic() < deadline:
                await c.request("status", timeout=2.0)
                await asyncio.sleep(0.05)
    finally:
        await c.close()


async def test_concurrent_adds_are_stored_together_and_answered_as_one_after_another(
    services: Services, client: Client
) -> None:
    clients = [
        await Client.connect(services.nats.url, services.prefix, timeout=T) for _ in range(4)
    ]
    try:
        items = [plan(f"c{i}") for i in range(40)]
        items[7] = {"item_type": "plan", "name": "no_such_plan"}
        replies = await asyncio.gather(
            *(
                clients[i % 4].request("queue_item_add", {"item": it, **USER})
                for i, it in enumerate(items)
            )
        )
        assert not replies[7]["success"] and "no_such_plan" in replies[7]["msg"]
        ok = [r for i, r in enumerate(replies) if i != 7]
        assert all(r["success"] for r in ok), ok
        queue = (await client.request("queue_get"))["items"]
        assert len(queue) == 39
        # Each reply reads as if the adds had come one after another: its qsize is the
        # queue's length right after it, and its item is at that place.
        assert sorted(r["qsize"] for r in ok) == list(range(1, 40))
        for r in ok:
            assert queue[r["qsize"] - 1]["item_uid"] == r["item"]["item_uid"]
        # Stored together: some event of the queue log holds more than one item.
        js = client.nc.jetstream()
        s = client.subjects
        sizes = [
            len(ev["items"])
            async for _, data in read_stream(js, s.queue_stream, s.queue_log, 1)
            if (ev := msgspec.json.decode(data)).get("kind") == "items_added"
        ]
        assert sum(sizes) == 39 and max(sizes) > 1, sizes
        # And they are all there after the queue service starts again from the log.
        services.procs["queue"].stop()
        services.start("queue")
        await services.wait_ready()
        again = (await client.request("queue_get"))["items"]
        assert [i["item_uid"] for i in again] == [i["item_uid"] for i in queue]
    finally:
        for c in clients:
            await c.close()


async def test_a_status_that_changes_nothing_goes_out_only_as_the_heartbeat(
    client: Client,
) -> None:
    """20 plans run while every status event is counted: an event equal to the one before
    it (the same number, the same run progress) is a heartbeat, at most one per period.
    Before, about half of a plan's events were such (~5 per plan)."""
    await open_env(client)
    events: list[tuple[tuple[str, int] | None, object]] = []

    async def on_event(msg: Msg) -> None:
        seq = parse_status_seq((msg.headers or {}).get(STATUS_SEQ_HEADER))
        events.append((seq, msgspec.json.decode(msg.data).get("progress")))

    sub = await client.nc.subscribe(client.subjects.status_event, cb=on_event)
    try:
        r = await client.request(
            "queue_item_add_batch", {"items": [quick()] * 20, **USER}, timeout=T
        )
        assert r["success"], r
        started = time.monotonic()
        assert (await client.request("queue_start"))["success"]
        await until(client, lambda st: st["items_in_queue"] == 0 and idle(st), timeout=T)
        await client.nc.flush()
        elapsed = time.monotonic() - started
    finally:
        await sub.unsubscribe()
    assert len(events) > 20  # each plan's start and end are there
    repeats = sum(1 for a, b in itertools.pairwise(events) if a == b)
    assert repeats <= elapsed / HEARTBEAT_S + 2, (repeats, len(events), elapsed)
