"""The history service: records arrive on the history stream, as the queue service writes them."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import msgspec

from qserver.client import Client
from qserver.protocol.items import HistoryRecord, HistoryResult
from tests.conftest import Services, plan, tag


async def write_record(client: Client, name: str, status: str = "completed") -> dict[str, Any]:
    """Append one finished item to the history stream, with de-duplication by record uid."""
    item = {**plan(name), "item_uid": str(uuid.uuid4()), "user": "u", "user_group": "primary"}
    rec = HistoryRecord(
        record_uid=str(uuid.uuid4()),
        item=item,
        result=HistoryResult(
            exit_status=status,
            run_uids=[str(uuid.uuid4())],
            scan_ids=[1],  # type: ignore[arg-type]
            time_start=1.0,
            time_stop=2.0,
        ),
    )
    js = client.nc.jetstream()
    await js.publish(
        client.subjects.history_log,
        msgspec.json.encode(rec),
        headers={"Nats-Msg-Id": rec.record_uid},
    )
    return msgspec.to_builtins(rec)  # type: ignore[no-any-return]


async def wait_history(client: Client, n: int) -> dict[str, Any]:
    return await client.wait_for(lambda st: st["items_in_history"] == n, timeout=30)


async def test_history_get_returns_items_with_results_in_order(client: Client) -> None:
    for name in ("a", "b", "c"):
        await write_record(client, name)
    st = await wait_history(client, 3)
    r = await client.request("history_get")
    assert [tag(it) for it in r["items"]] == ["a", "b", "c"]
    assert r["items"][0]["result"]["exit_status"] == "completed"
    assert set(r["items"][0]["result"]) == {
        "exit_status",
        "run_uids",
        "scan_ids",
        "time_start",
        "time_stop",
        "msg",
        "traceback",
    }
    assert r["plan_history_uid"] == st["plan_history_uid"]
    page = await client.request("history_get", {"offset": 1, "limit": 1})
    assert [tag(it) for it in page["items"]] == ["b"]
    # The reference's keys and no others (its clients compare replies with cached copies).
    assert set(page) == {"success", "msg", "items", "plan_history_uid"}


async def test_a_repeated_record_is_stored_once(client: Client) -> None:
    rec = await write_record(client, "once")
    js = client.nc.jetstream()
    await js.publish(
        client.subjects.history_log,
        msgspec.json.encode(rec),
        headers={"Nats-Msg-Id": rec["record_uid"]},
    )
    await wait_history(client, 1)
    await asyncio.sleep(0.2)
    assert len((await client.request("history_get"))["items"]) == 1


async def test_history_clear_all_size_and_uid(client: Client) -> None:
    recs = [await write_record(client, n) for n in "abcdef"]
    await wait_history(client, 6)
    uid0 = (await client.request("status"))["plan_history_uid"]
    assert (await client.request("history_clear", {"size": 4}))["success"]
    st = await wait_history(client, 4)
    assert st["plan_history_uid"] != uid0
    r = await client.request("history_clear", {"item_uid": recs[3]["item"]["item_uid"]})
    assert r["success"]
    await wait_history(client, 2)
    assert [tag(it) for it in (await client.request("history_get"))["items"]] == ["e", "f"]
    r = await client.request("history_clear", {"item_uid": "nope"})
    assert not r["success"] and "nope" in r["msg"]
    assert (await client.request("history_clear"))["success"]
    await wait_history(client, 0)


async def test_history_survives_a_restart_of_its_service(services: Services) -> None:
    client = services.client
    assert client is not None
    for n in "xyz":
        await write_record(client, n)
    st = await wait_history(client, 3)
    services.kill("history")
    await write_record(client, "w")  # written while the history service is down
    services.start("history")
    await services.wait_ready()
    r = await client.request("history_get")
    assert [tag(it) for it in r["items"]] == ["x", "y", "z", "w"]
    st2 = await wait_history(client, 4)
    assert st2["plan_history_uid"] == r["plan_history_uid"] != st["plan_history_uid"]
