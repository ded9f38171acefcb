"""The `qserver` CLI as a real subprocess against the real queue and history services."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from qserver.client import Client
from tests.conftest import Services, tag
from tests.integration.test_history import write_record

PLAN = '{"name":"count", "args":[["det1", "det2"]]}'
SCAN = '{"name":"scan", "args":[["det1", "det2"], "motor", -1, 1, 10]}'
COUNT10 = '{"name":"count", "args":[["det1", "det2"]], "kwargs":{"num":10, "delay":1}}'
KEY = "cli-test-key"


@dataclass
class Result:
    rc: int
    out: str
    err: str

    def json(self) -> dict[str, Any]:
        assert self.rc == 0, (self.rc, self.err)
        return json.loads(self.out)  # type: ignore[no-any-return]


def argv(svc: Services, *args: str) -> list[str]:
    return [sys.executable, "-m", "qserver.cli", "-a", svc.nats.url, "--prefix", svc.prefix, *args]


async def qs(svc: Services, *args: str) -> Result:
    proc = await asyncio.create_subprocess_exec(
        *argv(svc, *args), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


async def ok(svc: Services, *args: str) -> dict[str, Any]:
    return (await qs(svc, *args)).json()


async def uid_added(svc: Services, *args: str) -> str:
    return (await ok(svc, *args))["item"]["item_uid"]  # type: ignore[no-any-return]


def client_of(svc: Services) -> Client:
    assert svc.client is not None
    return svc.client


async def queue_uids(svc: Services) -> list[str]:
    r = await client_of(svc).request("queue_get")
    return [it["item_uid"] for it in r["items"]]


@pytest.fixture
async def svc(module_services: Services) -> AsyncIterator[Services]:
    """The module's services, with an empty queue and history and the default mode."""
    c = client_of(module_services)
    for method, params in (
        ("queue_clear", {}),
        ("history_clear", {}),
        ("queue_mode_set", {"mode": "default"}),
    ):
        assert (await c.request(method, params))["success"]
    yield module_services


async def test_v001_plan_add_examples_put_plans_where_the_readme_says(svc: Services) -> None:
    u1 = await uid_added(svc, "-c", "queue_plan_add", "-p", PLAN)
    u2 = await uid_added(svc, "-c", "queue_plan_add", "-p", SCAN)
    u3 = await uid_added(svc, "-c", "queue_plan_add", "-p", COUNT10)
    assert await queue_uids(svc) == [u1, u2, u3]
    front = await uid_added(svc, "-c", "queue_plan_add", "-p", "front", PLAN)
    back = await uid_added(svc, "-c", "queue_plan_add", "-p", "back", PLAN)
    # With 5 items (0..4), pos 5 is the back.
    five = await uid_added(svc, "-c", "queue_plan_add", "-p", "5", PLAN)
    two = await uid_added(svc, "-c", "queue_plan_add", "-p", "2", PLAN)
    minus_one = await uid_added(svc, "-c", "queue_plan_add", "-p", "-1", PLAN)
    expected = [front, u1, two, u2, u3, back, minus_one, five]
    assert await queue_uids(svc) == expected

    items = (await ok(svc, "-c", "queue_get"))["items"]
    assert [it["item_uid"] for it in items] == expected
    assert items[3]["args"] == [["det1", "det2"], "motor", -1, 1, 10]
    assert items[4]["kwargs"] == {"num": 10, "delay": 1}
    assert {it["user"] for it in items} == {"qserver-cli"}

    gets = await asyncio.gather(
        ok(svc, "-c", "queue_plan_get"),
        ok(svc, "-c", "queue_plan_get", "-p", "front"),
        ok(svc, "-c", "queue_plan_get", "-p", "-2"),
    )
    assert [g["item"]["item_uid"] for g in gets] == [five, front, minus_one]

    removed = [
        (await ok(svc, "-c", "queue_plan_remove", *p))["item"]["item_uid"]
        for p in ((), ("-p", "front"), ("-p", "-2"))
    ]
    assert removed == [five, front, back]
    assert await queue_uids(svc) == [u1, two, u2, u3, minus_one]

    assert (await qs(svc, "-c", "queue-clear")).rc == 0
    assert await queue_uids(svc) == []


async def test_v001_status_and_history_examples(svc: Services) -> None:
    ping, status, history, cleared = await asyncio.gather(
        ok(svc, "-c", "ping"),
        ok(svc, "-c", "status"),
        ok(svc, "-c", "history_get"),
        ok(svc, "-c", "history_clear"),
    )
    assert ping["manager_state"] == status["manager_state"] == "idle"
    assert history["items"] == []
    assert cleared["success"]


