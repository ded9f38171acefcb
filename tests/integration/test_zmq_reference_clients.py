"""The reference's own clients, unchanged, against the 0MQ bridge in front of the services.

They run from venvs of their own (`make reference-clients`): `REManagerAPI()` (threads and
asyncio) through a session of status, queue, environment, plan and console; today's
`qserver` CLI; the first release's `qserver -c` commands of the original README;
`qserver-console-monitor`; and CurveZMQ with the public key in QSERVER_ZMQ_PUBLIC_KEY.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq

from qserver.client import Client
from tests.conftest import Services
from tests.integration.zmq_support import (
    REF_V001_VENV,
    REF_VENV,
    ROOT,
    Bridge,
    reference_env,
    reference_venv,
    running_bridge,
)

# Building the venvs, when `make test` has not, takes a few minutes.
pytestmark = pytest.mark.timeout(900)
WAIT = 120.0


@pytest.fixture(scope="module")
def ref_bin() -> Path:
    return reference_venv(REF_VENV)


@pytest.fixture(scope="module")
def v001_bin() -> Path:
    return reference_venv(REF_V001_VENV)


async def run(argv: list[str], env: dict[str, str], timeout: float = WAIT) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def wait_status(
    client: Client, pred: Callable[[dict[str, Any]], bool], timeout: float = WAIT
) -> dict[str, Any]:
    return await client.wait_for(pred, timeout)


def idle(st: dict[str, Any]) -> bool:
    return st["manager_state"] == "idle"


@pytest.mark.parametrize("library", ["threads", "async"])
async def test_remanagerapi_session_over_zmq(
    services: Services, ref_bin: Path, library: str
) -> None:
    async with running_bridge(services) as bridge:
        code, out, err = await run(
            [str(ref_bin / "python"), "tests/reference/zmq_session.py", library],
            reference_env(bridge),
            timeout=4 * WAIT,
        )
    assert code == 0, f"{err[-3000:]}\n--- bridge ---\n{bridge.log()[-2000:]}"
    seen = json.loads(out.splitlines()[-1])
    assert seen["state"] == "idle"
    assert seen["added_user"] == "Queue Server API User"  # the client's default, kept
    assert seen["queue"] == ["count"] and seen["allowed"] is True
    assert seen["env"] is True and seen["env_after_close"] is False
    assert seen["history"] == [["count", "completed", "Queue Server API User"]]
    assert "nvironment" in seen["console"], seen["console"][-2000:]
    client = services.client
    assert client is not None
    history = (await client.request("history_get"))["items"]
    assert [h["name"] for h in history] == ["count"]  # what NATS sees is what 0MQ did


async def cli(bin_dir: Path, bridge: Bridge, *args: str, **env: str) -> tuple[int, str]:
    """Today's `qserver` of bluesky-queueserver, its output and exit code."""
    code, out, err = await run([str(bin_dir / "qserver"), *args], reference_env(bridge, **env))
    return code, out + err


async def test_the_references_qserver_cli(services: Services, ref_bin: Path) -> None:
    client = services.client
    assert client is not None
    async with running_bridge(services) as bridge:
        steps: list[tuple[str, ...]] = [
            ("ping",),
            ("status",),
            ("allowed", "plans"),
            ("queue", "add", "plan", '{"name":"count","args":[["det1","det2"]]}'),
            (
                "queue",
                "add",
                "plan",
                "front",
                '{"name":"count","args":[["det1"]],"kwargs":{"num":2}}',
            ),
            ("queue", "get"),
            ("queue", "item", "move", "0", "back"),
            ("queue", "item", "remove", "-1"),
        ]
        for step in steps:
            code, out = await cli(ref_bin, bridge, *step)
            assert code == 0, (step, out[-2000:])
            assert "'success': False" not in out, (step, out[-2000:])
        code, out = await cli(ref_bin, bridge, "environment", "open")
        assert code == 0, out[-2000:]
        await wait_status(client, lambda st: idle(st) and st["worker_environment_exists"])
        code, out = await cli(ref_bin, bridge, "queue", "start")
        assert code == 0, out[-2000:]
        await wait_status(client, lambda st: idle(st) and st["items_in_queue"] == 0)
        code, out = await cli(ref_bin, bridge, "history", "get")
        assert code == 0 and "'exit_status': 'completed'" in out, out[-2000:]
        code, out = await cli(ref_bin, bridge, "environment", "close")
        assert code == 0, out[-2000:]
        await wait_status(client, lambda st: idle(st) and not st["worker_environment_exists"])
        # A refusal is exit code 2 (REQUEST_FAILED), as against the reference.
        code, out = await cli(ref_bin, bridge, "queue", "item", "remove", "5")
        assert code == 2 and "'success': False" in out, out[-2000:]


