"""Every queue method over NATS against the real queue and history service processes."""

from __future__ import annotations

import asyncio
from typing import Any

from qserver.client import Client
from tests.conftest import USER, plan, tag


async def add(client: Client, name: str, **where: Any) -> dict[str, Any]:
    r = await client.request("queue_item_add", {"item": plan(name), **USER, **where})
    assert r["success"], r
    return r["item"]  # type: ignore[no-any-return]


async def queue_names(client: Client) -> list[str]:
    r = await client.request("queue_get")
    return [tag(it) for it in r["items"]]


async def test_ping_and_status_report_the_reference_keys(client: Client) -> None:
    st = await client.request("status")
    # The reference's keys, and docs_pending / docs_failed / kafka_pending / kafka_failed,
    # and items_in_proposals / proposals_uid (ADR 30), progress (ADR 25).
    assert len(st) == 27 + 4 + 2 + 1
    for key in (
        "manager_state",
        "items_in_queue",
        "plan_queue_uid",
        "plan_history_uid",
        "worker_environment_exists",
        "re_state",
        "running_item_uid",
        "lock",
        "status_uid",
    ):
        assert key in st
    assert st["manager_state"] == "idle"
    assert (await client.request("ping"))["manager_state"] == "idle"


async def test_add_positions_front_back_negative_out_of_range(client: Client) -> None:
    for n in "abcde":
        await add(client, n)
    await add(client, "F", pos="front")
    await add(client, "B", pos="back")
    await add(client, "two", pos=2)
    await add(client, "neg", pos=-1)
    await add(client, "far", pos=1000)
    await add(client, "near", pos=-1000)
    assert await queue_names(client) == [
        "near",
        "F",
        "a",
        "two",
        "b",
        "c",
        "d",
        "e",
        "neg",
        "B",
        "far",
    ]


async def test_add_before_and_after_uid(client: Client) -> None:
    a = await add(client, "a")
    await add(client, "b")
    await add(client, "x", before_uid=a["item_uid"])
    await add(client, "y", after_uid=a["item_uid"])
    assert await queue_names(client) == ["x", "a", "y", "b"]
    r = await client.request("queue_item_add", {"item": plan("z"), **USER, "after_uid": "nope"})
    assert not r["success"] and "nope" in r["msg"]


async def test_add_reply_carries_the_stored_item(client: Client) -> None:
    r = await client.request(
        "queue_item_add",
        {"item": {**plan("count", ["det1"]), "kwargs": {"num": 3}, "item_uid": "x"}, **USER},
    )
    item = r["item"]
    assert r["qsize"] == 1
    assert item["item_uid"] != "x" and len(item["item_uid"]) == 36
    assert item == {
        "item_type": "plan",
        "name": "count",
        "args": [["det1"]],
        "kwargs": {"num": 3},
        "item_uid": item["item_uid"],
        "user": "tester",
        "user_group": "primary",
    }


async def test_get_and_remove_by_pos_and_uid(client: Client) -> None:
    items = [await add(client, n) for n in "abcd"]
    assert tag((await client.request("queue_item_get"))["item"]) == "d"
    assert tag((await client.request("queue_item_get", {"pos": "front"}))["item"]) == "a"
    assert tag((await client.request("queue_item_get", {"pos": -2}))["item"]) == "c"
    r = await client.request("queue_item_get", {"uid": items[1]["item_uid"]})
    assert tag(r["item"]) == "b"
    r = await client.request("queue_item_get", {"pos": 4})
    assert not r["success"] and "out of range" in r["msg"]

    r = await client.request("queue_item_remove", {"pos": -2})
    assert tag(r["item"]) == "c" and r["qsize"] == 3
    r = await client.request("queue_item_remove", {"uid": items[0]["item_uid"]})
    assert tag(r["item"]) == "a"
    r = await client.request("queue_item_remove")
    assert tag(r["item"]) == "d"
    assert await queue_names(client) == ["b"]
    r = await client.request("queue_item_remove", {"pos": 5})
    assert not r["success"]
    assert await queue_names(client) == ["b"]


