"""Tasks: functions and scripts run in the environment (function_execute, script_upload,
environment_update), their status and results (task_status, task_result), over NATS."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from qserver.client import Client
from tests.conftest import USER, Services
from tests.integration.test_execution import add, idle, open_env, quick, until

TEST_USER = {"user": "tester", "user_group": "test_user"}


def func(name: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"item_type": "function", "name": name}
    if args:
        item["args"] = list(args)
    if kwargs:
        item["kwargs"] = kwargs
    return item


async def execute(client: Client, item: dict[str, Any], **params: Any) -> dict[str, Any]:
    r = await client.request("function_execute", {"item": item, **TEST_USER, **params})
    assert r["success"], r
    return r


async def completed(client: Client, task_uid: str, timeout: float = 60) -> dict[str, Any]:
    """The task's result once it is completed (waiting on `task_results_uid`, as clients do)."""
    async with asyncio.timeout(timeout):
        while True:
            seen = (await client.request("status"))["task_results_uid"]
            r = await client.request("task_result", {"task_uid": task_uid})
            assert r["success"], r
            if r["status"] == "completed":
                return r["result"]  # type: ignore[no-any-return]
            assert r["status"] == "running", r
            await until(client, lambda st, seen=seen: st["task_results_uid"] != seen, timeout)


@pytest.fixture
async def env(services: Services) -> Client:
    assert services.client is not None
    await open_env(services.client)
    return services.client


async def test_a_foreground_function_is_executing_task_until_its_result_is_stored(
    env: Client,
) -> None:
    before = await env.request("status")
    r = await execute(env, func("function_sleep", 2))
    task_uid = r["task_uid"]
    assert r["item"]["item_uid"] == task_uid and r["item"]["user_group"] == "test_user"
    # At once, in the status the next request reads.
    st = await env.request("status")
    assert st["manager_state"] == "executing_task"
    assert st["task_results_uid"] == before["task_results_uid"]
    st = await until(env, lambda s: s["worker_environment_state"] == "executing_task")
    assert st["worker_background_tasks"] == 0
    running = await env.request("task_result", {"task_uid": task_uid})
    assert running["status"] == "running"
    assert running["result"]["task_uid"] == task_uid
    assert running["result"]["run_in_background"] is False
    assert isinstance(running["result"]["time_start"], float)
    # Nothing else starts meanwhile.
    refused = await env.request("script_upload", {"script": "x = 1"})
    assert not refused["success"] and "RE Manager must be in idle state" in refused["msg"]
    assert refused["task_uid"] is None
    st = await until(env, idle)
    assert st["task_results_uid"] != before["task_results_uid"]
    done = await env.request("task_result", {"task_uid": task_uid})
    assert done["status"] == "completed"
    result = done["result"]
    assert result["success"] is True and result["msg"] == "" and result["traceback"] == ""
    assert result["return_value"] == {"success": True, "time": 2}
    assert result["time_stop"] - result["time_start"] >= 2
    assert (await env.request("task_status", {"task_uid": task_uid}))["status"] == "completed"


async def test_a_foreground_task_read_completed_lets_the_next_one_start_at_once(
    env: Client,
) -> None:
    # The environment stores a task's result a moment before its state lets the task go.
    # A client that reads "completed" in that moment and starts the next task must not be
    # refused as "not idle" (a busy run once was, with environment_update after an upload).
    for i in range(20):
        r = await env.request("script_upload", {"script": f"value_{i} = {i}\n"})
        assert r["success"], (i, r)
        while True:  # as fast as a client can ask: no wait for the status in between
            done = await env.request("task_result", {"task_uid": r["task_uid"]})
            assert done["success"], done
            if done["status"] == "completed":
                break
        assert done["result"]["success"], done
    value = await execute(env, func("function_sleep", 0))
    assert (await completed(env, value["task_uid"]))["success"]