async def old_cli(bin_dir: Path, bridge: Bridge, *args: str) -> tuple[int, str]:
    """bluesky-queueserver 0.0.1's `qserver -c ...` with the bridge's address."""
    argv = [str(bin_dir / "qserver"), *args, "-a", bridge.control]
    code, out, err = await run(argv, reference_env(bridge))
    return code, out + err


async def test_the_original_readmes_qserver_c_commands(services: Services, v001_bin: Path) -> None:
    """The first release's CLI sends its own method names (`queue_plan_add`, `""` for ping)."""
    client = services.client
    assert client is not None
    count = '{"name":"count", "args":[["det1", "det2"]]}'
    slow = '{"name":"count", "args":[["det1", "det2"]], "kwargs":{"num":30, "delay":0.5}}'
    async with running_bridge(services) as bridge:

        async def ok(*cmd: str) -> str:
            code, out = await old_cli(v001_bin, bridge, "-c", *cmd)
            assert code == 0 and "MESSAGE" in out, (cmd, code, out[-2000:])
            assert "'success': False" not in out, (cmd, out[-2000:])
            return out

        await ok("ping")
        await ok("status")
        await ok("plans_allowed")
        await ok("devices_allowed")
        await ok("queue_plan_add", "-p", count)
        await ok(
            "queue_plan_add", "-p", '{"name":"scan", "args":[["det1", "det2"], "motor", -1, 1, 10]}'
        )
        await ok(
            "queue_plan_add",
            "-p",
            '{"name":"count", "args":[["det1", "det2"]], "kwargs":{"num":10, "delay":1}}',
        )
        await ok("queue_plan_add", "-p", "front", count)
        await ok("queue_plan_add", "-p", "back", count)
        await ok("queue_plan_add", "-p", "2", count)
        await ok("queue_plan_add", "-p", "-1", count)
        out = await ok("queue_get")
        assert out.count("'name': 'scan'") == 1
        assert len((await client.request("queue_get"))["items"]) == 7
        await ok("queue_plan_remove")
        await ok("queue_plan_remove", "-p", "front")
        await ok("queue_plan_remove", "-p", "-2")
        assert len((await client.request("queue_get"))["items"]) == 4
        await ok("queue_plan_get")
        await ok("queue_plan_get", "-p", "front")
        out = await ok("queue_plan_get", "-p", "-2")
        assert "'item_uid'" in out
        await ok("queue_clear")
        assert (await client.request("queue_get"))["items"] == []
        await ok("queue_plan_add", "-p", slow)
        await ok("queue_plan_add", "-p", slow)
        await ok("environment_open")
        await wait_status(client, lambda st: idle(st) and st["worker_environment_exists"])
        await ok("queue_start")
        await wait_status(client, lambda st: st["manager_state"] == "executing_queue")
        await ok("re_pause", "-p", "immediate")
        await wait_status(client, lambda st: st["manager_state"] == "paused")
        await ok("re_resume")
        await wait_status(client, lambda st: st["manager_state"] == "executing_queue")
        await ok("re_pause", "-p", "deferred")
        await wait_status(client, lambda st: st["manager_state"] == "paused")
        await ok("re_stop")
        await wait_status(client, idle)
        await ok("queue_start")
        await wait_status(client, lambda st: st["manager_state"] == "executing_queue")
        await ok("queue_stop")
        await ok("queue_stop_cancel")
        await ok("re_pause", "-p", "immediate")
        await wait_status(client, lambda st: st["manager_state"] == "paused")
        await ok("re_abort")
        await wait_status(client, idle)
        await ok("queue_start")
        await wait_status(client, lambda st: st["manager_state"] == "executing_queue")
        await ok("re_pause", "-p", "immediate")
        await wait_status(client, lambda st: st["manager_state"] == "paused")
        await ok("re_halt")
        await wait_status(client, idle)
        out = await ok("history_get")
        assert "'exit_status': 'stopped'" in out and "'exit_status': 'aborted'" in out
        await ok("history_clear")
        assert (await client.request("history_get"))["items"] == []
        await ok("environment_close")
        await wait_status(client, lambda st: idle(st) and not st["worker_environment_exists"])
        await ok("environment_open")
        await wait_status(client, lambda st: idle(st) and st["worker_environment_exists"])
        await ok("environment_destroy")
        await wait_status(client, lambda st: idle(st) and not st["worker_environment_exists"])
        # `monitor` pings once a second until stopped.
        proc = await asyncio.create_subprocess_exec(
            str(v001_bin / "qserver"),
            "-c",
            "monitor",
            "-a",
            bridge.control,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=reference_env(bridge),
        )
        assert proc.stdout is not None
        messages = 0
        async with asyncio.timeout(WAIT):
            while messages < 2:
                line = await proc.stdout.readline()
                messages += b"MESSAGE" in line
        proc.send_signal(signal.SIGINT)
        await proc.wait()
        # The manager stops: a reply, then the queue service exits.
        await ok("manager_stop", "-p", "safe_on")
        async with asyncio.timeout(WAIT):
            while services.procs["queue"].alive():
                await asyncio.sleep(0.1)
        assert services.procs["queue"].poll() == 0


