"""A worker service that dies leaves its environment running: a restarted one adopts it, and
one left alone finishes its plan and closes itself (ADR 12)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
from nats.js.errors import KeyNotFoundError

from services.stack.natsserver import NatsServer
from services.worker.messages import RECORD_KEY, worker_bucket
from services.worker.pids import instance_process
from tests.conftest import report
from tests.integration.test_worker import T, Worker, _alive, running_worker


def pid(w: Worker) -> int:
    assert w.proc is not None
    return w.proc.pid


def owner_pid(w: Worker) -> int:
    """The pid of the worker that the environment says supervises it (as `w` saw last)."""
    return instance_process(w.env.owner)[1] if w.env is not None else 0


def _kill(w: Worker) -> None:
    assert w.proc is not None
    w.proc.kill()  # SIGKILL: no clean-up at all
    w.proc.wait()


async def _wait_dead(pid: int, timeout: float) -> float:
    """Seconds until `pid` is gone; fails after `timeout`."""
    t0 = time.monotonic()
    while _alive(pid):
        assert time.monotonic() - t0 < timeout, f"process {pid} still alive after {timeout} s"
        await asyncio.sleep(0.05)
    return time.monotonic() - t0


async def _wait_log(w: Worker, text: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in w.log.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"{text!r} not in the log:\n{w.log_tail()}"
        await asyncio.sleep(0.05)


@pytest.mark.timeout(180)
async def test_restarted_worker_adopts_the_environment_and_its_plan_completes_once(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with running_worker(nats_server, tmp_path / "worker1.log") as w1:
        await w1.open()
        env_uid, env_pid = w1.worker.env_uid, w1.worker.env_pid
        assert env_uid is not None and env_pid is not None
        results = w1.results()
        uid = await w1.run("long_count", ["det1"], num=100, delay=0.1)
        await w1.running(uid)
        _kill(w1)
        assert _alive(env_pid)  # no longer killed with its worker
        w2 = Worker(nats_server, tmp_path / "worker2.log", w1.subjects.prefix)
        w2.start()
        try:
            await w2.connect()  # it answers once the environment is adopted
            st = w2.worker
            assert (st.env_exists, st.env_uid, st.env_pid) == (True, env_uid, env_pid)
            assert st.env is not None and st.env.running_item_uid == uid
            await w2.until(
                lambda: w1.env is not None and w1.env.owner == w2.worker.worker, "new owner"
            )
            # The plan completes, once: the next result is the next plan's.
            res = await anext(results)
            assert (res.item_uid, res.result.exit_status, res.env_uid) == (
                uid,
                "completed",
                env_uid,
            )
            await w2.until(lambda: w2.worker.env is not None and w2.idle(), "idle")
            uid2 = await w2.run("count", ["det1"], num=2)
            res = await anext(results)
            assert (res.item_uid, res.result.exit_status) == (uid2, "completed")
            # The adopted environment is watched and can be destroyed like a child.
            assert (await w2.worker_cmd("destroy")) == {"success": True, "msg": ""}
            await w2.until(lambda: not w2.worker.env_exists, "environment gone")
            assert w2.worker.ended_env_uid == env_uid and not _alive(env_pid)
            await w2.open()  # and a new one opens
        finally:
            await w2.stop()


async def test_restarted_worker_fails_the_item_of_its_lost_environment(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with running_worker(nats_server, tmp_path / "worker1.log") as w:
        await w.open()
        uid = await w.run("long_count", ["det1"], num=100, delay=0.1)
        await w.running(uid)
        await w.until(lambda: w.worker.env is not None and w.worker.env.run_list != [], "runs")
        env_pid = w.worker.env_pid
        assert env_pid is not None
        _kill(w)
        os.kill(env_pid, signal.SIGKILL)  # the environment is lost too
        await _wait_dead(env_pid, T)
        w2 = Worker(nats_server, tmp_path / "worker2.log", w.subjects.prefix)
        w2.start()
        try:
            await w2.connect()
            res = await anext(w2.results())
            assert (res.item_uid, res.result.exit_status) == (uid, "failed")
            assert "lost with the worker service" in res.result.msg
            assert len(res.result.run_uids) == 1
            assert not w2.worker.env_exists
        finally:
            await w2.stop()


@pytest.mark.timeout(120)
async def test_environment_without_worker_finishes_its_plan_then_closes_itself(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    orphan_timeout = 2.0
    w = Worker(
        nats_server, tmp_path / "worker.log", None, "--env-orphan-timeout", str(orphan_timeout)
    )
    w.start()
    try:
        await w.connect()
        await w.open()
        env_pid = w.worker.env_pid
        assert env_pid is not None
        results = w.results()
        uid = await w.run("long_count", ["det1"], num=20, delay=0.1)
        await w.running(uid)
        _kill(w)
        res = await anext(results)
        assert (res.item_uid, res.result.exit_status) == (uid, "completed")
        finished = time.monotonic()
        await w.until(lambda: w.env is not None and w.env.env_state == "closed", "closed", 30)
        await _wait_dead(env_pid, 30)
        took = time.monotonic() - finished
        report(
            f"orphaned environment closed {took:.2f} s after its plan (timeout {orphan_timeout} s)"
        )
        assert took >= orphan_timeout * 0.75  # it waited for a worker first
        assert w.nc is not None
        kv = await w.nc.jetstream().key_value(worker_bucket(w.subjects))
        with pytest.raises(KeyNotFoundError):
            await kv.get(RECORD_KEY)
    finally:
        await w.stop()


@pytest.mark.timeout(180)
async def test_one_worker_adopts_and_a_frozen_one_gives_way(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """Of two restarted workers one adopts, the other waits; a frozen owner that wakes up
    after another worker adopted its environment exits (code 3) and leaves it alone."""
    w1 = Worker(nats_server, tmp_path / "w1.log")
    w1.start()
    env_pid = 0
    try:
        await w1.connect()
        await w1.open()
        env_pid = w1.worker.env_pid or 0
        assert env_pid
        dead_pid = pid(w1)
        _kill(w1)
        prefix = w1.subjects.prefix
        w2, w3 = (Worker(nats_server, tmp_path / f"w{n}.log", prefix) for n in (2, 3))
        w2.start()
        w3.start()
        try:
            await w1.until(lambda: owner_pid(w1) not in (0, dead_pid), "adopted", 30)
            adopter, other = (w2, w3) if owner_pid(w1) == pid(w2) else (w3, w2)
            await _wait_log(adopter, "adopted environment")
            await _wait_log(other, "standby:")
            assert "adopted environment" not in other.log.read_text()
            # The adopter freezes: after a few seconds the other one takes over.
            assert adopter.proc is not None and other.proc is not None
            os.kill(adopter.proc.pid, signal.SIGSTOP)
            try:
                await w1.until(lambda: owner_pid(w1) == pid(other), "the standby adopts", 30)
            finally:
                os.kill(adopter.proc.pid, signal.SIGCONT)
            # Awake, the old owner sees it lost the environment and exits, leaving it alone.
            code = await asyncio.get_running_loop().run_in_executor(None, adopter.proc.wait, 30)
            assert code == 3, adopter.log_tail()
            assert _alive(env_pid)
            await other.connect()
            assert other.worker.env_pid == env_pid
            uid = await other.run("count", ["det1"])
            res = await anext(other.results())
            assert (res.item_uid, res.result.exit_status) == (uid, "completed")
        finally:
            await w2.stop()
            await w3.stop()
    finally:
        await w1.stop()
        if env_pid and _alive(env_pid):
            os.kill(env_pid, signal.SIGKILL)


@pytest.mark.timeout(120)
async def test_environment_without_worker_nor_nats_stops_and_its_item_is_failed_later(
    own_nats: NatsServer, tmp_path: Path
) -> None:
    """The whole stack killed: an environment that can neither be adopted nor report stops
    (within about a second); the worker started with the stack again fails its item."""
    async with running_worker(own_nats, tmp_path / "worker1.log") as w:
        await w.open()
        env_pid = w.worker.env_pid
        assert env_pid is not None
        uid = await w.run("long_count", ["det1"], num=300, delay=0.1)
        await w.running(uid)
        await w.until(lambda: w.worker.env is not None and w.worker.env.run_list != [], "runs")
        _kill(w)
        own_nats.stop(signal.SIGKILL)
        took = await _wait_dead(env_pid, 30)
        report(f"environment without worker and NATS stopped after {took:.2f} s")
        own_nats.start()
        w2 = Worker(own_nats, tmp_path / "worker2.log", w.subjects.prefix)
        w2.start()
        try:
            await w2.connect()
            res = await anext(w2.results())
            assert (res.item_uid, res.result.exit_status) == (uid, "failed")
            assert "lost with the worker service" in res.result.msg
            assert not w2.worker.env_exists
        finally:
            await w2.stop()