async def test_background_functions_run_beside_a_plan_and_share_the_namespace(
    env: Client,
) -> None:
    await add(env, quick(num=8, delay=0.5))
    assert (await env.request("queue_start"))["success"]
    await until(env, lambda st: st["re_state"] == "running")
    r = await env.request("function_execute", {"item": func("function_sleep", 1), **TEST_USER})
    assert not r["success"] and "RE Manager must be in idle state" in r["msg"], r
    slow = await execute(env, func("function_sleep", 3), run_in_background=True)
    st = await until(env, lambda s: s["worker_background_tasks"] == 1)
    assert st["manager_state"] == "executing_queue"
    value = {"some_key": [1, 2.5, "x"]}
    pushed = await execute(env, func("push_buffer_element", value), run_in_background=True)
    assert (await completed(env, pushed["task_uid"]))["success"]
    popped = await execute(env, func("pop_buffer_element"), run_in_background=True)
    assert (await completed(env, popped["task_uid"]))["return_value"] == value
    # The buffer is empty now: the pop fails, with the traceback.
    failed = await execute(env, func("pop_buffer_element"), run_in_background=True)
    result = await completed(env, failed["task_uid"])
    assert result["success"] is False and result["return_value"] is None
    assert "pop from empty list" in result["msg"]
    assert result["traceback"].startswith("Traceback") and "IndexError" in result["traceback"]
    status = await env.request("task_status", {"task_uid": [slow["task_uid"], "no-such-task"]})
    assert status["status"] == {slow["task_uid"]: "running", "no-such-task": "not_found"}
    assert (await completed(env, slow["task_uid"]))["return_value"] == {"success": True, "time": 3}
    st = await until(env, idle)
    assert st["worker_background_tasks"] == 0
    assert [h["result"]["exit_status"] for h in (await env.request("history_get"))["items"]] == [
        "completed"
    ]


SCRIPT = """
from ophyd import Device

dev_test = Device(name="dev_test")

def sleep_for_a_few_sec(tt=1):
    yield from bps.sleep(tt)
"""


async def test_script_upload_adds_plans_and_devices_unless_told_to_keep_the_lists(
    env: Client,
) -> None:
    before = await env.request("status")
    r = await env.request("script_upload", {"script": SCRIPT, "update_lists": False})
    assert r["success"] and r["msg"] == "" and r["task_uid"], r
    result = await completed(env, r["task_uid"])
    assert result["success"] is True and result["return_value"] is None
    assert "sleep_for_a_few_sec" not in (await env.request("plans_existing"))["plans_existing"]
    st = await env.request("status")
    assert st["plans_existing_uid"] == before["plans_existing_uid"]
    # environment_update reads the namespace again.
    r = await env.request("environment_update")
    assert r["success"] and r["task_uid"], r
    assert (await completed(env, r["task_uid"]))["success"]
    st = await until(env, idle)
    for key in ("plans_existing_uid", "plans_allowed_uid", "devices_existing_uid"):
        assert st[key] != before[key], key
    allowed = await env.request("plans_allowed", {"user_group": "primary"})
    assert "sleep_for_a_few_sec" in allowed["plans_allowed"]
    devices = await env.request("devices_allowed", {"user_group": "primary"})
    assert "dev_test" in devices["devices_allowed"]
    # The new plan runs from the queue.
    await add(env, {"item_type": "plan", "name": "sleep_for_a_few_sec", "kwargs": {"tt": 0.1}})
    assert (await env.request("queue_start"))["success"]
    await until(env, lambda s: idle(s) and s["items_in_queue"] == 0)
    # A script that adds only a device leaves the plans' uids as they were.
    plans_uid = (await env.request("status"))["plans_allowed_uid"]
    r = await env.request("script_upload", {"script": "dev2 = Device(name='dev2')\n"})
    assert (await completed(env, r["task_uid"]))["success"]
    st = await until(env, idle)
    assert st["plans_allowed_uid"] == plans_uid
    assert "dev2" in (await env.request("devices_existing"))["devices_existing"]


FAILING = """
def func1():
    try:
        func2()
    except Exception as ex:
        raise Exception("Exception in func1") from ex

def func2():
    raise Exception("Exception in func2")

func1()
"""