async def test_keyword_add_get_and_positions(svc: Services) -> None:
    a = await uid_added(svc, "queue", "add", "plan", PLAN)
    b = await uid_added(svc, "queue", "add", "plan", "front", PLAN)
    c = await uid_added(svc, "queue", "add", "plan", "-1", SCAN)
    d = await uid_added(svc, "queue", "add", "plan", "before", a, PLAN)
    e = await uid_added(svc, "queue", "add", "plan", "after", b, PLAN)
    stop = await ok(svc, "queue", "add", "instruction", "queue-stop")
    assert stop["item"]["item_type"] == "instruction"
    assert stop["item"]["name"] == "queue_stop"
    batch = await ok(svc, "queue", "add", "batch", "front", f"[{PLAN}, {COUNT10}]")
    f, g = (it["item_uid"] for it in batch["items"])
    expected = [f, g, b, e, c, d, a, stop["item"]["item_uid"]]
    assert await queue_uids(svc) == expected

    gets = await asyncio.gather(
        ok(svc, "queue", "item", "get"),
        ok(svc, "queue", "item", "get", "front"),
        ok(svc, "queue", "item", "get", "-2"),
        ok(svc, "queue", "item", "get", c),
        ok(svc, "queue", "item", "get", "3"),
        ok(svc, "queue", "get"),
    )
    assert [r["item"]["item_uid"] for r in gets[:5]] == [expected[-1], f, a, c, e]
    assert [it["item_uid"] for it in gets[5]["items"]] == expected


async def test_keyword_move_update_replace_and_remove(svc: Services) -> None:
    batch = await ok(svc, "queue", "add", "batch", f"[{PLAN}, {PLAN}, {PLAN}, {PLAN}]")
    a, b, c, d = (it["item_uid"] for it in batch["items"])
    await ok(svc, "queue", "item", "move", d, "front")
    assert await queue_uids(svc) == [d, a, b, c]
    await ok(svc, "queue", "item", "move", "0", "back")
    assert await queue_uids(svc) == [a, b, c, d]
    await ok(svc, "queue", "item", "move", "-1", "before", b)
    assert await queue_uids(svc) == [a, d, b, c]
    await ok(svc, "queue", "item", "move", "batch", a, d, "after", c)
    assert await queue_uids(svc) == [b, c, a, d]

    updated = await ok(svc, "queue", "update", "plan", b, COUNT10)
    assert updated["item"]["item_uid"] == b
    assert updated["item"]["kwargs"] == {"num": 10, "delay": 1}
    replaced = (await ok(svc, "queue", "replace", "plan", c, SCAN))["item"]
    assert replaced["item_uid"] != c
    assert replaced["name"] == "scan"
    assert await queue_uids(svc) == [b, replaced["item_uid"], a, d]

    assert (await ok(svc, "queue", "item", "remove", a))["item"]["item_uid"] == a
    await ok(svc, "queue", "item", "remove", "batch", b, d)
    assert await queue_uids(svc) == [replaced["item_uid"]]
    await ok(svc, "queue", "item", "remove", "front")
    assert await queue_uids(svc) == []


async def test_keyword_mode_lock_and_history(svc: Services) -> None:
    await ok(svc, "queue", "mode", "set", "loop", "True")
    await ok(svc, "queue", "mode", "set", "ignore_failures", "on")
    status = await client_of(svc).request("status")
    assert status["plan_queue_mode"] == {"loop": True, "ignore_failures": True}
    await ok(svc, "queue", "mode", "set", "default")
    status = await client_of(svc).request("status")
    assert status["plan_queue_mode"] == {"loop": False, "ignore_failures": False}

    locked = await ok(svc, "lock", "queue", "maintenance", "-k", KEY)
    try:
        assert locked["lock_info"]["queue"] is True
        assert locked["lock_info"]["note"] == "maintenance"
        refused = await qs(svc, "queue", "add", "plan", PLAN)
        assert refused.rc == 2
        assert refused.err.startswith("Request failed: ")
        # The key works after the command and before it.
        await ok(svc, "queue", "add", "plan", PLAN, "-k", KEY)
        await ok(svc, "-k", KEY, "queue", "clear")
        info = await ok(svc, "lock", "info", "-k", KEY)
        assert info["lock_info"]["user"] == "qserver-cli"
    finally:
        unlocked = await ok(svc, "unlock", "-k", KEY)
    assert unlocked["lock_info"]["queue"] is False

    history = await ok(svc, "history", "get", "--offset", "0", "--limit", "5")
    assert history["items"] == []
    await ok(svc, "history", "clear")
    await ok(svc, "history", "clear", "3")


async def test_history_get_limit_gives_the_latest_items(svc: Services) -> None:
    for name in "abcde":
        await write_record(client_of(svc), name)
    await client_of(svc).wait_for(lambda st: st["items_in_history"] == 5, timeout=30)

    async def tags(*args: str) -> list[str]:
        return [tag(it) for it in (await ok(svc, "history", "get", *args))["items"]]

    assert await tags() == list("abcde")
    assert await tags("--limit", "2") == ["d", "e"]
    assert await tags("--limit", "-2") == ["d", "e"]  # what people typed for "the last 2"
    assert await tags("-n", "2", "--offset", "1") == ["c", "d"]
    assert await tags("--limit", "9") == list("abcde")
    assert await tags("--limit", "0") == []
    assert await tags("--offset", "3") == ["a", "b"]
    assert await tags("--oldest", "--limit", "2") == ["a", "b"]  # the wire's paging
    assert await tags("--oldest", "--offset", "1", "--limit", "2") == ["b", "c"]


