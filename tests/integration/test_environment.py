"""Environment edge cases: broken startup code, unknown lists, update, and the CLI forms."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import msgspec
import psutil
from nats.aio.msg import Msg

from qserver.client import Client
from qserver.protocol.worker import WorkerState
from services.stack.natsserver import NatsServer
from tests.conftest import USER, Services, running_services
from tests.integration.test_execution import add, idle, open_env, quick, until


async def test_without_known_lists_adding_a_plan_says_why(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with running_services(nats_server, tmp_path, {"queue": ["--lists-file", ""]}) as services:
        client = services.client
        assert client is not None
        r = await client.request("queue_item_add", {"item": quick(), **USER})
        assert not r["success"] and "not known yet" in r["msg"] and "environment open" in r["msg"]
        # Opening the environment once makes them known, durably.
        await open_env(client)
        assert (await client.request("queue_item_add", {"item": quick(), **USER}))["success"]


async def test_environment_update_reads_the_namespace_again(client: Client) -> None:
    r = await client.request("environment_update")
    # The reference's reply, `task_uid` included.
    assert r == {"success": False, "msg": "RE Worker environment is not open", "task_uid": None}
    await open_env(client)
    r = await client.request("environment_update")
    assert r["success"] and r["task_uid"]
    # A foreground task, as in the reference: the manager is busy until it ends.
    await until(client, idle)
    assert "count" in (await client.request("plans_existing"))["plans_existing"]
    await add(client, quick(num=6, delay=0.25))
    await client.request("queue_start")
    await until(client, lambda st: st["re_state"] == "running")
    r = await client.request("environment_update")
    # The reference's text, which its clients match.
    assert not r["success"] and r["msg"] == (
        "Failed to start the task: RE Manager must be in idle state. "
        "Current state: 'executing_queue'"
    )
    await until(client, idle)


async def run_cli(url: str, prefix: str, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "qserver.cli",
        "-a",
        url,
        "--prefix",
        prefix,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


async def test_the_original_cli_commands_drive_execution(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with running_services(nats_server, tmp_path) as services:
        client = services.client
        assert client is not None
        url, prefix = services.nats.url, services.prefix
        code, out = await run_cli(url, prefix, "-c", "environment_open")
        assert code == 0, out
        await until(client, lambda st: st["worker_environment_exists"] and idle(st))
        code, out = await run_cli(url, prefix, "-c", "plans_allowed")
        assert code == 0 and '"count"' in out
        await add(client, quick(num=8, delay=0.25))
        assert (await run_cli(url, prefix, "-c", "queue_start"))[0] == 0
        await until(client, lambda st: st["re_state"] == "running")
        code, out = await run_cli(url, prefix, "-c", "re_pause", "-p", "immediate")
        assert code == 0, out
        await until(client, lambda st: st["manager_state"] == "paused")
        code, out = await run_cli(url, prefix, "re", "runs")
        assert code == 0 and '"run_list"' in out
        assert (await run_cli(url, prefix, "-c", "re_abort"))[0] == 0
        st = await until(client, lambda st: idle(st) and st["items_in_history"] == 1)
        assert st["items_in_queue"] == 1
        code, out = await run_cli(url, prefix, "-c", "environment_close")
        assert code == 0, out
        code, out = await run_cli(url, prefix, "-c", "re_resume")
        assert code == 2 and "not paused" in out


async def test_an_environment_killed_from_outside_while_opening_fails_the_open_and_says_so(
    services: Services, client: Client
) -> None:
    """A SIGKILL from outside is reported as what it is, never hidden by a second start.

    The worker once started such an environment once more, for a kill nobody could explain;
    the kill was the worker's own, at its stop (ADR 14).
    """
    console: list[str] = []

    async def collect(msg: Msg) -> None:
        console.append(msg.data.decode())

    await client.nc.subscribe(client.subjects.console_event, cb=collect)
    r = await client.request("environment_open", timeout=5)
    assert r == {"success": True, "msg": ""}  # answered at once, as the reference (ADR 17)
    worker = psutil.Process(services.procs["worker"].pid)
    async with asyncio.timeout(30):
        while not worker.children():
            await asyncio.sleep(0.01)
    (env,) = worker.children()
    os.kill(env.pid, signal.SIGKILL)
    st = await until(client, lambda st: not st["worker_environment_exists"] and idle(st))
    assert st["worker_environment_state"] == "closed"
    async with asyncio.timeout(30):
        while not any("Error occurred while opening" in line for line in console):
            await asyncio.sleep(0.05)
    assert any(
        "The environment process exited while opening (killed by signal 9)" in line
        for line in console
    ), console
    assert worker.children() == []
    log = (services.log_dir / "worker.log").read_text()
    assert "ended (killed by signal 9, not by this service)" in log
    await open_env(client)  # and it opens again


async def test_a_no_environment_state_sent_before_the_open_does_not_fail_it(
    services: Services, client: Client
) -> None:
    """Issue 10, point 10: the first open after a stack restart once failed at once ("The
    environment process exited") while the environment came up 5 s later. The worker says
    "no environment" once a second until it starts one; such a state sent before the open
    (a heartbeat, or the reply to the queue's start-up question) reached the queue service
    while it was opening, and was taken for the new environment's exit. It is replayed here
    at that moment: it is older than the states already seen (the worker numbers them), so
    it changes nothing."""
    reply = await client.nc.request(client.subjects.worker_cmd("state"), b"", timeout=10)
    stale = msgspec.json.decode(reply.data, type=WorkerState)
    assert not stale.env_exists
    states: list[tuple[str, bool]] = []

    async def on_status(msg: Msg) -> None:
        st = msgspec.json.decode(msg.data)
        states.append((st["manager_state"], st["worker_environment_exists"]))

    await client.nc.subscribe(client.subjects.status_event, cb=on_status)
    r = await client.request("environment_open", timeout=5)
    assert r == {"success": True, "msg": ""}, r
    await until(client, lambda st: st["manager_state"] == "creating_environment")
    n = len(states)
    await client.nc.publish(client.subjects.worker_state, msgspec.json.encode(stale))
    st = await until(client, lambda st: st["worker_environment_exists"] and idle(st))
    # It never looked closed meanwhile (which would end a client's wait for idle).
    assert ("idle", False) not in states[n:], states
    assert st["re_state"] == "idle"
