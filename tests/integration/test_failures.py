"""Failure drills: services and the environment die mid-plan; nothing is lost or run twice."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time

import psutil

from qserver.client import Client, NoAnswer
from tests.conftest import Services
from tests.integration.test_execution import add, history, idle, open_env, quick, until


async def reconnect(services: Services) -> Client:
    await services.wait_ready()
    return await Client.connect(services.nats.url, services.prefix, timeout=10)


def env_pid(services: Services) -> int:
    worker = psutil.Process(services.procs["worker"].pid)
    (child,) = worker.children()
    return child.pid


async def test_queue_service_killed_during_a_plan_keeps_the_plan_and_its_outcome(
    services: Services, client: Client
) -> None:
    await open_env(client)
    # Long enough (10 s) to outlast the queue service's restart on a busy machine.
    first = await add(client, quick(num=40, delay=0.25))
    await add(client, quick(num=1))
    await client.request("queue_start")
    await until(client, lambda st: st["re_state"] == "running")
    services.kill("queue")
    t = time.perf_counter()
    services.start("queue")
    c = await reconnect(services)
    answered = time.perf_counter() - t
    st = await c.request("status")
    assert st["running_item_uid"] == first["item_uid"] and st["re_state"] == "running"
    st = await until(c, lambda st: idle(st) and st["items_in_history"] == 2, timeout=30)
    items = await history(c)
    assert [it["result"]["exit_status"] for it in items] == ["completed", "completed"]
    assert items[0]["item_uid"] == first["item_uid"]  # recorded once, not re-run
    assert answered < 30.0  # a restart, not a hang
    await c.close()


async def test_queue_service_killed_while_paused_comes_back_paused(
    services: Services, client: Client
) -> None:
    await open_env(client)
    await add(client, quick(num=6, delay=0.3))
    await client.request("queue_start")
    await until(client, lambda st: st["re_state"] == "running")
    await client.request("re_pause", {"option": "immediate"})
    await until(client, lambda st: st["manager_state"] == "paused")
    services.kill("queue")
    services.start("queue")
    c = await reconnect(services)
    st = await until(c, lambda st: st["manager_state"] == "paused")
    assert st["running_item_uid"]
    assert (await c.request("re_resume"))["success"]
    await until(c, lambda st: idle(st) and st["items_in_history"] == 1)
    assert (await history(c))[0]["result"]["exit_status"] == "completed"
    await c.close()


async def test_manager_kill_makes_the_service_stop_answering_then_it_recovers(
    services: Services, client: Client
) -> None:
    await open_env(client)
    await add(client, quick(num=4, delay=0.25))
    await client.request("queue_start")
    await until(client, lambda st: st["re_state"] == "running")
    with contextlib.suppress(NoAnswer):
        r = await client.request("manager_kill", timeout=0.5)
        raise AssertionError(f"manager_kill answered: {r}")
    proc = services.procs["queue"]
    for _ in range(100):
        if not proc.alive():
            break
        await asyncio.sleep(0.02)
    assert proc.poll() == -signal.SIGKILL
    services.start("queue")  # what the stack's supervisor does
    c = await reconnect(services)
    await until(c, lambda st: idle(st) and st["items_in_history"] == 1, timeout=30)
    assert (await history(c))[0]["result"]["exit_status"] == "completed"
    await c.close()


async def test_environment_killed_mid_plan_records_a_failure_and_keeps_the_queue(
    services: Services, client: Client
) -> None:
    await open_env(client)
    running = await add(client, quick(num=20, delay=0.25))
    waiting = await add(client, quick(num=1))
    await client.request("queue_start")
    await until(client, lambda st: st["re_state"] == "running")
    os.kill(env_pid(services), signal.SIGKILL)
    st = await until(
        client, lambda st: not st["worker_environment_exists"] and st["items_in_history"] == 1
    )
    assert st["manager_state"] == "idle" and st["worker_environment_state"] == "closed"
    result = (await history(client))[0]["result"]
    assert result["exit_status"] == "failed" and "died" in result["msg"], result
    queue = (await client.request("queue_get"))["items"]
    assert [it["kwargs"]["num"] for it in queue] == [20, 1]
    assert (
        queue[0]["item_uid"] != running["item_uid"] and queue[1]["item_uid"] == waiting["item_uid"]
    )
    # The environment can be opened again and the queue runs on.
    await open_env(client)


async def test_worker_service_killed_mid_plan_is_replaced_and_the_plan_completes_once(
    services: Services, client: Client
) -> None:
    """Issue 10, point 11: the restarted worker adopts the environment; the plan goes on."""
    await open_env(client)
    pid = env_pid(services)
    first = await add(client, quick(num=40, delay=0.25))
    second = await add(client, quick(num=1))
    await client.request("queue_start")
    await until(client, lambda st: st["re_state"] == "running")
    services.kill("worker")
    services.start("worker")
    await services.wait_ready(timeout=30)
    st = await client.request("status")
    assert st["running_item_uid"] == first["item_uid"] and st["re_state"] == "running", st
    st = await until(client, lambda st: st["items_in_history"] == 2 and idle(st), timeout=60)
    assert st["worker_environment_exists"] and st["items_in_queue"] == 0
    items = await history(client)
    assert [(it["item_uid"], it["result"]["exit_status"]) for it in items] == [
        (first["item_uid"], "completed"),
        (second["item_uid"], "completed"),
    ]
    assert len(items[0]["result"]["run_uids"]) == 1  # run once, not again
    worker = await client.nc.request(client.subjects.worker_cmd("state"), b"", timeout=10)
    assert json.loads(worker.data)["env_pid"] == pid


async def test_a_plan_that_ends_while_no_worker_runs_is_recorded_and_the_queue_waits_for_one(
    services: Services, client: Client
) -> None:
    """The environment stores the outcome itself; the next item starts with a worker only."""
    await open_env(client)
    first = await add(client, quick(num=24, delay=0.25))
    second = await add(client, quick(num=1))
    await client.request("queue_start")
    await until(client, lambda st: st["re_state"] == "running")
    services.kill("worker")
    await until(client, lambda st: st["items_in_history"] == 1, timeout=60)
    items = await history(client)
    assert (items[0]["item_uid"], items[0]["result"]["exit_status"]) == (
        first["item_uid"],
        "completed",
    )
    restarted = time.time()
    services.start("worker")
    await services.wait_ready(timeout=30)
    await until(client, lambda st: st["items_in_history"] == 2 and idle(st), timeout=60)
    items = await history(client)
    assert (items[1]["item_uid"], items[1]["result"]["exit_status"]) == (
        second["item_uid"],
        "completed",
    )
    assert items[1]["result"]["time_start"] > restarted
