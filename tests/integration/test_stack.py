"""The embedded stack as a real process: it serves, restarts what crashes, and stops cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from qserver.client import Client, NoAnswer
from services.runtime.procs import SERVICES
from services.stack.embedded import (
    CRASH_BACKOFF,
    CRASH_LIMIT,
    Stack,
    StackConfig,
    StackNotRunning,
    read_stack_info,
)
from services.stack.natsserver import NatsServer, free_port
from tests.conftest import USER, plan, unique_prefix
from tests.integration.test_execution import open_env
from tests.integration.test_re_metadata_api import run_count

_counter = itertools.count()


class StackProcess:
    """`python -m services.stack.embedded` as a child of the test, its output in a file."""

    def __init__(self, data_dir: Path, out_file: Path, *args: str) -> None:
        self.data_dir = data_dir
        self.out_file = out_file
        argv = [sys.executable, "-m", "services.stack.embedded", "--data-dir", str(data_dir), *args]
        with open(out_file, "wb") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.out_file.read_text(errors="replace")

    async def wait_info(self, timeout: float = 60.0) -> dict[str, Any]:
        """stack.json, once the stack has written it (that is: once every service answers)."""
        info_file = self.data_dir / "stack.json"
        async with asyncio.timeout(timeout):
            while True:
                assert self.proc.poll() is None, f"the stack exited:\n{self.output()}"
                # A killed stack leaves its file behind: only ours counts.
                with contextlib.suppress(FileNotFoundError):
                    info: dict[str, Any] = json.loads(info_file.read_text())
                    if info["pid"] == self.pid:
                        return info
                await asyncio.sleep(0.05)

    async def wait_exit(self, timeout: float = 10.0) -> int:
        async with asyncio.timeout(timeout):
            while (code := self.proc.poll()) is None:
                await asyncio.sleep(0.05)
        return code

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def kill_all(self) -> None:
        """Cleanup after a failed test: no process of the stack may outlive it.

        The supervisor goes first: killed after its children, it could start one of them
        again in between (a busy run once left a nats-server and a Kafka broker behind,
        started at the test's teardown).
        """
        children = self.descendants()
        self.proc.kill()
        self.proc.wait()
        for p in children:  # one started after the listing dies with the supervisor
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()


class Stacks:
    """Starts stacks for one test and kills whatever is left at its end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.data_dir = tmp_path / "data"
        self.nats_port = free_port()
        self.started: list[StackProcess] = []

    def start(self, *args: str, own_nats: bool = True, catalog: bool = False) -> StackProcess:
        """A stack; without `catalog`, no Tiled server (it takes seconds to start)."""
        port_args = ("--nats-port", str(self.nats_port)) if own_nats else ()
        port_args += ("--http-port", str(free_port()))
        port_args += ("--zmq-port", str(free_port()), "--zmq-info-port", str(free_port()))
        if not catalog:
            port_args += ("--no-catalog",)
        out = self.tmp_path / f"stack-{next(_counter)}.out"
        stack = StackProcess(self.data_dir, out, *port_args, *args)
        self.started.append(stack)
        return stack

    def cleanup(self) -> None:
        for stack in self.started:
            if stack.proc.poll() is None:
                stack.kill_all()


async def answer(
    client: Client, method: str, params: dict[str, Any] | None = None, timeout: float = 30.0
) -> dict[str, Any]:
    """The reply to `method`, retried while its service is (re)starting."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                return await client.request(method, params, timeout=1.0)
            except NoAnswer:
                await asyncio.sleep(0.05)


async def add_item(client: Client) -> str:
    reply = await client.request("queue_item_add", {"item": plan("count", ["det1"]), **USER})
    assert reply["success"], reply
    uid: str = reply["item"]["item_uid"]
    return uid


async def queue_uids(client: Client) -> list[str]:
    reply = await answer(client, "queue_get")
    assert reply["success"], reply
    return [item["item_uid"] for item in reply["items"]]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        # As a server restarting on the port would bind: lingering TIME_WAIT entries do not count.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
    return True


def all_gone(pids: list[int]) -> bool:
    def gone(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    return all(gone(pid) for pid in pids)


async def test_stack_serves_and_restarts_a_killed_service(stacks: Stacks) -> None:
    stack = stacks.start()
    info = await stack.wait_info()
    assert set(info["services"]) == set(SERVICES)
    assert info["pid"] == stack.pid
    assert read_stack_info(stacks.data_dir) == info
    async with await Client.connect(info["nats_url"], info["prefix"], timeout=30.0) as client:
        assert (await client.request("status"))["manager_state"] == "idle"
        assert (await client.request("history_get", {"limit": 0}))["success"]
        uid = await add_item(client)

        old_pid = info["services"]["queue"]
        os.kill(old_pid, signal.SIGKILL)
        async with asyncio.timeout(10):
            while (info := read_stack_info(stacks.data_dir))["services"]["queue"] == old_pid:
                await asyncio.sleep(0.05)
        assert psutil.pid_exists(info["services"]["queue"])
        # The queue lives in JetStream, so the new process serves the same item.
        assert await queue_uids(client) == [uid]
    assert "queue service was killed by SIGKILL: restarted (restart 1" in stack.output()


async def test_stack_restarts_a_killed_worker_and_the_running_plan_goes_on(
    stacks: Stacks,
) -> None:
    stack = stacks.start("--no-kafka")
    info = await stack.wait_info()
    async with await Client.connect(info["nats_url"], info["prefix"], timeout=5.0) as client:
        assert (await client.request("environment_open", timeout=30))["success"]
        await client.wait_for(
            lambda st: st["worker_environment_exists"] and st["manager_state"] == "idle", 30
        )
        long = plan("count", ["det1"], num=30, delay=0.2)
        for item in (long, plan("count", ["det1"])):
            assert (await client.request("queue_item_add", {"item": item, **USER}))["success"]
        assert (await client.request("queue_start"))["success"]
        await client.wait_for(lambda st: st["re_state"] == "running", 30)
        os.kill(info["services"]["worker"], signal.SIGKILL)
        st = await client.wait_for(
            lambda st: st["items_in_history"] == 2 and st["manager_state"] == "idle", 90
        )
        assert st["worker_environment_exists"]
        items = (await client.request("history_get"))["items"]
        assert [it["result"]["exit_status"] for it in items] == ["completed", "completed"]
    assert "worker service was killed by SIGKILL: restarted" in stack.output()
    assert "adopted environment" in (stacks.data_dir / "logs" / "worker.log").read_text()


async def test_stack_restarts_a_killed_nats_server_on_the_same_store(stacks: Stacks) -> None:
    stack = stacks.start()
    info = await stack.wait_info()
    async with await Client.connect(info["nats_url"], info["prefix"], timeout=30.0) as client:
        uid = await add_item(client)
    old_pid = info["nats_pid"]
    os.kill(old_pid, signal.SIGKILL)
    async with asyncio.timeout(10):
        while (info := read_stack_info(stacks.data_dir))["nats_pid"] == old_pid:
            await asyncio.sleep(0.05)
    async with asyncio.timeout(10):
        while True:  # the restarted server may not listen yet when the pid changes
            with contextlib.suppress(NoAnswer):
                client = await Client.connect(info["nats_url"], info["prefix"], timeout=30.0)
                break
            await asyncio.sleep(0.05)
    async with client:
        assert await queue_uids(client) == [uid]
    assert "nats-server was killed by SIGKILL: restarting it" in stack.output()


async def test_sigterm_stops_everything_and_a_new_stack_keeps_the_queue(stacks: Stacks) -> None:
    stack = stacks.start()
    info = await stack.wait_info()
    async with await Client.connect(info["nats_url"], info["prefix"], timeout=30.0) as client:
        uid = await add_item(client)
    children = [p.pid for p in stack.descendants()]
    assert len(children) == len(SERVICES) + 2  # and nats-server and the Kafka broker

    stack.proc.send_signal(signal.SIGTERM)
    assert await stack.wait_exit(10) == 0, stack.output()
    assert all_gone(children)
    assert port_is_free(stacks.nats_port)
    assert not (stacks.data_dir / "stack.json").exists()
    with pytest.raises(StackNotRunning):
        read_stack_info(stacks.data_dir)

    again = stacks.start()
    info = await again.wait_info()
    async with await Client.connect(info["nats_url"], info["prefix"], timeout=30.0) as client:
        assert await queue_uids(client) == [uid]
    again.proc.send_signal(signal.SIGINT)
    assert await again.wait_exit(10) == 0, again.output()


async def test_scan_ids_increase_across_environment_opens_and_a_stack_restart(
    stacks: Stacks,
) -> None:
    """Issue 10's point 9 as a user meets it: a plan in each of two environment opens, the
    stack stopped and started again on its data dir, a plan again; the scan_ids only grow
    (`RE.md` is kept in the stack's state store, ADR 12), so `catalog[scan_id]` is one run."""

    stack = stacks.start("--no-kafka")
    info = await stack.wait_info()
    async with await Client.connect(info["nats_url"], info["prefix"], timeout=30.0) as client:
        for _ in range(2):
            await open_env(client)
            await run_count(client)
            assert (await client.request("environment_close", timeout=60))["success"]
            await client.wait_for(
                lambda st: not st["worker_environment_exists"] and st["manager_state"] == "idle",
                timeout=120,
            )
    stack.proc.send_signal(signal.SIGTERM)
    assert await stack.wait_exit(30) == 0, stack.output()

    again = stacks.start("--no-kafka")
    info = await again.wait_info()
    async with await Client.connect(info["nats_url"], info["prefix"], timeout=30.0) as client:
        await open_env(client)
        await run_count(client)
        records = (await client.request("history_get"))["items"]
    again.proc.send_signal(signal.SIGTERM)
    assert await again.wait_exit(30) == 0, again.output()
    assert [r["result"]["exit_status"] for r in records] == ["completed"] * 3
    ids = [s for r in records for s in r["result"]["scan_ids"]]
    assert len(ids) == 3 and ids == sorted(set(ids)), ids


async def test_a_second_stack_on_the_same_data_dir_is_refused(stacks: Stacks) -> None:
    first = stacks.start()
    info = await first.wait_info()
    second = stacks.start("--nats-port", str(free_port()))
    assert await second.wait_exit(10) == 1
    assert "already running" in second.output()
    assert str(info["pid"]) in second.output()
    assert first.proc.poll() is None
    assert read_stack_info(stacks.data_dir) == info


async def test_manager_stop_stops_the_whole_stack(stacks: Stacks) -> None:
    stack = stacks.start()
    info = await stack.wait_info()
    children = [p.pid for p in stack.descendants()]
    async with await Client.connect(info["nats_url"], info["prefix"], timeout=30.0) as client:
        assert (await client.request("manager_stop"))["success"]
    assert await stack.wait_exit(10) == 0, stack.output()
    assert all_gone(children)
    assert port_is_free(stacks.nats_port)


async def test_nats_url_mode_starts_only_the_services(
    stacks: Stacks, nats_server: NatsServer
) -> None:
    prefix = unique_prefix()
    stack = stacks.start("--nats-url", nats_server.url, "--prefix", prefix, own_nats=False)
    info = await stack.wait_info()
    assert info["nats_url"] == nats_server.url
    assert info["nats_pid"] is None
    assert sorted(p.pid for p in stack.descendants()) == sorted(info["services"].values())
    async with await Client.connect(nats_server.url, prefix, timeout=5.0) as client:
        assert (await client.request("status"))["manager_state"] == "idle"
    stack.proc.send_signal(signal.SIGTERM)
    assert await stack.wait_exit(10) == 0, stack.output()
    assert nats_server.running()


async def test_an_unreachable_nats_url_fails_with_a_clear_message(stacks: Stacks) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    stack = stacks.start("--nats-url", url, own_nats=False)
    assert await stack.wait_exit(10) == 1
    out = stack.output()
    assert f"cannot reach NATS at {url}" in out
    assert "Traceback" not in out


async def test_a_busy_nats_port_fails_fast_and_names_the_port(stacks: Stacks) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", stacks.nats_port))
        s.listen()
        stack = stacks.start()
        assert await stack.wait_exit(10) == 1
    out = stack.output()
    assert f"NATS port {stacks.nats_port} is already in use" in out
    assert "--nats-port" in out
    assert "Traceback" not in out


async def test_killing_the_stack_takes_its_children_along(stacks: Stacks) -> None:
    stack = stacks.start()
    info = await stack.wait_info()
    async with await Client.connect(info["nats_url"], info["prefix"], timeout=5.0) as client:
        # The environment too: it outlives a crashed worker, not a lost NATS with it (ADR 12).
        assert (await client.request("environment_open", timeout=30))["success"]
        await client.wait_for(lambda st: st["worker_environment_exists"], timeout=30)
    children = [p.pid for p in stack.descendants()]
    assert len(children) > len(SERVICES) + 1  # nats-server, the services, the environment
    stack.proc.kill()
    stack.proc.wait()
    async with asyncio.timeout(10):
        while not all_gone(children):
            await asyncio.sleep(0.05)
    # The kernel dropped the lock with the process: the stale stack.json does not count.
    with pytest.raises(StackNotRunning):
        read_stack_info(stacks.data_dir)
    again = stacks.start()
    await again.wait_info()
    again.proc.send_signal(signal.SIGTERM)
    assert await again.wait_exit(10) == 0, again.output()


def test_a_crash_loop_backs_off(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stack = Stack(StackConfig(data_dir=tmp_path))
    stack.procs["queue"] = FakeProcess("queue", tmp_path / "queue.log")  # type: ignore[assignment]
    for _ in range(CRASH_LIMIT):
        stack._on_exit("queue", 1)
    assert stack.procs["queue"].restarts == CRASH_LIMIT
    assert not stack.restart_due
    stack._on_exit("queue", 1)
    assert stack.procs["queue"].restarts == CRASH_LIMIT
    assert stack.restart_due["queue"] - time.monotonic() == pytest.approx(CRASH_BACKOFF, abs=0.5)
    assert f"restarting in {CRASH_BACKOFF:g} s" in capsys.readouterr().out


class FakeProcess:
    """Just enough of a ServiceProcess for the restart logic."""

    def __init__(self, name: str, log_file: Path) -> None:
        self.name = name
        self.log_file = log_file
        self.restarts = 0
        self.pid = 1

    def start(self) -> FakeProcess:
        return self


def test_read_stack_info_says_when_no_stack_runs(tmp_path: Path) -> None:
    with pytest.raises(StackNotRunning, match="no stack is running"):
        read_stack_info(tmp_path)


async def test_the_stack_publishes_documents_to_kafka_and_saves_runs_in_its_catalog(
    stacks: Stacks,
) -> None:
    import msgpack
    import msgpack_numpy

    from tests.integration.test_kafka import read_topic

    stack = stacks.start(catalog=True)
    info = await stack.wait_info(timeout=60)
    assert info["kafka_bootstrap"] and info["kafka_topic"] == "qs.bluesky.runengine.documents"
    assert info["tiled_url"].startswith("http://127.0.0.1:") and info["tiled_api_key"]
    assert info["tiled_catalog"] == "raw"
    async with await Client.connect(info["nats_url"], info["prefix"], timeout=30.0) as client:
        assert (await client.request("environment_open"))["success"]
        await client.wait_for(
            lambda st: st["worker_environment_exists"] and st["manager_state"] == "idle", 60
        )
        item = {"item_type": "plan", "name": "count", "args": [["det1"]], "kwargs": {"num": 2}}
        await client.request("queue_item_add", {"item": item, "user": "u", "user_group": "primary"})
        await client.request("queue_start")
        st = await client.wait_for(
            lambda st: st["items_in_history"] == 1 and st["manager_state"] == "idle", timeout=30
        )
        assert st["kafka_failed"] == st["docs_failed"] == 0
        item = (await client.request("history_get"))["items"][0]
        run_uid = item["result"]["run_uids"][0]
        deadline = time.monotonic() + 30
        while True:  # the history service saves the run from the stream into the catalog
            r = await client.request("history_runs", {"item_uid": item["item_uid"]})
            if r["runs"][0]["saved"]:
                break
            assert time.monotonic() < deadline, f"run not saved: {r}\n{stack.output()}"
            await asyncio.sleep(0.2)
    assert r["runs"][0]["url"].startswith(info["tiled_url"])
    msgs = await asyncio.to_thread(read_topic, info["kafka_bootstrap"], info["kafka_topic"], 5)
    docs = [msgpack.unpackb(m.value(), object_hook=msgpack_numpy.decode) for m in msgs]
    assert [name for name, _ in docs] == ["start", "descriptor", "event", "event", "stop"]
    assert docs[0][1]["uid"] == run_uid and {m.key() for m in msgs} == {run_uid.encode()}

    def read_catalog() -> tuple[str, list[float]]:
        from tiled.client import from_uri

        root = from_uri(info["tiled_url"], api_key=info["tiled_api_key"])
        try:
            run = root[info["tiled_catalog"]][run_uid]
            return run.metadata["start"]["plan_name"], run["primary"].read()["det1"].values.tolist()
        finally:
            root.context.close()

    plan_name, det1 = await asyncio.to_thread(read_catalog)
    assert plan_name == "count" and len(det1) == 2
    # Its Tiled has no live streams: the writer does not tell it that the run's writes ended.
    tiled_log = (stacks.data_dir / "logs" / "tiled.log").read_text(errors="replace")
    assert f"/api/v1/metadata/raw/{run_uid}" in tiled_log
    assert "/stream/close/" not in tiled_log
    # Without the key, the catalog is closed.
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{info['tiled_url']}/api/v1/metadata/raw", timeout=5)
    e.value.close()
    assert e.value.code == 401
