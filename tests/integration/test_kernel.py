"""Kernel mode (ADR 20): the environment in an IPython kernel that a console attaches to.

The console is the real `jupyter console --existing <connection file>` (jupyter_console,
built on jupyter_client), run as a user runs it, typing into its prompt.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import sim_profile
from qserver.client import Client
from services.stack.natsserver import NatsServer
from tests.conftest import USER, Services, running_services
from tests.integration.gateway_support import gateway_for
from tests.integration.test_cli import ok as cli
from tests.integration.test_execution import add, idle, open_env, quick, until
from tests.integration.test_stack import Stacks

# A plan of the startup code that reads what the kernel's user set, and a slow one.
KERNEL_PROFILE = '''
import time as _time


def kernel_echo():
    """Reads `kernel_value`, set by a command typed in the kernel; leaves `echoed` for it."""
    global echoed
    echoed = kernel_value
    yield from count([det1], md={"kernel_value": kernel_value})


def kernel_slow(seconds=1.0):
    """Holds the RunEngine for a while (`time.sleep` between checkpoints)."""
    for _ in range(int(seconds * 10)):
        yield from bps.checkpoint()
        _time.sleep(0.1)


def kernel_wait(seconds=8.0):
    """Runs until a command typed in the kernel sets `release_plan`, or for `seconds`."""
    global saw_release
    saw_release = False
    deadline = _time.monotonic() + seconds
    while _time.monotonic() < deadline and not saw_release:
        saw_release = bool(globals().get("release_plan"))
        yield from bps.checkpoint()
        _time.sleep(0.1)
'''


# Cells that run until interrupted (or for `n` tenths of a second).
def sleeping(n: int) -> str:
    return f"import time\nfor _ in range({n}): time.sleep(0.1)\n\n"


def holding(flag: Path) -> str:
    """Cells that hold the kernel until `flag` exists (at most 5 min), a condition and not a
    time: on a busy machine what the test does meanwhile may take longer than any fixed hold.
    The last cell prints 'holding' as it starts (built from parts, so that the console's echo
    of the typed line does not show it). The console takes each line as a cell, so each is a
    complete statement."""
    return (
        "import os, time\n"
        "t0 = time.monotonic()\n"
        "_held = print('hol' + 'ding', flush=True) or [time.sleep(0.05) for _ in iter(lambda: "
        f"os.path.exists({str(flag)!r}) or time.monotonic() - t0 > 300, True)]\n"
    )


def kernel_profile(tmp_path: Path) -> Path:
    startup = tmp_path / "startup"
    startup.mkdir()
    for f in sim_profile.STARTUP_DIR.glob("*.py"):
        if f.name != "__init__.py":
            shutil.copy(f, startup / f.name)
    (startup / "90-kernel-test.py").write_text(KERNEL_PROFILE)
    return startup


@contextlib.asynccontextmanager
async def kernel_services(
    nats: NatsServer, tmp_path: Path, kernel: bool = True
) -> AsyncIterator[Services]:
    worker = ["--startup-dir", str(kernel_profile(tmp_path))]
    if kernel:
        worker += ["--use-ipython-kernel", "--ipython-dir", str(tmp_path / "kernel")]
    async with running_services(nats, tmp_path / "logs", {"worker": worker}) as services:
        yield services


def console_args(connection_file: Path) -> list[str]:
    # --simple-prompt reads plain lines from stdin: what the user types, one per line.
    return [
        sys.executable,
        "-m",
        "jupyter_console",
        "--existing",
        str(connection_file),
        "--simple-prompt",
    ]


def console(connection_file: Path, typed: str, timeout: float = 120) -> str:
    """`jupyter console --existing FILE`, typing `typed`, then leaving; what it showed."""
    p = subprocess.run(
        console_args(connection_file),
        input=typed,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "keeping kernel alive" in p.stdout  # leaving a console does not stop the kernel
    return p.stdout + p.stderr  # a cell's error goes to stderr


def _stop_console(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        p.kill()
        p.wait()
    for pipe in (p.stdin, p.stdout):
        if pipe is not None:
            pipe.close()


class Console:
    """`jupyter console --existing FILE`, typed into line by line while the test goes on."""

    def __init__(self, connection_file: Path) -> None:
        self.p = subprocess.Popen(
            console_args(connection_file),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.shown = b""
        # A test that fails before `leave` leaves the console behind: stopped and its pipes
        # closed when it is collected, so no ResourceWarning lands in a later test.
        weakref.finalize(self, _stop_console, self.p)

    def _prompt(self) -> None:
        assert self.p.stdout is not None
        while not self.shown.rstrip(b" ").endswith(b"]:"):
            c = self.p.stdout.read(1)
            assert c, self.shown.decode(errors="replace")
            self.shown += c

    async def prompt(self) -> None:
        """Until it shows its prompt: attached, the kernel answered, waiting for a line."""
        await asyncio.to_thread(self._prompt)

    def _shows(self, text: bytes) -> None:
        assert self.p.stdout is not None
        while text not in self.shown:
            c = self.p.stdout.read(1)
            assert c, self.shown.decode(errors="replace")
            self.shown += c

    async def shows(self, text: bytes) -> None:
        """Until its output shows `text` (for `holding`: the holding cell runs; the kernel
        is busy between the cells before it only now and then)."""
        await asyncio.to_thread(self._shows, text)

    def type(self, line: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(line.encode())
        self.p.stdin.flush()

    async def leave(self) -> str:
        """Ctrl-D after what was typed: it runs it, then leaves; what it showed."""
        assert self.p.stdin is not None
        self.p.stdin.close()
        assert self.p.stdout is not None
        out = await asyncio.to_thread(self.p.stdout.read)
        await asyncio.to_thread(self.p.wait, 120)
        self.p.stdout.close()
        text = (self.shown + out).decode(errors="replace")
        assert self.p.returncode == 0, text
        return text


async def connection_info(client: Client) -> dict[str, Any]:
    r = await client.request("config_get")
    assert r["success"], r
    return r["config"]["ip_connect_info"]  # type: ignore[no-any-return]


async def connection_file(client: Client, tmp_path: Path) -> Path:
    """What a scientist does with `config_get`: save its `ip_connect_info` as a file."""
    path = tmp_path / "from-config-get.json"
    path.write_text(json.dumps(await connection_info(client)))
    path.chmod(0o600)
    return path


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"ApiKey {key}"}


def kernel_status(st: dict[str, Any]) -> tuple[Any, Any]:
    return st["ip_kernel_state"], st["ip_kernel_captured"]


@pytest.mark.timeout(240)
async def test_a_console_and_the_queue_share_the_kernels_namespace(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with kernel_services(nats_server, tmp_path) as services:
        client = services.client
        assert client is not None
        st = await client.request("status")
        assert kernel_status(st) == (None, None)
        assert (await client.request("config_get"))["config"] == {"ip_connect_info": {}}
        st = await open_env(client)
        assert kernel_status(st) == ("idle", False)

        info_file = await connection_file(client, tmp_path)
        info = json.loads(info_file.read_text())
        assert (await cli(services, "config"))["config"] == {"ip_connect_info": info}
        assert info["ip"] == "127.0.0.1" and info["transport"] == "tcp" and info["key"]
        # The kernel's own connection file: the user's alone, the same as config_get's.
        files = list((tmp_path / "kernel").glob("kernel-*.json"))
        assert len(files) == 1
        assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "kernel").stat().st_mode) & 0o777 == 0o700
        assert {k: v for k, v in json.loads(files[0].read_text()).items() if k in info} == info

        shown = await asyncio.to_thread(
            console, info_file, "kernel_value = 42\nprint('seen:', RE.state, 'det1' in dir())\n"
        )
        assert "seen: idle True" in shown

        # The queue's plan sees what the kernel set, and leaves what the kernel then sees.
        assert (await client.request("environment_update"))["success"]
        await until(client, idle)
        await add(client, {"item_type": "plan", "name": "kernel_echo"})
        assert (await client.request("queue_start"))["success"]
        st = await until(client, lambda s: idle(s) and s["items_in_queue"] == 0)
        # The manager is idle only once the kernel is released, as in the reference.
        assert kernel_status(st) == ("idle", False)
        hist = (await client.request("history_get"))["items"]
        assert hist[-1]["result"]["exit_status"] == "completed", hist[-1]

        shown = await asyncio.to_thread(
            console, files[0], "print('echoed:', echoed, RE.md['scan_id'] > 0)\n"
        )
        assert "echoed: 42 True" in shown, shown + services.logs()

        assert (await client.request("environment_close"))["success"]
        st = await until(client, lambda s: not s["worker_environment_exists"])
        assert kernel_status(st) == (None, None)
        assert (await client.request("config_get"))["config"] == {"ip_connect_info": {}}
        # Removed before the environment says it is closed: no stale key is left behind.
        assert not list((tmp_path / "kernel").glob("kernel-*.json"))


@pytest.mark.timeout(240)
async def test_a_command_typed_in_the_kernel_blocks_the_queue_and_a_plan_blocks_the_kernel(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with kernel_services(nats_server, tmp_path) as services:
        client = services.client
        assert client is not None
        await open_env(client)
        info_file = await connection_file(client, tmp_path)
        await add(client, quick())

        typing = Console(info_file)
        await typing.prompt()
        release = tmp_path / "release-typed"
        typing.type(holding(release) + "print('typed done')\n")
        await typing.shows(b"holding")
        st = await until(client, lambda s: s["ip_kernel_state"] == "busy")
        assert kernel_status(st) == ("busy", False) and idle(st)
        # The reference's refusals, and nothing changed in the queue.
        r = await client.request("queue_start")
        assert r == {"success": False, "msg": "IPython kernel (RE Worker) is busy."}
        r = await client.request("queue_item_execute", {"item": quick(), **USER})
        assert not r["success"] and "IPython kernel (RE Worker) is busy" in r["msg"]
        assert (await client.request("status"))["items_in_queue"] == 1
        release.touch()
        assert "typed done" in await typing.leave()
        await until(client, lambda s: kernel_status(s) == ("idle", False))
        assert (await client.request("queue_start"))["success"]
        await until(client, lambda s: idle(s) and s["items_in_queue"] == 0)

        # A plan from the queue holds the kernel: a cell typed meanwhile waits for it. The
        # plan would end at once if the cell ran during it; it runs its full 8 s instead.
        typing = Console(info_file)
        await typing.prompt()  # attached while the kernel is idle
        await add(client, {"item_type": "plan", "name": "kernel_wait"})
        assert (await client.request("queue_start"))["success"]
        st = await until(client, lambda s: s["re_state"] == "running")
        assert kernel_status(st) == ("busy", True)
        assert st["manager_state"] == "executing_queue"
        typing.type("release_plan = True\nprint('RE is', RE.state, 'plan saw it:', saw_release)\n")
        assert "RE is idle plan saw it: False" in await typing.leave()
        hist = (await client.request("history_get"))["items"]
        assert [h["result"]["exit_status"] for h in hist] == ["completed", "completed"]


@pytest.mark.timeout(240)
async def test_kernel_interrupt_stops_a_command_typed_in_the_kernel(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with kernel_services(nats_server, tmp_path) as services:
        client = services.client
        assert client is not None
        await open_env(client)
        info_file = await connection_file(client, tmp_path)
        typing = Console(info_file)
        await typing.prompt()
        typing.type(sleeping(3000) + "print('after it')\n")
        await until(client, lambda s: s["ip_kernel_state"] == "busy")
        assert await cli(services, "kernel", "interrupt") == {"success": True, "msg": ""}
        out = await typing.leave()
        assert "KeyboardInterrupt" in out and "after it" in out
        st = await until(client, lambda s: kernel_status(s) == ("idle", False))
        assert idle(st)
        # The environment still runs plans afterwards.
        await add(client, quick())
        assert (await client.request("queue_start"))["success"]
        await until(client, lambda s: idle(s) and s["items_in_queue"] == 0)
        hist = (await client.request("history_get"))["items"]
        assert hist[-1]["result"]["exit_status"] == "completed"


@pytest.mark.timeout(240)
async def test_kernel_interrupt_of_a_plan_needs_interrupt_plan_and_pauses_it(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with kernel_services(nats_server, tmp_path) as services:
        client = services.client
        assert client is not None
        await open_env(client)
        await add(client, {"item_type": "plan", "name": "kernel_slow", "kwargs": {"seconds": 60}})
        assert (await client.request("queue_start"))["success"]
        st = await until(client, lambda s: s["re_state"] == "running")
        assert kernel_status(st) == ("busy", True)
        for params in ({}, {"interrupt_task": True}):
            r = await client.request("kernel_interrupt", params)
            assert r == {
                "success": False,
                "msg": "Failed to interrupt IPython kernel: Not allowed to interrupt running plan",
            }, r
        r = await cli(services, "kernel", "interrupt", "plan")
        assert r == {"success": True, "msg": ""}
        # bluesky's Ctrl-C: a deferred pause, at the plan's next checkpoint.
        st = await until(client, lambda s: s["manager_state"] == "paused")
        assert st["re_state"] == "paused" and kernel_status(st) == ("idle", False)
        assert (await client.request("re_stop"))["success"]
        st = await until(client, idle)
        hist = (await client.request("history_get"))["items"]
        assert hist[-1]["result"]["exit_status"] == "stopped"
        # A destroyed environment cannot remove its connection file: its worker does.
        assert list((tmp_path / "kernel").glob("kernel-*.json"))
        assert (await client.request("environment_destroy"))["success"]
        await until(client, lambda s: not s["worker_environment_exists"])
        assert not list((tmp_path / "kernel").glob("kernel-*.json"))


@pytest.mark.timeout(240)
async def test_a_paused_plan_resumed_from_the_kernel_is_recorded(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with kernel_services(nats_server, tmp_path) as services:
        client = services.client
        assert client is not None
        await open_env(client)
        info_file = await connection_file(client, tmp_path)
        await add(client, {"item_type": "plan", "name": "kernel_slow", "kwargs": {"seconds": 3}})
        await add(client, quick())
        assert (await client.request("queue_start"))["success"]
        await until(client, lambda s: s["re_state"] == "running")
        assert (await client.request("re_pause", {"option": "immediate"}))["success"]
        st = await until(client, lambda s: s["manager_state"] == "paused")
        assert kernel_status(st) == ("idle", False)

        shown = await asyncio.to_thread(console, info_file, "RE.resume()\nprint('resumed')\n")
        assert "resumed" in shown
        st = await until(client, lambda s: idle(s) and s["running_item_uid"] is None)
        # Run outside the queue: recorded as the reference does, not run again, queue stopped.
        hist = (await client.request("history_get"))["items"]
        assert hist[-1]["result"]["exit_status"] == "unknown"
        assert hist[-1]["result"]["msg"] == "The plan is completed outside RE Manager"
        assert st["items_in_queue"] == 1


async def test_kernel_mode_is_off_by_default(nats_server: NatsServer, tmp_path: Path) -> None:
    async with kernel_services(nats_server, tmp_path, kernel=False) as services:
        client = services.client
        assert client is not None
        st = await open_env(client)
        # The reference's values for its plain Python worker.
        assert kernel_status(st) == ("disabled", True)
        assert (await client.request("config_get")) == {
            "success": True,
            "msg": "",
            "config": {"ip_connect_info": {}},
        }
        r = await client.request("kernel_interrupt")
        assert not r["success"]
        assert "RE Manager is not in IPython mode: IPython kernel is not used" in r["msg"]
        assert not (tmp_path / "kernel").exists()
        assert os.environ.get("QSERVER_USE_IPYTHON_KERNEL", "") in ("", "0", "OFF")


async def test_over_http_the_kernels_key_goes_only_to_who_may_run_code(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    keys = [
        {"key": "ExpertKey1", "user": "erin", "roles": ["expert"]},
        {"key": "ObserverKey1", "user": "olga", "roles": ["observer"]},
    ]
    config = tmp_path / "gateway.yml"
    config.write_text(json.dumps({"api_keys": keys}))  # JSON is YAML
    async with (
        kernel_services(nats_server, tmp_path) as services,
        gateway_for(services, "--http-config", str(config)) as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=30) as http,
    ):
        client = services.client
        assert client is not None
        await open_env(client)
        over_nats = (await client.request("config_get"))["config"]["ip_connect_info"]
        expert = (await http.get("/api/config/get", headers=auth("ExpertKey1"))).json()
        assert expert == {"success": True, "msg": "", "config": {"ip_connect_info": over_nats}}
        observer = (await http.get("/api/config/get", headers=auth("ObserverKey1"))).json()
        info = observer["config"]["ip_connect_info"]
        assert info["key"] == "" and info == {**over_nats, "key": ""}
        # kernel_interrupt: write:queue:control, the reference's scope.
        r = await http.post("/api/kernel/interrupt", headers=auth("ObserverKey1"))
        assert r.status_code == 401 and "Not enough permissions" in r.json()["detail"]
        r = await http.post(
            "/api/kernel/interrupt", headers=auth("ExpertKey1"), json={"interrupt_task": True}
        )
        assert r.json() == {"success": True, "msg": ""}
        r = await http.post("/api/kernel/interrupt", headers=auth("ExpertKey1"), json={"x": 1})
        assert r.status_code == 400 and "unknown field `x`" in r.json()["detail"], r.text


@pytest.mark.timeout(240)
async def test_the_kernel_outlives_its_worker_service_and_is_adopted(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with kernel_services(nats_server, tmp_path) as services:
        client = services.client
        assert client is not None
        await open_env(client)
        (conn,) = (tmp_path / "kernel").glob("kernel-*.json")
        assert "set" in await asyncio.to_thread(console, conn, "kernel_value = 7\nprint('set')\n")
        services.kill("worker")  # SIGKILL: no clean-up (ADR 12)
        services.start("worker")
        await services.wait_ready()
        # The same kernel (same connection file and key), its namespace intact.
        assert "value: 7" in await asyncio.to_thread(
            console, conn, "print('value:', kernel_value)\n"
        )
        await add(client, {"item_type": "plan", "name": "kernel_echo"})
        assert (await client.request("queue_start"))["success"]
        st = await until(client, lambda s: idle(s) and s["items_in_queue"] == 0)
        assert kernel_status(st) == ("idle", False)
        hist = (await client.request("history_get"))["items"]
        assert hist[-1]["result"]["exit_status"] == "completed", hist[-1]
        assert "echoed: 7" in await asyncio.to_thread(console, conn, "print('echoed:', echoed)\n")


@pytest.mark.timeout(240)
async def test_stack_up_with_use_ipython_kernel_puts_the_kernel_in_the_data_dir(
    stacks: Stacks,
) -> None:
    stack = stacks.start("--no-kafka", "--use-ipython-kernel=ON")
    info = await stack.wait_info()
    assert info["kernel_dir"] == str(stacks.data_dir / "kernel")
    async with await Client.connect(info["nats_url"], info["prefix"], timeout=5.0) as client:
        st = await open_env(client)
        assert kernel_status(st) == ("idle", False)
        (conn,) = (stacks.data_dir / "kernel").glob("kernel-*.json")
        assert json.loads(conn.read_text())["key"] == (await connection_info(client))["key"]
        shown = await asyncio.to_thread(console, conn, "print('in', type(RE).__name__)\n")
        assert "in RunEngine" in shown
