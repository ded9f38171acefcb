"""Running items: the environment's lifecycle, the queue runner, RunEngine control, results.

The queue service decides what runs; the worker service owns the environment process,
which runs the RunEngine. Outcomes come back through a JetStream stream (one `PlanResult`
per item) that the leader consumes (`ResultFeed`): a result produced while the queue
service is down is processed when it comes back, exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pprint
import time
from typing import Any

import msgspec
from nats.aio.msg import Msg

from qserver import result_texts
from qserver.errors import QServerError, Refused
from qserver.protocol.items import HistoryRecord, HistoryResult, QueueItem, uid_of
from qserver.protocol.queue_log import FlagsSet, ItemFinished, ItemsRemoved, ItemStarted
from qserver.protocol.worker import (
    CmdReply,
    ConnectInfoReply,
    EnvState,
    KernelInterruptRequest,
    OpenRequest,
    PlanResult,
    RunPlan,
    WorkerState,
)
from qserver.uids import uid as _uid
from services.queue import finished
from services.queue.core import QueueCore
from services.queue.env_ops import (
    ACCEPT_WAIT_S,
    CLOSING,
    CREATING,
    DESTROYING,
    OPENING_STATES,
    SHOW_WAIT_S,
    Operation,
    derived_state,
)
from services.queue.results import ResultFeed
from services.queue.tasks import TaskTracker
from services.runtime.service_base import encode

logger = logging.getLogger(__name__)

WORKER_TIMEOUT_S = 5.0
# No item starts while the worker service has not been heard for this long (its state events
# come once a second): an environment without a supervisor only finishes what it runs.
WORKER_STALE_S = 3.0
# After a (re)start, results stored before the worker said the environment is gone may still
# be on their way: they are awaited this long before a running item is called unknown.
SETTLE_S = 0.5
DRAIN_WAIT_S = 10.0
# Kernel mode: "release" is repeated at most this often while the kernel stays held.
RELEASE_EVERY_S = 0.5
_result_decoder = msgspec.json.Decoder(PlanResult)
_cmd_reply = msgspec.json.Decoder(CmdReply)
_connect_info = msgspec.json.Decoder(ConnectInfoReply)


def _typed_in_kernel(env: EnvState) -> bool:
    """Kernel mode: the kernel is busy, and not with the queue's execution loop."""
    return env.ip_kernel_state not in (None, "idle") and not env.ip_kernel_captured


# ----- the reference's console lines of the queue runner -----


def _say_next(left: int) -> None:
    if left:
        logger.info("Processing the next queue item: %d plans are left in the queue.", left)
    else:
        logger.info("No items are left in the queue.")


def _plan_info(item: QueueItem) -> dict[str, Any]:
    """What the reference logs of a plan it starts."""
    d = msgspec.to_builtins(item)
    keys = ("name", "args", "kwargs", "user", "user_group", "meta", "item_uid")
    defaults: dict[str, Any] = {"args": [], "kwargs": {}, "meta": {}}
    return {k: d.get(k, defaults.get(k)) for k in keys}


def _pretty(obj: Any) -> str:
    """Short and readable: long lists and strings are cut, as in the reference's log."""
    return pprint.pformat(_shorten(obj), sort_dicts=False)


def _shorten(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _shorten(v) for k, v in list(obj.items())[:30]}
    if isinstance(obj, list):
        out = [_shorten(v) for v in obj[:10]]
        return [*out, "..."] if len(obj) > 10 else out
    if isinstance(obj, str) and len(obj) > 1024:
        return obj[:512] + " ...\n... " + obj[-512:]
    return obj


