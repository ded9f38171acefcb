"""Running plans through the queue: environment, queue start/stop, RE control, history."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest

from qserver.client import Client
from tests.conftest import USER, Services

COUNT_10 = {
    "item_type": "plan",
    "name": "count",
    "args": [["det1", "det2"]],
    "kwargs": {"num": 10, "delay": 1},
}
README_PLANS = [
    {"item_type": "plan", "name": "count", "args": [["det1", "det2"]]},
    {"item_type": "plan", "name": "scan", "args": [["det1", "det2"], "motor", -1, 1, 10]},
    COUNT_10,
]


def quick(num: int = 1, delay: float = 0) -> dict[str, Any]:
    return {
        "item_type": "plan",
        "name": "count",
        "args": [["det1"]],
        "kwargs": {"num": num, "delay": delay},
    }


async def until(
    client: Client, pred: Callable[[dict[str, Any]], bool], timeout: float = 60
) -> dict[str, Any]:
    return await client.wait_for(pred, timeout=timeout)


def idle(st: dict[str, Any]) -> bool:
    return st["manager_state"] == "idle"


async def open_env(client: Client) -> dict[str, Any]:
    r = await client.request("environment_open", timeout=30)
    assert r["success"], r
    return await until(client, lambda st: st["worker_environment_exists"] and idle(st))


async def add(client: Client, item: dict[str, Any], **where: Any) -> dict[str, Any]:
    r = await client.request("queue_item_add", {"item": item, **USER, **where})
    assert r["success"], r
    return r["item"]  # type: ignore[no-any-return]


async def history(client: Client) -> list[dict[str, Any]]:
    return (await client.request("history_get"))["items"]  # type: ignore[no-any-return]


@pytest.fixture
async def env(client: Client) -> Client:
    await open_env(client)
    return client


async def test_environment_open_and_close_report_their_states(client: Client) -> None:
    st = await client.request("status")
    assert (st["worker_environment_exists"], st["re_state"]) == (False, None)
    seen: list[str] = []

    async def watch() -> None:
        async for ev in client.status_events():
            seen.append(ev["manager_state"])

    task = asyncio.create_task(watch())
    await asyncio.sleep(0.05)
    st = await open_env(client)
    assert st["re_state"] == "idle" and st["worker_environment_state"] == "idle"
    assert "creating_environment" in seen
    r = await client.request("environment_open")
    assert not r["success"] and "already exists" in r["msg"]
    assert (await client.request("environment_close"))["success"]
    st = await until(client, lambda st: not st["worker_environment_exists"] and idle(st))
    assert st["re_state"] is None and "closing_environment" in seen
    task.cancel()


async def test_the_original_readme_plans_run_and_land_in_history(env: Client) -> None:
    for item in README_PLANS:
        await add(env, item)
    assert (await env.request("queue_start"))["success"]
    await until(env, lambda st: st["items_in_history"] == 3 and idle(st), timeout=40)
    items = await history(env)
    assert [it["name"] for it in items] == ["count", "scan", "count"]
    for it in items:
        assert it["result"]["exit_status"] == "completed", it["result"]
        assert len(it["result"]["run_uids"]) == 1 and it["result"]["scan_ids"]
    assert (await env.request("queue_get"))["items"] == []


async def test_list_scan_runs_from_the_queue_in_the_flat_form(env: Client) -> None:
    """bluesky 1.15 annotates `*args` with one (motor, positions) pair; users call it flat."""
    plans = (await env.request("plans_allowed", {"user_group": "primary"}))["plans_allowed"]
    args = {p["name"]: p for p in plans["list_scan"]["parameters"]}["args"]
    assert args["annotation"] == {"type": "tuple[__MOVABLE__, list[float]]"}
    bad: dict[str, Any] = {"item_type": "plan", "name": "list_scan"}
    bad["args"] = [["det1"], "motor", [1, 2], "nomotor", [3, 4]]
    r = await env.request("queue_item_add", {"item": bad, **USER})
    assert r == {
        "success": False,
        "msg": "Failed to add an item: Plan validation failed: Parameter 'args': group 2 of "
        "tuple[__MOVABLE__, list[float]] "
        "(list ['nomotor', [3, 4]]): 'nomotor' is not an allowed device\n"
        "Plan: {'item_type': 'plan',\n 'name': 'list_scan',\n"
        " 'args': [['det1'], 'motor', [1, 2], 'nomotor', [3, 4]]}",
        "qsize": None,
        "item": bad,
    }
    bad["args"] = [["det1"], "motor", [1, 2], "motor1"]
    r = await env.request("queue_item_add", {"item": bad, **USER})
    assert not r["success"] and "the last group is incomplete" in r["msg"], r
    flat = [["det1"], "motor", [1, 2, 3], "motor1", [0, 0.5, 1]]
    await add(env, {"item_type": "plan", "name": "list_scan", "args": flat})
    assert (await env.request("queue_start"))["success"]
    await until(env, lambda st: st["items_in_history"] == 1 and idle(st), timeout=40)
    [item] = await history(env)
    assert item["args"] == flat
    assert item["result"]["exit_status"] == "completed", item["result"]
    assert len(item["result"]["run_uids"]) == 1


async def test_the_reference_profile_plans_run_from_the_queue(env: Client) -> None:
    """Plans of the reference's simulated profile: nested runs, moves, bundle parts."""
    items = [
        {"name": "sim_multirun_plan_nested", "args": [2], "kwargs": {"delay": 0}},
        {"name": "move_then_count", "args": [["motor1", "motor2"], ["det1"], [0.5, -0.5]]},
        {"name": "count_bundle_test", "args": [["sim_bundle_A.dets.det_A", "sim_bundle_B"]]},
        {"name": "null"},
    ]
    for item in items:
        await add(env, {"item_type": "plan", **item})
    assert (await env.request("queue_start"))["success"]
    await until(env, lambda st: st["items_in_history"] == len(items) and idle(st), timeout=60)
    done = await history(env)
    assert [it["name"] for it in done] == [it["name"] for it in items]
    for it in done:
        assert it["result"]["exit_status"] == "completed", it["result"]
    assert [len(it["result"]["run_uids"]) for it in done] == [2, 1, 1, 0]