async def test_a_failing_script_gives_its_traceback_in_the_task_result(env: Client) -> None:
    r = await env.request("script_upload", {"script": FAILING})
    assert r["success"], r
    result = await completed(env, r["task_uid"])
    assert result["success"] is False and result["return_value"] is None
    assert "Exception in func1" in result["msg"] and "Exception in func2" not in result["msg"]
    tb = result["traceback"]
    assert tb.startswith("Traceback") and "Exception in func2" in tb
    # The script's own lines, as it was sent.
    assert 'raise Exception("Exception in func1") from ex' in tb
    # A task's result is kept before the manager is back to idle (as the reference's; its
    # clients wait for idle, as here, before the next foreground task).
    await until(env, idle)
    r = await env.request("script_upload", {"script": "def broken(:\n"})
    assert r["success"], r
    result = await completed(env, r["task_uid"])
    assert result["success"] is False and "SyntaxError" in result["traceback"]
    await until(env, idle)


@pytest.mark.parametrize(
    ("params", "msg"),
    [
        ({"item": func("function_sleep", 1)}, "user group is not specified"),
        (
            {"item": func("function_sleep", 1), "user_group": "g", "user": "u"},
            "Unknown user group: 'g'",
        ),
        ({"item": func("not_allowed"), **TEST_USER}, "Function 'not_allowed' is not allowed"),
        ({"item": {"item_type": "function"}, **TEST_USER}, "Function name is not specified"),
        (
            {"item": {**func("function_sleep"), "args": 50}, **TEST_USER},
            "'args' is not a tuple or a list",
        ),
        (
            {"item": {**func("function_sleep"), "kwargs": 5}, **TEST_USER},
            "'kwargs' is not a dictionary",
        ),
        (
            {"item": {**func("count"), "item_type": "plan"}, **TEST_USER},
            "unsupported 'item_type' value: 'plan'",
        ),
        ({**TEST_USER}, "request contains no item info"),
        ({"item": func("_private"), **USER}, "Function '_private' is not allowed"),
    ],
)
async def test_bad_function_requests_are_refused_with_the_reason(
    env: Client, params: dict[str, Any], msg: str
) -> None:
    r = await env.request("function_execute", params)
    assert not r["success"] and msg in r["msg"], r
    assert r["task_uid"] is None and "item" in r
    st = await env.request("status")
    assert st["manager_state"] == "idle" and st["worker_background_tasks"] == 0


async def test_a_function_the_namespace_lacks_fails_as_a_task(env: Client) -> None:
    r = await execute(env, func("non_existing_element"), run_in_background=True)
    result = await completed(env, r["task_uid"])
    msg = "Function 'non_existing_element' is not found in the worker namespace"
    assert result["success"] is False and msg in result["msg"] and msg in result["traceback"]
    # A generator function (a plan) is not a function to call.
    r = await env.request("script_upload", {"script": "def unit_test_gen():\n    yield 1\n"})
    assert (await completed(env, r["task_uid"]))["success"]
    r = await execute(env, func("unit_test_gen"), run_in_background=True)
    result = await completed(env, r["task_uid"])
    assert result["success"] is False and "is a generator function" in result["msg"]


async def test_tasks_need_an_open_environment_and_uids_of_tasks(services: Services) -> None:
    client = services.client
    assert client is not None
    # The reference's texts: function_execute prefixes every refusal, the others return
    # this one as it is.
    for method, params, prefix in (
        ("function_execute", {"item": func("function_sleep", 1), **TEST_USER}, "Error: "),
        ("script_upload", {"script": "x = 1"}, ""),
        ("environment_update", {}, ""),
    ):
        r = await client.request(method, params)
        assert not r["success"] and r["msg"] == f"{prefix}RE Worker environment is not open", r
        assert r["task_uid"] is None
    r = await client.request("task_status", {"task_uid": "some_uid"})
    assert r == {"success": True, "msg": "", "task_uid": "some_uid", "status": "not_found"}
    r = await client.request("task_status", {"task_uid": ["uid1", "uid1", "a b"]})
    assert r["status"] == {"uid1": "not_found", "a b": "not_found"}
    r = await client.request("task_result", {"task_uid": "some_uid"})
    assert (r["success"], r["status"], r["result"]) == (True, "not_found", {})
    r = await client.request("task_status", {"task_uid": 10})
    assert not r["success"] and "'task_uid' must be a string or a list of strings" in r["msg"]
    assert r["status"] is None
    r = await client.request("task_status", {})
    assert not r["success"] and "Required 'task_uid' parameter is missing" in r["msg"]
    r = await client.request("task_result", {"task_uid": ["a", "b"]})
    assert not r["success"] and "'task_uid' must be a string" in r["msg"]
    r = await client.request("script_upload", {"script": 5})
    assert not r["success"] and "'script' parameter" in r["msg"]
    r = await client.request("task_status", {"task_uid": "x", "some_param": 1})
    assert not r["success"] and "some_param" in r["msg"]


