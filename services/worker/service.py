"""The worker service: opens, closes and kills the environment process, and watches it.

It knows at every moment whether the environment lives (a thread waits for its child's
exit; a pidfd for an environment it adopted) and what it runs (the environment's state
events). When the environment dies with an item running or paused, the worker writes that
item's `failed` result, so the queue never waits for an outcome that cannot come.

The environment does not die with the worker (ADR 12): a KV record names it, and a
restarted worker adopts it (`adopt.py`), or settles the item of one that is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.micro.request import Request
from nats.micro.service import Service

from qserver.jsutil import patiently
from qserver.protocol.subjects import Subjects
from qserver.protocol.worker import (
    CmdReply,
    EnvState,
    OpenRequest,
    StartupConfig,
    WorkerState,
)
from services.runtime.service_base import encode
from services.worker.adopt import Attached, Busy, fail_lost_item, find_env
from services.worker.env.kernel import connection_file
from services.worker.kafka_export import KafkaExport
from services.worker.messages import EnvRecord, EnvStatus
from services.worker.pids import new_instance
from services.worker.process import (
    AdoptedEnv,
    EnvProcess,
    describe_exit,
    env_argv,
    kill_env,
)
from services.worker.record import EnvRecords, record_of
from services.worker.results import (
    ensure_results_stream,
    report_death,
)

logger = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
# With an environment attached, its own once-a-second state drives ours; the heartbeat waits
# this much longer, so that it does not fire just before each of those (they come a little
# over a second apart) and double the events (ADR 28).
ENV_HEARTBEAT_GRACE_S = 0.5
ENV_REQUEST_TIMEOUT_S = 5.0
KILL_WAIT_S = 5.0
STANDBY_POLL_S = 1.0
# Exit code of a worker whose environment another worker adopted (it was frozen or cut off).
LOST = 3
Handler = Callable[[bytes], Awaitable[msgspec.Struct]]
Env = EnvProcess | AdoptedEnv

_status_decoder = msgspec.json.Decoder(EnvStatus)
_open_decoder = msgspec.json.Decoder(OpenRequest)
_ENV_UID = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class WorkerConfig:
    nats_url: str
    default_startup: StartupConfig
    env_args: tuple[str, ...] = ()  # passed on to the environment (log level, depth)
    # Kernel mode (ADR 20): environments run in an IPython kernel whose connection file
    # is written in this directory. None: plain Python.
    ipython_dir: Path | None = None


class WorkerService:
    """Supervises at most one environment process."""

    def __init__(
        self, nc: NATS, subjects: Subjects, config: WorkerConfig, instance: str | None = None
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.subjects = subjects
        self.config = config
        self.instance = instance or new_instance()
        self.proc: Env | None = None
        self.state = self._worker_state()
        self._seq = 0
        self._published_at = 0.0  # monotonic time of the last state published
        self.item_since: float | None = None  # when the running item was first seen
        self.stop_requested = asyncio.Event()
        self.lost = False  # another worker adopted the environment: exit with LOST
        self._records: EnvRecords | None = None
        self._exited_uid: str | None = None
        self._replaced: set[str] = set()  # supervisors we took over from (stale events)
        self._tasks: set[asyncio.Task[None]] = set()  # exit handling, awaited at stop
        self._heartbeat_task: asyncio.Task[None] | None = None
        self.export: KafkaExport | None = None  # its counters go out with the state

    @property
    def records(self) -> EnvRecords:
        assert self._records is not None, "start() first"
        return self._records

    # ----- start and stop -----

    async def start(self) -> None:
        await ensure_results_stream(self.js, self.subjects)
        self._records = await EnvRecords.open(self.js, self.subjects)
        # Before recovery: an adopted environment's events must not be missed.
        await self.nc.subscribe(self.subjects.env_state, cb=self.on_env_state)
        await patiently("recovering the environment", self.recover)
        self._heartbeat_task = asyncio.ensure_future(self._heartbeat())

    async def add_endpoints(self, micro: Service) -> None:
        handlers: dict[str, Handler] = {
            "open": self.open,
            "close": self.close,
            "destroy": self.destroy,
            "state": self.get_state,
        }
        for name, handler in handlers.items():

            async def cb(req: Request, name: str = name, handler: Handler = handler) -> None:
                try:
                    reply = await handler(req.data)
                except Exception as e:
                    logger.exception("worker command %s failed", name)
                    reply = CmdReply(success=False, msg=f"Internal error in '{name}': {e!r}")
                with contextlib.suppress(ValueError):  # a publish without a reply subject
                    await req.respond(encode(reply))

            await micro.add_endpoint(name=name, subject=self.subjects.worker_cmd(name), handler=cb)

    async def stop(self) -> None:
        """Kill the environment and settle its item: a stopped worker leaves none behind.

        (A worker that crashes does: a restarted one adopts it.)
        """
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
        proc = self.proc
        if proc is not None:
            logger.info("stopping: killing environment %s (pid %d)", proc.env_uid, proc.pid)
            proc.kill("stop")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.exited.wait(), KILL_WAIT_S)
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _worker_state(self, **fields: object) -> WorkerState:
        kernel = self.config.ipython_dir is not None
        return WorkerState(worker=self.instance, use_ipython_kernel=kernel, **fields)  # type: ignore[arg-type]

    # ----- commands -----

    async def open(self, data: bytes) -> CmdReply:
        req = _open_decoder.decode(data.strip() or b"{}")
        if self.proc is not None:
            return CmdReply(success=False, msg="RE Worker environment already exists.")
        env_uid = req.env_uid or str(uuid.uuid4())
        if not _ENV_UID.fullmatch(env_uid):
            return CmdReply(success=False, msg=f"Invalid environment uid {env_uid!r}")
        s = req.startup
        given = s.startup_dir or s.startup_module or s.startup_script
        startup = s if given else self.config.default_startup
        record = EnvRecord(env_uid=env_uid, pid=0, host=socket.gethostname(), worker=self.instance)
        if not await self.records.create(record):
            msg = "RE Worker environment already exists"
            if (other := await self.records.read()) is not None:
                msg += f" (environment {other.env_uid}, pid {other.pid} on {other.host})"
            return CmdReply(success=False, msg=msg)
        argv = env_argv(
            self.config.nats_url,
            self.subjects.prefix,
            env_uid,
            self.instance,
            startup,
            *self.config.env_args,
        )
        if self.config.ipython_dir is not None:
            argv += ["--ipython-kernel-dir", str(self.config.ipython_dir)]
        try:
            proc = EnvProcess.spawn(argv, env_uid, self._on_exit, asyncio.get_running_loop())
        except OSError as e:
            await self.records.clear()
            return CmdReply(success=False, msg=f"Failed to start the environment process: {e}")
        logger.info("environment %s started (pid %d)", env_uid, proc.pid)
        logger.info("Waiting for RE worker to start ...")
        self.proc, self.item_since, self._exited_uid = proc, None, None
        initial = EnvState(env_uid=env_uid, pid=proc.pid, env_state="initializing")
        self.state = self._worker_state(
            env_exists=True, env_uid=env_uid, env_pid=proc.pid, env=initial
        )
        await self.publish_state()
        await self._save_record(initial)
        return CmdReply()

    async def close(self, data: bytes) -> CmdReply:
        if self.proc is None:
            return CmdReply(success=False, msg="RE Worker environment does not exist.")
        try:
            reply = await self.nc.request(
                self.subjects.env_cmd("close"), b"{}", timeout=ENV_REQUEST_TIMEOUT_S
            )
        except Exception as e:
            return CmdReply(success=False, msg=f"The environment did not answer 'close' ({e!r})")
        answer = msgspec.json.decode(reply.data, type=CmdReply)
        if answer.success:
            logger.info("Waiting for exit confirmation from RE worker ...")
        return answer

    async def destroy(self, data: bytes) -> CmdReply:
        proc = self.proc
        if proc is None:
            return CmdReply(success=False, msg="RE environment does not exist")
        logger.warning("destroying environment %s (pid %d)", proc.env_uid, proc.pid)
        self._set(destroying=True)
        await self.publish_state()
        proc.kill("destroy")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.exited.wait(), KILL_WAIT_S)
        logger.info("RE Worker environment is destroyed")
        return CmdReply()

    async def get_state(self, data: bytes) -> WorkerState:
        return self._stamped()

    def _stamped(self) -> WorkerState:
        """The state, numbered: the receiver can tell an older one that arrives late."""
        self._seq += 1
        return msgspec.structs.replace(self.state, seq=self._seq)

    # ----- watching -----

    async def publish_state(self) -> None:
        self._published_at = time.monotonic()
        if self.export is not None:
            self._set(kafka_pending=self.export.pending, kafka_failed=self.export.failed)
        try:
            await self.nc.publish(self.subjects.worker_state, encode(self._stamped()))
        except Exception as e:  # reconnecting: the heartbeat sends it again
            logger.debug("worker state not published: %r", e)

    async def _heartbeat(self) -> None:
        """At least once a second, or every 1.5 s while an environment is attached: a state
        published for an environment event counts, so an open environment's own
        once-a-second state is not doubled (ADR 28)."""
        while True:
            period = HEARTBEAT_S + (ENV_HEARTBEAT_GRACE_S if self.proc is not None else 0.0)
            due = self._published_at + period - time.monotonic()
            if due > 0:
                await asyncio.sleep(due)
                continue
            await self.publish_state()

    async def on_env_state(self, msg: Msg) -> None:
        try:
            st = _status_decoder.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return  # e.g. a `state` request: the command and the event share a subject
        if self.proc is None or st.env_uid != self.proc.env_uid:
            if st.env_uid == self._exited_uid and st.env_state == "failed" and st.msg:
                # The failure arrived after the exit was seen: add the reason.
                self._set(last_error=st.msg, last_traceback=st.traceback)
                await self.publish_state()
            return
        if st.owner and st.owner != self.instance:
            if st.owner not in self._replaced:  # else an event sent before we adopted it
                self._give_up(st.owner)
            return
        old = self.state.env
        if st.running_item_uid != (old.running_item_uid if old else None):
            self.item_since = time.time() if st.running_item_uid else None
        changes: dict[str, object] = {"env": st}
        if old is not None and old.env_state == "initializing" and st.env_state == "idle":
            logger.info("Worker started successfully.")  # the reference's words
        # A failed open: the queue service says so, with the reason (ADR 17).
        if st.env_state == "failed":
            changes.update(last_error=st.msg, last_traceback=st.traceback)
        self._set(**changes)
        # Saved before it is announced: whoever sees the state can rely on the record.
        await self._save_record(st)
        await self.publish_state()

    def _give_up(self, owner: str) -> None:
        """Another worker adopted our environment (we were frozen or cut off): stop, and leave
        the environment alone."""
        assert self.proc is not None
        logger.error(
            "environment %s is supervised by worker %s now: this worker stops",
            self.proc.env_uid,
            owner,
        )
        self.proc = None
        self.lost = True
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
        self.stop_requested.set()

    def _set(self, **changes: object) -> None:
        self.state = msgspec.structs.replace(self.state, **changes)

    def _on_exit(self, proc: Env, returncode: int | None) -> None:
        proc.returncode = returncode
        self._spawn(self._handle_exit(proc, returncode))

    async def _handle_exit(self, proc: Env, returncode: int | None) -> None:
        if proc is not self.proc:
            proc.exited.set()
            return
        how = describe_exit(returncode)
        # Its last state events (the item it took, the reason it failed) may still be on
        # their way: a round trip to the server, then a moment for their callbacks.
        with contextlib.suppress(Exception):
            await self.nc.flush(timeout=1)
        await asyncio.sleep(0.01)
        last = self.state.env
        opening = last is None or last.env_state in ("initializing", "failed")
        self.proc, self._exited_uid = None, proc.env_uid
        # An adopted environment's exit status is unknown: it said it closed, or not.
        clean = returncode == 0 or (
            returncode is None and last is not None and last.env_state in ("closing", "closed")
        )
        error, tb = self.state.last_error, self.state.last_traceback
        if not clean and not error and not proc.killed_for:
            when = "while opening" if opening else "unexpectedly"
            error = f"The environment process exited {when} ({how})"
        # The log names who killed it: our own kills (a destroy, this service stopping),
        # logged without their reason, were once taken for unexplained SIGKILLs (ADR 14).
        who = f", by this service: {proc.killed_for}" if proc.killed_for else ""
        if returncode is not None and returncode < 0 and not proc.killed_for:
            who = ", not by this service"
        logger.log(
            logging.INFO if clean or proc.killed_for else logging.WARNING,
            "environment %s ended (%s%s)",
            proc.env_uid,
            how,
            who,
        )
        self.state = self._worker_state(
            env_exists=False, last_error=error, last_traceback=tb, ended_env_uid=proc.env_uid
        )
        if self.config.ipython_dir is not None:  # killed: it could not remove its own
            connection_file(self.config.ipython_dir, proc.env_uid).unlink(missing_ok=True)
        proc.exited.set()
        await self.publish_state()
        if last is not None and last.running_item_uid:
            await report_death(
                self.js,
                self.subjects,
                proc.env_uid,
                last,
                f"The environment process died ({how})",
                self.item_since,
            )
        await self.records.clear()

    async def _save_record(self, st: EnvState) -> None:
        await self.records.save(record_of(st, self.instance, self.item_since))

    # ----- after a restart -----

    async def recover(self) -> None:
        """Adopt the environment of a previous run of this service, or settle its item.

        While a living worker supervises it (two workers started), or it runs on another
        host, wait: this worker starts serving when the environment is ours or gone.
        """
        waiting = False
        while (rec := await self.records.read()) is not None:
            found = await find_env(self.nc, self.subjects, rec, self.instance)
            if isinstance(found, Attached):
                if await self._adopt(rec, found):
                    return
                continue  # it ended just now: the record says what to settle
            if isinstance(found, Busy):
                if not waiting:
                    logger.warning("standby: %s; waiting until it is ours or gone", found.why)
                    waiting = True
                await asyncio.sleep(STANDBY_POLL_S)
                continue
            await self._settle_lost(rec, found.alive)
            break
        await self.publish_state()

    async def _adopt(self, rec: EnvRecord, found: Attached) -> bool:
        st = found.state
        proc = AdoptedEnv.watch(st.env_uid, st.pid, self._on_exit, asyncio.get_running_loop())
        if proc is None:
            logger.warning("environment %s ended while it was being adopted", st.env_uid)
            return False
        if found.previous and found.previous != self.instance:
            self._replaced.add(found.previous)
        same_item = st.running_item_uid is not None and st.running_item_uid == rec.running_item_uid
        self.item_since = (rec.time_start or None) if same_item else None
        if st.running_item_uid and self.item_since is None:
            self.item_since = time.time()
        self.proc = proc
        self.state = self._worker_state(env_exists=True, env_uid=st.env_uid, env_pid=st.pid, env=st)
        await self._save_record(st)
        await self.publish_state()
        logger.warning(
            "adopted environment %s (pid %d, %s)%s",
            st.env_uid,
            st.pid,
            st.env_state,
            f", running item {st.running_item_uid}" if st.running_item_uid else "",
        )
        return True

    async def _settle_lost(self, rec: EnvRecord, alive: bool) -> None:
        """The recorded environment is gone (or hung here: killed); fail the item it ran."""
        if alive:
            logger.warning(
                "killing environment %s (pid %d): it does not answer", rec.env_uid, rec.pid
            )
            await kill_env(rec.pid, rec.env_uid, KILL_WAIT_S)
        # Said at once, before the lost one's result is written.
        self._exited_uid = rec.env_uid
        self.state = self._worker_state(ended_env_uid=rec.env_uid)
        await self.publish_state()
        await fail_lost_item(self.js, self.subjects, rec)
        await self.records.clear()