async def test_add_batch_is_all_or_nothing(client: Client) -> None:
    await add(client, "first")
    good = [plan("p1"), plan("p2")]
    r = await client.request("queue_item_add_batch", {"items": good, **USER, "pos": "front"})
    assert r["success"] and r["qsize"] == 3
    assert [tag(it) for it in r["items"]] == ["p1", "p2"]
    bad = [
        plan("ok"),
        {"name": "count", "args": "notalist"},
        {"item_type": "instruction", "name": "x"},
    ]
    r = await client.request("queue_item_add_batch", {"items": bad, **USER})
    assert not r["success"]
    assert [res["success"] for res in r["results"]] == [True, False, False]
    assert "$.args" in r["results"][1]["msg"]
    assert await queue_names(client) == ["p1", "p2", "first"]


async def test_remove_batch(client: Client) -> None:
    items = [await add(client, n) for n in "abcd"]
    uids = [items[1]["item_uid"], items[3]["item_uid"]]
    r = await client.request(
        "queue_item_remove_batch", {"uids": [*uids, "gone"], "ignore_missing": False}
    )
    assert not r["success"] and "gone" in r["msg"]
    r = await client.request("queue_item_remove_batch", {"uids": [*uids, "gone"]})
    assert r["success"] and [tag(it) for it in r["items"]] == ["b", "d"]
    assert await queue_names(client) == ["a", "c"]


async def test_move_and_move_batch(client: Client) -> None:
    items = [await add(client, n) for n in "abcde"]
    uid = {tag(it): it["item_uid"] for it in items}
    r = await client.request("queue_item_move", {"pos": 0, "pos_dest": 2})
    assert r["success"] and tag(r["item"]) == "a"
    assert await queue_names(client) == list("bcade")
    await client.request("queue_item_move", {"uid": uid["e"], "before_uid": uid["b"]})
    assert await queue_names(client) == list("ebcad")
    await client.request("queue_item_move", {"pos": "front", "after_uid": uid["d"]})
    assert await queue_names(client) == list("bcade")
    r = await client.request(
        "queue_item_move_batch", {"uids": [uid["e"], uid["b"]], "pos_dest": "front"}
    )
    assert r["success"]
    assert await queue_names(client) == list("ebcad")
    r = await client.request(
        "queue_item_move_batch",
        {"uids": [uid["e"], uid["b"]], "after_uid": uid["d"], "reorder": True},
    )
    assert await queue_names(client) == list("cadeb")
    r = await client.request("queue_item_move", {"pos": 0, "pos_dest": 7})
    assert not r["success"]


async def test_update_and_replace(client: Client) -> None:
    a = await add(client, "a")
    await add(client, "b")
    r = await client.request(
        "queue_item_update",
        {"item": {**a, "kwargs": {"num": 5}}, "user": "other", "user_group": "primary"},
    )
    assert r["success"] and r["item"]["item_uid"] == a["item_uid"]
    assert r["item"]["kwargs"] == {"num": 5} and r["item"]["user"] == "other"
    renamed = {**plan("a2"), "item_uid": a["item_uid"]}
    r = await client.request("queue_item_update", {"item": renamed, **USER, "replace": True})
    assert r["item"]["item_uid"] != a["item_uid"]
    assert await queue_names(client) == ["a2", "b"]
    r = await client.request(
        "queue_item_update", {"item": {**plan("a3"), "item_uid": a["item_uid"]}, **USER}
    )
    assert not r["success"] and a["item_uid"] in r["msg"]


async def test_clear_and_mode(client: Client) -> None:
    await add(client, "a")
    assert (await client.request("queue_clear"))["success"]
    assert await queue_names(client) == []
    r = await client.request("queue_mode_set", {"mode": {"loop": True}})
    assert r["success"]
    assert (await client.request("status"))["plan_queue_mode"] == {
        "loop": True,
        "ignore_failures": False,
    }
    await client.request("queue_mode_set", {"mode": "default"})
    assert (await client.request("status"))["plan_queue_mode"]["loop"] is False


