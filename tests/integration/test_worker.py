"""The worker service and its environment process, driven over NATS as the queue service does."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from qserver.protocol.subjects import Subjects
from qserver.protocol.worker import (
    CmdReply,
    ExistingLists,
    OpenRequest,
    PauseRequest,
    PlanResult,
    RunPlan,
    RunsReply,
    RunsRequest,
    StartupConfig,
    WorkerState,
)
from services.stack.natsserver import NatsServer
from services.worker.messages import EnvStatus
from tests.conftest import unique_prefix

T = 30.0  # the bound of every wait (generous: the suite runs on busy machines)


class Worker:
    """A worker service process and a client that watches what it and its environment say."""

    def __init__(
        self, nats_server: NatsServer, log: Path, prefix: str | None = None, *extra: str
    ) -> None:
        self.url = nats_server.url
        self.subjects = Subjects(prefix or unique_prefix())
        self.log = log
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.nc: NATS | None = None
        self.worker = WorkerState()
        self.env: EnvStatus | None = None
        self.console: list[dict[str, Any]] = []
        self._changed = asyncio.Event()

    def start(self) -> None:
        argv = [sys.executable, "-m", "services.worker", "--nats-url", self.url]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [*argv, "--prefix", self.subjects.prefix, *self.extra],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    async def connect(self) -> None:
        self.nc = nc = await nats.connect(self.url)
        s = self.subjects
        await nc.subscribe(s.worker_state, cb=self._on_worker)
        await nc.subscribe(s.env_state, cb=self._on_env)
        await nc.subscribe(s.console_event, cb=self._on_console)
        deadline = time.monotonic() + T
        while True:  # ready when it answers
            try:
                reply = await nc.request(s.worker_cmd("state"), b"", timeout=0.5)
                self.worker = msgspec.json.decode(reply.data, type=WorkerState)
                return
            except nats.errors.Error:
                assert self.proc is not None and self.proc.poll() is None, self.log_tail()
                assert time.monotonic() < deadline, f"worker not ready:\n{self.log_tail()}"
                await asyncio.sleep(0.05)

    async def _on_worker(self, msg: Msg) -> None:
        with contextlib.suppress(msgspec.DecodeError):
            self.worker = msgspec.json.decode(msg.data, type=WorkerState)
            self._changed.set()

    async def _on_env(self, msg: Msg) -> None:
        with contextlib.suppress(msgspec.DecodeError):
            self.env = msgspec.json.decode(msg.data, type=EnvStatus)
            self._changed.set()

    async def _on_console(self, msg: Msg) -> None:
        self.console.append(json.loads(msg.data))
        self._changed.set()

    async def until(self, cond: Callable[[], bool], what: str, timeout: float = T) -> None:
        async def wait() -> None:
            while not cond():
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}:\n{self.log_tail()}") from None

    async def cmd(self, subject: str, body: msgspec.Struct | None = None) -> dict[str, Any]:
        assert self.nc is not None
        data = msgspec.json.encode(body) if body is not None else b""
        reply = await self.nc.request(subject, data, timeout=T)
        return json.loads(reply.data)  # type: ignore[no-any-return]

    async def worker_cmd(self, cmd: str, body: msgspec.Struct | None = None) -> dict[str, Any]:
        return await self.cmd(self.subjects.worker_cmd(cmd), body)

    async def env_cmd(self, cmd: str, body: msgspec.Struct | None = None) -> dict[str, Any]:
        return await self.cmd(self.subjects.env_cmd(cmd), body)

    async def results(self) -> AsyncIterator[PlanResult]:
        assert self.nc is not None
        sub = await self.nc.jetstream().subscribe(
            self.subjects.results, stream=self.subjects.results_stream, ordered_consumer=True
        )
        while True:
            msg = await sub.next_msg(timeout=T)
            yield msgspec.json.decode(msg.data, type=PlanResult)

    async def open(self, startup: StartupConfig | None = None) -> float:
        """Open an environment, wait until it is idle; the seconds it took."""
        t0 = time.perf_counter()
        r = await self.worker_cmd("open", OpenRequest(startup=startup or StartupConfig()))
        assert r == {"success": True, "msg": ""}
        await self.until(lambda: self.idle(), "environment idle")
        return time.perf_counter() - t0

    def idle(self) -> bool:
        env = self.worker.env
        return self.worker.env_exists and env is not None and env.env_state == "idle"

    async def run(self, name: str, *args: Any, **kwargs: Any) -> str:
        uid = str(uuid.uuid4())
        item = {"name": name, "args": list(args), "kwargs": kwargs, "item_uid": uid, "user": "t"}
        r = await self.env_cmd("run", RunPlan(item=item))
        assert r == {"success": True, "msg": ""}, r
        return uid

    async def running(self, uid: str) -> None:
        await self.until(
            lambda: (
                self.env is not None
                and self.env.re_state == "running"
                and self.env.running_item_uid == uid
                and len(self.env.run_list) > 0
            ),
            "plan running",
        )

    async def paused(self, uid: str) -> None:
        await self.until(
            lambda: (
                self.env is not None
                and self.env.re_state == "paused"
                and self.env.env_state == "idle"
                and self.env.running_item_uid == uid
            ),
            "plan paused",
        )

    def log_tail(self, n: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        return ""

    async def stop(self) -> None:
        if self.nc is not None:
            await self.nc.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.asynccontextmanager
async def running_worker(nats_server: NatsServer, log: Path) -> AsyncIterator[Worker]:
    w = Worker(nats_server, log)
    w.start()
    try:
        await w.connect()
        yield w
    finally:
        await w.stop()


@pytest.fixture(scope="module")
async def env(
    nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Worker, AsyncIterator[PlanResult]]]:
    """One worker with an open environment of the sim profile, shared by the plan tests."""
    async with running_worker(nats_server, tmp_path_factory.mktemp("w") / "worker.log") as w:
        seconds = await w.open()
        print(f"environment open took {seconds:.2f} s")  # a figure, not a bound: busy machines
        yield w, w.results()


async def test_open_stores_the_lists_in_the_object_store(env: Any) -> None:
    w, _ = env
    assert w.nc is not None
    store = await w.nc.jetstream().object_store(w.subjects.lists_bucket)
    lists = msgspec.json.decode((await store.get("existing")).data, type=ExistingLists)
    assert {"count", "scan", "mv", "long_count"} <= set(lists.plans_existing)
    assert {"det1", "motor"} <= set(lists.devices_existing)
    assert lists.uid == w.worker.env.lists_uid
    assert w.worker.env.re_state == "idle"


async def test_count_completes_with_its_run(env: Any) -> None:
    w, results = env
    uid = await w.run("count", ["det1", "det2"], num=2)
    res = await anext(results)
    assert (res.item_uid, res.result.exit_status, res.result.msg) == (uid, "completed", "")
    assert len(res.result.run_uids) == 1
    assert len(res.result.scan_ids) == 1
    assert res.result.time_start <= res.result.time_stop
    assert res.env_uid == w.worker.env_uid
    await w.until(lambda: w.env.running_item_uid is None and w.env.run_list == [], "idle")
    # The reference worker's lines (the item's uid is in the queue service's "Starting the plan").
    said = ("Starting a plan 'count'.", "The plan was exited. Plan state: completed")
    await w.until(lambda: all(any(t in c["msg"] for c in w.console) for t in said), "console lines")


async def test_bad_device_name_fails_the_plan(env: Any) -> None:
    w, results = env
    uid = await w.run("count", ["nodev"])
    res = await anext(results)
    assert (res.item_uid, res.result.exit_status) == (uid, "failed")
    assert res.result.msg == "Plan failed: 'str' object has no attribute 'name'"
    assert "AttributeError" in res.result.traceback


async def test_plan_that_raises_and_unknown_plan_fail(env: Any) -> None:
    w, results = env
    await w.run("sim_fail", msg="boom")
    res = await anext(results)
    assert (res.result.exit_status, res.result.msg) == ("failed", "Plan failed: boom")
    await w.run("no_such_plan")
    res = await anext(results)
    assert res.result.msg == "Plan failed: Plan 'no_such_plan' is not in the list of existing plans"


async def test_control_calls_are_refused_when_idle(env: Any) -> None:
    w, _ = env
    r = await w.env_cmd("pause", PauseRequest(option="immediate"))
    assert r == {
        "success": False,
        "msg": "Run engine can be paused only in 'running' state. Current state: 'idle'",
    }
    r = await w.env_cmd("resume")
    assert r["success"] is False and "not paused" in r["msg"]
    r = await w.worker_cmd("open")
    assert r == {"success": False, "msg": "RE Worker environment already exists."}


@pytest.mark.parametrize("option", ["immediate", "deferred"])
async def test_pause_then_resume_completes(env: Any, option: str) -> None:
    w, results = env
    uid = await w.run("long_count", ["det1"], num=8, delay=0.1)
    await w.running(uid)
    r = await w.env_cmd("pause", PauseRequest(option=option))  # type: ignore[arg-type]
    assert r["success"], r
    await w.paused(uid)
    runs = msgspec.json.decode(
        msgspec.json.encode(await w.env_cmd("runs")), type=RunsReply
    ).run_list
    assert len(runs) == 1 and runs[0].is_open
    assert (await w.env_cmd("resume"))["success"]
    res = await anext(results)
    assert (res.item_uid, res.result.exit_status) == (uid, "completed")
    assert res.result.run_uids == [runs[0].uid]


@pytest.mark.parametrize(
    ("action", "status"), [("stop", "stopped"), ("abort", "aborted"), ("halt", "halted")]
)
async def test_stop_abort_halt_after_pause(env: Any, action: str, status: str) -> None:
    w, results = env
    uid = await w.run("long_count", ["det1"], num=50, delay=0.1)
    await w.running(uid)
    assert (await w.env_cmd("pause", PauseRequest(option="immediate")))["success"]
    await w.paused(uid)
    assert (await w.env_cmd(action))["success"]
    res = await anext(results)
    assert (res.item_uid, res.result.exit_status, res.result.msg) == (uid, status, "")
    assert len(res.result.run_uids) == 1
    await w.until(lambda: w.env.re_state == "idle" and w.env.running_item_uid is None, "idle")


async def test_runs_while_running(env: Any) -> None:
    w, results = env
    uid = await w.run("long_count", ["det1"], num=5, delay=0.1)
    await w.running(uid)
    r = await w.env_cmd("runs")
    assert r["success"] and len(r["run_list"]) == 1 and r["run_list"][0]["is_open"] is True
    res = await anext(results)
    assert res.result.run_uids == [r["run_list"][0]["uid"]]
    r = await w.env_cmd("runs")
    assert r["run_list"] == []


async def test_state_update_and_runs_replies(env: Any) -> None:
    w, _ = env
    r = await w.env_cmd("state")
    assert r["env_state"] == "idle" and "msg" in r
    assert CmdReply(**(await w.env_cmd("update"))).success
    await w.until(lambda: w.env.lists_uid != r["lists_uid"], "new lists uid")
    r = await w.env_cmd("runs", RunsRequest(option="closed"))
    assert r["success"] and r["run_list"] == []


async def test_an_idle_environments_worker_says_its_state_once_per_environment_event(
    env: Any,
) -> None:
    """At idle the environment says its state about once a second and the worker republishes
    it; the worker's own heartbeat must not add one just before each of those. Before, it
    fired a hair earlier than every environment event: two worker states per second."""
    w, _ = env
    assert w.nc is not None
    await w.until(lambda: w.env.running_item_uid is None and w.env.env_state == "idle", "idle")
    seen = {"env": 0, "worker": 0}
    enough = asyncio.Event()

    def count(kind: str) -> Callable[[Msg], Awaitable[None]]:
        async def on(msg: Msg) -> None:
            seen[kind] += 1
            if seen["env"] >= 8:
                enough.set()

        return on

    subs = [
        await w.nc.subscribe(w.subjects.env_state, cb=count("env")),
        await w.nc.subscribe(w.subjects.worker_state, cb=count("worker")),
    ]
    try:
        await asyncio.wait_for(enough.wait(), T)
    finally:
        for sub in subs:
            await sub.unsubscribe()
    # One per environment event, with room for a few heartbeats of a busy machine's delays.
    assert seen["worker"] <= 1.5 * seen["env"], seen


async def test_close_ends_the_environment(nats_server: NatsServer, tmp_path: Path) -> None:
    async with running_worker(nats_server, tmp_path / "worker.log") as w:
        r = await w.worker_cmd("close")
        assert r == {"success": False, "msg": "RE Worker environment does not exist."}
        await w.open()
        pid = w.worker.env_pid
        assert (await w.worker_cmd("close")) == {"success": True, "msg": ""}
        await w.until(lambda: not w.worker.env_exists, "environment gone")
        assert w.worker.last_error == ""
        assert pid is not None and not _alive(pid)


async def test_dead_environment_fails_its_running_item(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """Destroy, and a SIGKILL from outside, each fail the running item at once.

    The log names who killed each environment, the stop of the worker included: its own
    kills, unnamed, were once read as an unexplained SIGKILL (ADR 14).
    """
    async with running_worker(nats_server, tmp_path / "worker.log") as w:
        results = w.results()
        for how in ("destroy", "sigkill"):
            await w.open()
            uid = await w.run("long_count", ["det1"], num=100, delay=0.1)
            await w.running(uid)
            t0 = time.perf_counter()
            if how == "destroy":
                assert (await w.worker_cmd("destroy")) == {"success": True, "msg": ""}
            else:
                assert w.worker.env_pid is not None
                os.kill(w.worker.env_pid, signal.SIGKILL)
            await w.until(lambda: not w.worker.env_exists, "environment gone", timeout=1.0)
            assert time.perf_counter() - t0 < 1.0
            res = await anext(results)
            assert (res.item_uid, res.result.exit_status) == (uid, "failed")
            assert res.result.msg == (
                "The environment process died (killed by signal 9) while the plan was running"
            )
            assert len(res.result.run_uids) == 1
        assert (await w.worker_cmd("destroy"))["msg"] == "RE environment does not exist"
        await w.open()
        await w.stop()
        ended = re.findall(r"environment \S+ ended \((.*)\)", w.log.read_text())
        assert ended == [
            "killed by signal 9, by this service: destroy",
            "killed by signal 9, not by this service",
            "killed by signal 9, by this service: stop",
        ]


async def test_failing_startup_code_reports_its_traceback(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("x = 1\nraise ValueError('broken startup')\n")
    no_re = tmp_path / "no_re.py"
    no_re.write_text("from ophyd.sim import det1\n")
    async with running_worker(nats_server, tmp_path / "worker.log") as w:
        for script, error in [
            (broken, "Error in startup code: ValueError: broken startup"),
            (no_re, "Startup code did not create a RunEngine named RE"),
        ]:
            r = await w.worker_cmd(
                "open", OpenRequest(startup=StartupConfig(startup_script=str(script)))
            )
            assert r["success"]
            await w.until(
                lambda e=error: not w.worker.env_exists and w.worker.last_error == e,  # type: ignore[misc]
                "the failure",
            )
            assert "Traceback" in w.worker.last_traceback
        state = await w.worker_cmd("state")
        assert state["env_exists"] is False
        await w.open()  # the worker is still usable


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (not reaped yet) is dead for our purposes.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    return False
