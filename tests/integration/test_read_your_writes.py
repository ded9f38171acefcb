"""What a reply says is done shows in the status and the reads right after it (ADR 17).

The reference's client keeps a copy of the history and reuses it while the status's
`plan_history_uid` stays the same: a `history_clear` answered before the status shows the
new uid made its next `history_get` return the old history (issue 11).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from bluesky_queueserver_api import BPlan
from bluesky_queueserver_api.http import REManagerAPI
from nats.aio.msg import Msg

from qserver.client import Client
from tests.conftest import USER, Services
from tests.integration.gateway_support import gateway_for
from tests.integration.test_history import write_record

T = 60.0
KEY = "SingleUserKeyForReadYourWrites1"


async def test_history_clear_shows_in_the_status_read_right_after_its_reply(
    client: Client,
) -> None:
    records = [await write_record(client, f"r{i}") for i in range(8)]
    await client.wait_for(lambda st: st["items_in_history"] == 8, T)
    uids = [r["item"]["item_uid"] for r in records]
    left = 8
    for params, after in (
        ({"item_uid": uids[0]}, 7),
        ({"item_uid": uids[1]}, 6),
        ({"item_uid": uids[3]}, 4),
        ({"size": 3}, 3),
        ({"size": 2}, 2),
        ({}, 0),
    ):
        before = await client.request("status")
        r = await client.request("history_clear", params)
        assert r == {"success": True, "msg": ""}, r
        st = await client.request("status")
        assert st["items_in_history"] == after, (params, st)
        assert st["plan_history_uid"] != before["plan_history_uid"], params
        got = await client.request("history_get")
        assert got["plan_history_uid"] == st["plan_history_uid"]
        assert len(got["items"]) == after
        left = after
    assert left == 0


async def test_no_status_shows_an_item_neither_queued_running_nor_in_the_history(
    client: Client,
) -> None:
    """Every status event accounts for every item: an item that finished is in the history
    of the same status that no longer shows it running."""
    r = await client.request("environment_open", timeout=5)
    assert r["success"], r
    await client.wait_for(lambda st: st["worker_environment_exists"], T)
    item = {"item_type": "plan", "name": "count", "args": [["det1"]]}
    n = 6
    r = await client.request("queue_item_add_batch", {"items": [item] * n, **USER})
    assert r["success"], r
    broken: list[dict[str, Any]] = []
    seen = 0

    async def on_status(msg: Msg) -> None:
        nonlocal seen
        st = json.loads(msg.data)
        seen += 1
        total = st["items_in_queue"] + st["items_in_history"] + bool(st["running_item_uid"])
        if total != n:
            broken.append(st)

    sub = await client.nc.subscribe(client.subjects.status_event, cb=on_status)
    assert (await client.request("queue_start"))["success"]
    await client.wait_for(
        lambda st: st["items_in_history"] == n and st["manager_state"] == "idle", T
    )
    await sub.unsubscribe()
    assert seen >= n and not broken, broken[:3]
    assert len((await client.request("history_get"))["items"]) == n
    assert (await client.request("environment_close"))["success"]
    await client.wait_for(lambda st: not st["worker_environment_exists"], T)


def _reference_history_session(url: str) -> None:
    """test_history_get_clear_01/02 of bluesky-queueserver-api, over and over."""
    RM = REManagerAPI(http_server_uri=url)
    RM.set_authorization_key(api_key=KEY)
    try:
        RM.environment_open()
        RM.wait_for_idle(timeout=T)
        for _ in range(4):
            RM.item_add(BPlan("count", ["det1", "det2"], num=1))
        assert RM.status()["items_in_queue"] == 4
        RM.queue_start()
        RM.wait_for_idle(timeout=T)
        st = RM.status()
        assert (st["items_in_queue"], st["items_in_history"]) == (0, 4)
        history = RM.history_get()["items"]
        assert len(history) == 4
        assert RM.history_get() == RM.history_get()  # the client's copy, unchanged
        uids = [h["item_uid"] for h in history]
        RM.history_clear(item_uid=uids[0])
        assert [h["item_uid"] for h in RM.history_get()["items"]] == uids[1:]
        RM.history_clear(item_uid=uids[1])
        assert [h["item_uid"] for h in RM.history_get()["items"]] == uids[2:]
        RM.history_clear(size=1)
        assert [h["item_uid"] for h in RM.history_get()["items"]] == uids[3:]
        RM.history_clear()
        assert RM.history_get()["items"] == []
        RM.environment_close()
        RM.wait_for_idle(timeout=T)
    finally:
        RM.close()


def _reference_clears(url: str, n: int) -> None:
    """history_clear(item_uid=...) then history_get, one item at a time."""
    RM = REManagerAPI(http_server_uri=url)
    RM.set_authorization_key(api_key=KEY)
    try:
        uids = [h["item_uid"] for h in RM.history_get()["items"]]
        assert len(uids) == n
        for i, uid in enumerate(uids):
            RM.history_clear(item_uid=uid)
            assert [h["item_uid"] for h in RM.history_get()["items"]] == uids[i + 1 :]
    finally:
        RM.close()


async def test_the_reference_clients_history_clear_then_get_sees_the_clear(
    services: Services,
) -> None:
    client = services.client
    assert client is not None
    n = 20
    for i in range(n):
        await write_record(client, f"r{i}")
    await client.wait_for(lambda st: st["items_in_history"] == n, T)
    env = {"QSERVER_HTTP_SERVER_SINGLE_USER_API_KEY": KEY}
    async with gateway_for(services, env=env) as gw:
        await asyncio.to_thread(_reference_clears, gw.url, n)
        await asyncio.to_thread(_reference_history_session, gw.url)