async def test_lock_refuses_edits_without_key(client: Client) -> None:
    r = await client.request(
        "lock", {"lock_key": "secret", "queue": True, "user": "me", "note": "align"}
    )
    assert r["success"] and r["lock_info"]["queue"] and r["lock_info"]["note"] == "align"
    assert "lock_key" not in r["lock_info"]
    st = await client.request("status")
    assert st["lock"] == {"environment": False, "queue": True}
    r = await client.request("queue_item_add", {"item": plan("a"), **USER})
    assert not r["success"] and "locked" in r["msg"]
    r = await client.request("history_clear")
    assert not r["success"] and "locked" in r["msg"]
    r = await client.request("queue_item_add", {"item": plan("a"), **USER, "lock_key": "secret"})
    assert r["success"]
    assert not (await client.request("lock_info", {"lock_key": "wrong"}))["success"]
    assert (await client.request("lock_info", {"lock_key": "secret"}))["success"]
    assert not (await client.request("unlock", {"lock_key": "wrong"}))["success"]
    assert (await client.request("unlock", {"lock_key": "secret"}))["success"]
    assert (await client.request("queue_item_add", {"item": plan("b"), **USER}))["success"]


async def test_uids_change_exactly_when_their_subject_changes(client: Client) -> None:
    st0 = await client.request("status")
    await client.request("queue_get")
    st1 = await client.request("status")
    assert st1["plan_queue_uid"] == st0["plan_queue_uid"]
    assert st1["status_uid"] == st0["status_uid"]
    await add(client, "a")
    st2 = await client.request("status")
    assert st2["plan_queue_uid"] != st1["plan_queue_uid"]
    assert st2["status_uid"] != st1["status_uid"]
    assert st2["lock_info_uid"] == st1["lock_info_uid"]
    # A refused edit changes nothing.
    await client.request("queue_item_remove", {"pos": 10})
    st3 = await client.request("status")
    assert (st3["plan_queue_uid"], st3["status_uid"]) == (st2["plan_queue_uid"], st2["status_uid"])


async def test_status_events_are_pushed_on_change(client: Client) -> None:
    sub = await client.nc.subscribe(client.subjects.status_event)
    r = await client.request("queue_item_add", {"item": plan("a"), **USER})
    import msgspec

    async for msg in sub.messages:
        st = msgspec.json.decode(msg.data)
        if st["items_in_queue"] == 1:
            break
    await sub.unsubscribe()
    assert r["success"]


async def test_status_time_and_uid_change_only_with_the_status(client: Client) -> None:
    st0 = await client.request("status")
    await asyncio.sleep(1.2)  # past a heartbeat: the event repeats the same status
    st1 = await client.request("status")
    assert (st1["time"], st1["status_uid"]) == (st0["time"], st0["status_uid"])
    await add(client, "a")
    st2 = await client.request("status")
    assert st2["time"] > st0["time"] and st2["status_uid"] != st0["status_uid"]


async def test_unlocking_an_unlocked_server_succeeds(client: Client) -> None:
    r = await client.request("unlock", {"lock_key": "anything"})
    assert r["success"] and r["lock_info"]["queue"] is False


async def test_remove_batch_with_a_repeated_uid_removes_the_item_once(client: Client) -> None:
    a = await add(client, "a")
    await add(client, "b")
    r = await client.request("queue_item_remove_batch", {"uids": [a["item_uid"], a["item_uid"]]})
    assert r["success"] and [tag(it) for it in r["items"]] == ["a"]
    assert await queue_names(client) == ["b"]


async def test_add_without_an_item_is_refused_with_the_reference_text(client: Client) -> None:
    r = await client.request("queue_item_add", USER)
    assert r == {
        "success": False,
        "msg": "Failed to add an item: Incorrect request format: request contains no item info",
        "qsize": None,
        "item": None,
    }
    assert await queue_names(client) == []