async def test_queue_start_needs_an_environment_and_empty_queue_is_a_no_op(client: Client) -> None:
    r = await client.request("queue_start")
    assert not r["success"] and "environment does not exist" in r["msg"].lower()
    await open_env(client)
    assert (await client.request("queue_start"))["success"]
    st = await client.request("status")
    assert idle(st) and st["items_in_history"] == 0


@pytest.mark.parametrize("option", ["immediate", "deferred"])
async def test_pause_then_resume_completes_the_plan(env: Client, option: str) -> None:
    await add(env, quick(num=6, delay=0.3))
    await env.request("queue_start")
    await until(env, lambda st: st["re_state"] == "running")
    await asyncio.sleep(0.4)
    assert (await env.request("re_pause", {"option": option}))["success"]
    st = await until(env, lambda st: st["manager_state"] == "paused")
    assert st["re_state"] == "paused" and st["running_item_uid"]
    assert (await env.request("re_resume"))["success"]
    await until(env, lambda st: st["items_in_history"] == 1 and idle(st))
    assert (await history(env))[0]["result"]["exit_status"] == "completed"


@pytest.mark.parametrize(
    ("action", "status", "requeued"),
    [("re_stop", "stopped", False), ("re_abort", "aborted", True), ("re_halt", "halted", True)],
)
async def test_stop_abort_halt_of_a_paused_count(
    env: Client, action: str, status: str, requeued: bool
) -> None:
    first = await add(env, COUNT_10)
    await add(env, quick())
    await env.request("queue_start")
    await until(env, lambda st: st["re_state"] == "running")
    await asyncio.sleep(1.2)
    await env.request("re_pause", {"option": "immediate"})
    await until(env, lambda st: st["manager_state"] == "paused")
    assert (await env.request(action))["success"]
    st = await until(env, lambda st: st["items_in_history"] == 1 and idle(st))
    item = (await history(env))[0]
    assert item["item_uid"] == first["item_uid"]
    assert item["result"]["exit_status"] == status and len(item["result"]["run_uids"]) == 1
    queue = (await env.request("queue_get"))["items"]
    names = [(it["name"], it.get("kwargs", {}).get("num")) for it in queue]
    if requeued:
        assert names == [("count", 10), ("count", 1)] and queue[0]["item_uid"] != first["item_uid"]
    else:
        assert names == [("count", 1)]
    assert st["queue_autostart_enabled"] is False  # the queue stopped