async def test_the_console_monitor_prints_the_consoles_lines(
    services: Services, ref_bin: Path
) -> None:
    client = services.client
    assert client is not None
    async with running_bridge(services) as bridge:
        proc = await asyncio.create_subprocess_exec(
            str(ref_bin / "qserver-console-monitor"),
            env=reference_env(bridge),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            text = b""
            async with asyncio.timeout(WAIT):
                while b"nvironment" not in text:
                    # Opened (and closed) until the monitor's subscription has seen it.
                    r = await client.request("environment_open")
                    if r["success"]:
                        await wait_status(client, lambda st: idle(st))
                    try:
                        async with asyncio.timeout(5):
                            while b"nvironment" not in text:
                                text += await proc.stdout.read(1000)
                    except TimeoutError:
                        pass
                    await client.request("environment_close")
                    await wait_status(
                        client, lambda st: idle(st) and not st["worker_environment_exists"]
                    )
        finally:
            proc.send_signal(signal.SIGINT)
            await proc.wait()
        assert b"nvironment" in text


async def test_curve_with_the_references_clients(
    services: Services, ref_bin: Path, v001_bin: Path
) -> None:
    public, secret = (k.decode() for k in zmq.curve_keypair())
    env = {"QSERVER_ZMQ_PRIVATE_KEY_FOR_SERVER": secret}
    async with running_bridge(services, env=env) as bridge:
        code, out = await cli(ref_bin, bridge, "status", QSERVER_ZMQ_PUBLIC_KEY=public)
        assert code == 0 and "'manager_state': 'idle'" in out, out[-2000:]
        wrong = zmq.curve_keypair()[0].decode()
        code, out = await cli(ref_bin, bridge, "status", QSERVER_ZMQ_PUBLIC_KEY=wrong)
        assert code == 3 and "timeout" in out, out[-2000:]  # COMMUNICATION_ERROR
        code, out = await cli(ref_bin, bridge, "status")  # no key: no encryption
        assert code == 3, out[-2000:]
        code, out = await cli(ref_bin, bridge, "status", QSERVER_ZMQ_PUBLIC_KEY=public)
        assert code == 0, out[-2000:]
