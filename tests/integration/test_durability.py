"""Crash drills: acknowledged edits survive SIGKILL of the queue service and of nats-server."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path
from typing import Any

from qserver.client import Client, NoAnswer
from services.stack.natsserver import NatsServer
from tests.conftest import USER, Services, plan, running_services, tag


async def burst(client: Client, tag: str, n: int, acked: list[str], tried: list[str]) -> None:
    """Add n items one after another to the back; record what was tried and what was acked."""
    for i in range(n):
        name = f"{tag}-{i:04d}"
        tried.append(name)
        try:
            r = await client.request("queue_item_add", {"item": plan(name), **USER}, timeout=1.0)
        except NoAnswer:
            return  # the service is gone: the outcome of this last add is unknown
        if r["success"]:
            acked.append(name)
        else:
            return


def check_queue(names: list[str], acked: list[str], tried: list[str]) -> None:
    assert len(names) == len(set(names)), "an item was stored twice"
    assert set(acked) <= set(names), f"acknowledged but lost: {sorted(set(acked) - set(names))}"
    assert set(names) <= set(tried), f"never requested: {sorted(set(names) - set(tried))}"


async def wait_answering(services: Services, timeout: float = 60.0) -> Client:
    await services.wait_ready(timeout)
    return await Client.connect(services.nats.url, services.prefix, timeout=5.0)


async def test_concurrent_clients_lose_no_update(services: Services) -> None:
    clients = [await Client.connect(services.nats.url, services.prefix) for _ in range(4)]
    acked: list[str] = []
    tried: list[str] = []
    await asyncio.gather(*(burst(c, f"c{k}", 50, acked, tried) for k, c in enumerate(clients)))
    for c in clients:
        await c.close()
    assert services.client is not None
    names = [tag(it) for it in (await services.client.request("queue_get"))["items"]]
    assert sorted(names) == sorted(tried) == sorted(acked)
    for k in range(4):  # each client's own items keep their order
        mine = [n for n in names if n.startswith(f"c{k}-")]
        assert mine == sorted(mine)


async def test_queue_service_sigkill_during_a_burst_loses_no_acknowledged_edit(
    services: Services,
) -> None:
    assert services.client is not None
    acked: list[str] = []
    tried: list[str] = []
    clients = [await Client.connect(services.nats.url, services.prefix) for _ in range(3)]
    tasks = [
        asyncio.create_task(burst(c, f"k{k}", 2000, acked, tried)) for k, c in enumerate(clients)
    ]
    while len(acked) < 150:
        await asyncio.sleep(0.005)
    services.kill("queue")
    await asyncio.gather(*tasks)
    assert len(acked) < len(tried) + 3  # the kill really interrupted the burst
    services.start("queue")
    client = await wait_answering(services)
    names = [tag(it) for it in (await client.request("queue_get"))["items"]]
    check_queue(names, acked, tried)
    # The restarted service keeps working: new edits go on top of the recovered queue.
    r = await client.request("queue_item_remove", {"pos": "front"})
    assert r["success"] and tag(r["item"]) == names[0]
    for c in [*clients, client]:
        await c.close()


async def restart_nats_and_check(own_nats: NatsServer, tmp_path: Path, sig: int) -> None:
    async with running_services(own_nats, tmp_path) as services:
        client = services.client
        assert client is not None
        acked: list[str] = []
        tried: list[str] = []
        await burst(client, "n", 300, acked, tried)
        await client.request("queue_item_move", {"pos": 0, "pos_dest": "back"})
        await client.request("queue_item_remove", {"pos": 1})
        await client.request("queue_mode_set", {"mode": {"loop": True}})
        expected: dict[str, Any] = await client.request("queue_get")
        await client.close()
        services.client = None

        own_nats.restart(sig)  # the services stay up and reconnect
        client = await wait_answering(services)
        services.client = client
        got = await client.request("queue_get")
        assert [it["item_uid"] for it in got["items"]] == [
            it["item_uid"] for it in expected["items"]
        ]
        assert (await client.request("status"))["plan_queue_mode"]["loop"] is True
        r = await client.request("queue_item_add", {"item": plan("after"), **USER})
        assert r["success"] and r["qsize"] == len(expected["items"]) + 1


async def test_nats_server_restart_keeps_every_acknowledged_edit(
    own_nats: NatsServer, tmp_path: Path
) -> None:
    await restart_nats_and_check(own_nats, tmp_path, signal.SIGTERM)


async def test_nats_server_sigkill_keeps_every_acknowledged_edit(
    own_nats: NatsServer, tmp_path: Path
) -> None:
    await restart_nats_and_check(own_nats, tmp_path, signal.SIGKILL)


async def test_cold_start_replays_snapshot_and_log(own_nats: NatsServer, tmp_path: Path) -> None:
    """Stop everything; services started anew on the same store rebuild the same queue."""
    # Snapshots every 20 events, so the restart loads a snapshot and replays what follows.
    extra = {"queue": ["--snapshot-every", "20"]}
    async with running_services(own_nats, tmp_path / "a", extra) as services:
        prefix = services.prefix
        client = services.client
        assert client is not None
        for i in range(50):
            await client.request("queue_item_add", {"item": plan(f"i{i}"), **USER, "pos": "front"})
        await client.request("lock", {"lock_key": "k", "environment": True, "user": "me"})
        expected = await client.request("queue_get")
        st = await client.request("status")
    own_nats.restart(signal.SIGKILL)
    svc = Services(own_nats, tmp_path / "b", prefix=prefix, extra=extra)
    svc.start()
    try:
        await svc.wait_ready()
        client = await svc.connect()
        got = await client.request("queue_get")
        assert got["items"] == expected["items"]
        assert got["plan_queue_uid"] == expected["plan_queue_uid"]
        log = (tmp_path / "b" / "queue.log").read_text()
        assert re.search(r"snapshot at seq [1-9]\d*, \d+ events replayed", log), log
        st2 = await client.request("status")
        assert st2["lock"] == {"environment": True, "queue": False}
        assert st2["lock_info_uid"] == st["lock_info_uid"]
        await client.close()
    finally:
        svc.stop_all()