async def test_re_commands_are_refused_in_states_where_they_make_no_sense(env: Client) -> None:
    r = await env.request("re_pause", {"option": "immediate"})
    assert not r["success"] and "running" in r["msg"]
    for cmd in ("re_resume", "re_stop", "re_abort", "re_halt"):
        r = await env.request(cmd)
        assert not r["success"] and "not paused" in r["msg"], cmd
    r = await env.request("queue_stop")
    assert not r["success"]


async def test_queue_stop_finishes_the_current_plan_then_stops(env: Client) -> None:
    for _ in range(3):
        await add(env, quick(num=3, delay=0.2))
    await env.request("queue_start")
    await until(env, lambda st: st["re_state"] == "running")
    assert (await env.request("queue_stop"))["success"]
    st = await until(env, lambda st: st["queue_stop_pending"])
    assert st["queue_stop_pending"]
    st = await until(env, lambda st: idle(st) and st["items_in_history"] == 1)
    assert st["items_in_queue"] == 2 and not st["queue_stop_pending"]


async def test_queue_stop_instruction_stops_the_queue(env: Client) -> None:
    await add(env, quick())
    await add(env, {"item_type": "instruction", "name": "queue_stop"})
    await add(env, quick())
    await env.request("queue_start")
    st = await until(env, lambda st: idle(st) and st["items_in_history"] == 1)
    assert st["items_in_queue"] == 1


async def test_edits_to_a_running_queue_take_effect_at_once(env: Client) -> None:
    await add(env, quick(num=4, delay=0.25))
    await add(env, quick(num=2))
    await env.request("queue_start")
    await until(env, lambda st: st["re_state"] == "running")
    await add(env, quick(num=3), pos="front")
    await env.request("queue_item_remove", {"pos": "back"})
    await until(env, lambda st: idle(st) and st["items_in_history"] == 2, timeout=30)
    nums = [it["kwargs"]["num"] for it in await history(env)]
    assert nums == [4, 3]


async def test_loop_mode_requeues_and_ignore_failures_goes_on(env: Client) -> None:
    await env.request("queue_mode_set", {"mode": {"ignore_failures": True}})
    await add(env, {"item_type": "plan", "name": "sim_fail"})
    await add(env, quick(num=1))
    await env.request("queue_mode_set", {"mode": {"loop": True}})
    await env.request("queue_start")
    await until(env, lambda st: st["items_in_history"] >= 4)
    await env.request("queue_stop")
    st = await until(env, idle)
    assert st["items_in_queue"] == 2  # looped items went back to the queue
    statuses = [it["result"]["exit_status"] for it in await history(env)]
    assert statuses[:4] == ["failed", "completed", "failed", "completed"]


async def test_autostart_runs_items_as_they_arrive(env: Client) -> None:
    assert (await env.request("queue_autostart", {"enable": True}))["success"]
    await add(env, quick())
    await until(env, lambda st: st["items_in_history"] == 1 and idle(st))
    await add(env, quick())
    st = await until(env, lambda st: st["items_in_history"] == 2 and idle(st))
    assert st["queue_autostart_enabled"] is True
    await env.request("queue_autostart", {"enable": False})


async def test_queue_item_execute_runs_now_and_records_history(env: Client) -> None:
    await add(env, quick())
    r = await env.request("queue_item_execute", {"item": quick(num=2), **USER})
    assert r["success"], r
    await until(env, lambda st: st["items_in_history"] == 1 and idle(st))
    assert (await history(env))[0]["kwargs"]["num"] == 2
    assert (await env.request("status"))["items_in_queue"] == 1


@pytest.mark.parametrize(
    ("item", "group", "expected"),
    [
        ({"name": "no_such_plan"}, "primary", "not in the list of allowed plans"),
        ({"name": "count", "args": [["det1"]]}, "nobody", "Unknown user group"),
        ({"name": "count", "args": [["no_such_det"]]}, "primary", "no_such_det"),
        ({"name": "count", "args": [["det1"]], "kwargs": {"bogus_kw": 1}}, "primary", "bogus_kw"),
        ({"name": "count", "args": [["det1"]], "kwargs": {"num": "ten"}}, "primary", "num"),
        ({"name": "count", "args": ["det1"]}, "primary", "detectors"),
        ({"name": "count"}, "primary", "detectors"),
        (
            {"name": "mv", "args": ["motor", 1]},
            "test_user",
            "'mv' is not in the list of allowed plans",
        ),
        ({"name": "count", "args": [["det3"]]}, "test_user", "det3"),
        ({"name": "scan", "args": [["det1"], "motor1", -1, 1, 10]}, "test_user", "motor1"),
    ],
)
async def test_add_rejects_bad_plans_with_a_message_naming_the_problem(
    client: Client, item: dict[str, Any], group: str, expected: str
) -> None:
    r = await client.request(
        "queue_item_add", {"item": {"item_type": "plan", **item}, "user": "u", "user_group": group}
    )
    assert not r["success"] and expected in r["msg"], r["msg"]
    assert (await client.request("status"))["items_in_queue"] == 0


