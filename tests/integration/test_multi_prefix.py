"""Many beamlines, one NATS server: two queue servers with different prefixes stay apart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.msg import Msg

from qserver.client import Client
from services.stack.natsserver import NatsServer
from tests.conftest import USER, Services, plan, running_services


@pytest.fixture
async def two(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[tuple[Services, Services]]:
    async with (
        running_services(nats_server, tmp_path / "a") as a,
        running_services(nats_server, tmp_path / "b") as b,
    ):
        yield a, b


def client(svc: Services) -> Client:
    assert svc.client is not None
    return svc.client


async def run_one_plan(c: Client) -> str:
    """Open the environment, run one item to the end, close; the item's uid."""
    assert (await c.request("environment_open", timeout=30))["success"]
    await c.wait_for(lambda st: st["worker_environment_exists"] and st["manager_state"] == "idle")
    r = await c.request("queue_item_add", {"item": plan("count", ["det1"]), **USER})
    assert r["success"], r
    assert (await c.request("queue_start"))["success"]
    await c.wait_for(lambda st: st["items_in_history"] == 1 and st["manager_state"] == "idle", 30)
    assert (await c.request("environment_close"))["success"]
    await c.wait_for(lambda st: not st["worker_environment_exists"], 30)
    return r["item"]["item_uid"]  # type: ignore[no-any-return]


async def test_two_prefixes_share_a_server_without_seeing_each_other(
    two: tuple[Services, Services],
) -> None:
    a, b = two
    ca, cb = client(a), client(b)
    assert a.prefix != b.prefix
    seen_by_b: list[bytes] = []

    async def on_b(msg: Msg) -> None:
        seen_by_b.append(msg.data)

    sub = await cb.nc.subscribe(f"{b.prefix}.>", cb=on_b)
    try:
        uid = await run_one_plan(ca)
        kept = await ca.request("queue_item_add", {"item": plan("count", ["det1"]), **USER})
        await asyncio.sleep(1.2)  # at least one heartbeat status event of b
    finally:
        await sub.unsubscribe()

    # A has its run and its queued item; B has nothing of it.
    assert [it["item_uid"] for it in (await ca.request("history_get"))["items"]] == [uid]
    assert (await cb.request("history_get"))["items"] == []
    assert (await cb.request("queue_get"))["items"] == []
    st_b = await cb.request("status")
    assert (st_b["items_in_queue"], st_b["items_in_history"]) == (0, 0)
    assert st_b["worker_environment_exists"] is False
    # Every message on B's subjects (status events included) knows nothing of A's items.
    assert seen_by_b, "b published nothing (no status heartbeat?)"
    for data in seen_by_b:
        assert uid.encode() not in data
        assert kept["item"]["item_uid"].encode() not in data


async def test_each_prefix_has_its_own_jetstream_streams(two: tuple[Services, Services]) -> None:
    a, b = two
    js = client(a).nc.jetstream()
    sa, sb = client(a).subjects, client(b).subjects
    await client(a).request("queue_item_add", {"item": plan("count", ["det1"]), **USER})
    for name_a, name_b in (
        (sa.queue_stream, sb.queue_stream),
        (sa.history_stream, sb.history_stream),
        (sa.results_stream, sb.results_stream),
    ):
        assert name_a != name_b
        info_a, info_b = await js.stream_info(name_a), await js.stream_info(name_b)
        subjects_a, subjects_b = (
            set(info_a.config.subjects or []),
            set(info_b.config.subjects or []),
        )
        assert subjects_a and subjects_b
        assert all(s.startswith(f"{a.prefix}.") for s in subjects_a)
        assert all(s.startswith(f"{b.prefix}.") for s in subjects_b)
    # The edit landed in a's queue log only.
    qa, qb = await js.stream_info(sa.queue_stream), await js.stream_info(sb.queue_stream)
    assert qa.state.messages > qb.state.messages