async def test_environment_update_in_the_background_while_a_plan_runs(env: Client) -> None:
    await add(env, quick(num=6, delay=0.5))
    assert (await env.request("queue_start"))["success"]
    await until(env, lambda st: st["re_state"] == "running")
    r = await env.request("environment_update", {"run_in_background": True})
    assert r["success"] and r["task_uid"], r
    assert (await completed(env, r["task_uid"]))["success"]
    st = await env.request("status")
    assert st["manager_state"] == "executing_queue"
    r = await env.request("environment_update")
    assert not r["success"] and "RE Manager must be in idle state" in r["msg"]
    await until(env, lambda s: idle(s) and s["items_in_history"] == 1)


async def test_a_foreground_script_blocks_close_and_the_queue_and_destroy_ends_it(
    env: Client,
) -> None:
    await add(env, quick())
    r = await env.request("script_upload", {"script": "import time\ntime.sleep(60)\n"})
    assert r["success"], r
    task_uid = r["task_uid"]
    await until(env, lambda st: st["worker_environment_state"] == "executing_task")
    assert not (await env.request("queue_start"))["success"]
    assert not (await env.request("environment_close"))["success"]
    assert (await env.request("environment_destroy"))["success"]
    st = await until(env, lambda s: idle(s) and not s["worker_environment_exists"])
    assert st["items_in_queue"] == 1
    # Its result is lost with the environment: as the reference says, not found.
    assert (await env.request("task_status", {"task_uid": task_uid}))["status"] == "not_found"
    await open_env(env)
    assert (await env.request("queue_start"))["success"]
    await until(env, lambda s: idle(s) and s["items_in_queue"] == 0)


async def test_the_status_that_brings_a_result_shows_everything_the_task_did(
    env: Client,
) -> None:
    """The reference's clients check this: when `task_results_uid` changes, the manager is
    idle again, the background count is down and the lists a script changed are read."""
    for n, background in enumerate((False, True)):
        before = await env.request("status")
        seen: list[dict[str, Any]] = []

        async def watch(old: str, seen: list[dict[str, Any]] = seen) -> None:
            async for ev in env.status_events():
                seen.append(ev)
                if ev["task_results_uid"] != old:
                    return

        watching = asyncio.create_task(watch(before["task_results_uid"]))
        await asyncio.sleep(0.2)  # subscribed
        script = SCRIPT.replace("dev_test", f"dev_watched_{n}") + "import time\ntime.sleep(1)\n"
        r = await env.request("script_upload", {"script": script, "run_in_background": background})
        assert r["success"], r
        await asyncio.wait_for(watching, 60)
        first = seen[-1]
        assert first["manager_state"] == "idle" and first["worker_environment_state"] == "idle"
        assert first["worker_background_tasks"] == 0
        # The task was seen running (a status of the task), and the new lists came with
        # the result, not after it.
        running = "executing_task" if not background else "idle"
        assert any(ev["manager_state"] == running for ev in seen[:-1]), seen
        if background:
            assert any(ev["worker_background_tasks"] == 1 for ev in seen[:-1]), seen
        assert first["devices_allowed_uid"] != before["devices_allowed_uid"]
        assert (await env.request("task_status", {"task_uid": r["task_uid"]}))["status"] == (
            "completed"
        )