async def test_plans_and_devices_lists_and_permissions(client: Client) -> None:
    plans = await client.request("plans_allowed", {"user_group": "primary"})
    assert "count" in plans["plans_allowed"] and plans["plans_allowed_uid"]
    count = plans["plans_allowed"]["count"]
    assert [p["name"] for p in count["parameters"]][:3] == ["detectors", "num", "delay"]
    devices = await client.request("devices_allowed", {"user_group": "primary"})
    assert {"det1", "motor"} <= set(devices["devices_allowed"])
    existing = await client.request("plans_existing")
    assert "count" in existing["plans_existing"]
    perms = await client.request("permissions_get")
    assert "root" in perms["user_group_permissions"]["user_groups"]
    restricted = dict(perms["user_group_permissions"])
    restricted["user_groups"] = {
        **restricted["user_groups"],
        "primary": {"allowed_plans": ["scan"], "allowed_devices": [None]},
    }
    uid0 = (await client.request("status"))["plans_allowed_uid"]
    assert (await client.request("permissions_set", {"user_group_permissions": restricted}))[
        "success"
    ]
    assert (await client.request("status"))["plans_allowed_uid"] != uid0
    plans = await client.request("plans_allowed", {"user_group": "primary"})
    assert list(plans["plans_allowed"]) == ["scan"]
    assert (await client.request("permissions_reload"))["success"]
    assert (
        "count"
        in (await client.request("plans_allowed", {"user_group": "primary"}))["plans_allowed"]
    )


async def test_console_output_is_published(env: Client) -> None:
    sub = await env.nc.subscribe(env.subjects.console_event)
    await add(env, quick())
    await env.request("queue_start")
    lines: list[str] = []

    async def collect() -> None:
        import json

        async for msg in sub.messages:
            lines.append(json.loads(msg.data)["msg"])
            if len(lines) >= 1:
                return

    await asyncio.wait_for(collect(), 20)
    await sub.unsubscribe()
    assert lines


async def test_re_runs_reports_the_active_run(env: Client) -> None:
    await add(env, quick(num=5, delay=0.3))
    await env.request("queue_start")
    await until(env, lambda st: st["re_state"] == "running")
    await asyncio.sleep(0.3)
    runs = await env.request("re_runs")
    assert runs["success"] and len(runs["run_list"]) == 1 and runs["run_list"][0]["is_open"]
    await until(env, idle)


async def test_destroy_during_a_plan_records_a_failure(env: Client, services: Services) -> None:
    await add(env, COUNT_10)
    await env.request("queue_start")
    await until(env, lambda st: st["re_state"] == "running")
    assert (await env.request("environment_destroy"))["success"]
    st = await until(
        env, lambda st: not st["worker_environment_exists"] and st["items_in_history"] == 1
    )
    assert st["manager_state"] == "idle"
    res = (await history(env))[0]["result"]
    assert res["exit_status"] == "failed" and res["msg"]
    assert st["items_in_queue"] == 1  # the item went back to the front of the queue


async def test_run_documents_are_published_live_on_nats(env: Client) -> None:
    docs: list[tuple[str, dict[str, Any]]] = []

    async def collect(msg: Any) -> None:
        body = json.loads(msg.data)
        docs.append((msg.subject.rsplit(".", 1)[-1], body))

    sub = await env.nc.subscribe(env.subjects.docs("*"), cb=collect)
    await add(env, quick(num=2))
    await env.request("queue_start")
    await until(env, lambda st: st["items_in_history"] == 1 and idle(st))
    await asyncio.sleep(0.2)
    await sub.unsubscribe()
    assert [name for name, _ in docs] == ["start", "descriptor", "event", "event", "stop"]
    assert all(body["name"] == name for name, body in docs)
    start = docs[0][1]["doc"]
    run_uid = (await history(env))[0]["result"]["run_uids"][0]
    assert start["uid"] == run_uid and start["qserver_user"] == USER["user"]
    assert isinstance(docs[2][1]["doc"]["data"]["det1"], float)