async def test_allowed_names_and_table_print_one_plan_or_device_a_line(svc: Services) -> None:
    names = await qs(svc, "allowed", "plans", "--names")
    assert names.rc == 0, names.err
    plans = names.out.splitlines()
    assert "count" in plans and "scan" in plans
    assert all(p and " " not in p for p in plans)
    assert plans == sorted(plans)
    table = await qs(svc, "--format", "table", "allowed", "plans")
    assert table.rc == 0, table.err
    assert len(table.out.splitlines()) == len(plans)
    count = next(line for line in table.out.splitlines() if line.startswith("count("))
    assert count.startswith("count(detectors, num=1")
    devices = await qs(svc, "existing", "devices", "--names")
    assert "det1" in devices.out.splitlines() and "motor" in devices.out.splitlines()
    table = await qs(svc, "--format", "table", "allowed", "devices")
    motor = next(line for line in table.out.splitlines() if line.split()[0] == "motor")
    assert "movable" in motor.split()


async def test_table_format_lists_items_in_columns(svc: Services) -> None:
    uid = await uid_added(svc, "queue", "add", "plan", PLAN)
    r = await qs(svc, "--format", "table", "queue", "get")
    assert r.rc == 0, r.err
    header, row, *rest = r.out.splitlines()
    assert header.split() == ["pos", "uid", "name", "args", "kwargs", "user"]
    assert row.split()[:3] == ["0", uid, "count"]
    assert "success: true" in rest
    status = await qs(svc, "--format", "table", "status")
    assert "manager_state: idle" in status.out.splitlines()


async def test_exit_codes(svc: Services) -> None:
    bad_json, refused, unknown, no_server, no_service = await asyncio.gather(
        qs(svc, "queue", "add", "plan", "{bad json"),
        qs(svc, "queue", "item", "remove"),
        qs(svc, "-c", "no_such_method"),
        qs(svc, "-a", "nats://127.0.0.1:1", "status"),
        qs(svc, "--prefix", "qs.nobody.here", "status"),
    )
    assert bad_json.rc == 1
    assert "Invalid plan JSON" in bad_json.err
    assert refused.rc == 2
    assert refused.err.startswith("Request failed: ")
    assert refused.out == ""
    assert no_server.rc == 3
    assert "Cannot connect" in no_server.err
    assert unknown.rc == 2
    assert "no_such_method" in unknown.err
    assert no_service.rc == 3
    assert "qs.nobody.here" in no_service.err


async def test_help_on_several_levels(svc: Services) -> None:
    results = await asyncio.gather(
        qs(svc), qs(svc, "-h"), qs(svc, "queue", "--help"), qs(svc, "queue", "add", "-h")
    )
    for r in results:
        assert r.rc == 0
        assert "Usage: " in r.out
    assert "-c, --command" in results[1].out
    assert "{plan|instruction|batch}" in results[3].out


async def test_monitor_prints_the_status_then_each_change(svc: Services) -> None:
    once = await qs(svc, "monitor", "--once")
    assert once.rc == 0
    assert "manager_state=idle" in once.out
    assert "items_in_queue=0" in once.out

    proc = await asyncio.create_subprocess_exec(
        *argv(svc, "monitor"), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    try:
        first = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert b"items_in_queue=0" in first
        await ok(svc, "queue", "add", "plan", PLAN)
        async with asyncio.timeout(60):
            while b"items_in_queue=1" not in (line := await proc.stdout.readline()):
                assert b"items_in_queue=0" in line, line  # another change, or the add
    finally:
        proc.send_signal(signal.SIGINT)
        rc = await asyncio.wait_for(proc.wait(), 60)
    assert rc == 0


async def test_manager_kill_expects_no_reply(services: Services) -> None:
    r = await qs(services, "-c", "test_manager_kill")
    assert r.rc == 0, r.err
    assert "sent" in r.out
    proc = services.procs["queue"].proc
    assert proc is not None
    assert await asyncio.wait_for(asyncio.to_thread(proc.wait), 10) != 0
    # With the manager gone, the same command is a communication error.
    gone = await qs(services, "--timeout", "0.5", "manager", "kill", "test")
    assert gone.rc == 3


async def test_env_vars_give_the_address_and_prefix(svc: Services) -> None:
    env = {**os.environ, "QSERVER_NATS_URL": svc.nats.url, "QSERVER_PREFIX": svc.prefix}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "qserver.cli",
        "ping",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    assert json.loads(out)["manager_state"] == "idle"
