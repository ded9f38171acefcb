"""Tasks in kernel mode (ADR 16, ADR 20): a foreground task runs in the kernel's execution
loop, shares the namespace a console sees, and `kernel_interrupt` stops it if told to."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.stack.natsserver import NatsServer
from tests.integration.test_execution import idle, open_env, until
from tests.integration.test_kernel import (
    Console,
    connection_file,
    console,
    holding,
    kernel_services,
    kernel_status,
    sleeping,
)
from tests.integration.test_tasks import completed, execute, func


@pytest.mark.timeout(300)
async def test_tasks_run_in_the_kernel_and_share_its_namespace(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with kernel_services(nats_server, tmp_path) as services:
        client = services.client
        assert client is not None
        await open_env(client)
        info_file = await connection_file(client, tmp_path)

        # Foreground: in the execution loop, which holds the kernel meanwhile.
        r = await execute(client, func("function_sleep", 2))
        st = await client.request("status")
        assert st["manager_state"] == "executing_task"
        st = await until(client, lambda s: s["worker_environment_state"] == "executing_task")
        assert kernel_status(st) == ("busy", True)
        assert (await completed(client, r["task_uid"]))["return_value"]["time"] == 2
        # When its result is news, the loop has let the kernel go: the manager is idle.
        st = await client.request("status")
        assert idle(st) and kernel_status(st) == ("idle", False), st

        # What a script defines, a console sees, and the reverse.
        r = await client.request("script_upload", {"script": "from_script = 6 * 7\n"})
        assert (await completed(client, r["task_uid"]))["success"]
        await until(client, lambda s: idle(s) and not s["ip_kernel_captured"])
        out = console(info_file, "print('seen', from_script)\nfrom_console = 'typed'\n")
        assert "seen 42" in out
        r = await client.request("script_upload", {"script": "assert from_console == 'typed'\n"})
        assert (await completed(client, r["task_uid"]))["success"]
        await until(client, lambda s: idle(s) and not s["ip_kernel_captured"])

        # A command typed in the kernel: a foreground task waits for the kernel, refused;
        # a background one runs on its own thread.
        typing = Console(info_file)
        await typing.prompt()
        release = tmp_path / "release-typed"
        typing.type(holding(release) + "print('typed done')\n")
        await typing.shows(b"holding")
        await until(client, lambda s: s["ip_kernel_state"] == "busy")
        r = await client.request(
            "function_execute",
            {"item": func("function_sleep", 1), "user": "u", "user_group": "primary"},
        )
        assert not r["success"], r
        assert r["msg"] == "Error: Failed to start the task: IPython kernel (RE Worker) is busy."
        r = await execute(client, func("function_sleep", 0.5), run_in_background=True)
        assert (await completed(client, r["task_uid"]))["success"]
        release.touch()
        assert "typed done" in await typing.leave()
        await until(client, lambda s: idle(s) and kernel_status(s) == ("idle", False))


@pytest.mark.timeout(300)
async def test_kernel_interrupt_stops_a_foreground_task_only_when_told_to(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with kernel_services(nats_server, tmp_path) as services:
        client = services.client
        assert client is not None
        await open_env(client)
        r = await client.request("script_upload", {"script": sleeping(3000)})
        assert r["success"], r
        await until(client, lambda s: s["worker_environment_state"] == "executing_task")
        refused = await client.request("kernel_interrupt", {})
        assert not refused["success"] and "Not allowed to interrupt running task" in refused["msg"]
        assert (await client.request("kernel_interrupt", {"interrupt_task": True}))["success"]
        result = await completed(client, r["task_uid"])
        assert result["success"] is False and "KeyboardInterrupt" in result["traceback"]
        st = await until(client, lambda s: idle(s) and kernel_status(s) == ("idle", False))
        assert st["worker_environment_exists"]
        # The environment goes on.
        r = await execute(client, func("function_sleep", 0))
        assert (await completed(client, r["task_uid"]))["success"]
