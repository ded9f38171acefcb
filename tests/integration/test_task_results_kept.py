"""Task results are kept in JetStream: a restart of the queue service (or of nats-server)
loses neither finished results nor what runs, foreground or background (ADR 16)."""

from __future__ import annotations

import signal
from pathlib import Path

from qserver.client import Client
from services.stack.natsserver import NatsServer
from tests.conftest import Services, running_services
from tests.integration.test_durability import wait_answering
from tests.integration.test_execution import idle, open_env, until
from tests.integration.test_tasks import completed, execute, func


async def restart_queue(services: Services) -> Client:
    services.kill("queue")  # SIGKILL: nothing is saved on the way out
    services.start("queue")
    await services.wait_ready()
    assert services.client is not None
    return services.client


async def test_results_and_running_tasks_survive_a_queue_service_restart(
    services: Services,
) -> None:
    client = services.client
    assert client is not None
    await open_env(client)
    done = await execute(client, func("push_buffer_element", {"a": [1, 2]}))
    first = await completed(client, done["task_uid"])
    await until(client, idle)
    background = await execute(client, func("function_sleep", 6), run_in_background=True)
    foreground = await execute(client, func("function_sleep", 4))
    await until(client, lambda st: st["worker_background_tasks"] == 1)

    client = await restart_queue(services)
    # The finished task's result is read from JetStream, whole.
    again = await client.request("task_result", {"task_uid": done["task_uid"]})
    assert (again["status"], again["result"]) == ("completed", first)
    # What runs is known from the environment's state: the foreground task keeps the
    # manager busy, and both are reported running until they finish.
    st = await until(client, lambda s: s["manager_state"] == "executing_task")
    assert st["worker_background_tasks"] == 1
    uids = [background["task_uid"], foreground["task_uid"]]
    status = await client.request("task_status", {"task_uid": uids})
    assert status["status"] == dict.fromkeys(uids, "running"), status
    assert (await completed(client, foreground["task_uid"]))["return_value"]["time"] == 4
    await until(client, idle)
    assert (await completed(client, background["task_uid"]))["success"]
    st = await until(client, lambda s: s["worker_background_tasks"] == 0)
    assert st["manager_state"] == "idle"


async def test_results_survive_a_nats_server_restart(own_nats: NatsServer, tmp_path: Path) -> None:
    async with running_services(own_nats, tmp_path) as services:
        client = services.client
        assert client is not None
        await open_env(client)
        r = await execute(client, func("function_sleep", 0.1), run_in_background=True)
        result = await completed(client, r["task_uid"])
        await client.close()
        services.client = None
        own_nats.restart(signal.SIGKILL)
        # The services reconnect; the result was acknowledged, so it is there.
        client = services.client = await wait_answering(services)
        st = await until(client, lambda s: s["worker_environment_exists"] and idle(s))
        assert st["worker_environment_exists"]
        again = await client.request("task_result", {"task_uid": r["task_uid"]})
        assert (again["status"], again["result"]) == ("completed", result)


async def test_a_background_task_goes_on_while_the_worker_service_restarts(
    services: Services,
) -> None:
    client = services.client
    assert client is not None
    await open_env(client)
    r = await execute(client, func("function_sleep", 5), run_in_background=True)
    await until(client, lambda st: st["worker_background_tasks"] == 1)
    services.kill("worker")  # the environment outlives it (ADR 12)
    services.start("worker")
    await services.wait_ready()
    assert (await client.request("task_status", {"task_uid": r["task_uid"]}))["status"] in (
        "running",
        "completed",
    )
    result = await completed(client, r["task_uid"])
    assert result["success"] and result["return_value"] == {"success": True, "time": 5}
    st = await until(client, lambda s: s["worker_background_tasks"] == 0)
    assert st["worker_environment_exists"]


async def test_closing_the_environment_ends_its_background_tasks(services: Services) -> None:
    client = services.client
    assert client is not None
    await open_env(client)
    r = await execute(client, func("function_sleep", 60), run_in_background=True)
    await until(client, lambda st: st["worker_background_tasks"] == 1)
    # As in the reference: a background task does not keep the environment open...
    assert (await client.request("environment_close"))["success"]
    st = await until(client, lambda s: not s["worker_environment_exists"] and idle(s))
    assert st["worker_background_tasks"] == 0
    # ... and its result is lost with it.
    assert (await client.request("task_status", {"task_uid": r["task_uid"]}))["status"] == (
        "not_found"
    )