class Executor:
    def __init__(self, svc: QueueCore) -> None:
        self.svc = svc
        self.worker = WorkerState()
        self.env: EnvState | None = None
        # The command to the worker in flight, until a state shows it (env_ops.py).
        self.op: Operation | None = None
        self._worker_seen = -WORKER_STALE_S  # monotonic time of the last worker state
        self._released_at = -RELEASE_EVERY_S  # monotonic time of the last kernel release
        self._release_again: asyncio.TimerHandle | None = None  # a release deferred till due
        self.tasks = TaskTracker()  # functions and scripts in the environment (ADR 16)
        self._lists_loading: str | None = None  # the environment whose lists are being read
        # The environment being opened (from the command, or from its `initializing` state):
        # its end before it was ready is a failed open, reported once.
        self._opening_uid: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._op_tasks: set[asyncio.Task[None]] = set()
        self.results = ResultFeed(
            svc.nc,
            svc.subjects,
            confirm=svc.confirm_lead,
            handle=self.on_result,
            on_term=self.refresh,
            owner=svc.instance,
        )

    # ----- state -----

    @property
    def env_exists(self) -> bool:
        """An environment is open (the reference's `worker_environment_exists`): not while
        it is being created; through its close until its process is gone, as the manager
        state leaves `closing_environment` (an open is refused until then)."""
        env = self.env
        return (
            self.worker.env_exists
            and env is not None
            and env.env_state not in OPENING_STATES
            and self._lists_loading != env.env_uid
        )

    @property
    def env_idle(self) -> bool:
        """Ready for an item: idle, and supervised by a worker service that answers."""
        return (
            self.env_exists
            and self.env is not None
            and self.env.env_state == "idle"
            and self.tasks.foreground is None
            and not self.worker.destroying
            and self._lists_loading is None
            and self.worker_alive
            and not self.kernel_busy_elsewhere()
        )

    @property
    def worker_alive(self) -> bool:
        return time.monotonic() - self._worker_seen < WORKER_STALE_S

    def manager_state(self) -> str:
        m = self.svc.model
        if self.op is not None:
            return self.op.name
        env_op = derived_state(self.worker, self.env, self._lists_loading is not None)
        if env_op is not None:
            return env_op
        # Kernel mode: the manager is idle (or paused) only once the kernel is released, as
        # in the reference; and a paused plan that a console resumed stays "paused" for it.
        held = self.kernel_held()
        if m.running_item is not None:
            env = self.env
            if env is not None and (
                env.re_state == "paused"
                or (
                    env.ip_kernel_state is not None
                    and env.env_state == "idle"
                    and env.running_item_uid == m.running_item.item_uid
                )
            ):
                return "executing_queue" if held else "paused"
            return "executing_queue"
        if self.tasks.foreground is not None:
            return "executing_task"
        queue_runs = m.flags.queue_running and len(m.items)
        if held and not queue_runs and self.tasks.after_task:
            return "executing_task"  # kernel mode: the task's loop lets the kernel go
        if queue_runs or held:
            return "executing_queue"
        return "idle"

    def status_fields(self) -> dict[str, Any]:
        # While it opens or closes, the environment's own state shows (as the reference's).
        env = self.env if self.worker.env_exists and self.env is not None else None
        opened = self.env if self.env_exists else None
        kernel_state, captured = None, None
        if opened is not None:  # without a kernel: the reference's values for a Python worker
            kernel_state = opened.ip_kernel_state or "disabled"
            captured = True if opened.ip_kernel_captured is None else opened.ip_kernel_captured
        return {
            "worker_environment_exists": self.env_exists,
            "worker_environment_state": env.env_state if env else "closed",
            "re_state": env.re_state if env else None,
            "ip_kernel_state": kernel_state,
            "ip_kernel_captured": captured,
            "pause_pending": bool(env and env.pause_pending),
            "queue_stop_pending": self.svc.model.flags.stop_pending,
            "queue_autostart_enabled": self.svc.model.flags.autostart,
            "docs_pending": env.docs_pending if env else 0,
            "docs_failed": env.docs_failed if env else 0,
            "kafka_pending": self.worker.kafka_pending,
            "kafka_failed": self.worker.kafka_failed,
            "worker_background_tasks": self.tasks.background_tasks if env else 0,
            "task_results_uid": self.tasks.task_results_uid,
        }

    # ----- subscriptions -----

    async def watch(self) -> None:
        """Follow the worker's and the environment's state (a standby does this too)."""
        s = self.svc.subjects
        await self.svc.nc.subscribe(s.worker_state, cb=self.on_worker_state)
        await self.svc.nc.subscribe(s.env_state, cb=self.on_env_state)

    async def take_charge(self) -> None:
        """As the leader: consume plan results, and settle what the last leader left."""
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self.results.run()),
            loop.create_task(self.reconcile()),
        ]

    def stop(self) -> None:
        for task in [*self._tasks, *self._op_tasks]:
            task.cancel()
        if self._release_again is not None:
            self._release_again.cancel()
            self._release_again = None

    async def reconcile(self) -> None:
        """After a restart: learn the worker's state, then settle a running item it lost."""
        # Only the item that was running when this instance loaded the state can have been
        # lost; one started since (in loop mode, even the same item again) reports through
        # the results feed, and may finish between the checks below.
        at_start = self.svc.model.running_item
        try:
            reply = await self.svc.nc.request(
                self.svc.subjects.worker_cmd("state"), b"", timeout=2.0
            )
            await self._apply_worker_state(msgspec.json.decode(reply.data, type=WorkerState))
        except Exception:
            logger.warning("the worker service did not answer at start-up")
            return
        # Results published while we were away (or just before the worker answered) first.
        await asyncio.sleep(SETTLE_S)
        while not await self.results.drained(time.monotonic(), DRAIN_WAIT_S):
            logger.warning("plan results cannot be read yet: the running item waits for them")
        if at_start is None:
            return
        async with self.svc.write_lock:
            running = self.svc.model.running_item
            if running is None or running is not at_start or self.op is not None:
                return
            env_item = self.env.running_item_uid if self.env_exists and self.env else None
            if env_item == running.item_uid:
                return
        logger.warning("running item %s has no known outcome", running.item_uid)
        await self.finish_locally(
            running,
            "unknown",
            "The outcome is not known: the queue "
            "service restarted and the environment is not running the item",
        )

    async def refresh(self) -> None:
        """Ask the worker and the environment for their state: events missed while away
        (the environment's "idle" after a result, say) would otherwise wait for a heartbeat."""
        s = self.svc.subjects
        try:
            reply = await self.svc.nc.request(s.worker_cmd("state"), b"", timeout=1.0)
            await self._apply_worker_state(msgspec.json.decode(reply.data, type=WorkerState))
            if self.worker.env_exists:
                await self.on_env_state(await self.svc.nc.request(s.env_cmd("state"), timeout=1.0))
        except Exception as e:  # their next events or heartbeats tell the same
            logger.debug("refreshing the worker's and the environment's state: %r", e)

    async def on_worker_state(self, msg: Msg) -> None:
        try:
            state = msgspec.json.decode(msg.data, type=WorkerState)
        except msgspec.DecodeError:
            return
        await self._apply_worker_state(state)

    async def _apply_worker_state(self, state: WorkerState) -> None:
        old = self.worker
        if state.worker == old.worker and state.seq < old.seq:
            return  # sent before one already taken (a late reply, a delayed heartbeat)
        changed = msgspec.structs.replace(state, seq=old.seq) != old
        back = not self.worker_alive
        self.worker, self._worker_seen = state, time.monotonic()
        # The environment's own events are newer than the worker's copy: take the copy only
        # for an environment not heard from yet (at start-up, or after a new open).
        if state.env is not None and (self.env is None or self.env.env_uid != state.env.env_uid):
            await self._set_env(state.env)
        if not state.env_exists:
            self.env = None
            self.tasks.on_env(None)
            # Only the end of the environment being opened is a failed open: a state sent
            # before the open (a heartbeat, a late reply) says nothing about the new one.
            if state.ended_env_uid is not None and state.ended_env_uid == self._opening_uid:
                self._opening_uid = None
                await self._open_failed(state.last_error, state.last_traceback)
        elif back:
            logger.info("the worker service answers again: looking for the next item")
            self.svc.kick()
        self._check_op()
        if changed:
            await self.svc.publish_status()

    async def on_env_state(self, msg: Msg) -> None:
        try:
            env = msgspec.json.decode(msg.data, type=EnvState)
        except msgspec.DecodeError:
            return
        if self.worker.env_uid is not None and env.env_uid != self.worker.env_uid:
            return  # a stale message from a previous environment
        await self._set_env(env)

    async def _set_env(self, env: EnvState) -> None:
        """Take a new environment state and act on its transitions."""
        old, self.env = self.env, env
        fresh = old is None or old.env_uid != env.env_uid
        if env.env_state == "initializing":
            self._opening_uid = env.env_uid
        if env.env_state == "idle" and (fresh or old is None or old.env_state in OPENING_STATES):
            # Ready: its plans and devices are read before anyone sees it open (the state
            # stays `creating_environment` meanwhile), so that they validate its items.
            self._lists_loading = env.env_uid
            try:
                await self.svc.catalog.reload_lists()
            finally:
                self._lists_loading = None
            if self._opening_uid == env.env_uid:
                self._opening_uid = None
                logger.info("environment %s is open", env.env_uid)
            self.svc.kick()
        elif old is not None and old.lists_uid != env.lists_uid and env.lists_uid:
            await self.svc.catalog.reload_lists()
        # After the lists: a script's task ends once the lists it changed are read.
        self.tasks.on_env(env)
        if (
            env.env_state == "idle"
            and env.running_item_uid is None
            and (old is None or old.env_state != "idle" or old.running_item_uid is not None)
        ):
            # The environment reports idle only after its result was stored, so the next
            # item can start now (the result may have been recorded before this event).
            logger.debug("environment idle: looking for the next item")
            self.svc.kick()
        elif old is not None and _typed_in_kernel(old) and not _typed_in_kernel(env):
            self.svc.kick()  # a command typed in the kernel ended: the queue may go on
        if env.ip_kernel_captured and env.env_state == "idle":
            if self.svc.write_lock.locked():
                self.svc.kick()  # looked at again (and released) after the current change
            else:
                self.release_kernel_if_done()
        self._check_op()
        if old != env:
            await self.svc.publish_status()

    # ----- kernel mode (ADR 20) -----

    def _kernel_env(self) -> EnvState | None:
        env = self.env if self.env_exists else None
        return env if env is not None and env.ip_kernel_state is not None else None

    @property
    def kernel_mode(self) -> bool:
        """The worker runs its environments in an IPython kernel."""
        return self.worker.use_ipython_kernel or self._kernel_env() is not None

    def kernel_busy_elsewhere(self) -> bool:
        """A command typed in the kernel (not the queue's execution loop) keeps it busy."""
        env = self._kernel_env()
        return env is not None and _typed_in_kernel(env)

    def kernel_held(self) -> bool:
        """The kernel's execution loop holds it (with nothing to run: released soon)."""
        env = self._kernel_env()
        return env is not None and bool(env.ip_kernel_captured)

    async def reserve_kernel(self) -> None:
        """Before an item runs: capture the kernel, or say why not (the reference's texts)."""
        if self._kernel_env() is None:
            return
        if self.kernel_busy_elsewhere():
            raise Refused("IPython kernel (RE Worker) is busy.", bare=True)
        reply = await self._env("reserve")
        if not reply.success:
            raise Refused(reply.msg, bare=True)

    def release_kernel_if_done(self) -> None:
        """Nothing more to run now: have the environment give the kernel back to its users."""
        m = self.svc.model
        env = self._kernel_env()
        if not self.kernel_held() or self.op or m.running_item is not None:
            return
        if env is None or env.env_state != "idle":
            return  # still busy with its last job: its next state comes soon
        if m.flags.queue_running and len(m.items) and not m.flags.stop_pending:
            return  # the next item goes to the loop that holds the kernel
        now = time.monotonic()
        loop = asyncio.get_running_loop()
        wait = self._released_at + RELEASE_EVERY_S - now
        if wait > 0:
            # Said just now: say it again when due if the kernel is still held then (no
            # state may come before the environment's heartbeat to look again).
            if self._release_again is None:
                self._release_again = loop.call_later(wait, self._release_due)
            return
        self._released_at = now
        task = loop.create_task(self._release_kernel())
        self._op_tasks.add(task)
        task.add_done_callback(self._op_tasks.discard)

    def _release_due(self) -> None:
        self._release_again = None
        self.release_kernel_if_done()

    async def _release_kernel(self) -> None:
        with contextlib.suppress(Exception):  # it also lets go by itself after a while
            await self.svc.nc.request(self.svc.subjects.env_cmd("release"), b"{}", timeout=2.0)

    async def kernel_interrupt(self, interrupt_task: bool, interrupt_plan: bool) -> CmdReply:
        """Ctrl-C to the kernel, with the reference's checks and texts."""
        if not self.kernel_mode:
            raise Refused("RE Manager is not in IPython mode: IPython kernel is not used")
        if not self.env_exists:
            raise Refused("Worker environment does not exist")
        state = self.manager_state()
        if not interrupt_plan and state in ("starting_queue", "executing_queue"):
            raise Refused("Not allowed to interrupt running plan")
        if not interrupt_task and state == "executing_task":
            raise Refused("Not allowed to interrupt running task")
        req = KernelInterruptRequest(interrupt_task=interrupt_task, interrupt_plan=interrupt_plan)
        return await self._env("interrupt", req)

    async def connect_info(self) -> dict[str, Any]:
        """The kernel's connection info (kernel mode, environment open), else {}."""
        if not self.kernel_mode or not self.env_exists:
            return {}
        reply = await self.svc.nc.request(
            self.svc.subjects.env_cmd("connect_info"), b"{}", timeout=WORKER_TIMEOUT_S
        )
        info = _connect_info.decode(reply.data)
        if not info.success:
            raise Refused(info.msg)
        return info.ip_connect_info

    def _check_op(self) -> None:
        """Let the operation in flight step aside once the states show it."""
        op = self.op
        if op is not None and op.answered.done() and op.shown_by(self.worker, self.env):
            op.shown.set()

    async def _open_failed(self, error: str, traceback: str) -> None:
        """As the reference: the manager goes back to idle, the reason goes to the log and
        the console (the environment printed its traceback there already)."""
        why = error or "The environment process exited"
        logger.error("Failed to open the environment: %s", why)
        await self.svc.publish_console(
            f"Error occurred while opening RE Worker environment: {why}\n"
        )
        if traceback and traceback not in why:
            logger.error("%s", traceback)

    # ----- environment -----

    async def _worker(self, cmd: str, body: bytes = b"") -> CmdReply:
        try:
            reply = await self.svc.nc.request(
                self.svc.subjects.worker_cmd(cmd), body, timeout=WORKER_TIMEOUT_S
            )
        except Exception as e:
            raise Refused(
                f"The worker service did not answer '{cmd}' ({type(e).__name__})"
            ) from None
        return _cmd_reply.decode(reply.data)

    async def _env(self, cmd: str, body: msgspec.Struct | None = None) -> CmdReply:
        try:
            reply = await self.svc.nc.request(
                self.svc.subjects.env_cmd(cmd),
                encode(body) if body else b"",
                timeout=WORKER_TIMEOUT_S,
            )
        except Exception as e:
            raise Refused(
                f"The environment did not answer '{cmd}' ({type(e).__name__})", bare=True
            ) from None
        return _cmd_reply.decode(reply.data)

    async def environment_open(self) -> CmdReply:
        """Hand the open to the worker; answer when it took it (the reference's texts)."""
        state = self.manager_state()
        if state == CREATING:
            raise Refused(
                "Manager is already in the process of creating the RE Worker environment.",
                bare=True,
            )
        if self.env_exists or self.worker.env_exists:
            raise Refused("RE Worker environment already exists.", bare=True)
        if state != "idle":
            raise Refused(f"Manager state is not idle. Current state: {state}", bare=True)
        env_uid = _uid()
        self._opening_uid = env_uid
        return await self._operate(CREATING, env_uid, "open", encode(OpenRequest(env_uid=env_uid)))

    async def environment_close(self) -> CmdReply:
        state = self.manager_state()
        if not self.env_exists and state != CLOSING:
            raise Refused("RE Worker environment does not exist.", bare=True)
        if state == CLOSING:
            raise Refused(
                "Manager is already in the process of closing the RE Worker environment.", bare=True
            )
        if state in ("executing_queue", "starting_queue"):
            raise Refused("Queue execution is in progress.", bare=True)
        if state == "executing_task":
            raise Refused("Foreground task execution is in progress.", bare=True)
        if state != "idle":
            raise Refused(f"Manager state is not idle. Current state: {state}", bare=True)
        return await self._operate(CLOSING, self.worker.env_uid, "close")

    async def environment_destroy(self) -> CmdReply:
        # As the reference, a destroy also ends an open in progress: once the worker has it.
        opening: str | None = None
        op = self.op
        if op is not None and op.name == CREATING:
            with contextlib.suppress(TimeoutError):
                reply = await asyncio.wait_for(asyncio.shield(op.answered), ACCEPT_WAIT_S)
                opening = op.env_uid if reply.success else None
        if not self.worker.env_exists and opening is None:
            raise Refused("RE environment does not exist", bare=True)
        return await self._operate(DESTROYING, self.worker.env_uid or opening, "destroy")

    async def _operate(
        self, name: str, env_uid: str | None, cmd: str, body: bytes = b""
    ) -> CmdReply:
        """Start the operation; its reply once the worker took it, or after ACCEPT_WAIT_S."""
        loop = asyncio.get_running_loop()
        op = Operation(name=name, env_uid=env_uid, answered=loop.create_future())
        self.op = op
        await self.svc.publish_status()
        task = loop.create_task(self._run_op(op, cmd, body))
        self._op_tasks.add(task)
        task.add_done_callback(self._op_tasks.discard)
        try:
            reply = await asyncio.wait_for(asyncio.shield(op.answered), ACCEPT_WAIT_S)
        except TimeoutError:
            # The worker is slow: the client is not kept waiting (the reference answers at
            # once); the manager state says how the operation ends.
            op.replied_early = True
            logger.warning("the worker has not answered '%s' yet: it goes on meanwhile", cmd)
            return CmdReply()
        if not reply.success:
            raise Refused(reply.msg, bare=True)
        return CmdReply()

    async def _run_op(self, op: Operation, cmd: str, body: bytes) -> None:
        """Send the command, then hold the state until the worker's states show it."""
        try:
            try:
                reply = await self._worker(cmd, body)
            except Refused as e:
                reply = CmdReply(success=False, msg=e.msg)
            op.answered.set_result(reply)
            if not reply.success:
                logger.error("environment %s refused: %s", cmd, reply.msg)
                if op.replied_early:
                    await self.svc.publish_console(
                        f"Failed to {cmd} the environment: {reply.msg}\n"
                    )
                if op.name == CREATING and self._opening_uid == op.env_uid:
                    self._opening_uid = None
                return
            self._check_op()
            try:
                await asyncio.wait_for(op.shown.wait(), SHOW_WAIT_S)
            except TimeoutError:
                await self.refresh()  # the worker's state decides from here
        finally:
            if not op.answered.done():  # cancelled: the service stops
                op.answered.set_result(CmdReply(success=False, msg="The queue service stopped"))
            if self.op is op:
                self.op = None
                await self.svc.publish_status()

    async def env_request(self, cmd: str, body: msgspec.Struct | None = None) -> CmdReply:
        """A command to the environment; its refusal in its own words (no prefix)."""
        if not self.env_exists:
            raise Refused("RE Worker environment does not exist.", bare=True)
        reply = await self._env(cmd, body)
        if not reply.success:
            raise Refused(reply.msg, bare=True)
        return reply

    async def env_raw(self, cmd: str, body: msgspec.Struct | None = None) -> bytes:
        reply = await self.svc.nc.request(
            self.svc.subjects.env_cmd(cmd), encode(body) if body else b"", timeout=WORKER_TIMEOUT_S
        )
        return reply.data  # type: ignore[no-any-return]

    # ----- running items -----

    async def set_flags(self, **changes: bool) -> None:
        """Change execution flags (call with the write lock held)."""
        flags = msgspec.structs.replace(self.svc.model.flags, **changes)
        if flags != self.svc.model.flags:
            await self.svc.commit(FlagsSet(flags=flags))

    async def start_item(self, item: QueueItem, *, from_queue: bool) -> None:
        """Make the item the running item and hand it to the environment (lock held)."""
        props = dict(item.properties) if isinstance(item.properties, dict) else {}
        props["time_start"] = time.time()
        if not from_queue:
            props["immediate_execution"] = True
        running = msgspec.structs.replace(item, properties=props)
        if not from_queue:
            logger.info("Processing the plan submitted for immediate execution ...")
        # Logged before the commit yields: the line goes out before the environment's own.
        logger.info("Starting the plan:\n%s.", _pretty(_plan_info(item)))
        await self.svc.commit(ItemStarted(item=running, from_queue=from_queue, queue_uid=_uid()))
        try:
            # Permissions may have changed since the item was added.
            self.svc.catalog.validate(item)
            run = RunPlan(item=msgspec.to_builtins(item), user_group=str(item.user_group))
            reply = await self._env("run", run)
            ok, why = reply.success, reply.msg
        except QServerError as e:
            ok, why = False, e.msg
        if not ok:
            logger.error("Failed to start the plan %s.\nError: %s", _pretty(_plan_info(item)), why)
            asyncio.get_running_loop().create_task(
                self.finish_locally(running, "failed", f"The environment refused the plan: {why}")
            )

    async def finish_locally(self, item: QueueItem, status: str, msg: str) -> None:
        """Record an outcome for an item that the environment will never report.

        Recorded here rather than sent through the results stream, which only the worker side
        may write (ADR 11); the queue's log makes it durable, and `_record` ignores it if the
        item stopped running meanwhile (its real result came first).
        """
        now = time.time()
        started = (
            item.properties.get("time_start", now) if isinstance(item.properties, dict) else now
        )
        result = PlanResult(
            record_uid=_uid(),
            item_uid=uid_of(item),
            env_uid="",  # type: ignore[arg-type]
            result=HistoryResult(exit_status=status, time_start=started, time_stop=now, msg=msg),  # type: ignore[arg-type]
        )
        while True:
            try:
                async with self.svc.write_lock:
                    await self._record(result)
                break
            except Exception:
                logger.exception("recording the outcome of %s failed; retrying", result.item_uid)
                await asyncio.sleep(1.0)
        await self.svc.advance()

    async def on_result(self, msg: Msg) -> None:
        try:
            res = _result_decoder.decode(msg.data)
        except msgspec.DecodeError:
            logger.error("dropping a malformed plan result")
            await msg.ack()
            return
        try:
            async with self.svc.write_lock:
                await self._record(res)
            await msg.ack()
        except Exception:
            logger.exception(
                "recording the result of %s failed; it will be redelivered", res.item_uid
            )
            with contextlib.suppress(Exception):  # else redelivered after the ack wait
                await msg.nak(delay=1.0)
            return
        await self.svc.advance()

    async def _record(self, res: PlanResult) -> None:
        """Record an outcome; the status goes out once the history holds the record too, so
        that whoever sees the item finished finds it in the history (read-your-writes).

        The next item starts meanwhile (the caller holds the write lock): writing the record
        to the history stream and waiting for the history service to read it need not hold
        the queue up (ADR 29). Its status, held with the rest, goes out after both.
        """
        async with self.svc.status_held():
            record = await self._store(res)
            if record is None:
                return
            history = asyncio.ensure_future(self._to_history(record))
            try:
                await self.advance()
            except Exception:  # as `QueueService.advance`: the outcome is recorded still
                logger.exception("starting the next item failed")
            finally:
                await history

    async def _to_history(self, record: HistoryRecord) -> None:
        """Write the record to the history stream (once: de-duplicated by its uid), then wait
        for the history service to hold it."""
        js = self.svc.nc.jetstream()
        ack = await js.publish(
            self.svc.subjects.history_log,
            encode(record),
            headers={"Nats-Msg-Id": record.record_uid},
        )
        await self.svc.sync_history(ack.seq)

    async def _store(self, res: PlanResult) -> HistoryRecord | None:
        """The queue change (with the record); the record to write to the history then.

        The history write is idempotent (de-duplicated by record uid), and the record stays
        in the queue state, so a result redelivered after a crash between the two steps is
        written to history again rather than lost.
        """
        m = self.svc.model
        running = m.running_item
        js = self.svc.nc.jetstream()
        # A result delivered again is known by its record uid first: in loop mode the same
        # item may be running again by then.
        if m.last_record is not None and m.last_record.record_uid == res.record_uid:
            record = m.last_record
        elif running is not None and running.item_uid == res.item_uid:
            # Cut here too if the worker did not (one of an older version): ADR 8.
            result = await result_texts.storable(
                js, self.svc.subjects, res.record_uid, res.item_uid, res.result
            )
            record_item = msgspec.to_builtins(running)
            record_item.pop("properties", None)
            record = HistoryRecord(record_uid=res.record_uid, item=record_item, result=result)
            event = self._finished_event(running, record, outside=res.completed_outside)
            event = finished.fit(event, finished.limit_for(self.svc.nc.max_payload))
            stopping = m.flags.stop_pending and event.flags is not None
            try:
                await self.svc.commit(event)
            except Exception as e:
                # Refused for its size although it seemed to fit: retrying would jam the
                # queue for good, so the item finishes with the smallest record.
                if not result_texts.size_refused(e):
                    raise
                logger.error("the record of %s was refused for its size (%r)", res.item_uid, e)
                event = finished.smallest(event)
                await self.svc.commit(event)
            assert event.record is not None
            record = event.record
            if stopping and record.result.exit_status == "completed":
                _say_next(len(m.items))
                logger.info("Queue is stopped.")
        else:
            logger.info("result for %s was already recorded", res.item_uid)
            return None
        return record

    def _finished_event(
        self, item: QueueItem, record: HistoryRecord, *, outside: bool = False
    ) -> ItemFinished:
        """The queue change of a finished item, flags included, as one atomic event.

        As in the reference: a completed item (or a failed one with `ignore_failures`) lets
        the queue go on and returns to the back in loop mode; stop ends the queue; abort,
        halt, a failure and an unknown outcome also put a copy back at the front. Items
        executed directly (`queue_item_execute`) never touch the queue.
        """
        m = self.svc.model
        status = record.result.exit_status
        immediate = isinstance(item.properties, dict) and item.properties.get("immediate_execution")
        clean = msgspec.structs.replace(item, properties=msgspec.UNSET)
        front = back = None
        flags = m.flags
        if outside and not immediate:
            # Finished from a console (kernel mode): it ran, so it is not run again; the
            # queue stops, as the reference's does for such a plan.
            flags = msgspec.structs.replace(flags, queue_running=False, stop_pending=False)
            if status in ("aborted", "halted", "failed"):
                front = msgspec.structs.replace(clean, item_uid=_uid())
                flags = msgspec.structs.replace(flags, autostart=False)
        elif not immediate:
            go_on = status == "completed" or (status == "failed" and m.mode.ignore_failures)
            if status in ("aborted", "halted", "unknown") or (status == "failed" and not go_on):
                front = msgspec.structs.replace(clean, item_uid=_uid())
            elif go_on and m.mode.loop:
                back = clean
            if not go_on:
                flags = msgspec.structs.replace(
                    flags, queue_running=False, stop_pending=False, autostart=False
                )
            elif flags.stop_pending:
                flags = msgspec.structs.replace(flags, queue_running=False, stop_pending=False)
        return ItemFinished(
            uid=uid_of(item),
            record_uid=record.record_uid,
            requeue_front=front,
            requeue_back=back,
            queue_uid=_uid(),
            flags=flags if flags != m.flags else None,
            record=record,
        )

    async def advance(self) -> None:
        """Start the next item if the queue runs and nothing else does (lock held)."""
        await self._advance()
        self.release_kernel_if_done()

    async def _advance(self) -> None:
        m = self.svc.model
        if (
            m.flags.autostart
            and not m.flags.queue_running
            and len(m.items)
            and self.env_idle
            and self.op is None
        ):
            await self.set_flags(queue_running=True)
        while m.flags.queue_running and m.running_item is None and self.op is None:
            if m.flags.stop_pending or not len(m.items):
                _say_next(len(m.items))
                logger.info(
                    "%s", "Queue is stopped." if m.flags.stop_pending else "Queue is empty."
                )
                await self.set_flags(queue_running=False, stop_pending=False)
                return
            if not self.env_idle:
                logger.debug("queue waits: the environment is not idle (%s)", self.env)
                return
            _say_next(len(m.items))
            item = m.items[0]
            if item.item_type != "instruction":
                await self.start_item(item, from_queue=True)
                return
            logger.info("Executing instruction:\n%s.", _pretty(msgspec.to_builtins(item)))
            await self.svc.commit(ItemsRemoved(uids=[item.item_uid], queue_uid=_uid()))  # type: ignore[list-item]
            if item.name == "queue_stop":
                await self.set_flags(queue_running=False, stop_pending=False)
