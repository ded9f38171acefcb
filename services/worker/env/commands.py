"""The environment's request-reply commands and its event publishers (on the NATS thread)."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from nats.aio.msg import Msg

from qserver.protocol.dry_run import EnvDryRun
from qserver.protocol.tasks import TaskAccepted, TaskRequest
from qserver.protocol.worker import (
    CmdReply,
    ConnectInfoReply,
    KernelInterruptRequest,
    MetadataReply,
    RunPlan,
    RunsReply,
)
from services.runtime.console import ConsolePublisher
from services.runtime.service_base import encode
from services.worker.env.dry_run import DryRuns
from services.worker.env.engine import CONTINUE_STATUS, Environment, Running
from services.worker.env.kernel import LettingGo
from services.worker.env.metadata import metadata_reply
from services.worker.env.tasks import Tasks
from services.worker.results import ensure_results_stream

logger = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
# Changes within this time go out as one state: a short plan changes the state five times
# in a few milliseconds, and each message costs its readers (and a 2-core machine) time.
COALESCE_S = 0.005
# How long requests wait for a finished item whose result is being stored.
SETTLE_S = 5.0
# The values of PauseRequest.option and RunsRequest.option, in the reference's messages.
PAUSE_OPTIONS = ("deferred", "immediate")
RUNS_OPTIONS = ("active", "open", "closed")
Handler = Callable[[bytes], Awaitable[msgspec.Struct]]
_run_decoder = msgspec.json.Decoder(RunPlan)
_interrupt_decoder = msgspec.json.Decoder(KernelInterruptRequest)
_task_decoder = msgspec.json.Decoder(TaskRequest)
_dry_run_decoder = msgspec.json.Decoder(EnvDryRun)


def _options(data: bytes) -> dict[str, Any]:
    body = msgspec.json.decode(data.strip() or b"{}")
    if not isinstance(body, dict):
        raise ValueError("the request must be a JSON object")
    return body


class EnvCommands:
    """Answers `env.<cmd>` requests and publishes state and console events."""

    def __init__(self, env: Environment) -> None:
        self.env = env
        self.subjects = env.subjects
        self.console = ConsolePublisher(self.subjects.console_event, env.link.soon)
        self.sink = self.console.sink
        self.tasks = Tasks(env)
        self.dry_runs = DryRuns(env)
        self._tasks: list[asyncio.Task[None]] = []

    def handlers(self) -> dict[str, Handler]:
        h: dict[str, Handler] = {
            "run": self.run,
            "pause": self.pause,
            "runs": self.runs,
            "metadata": self.metadata,
            "update": self.update,
            "state": self.state,
            "close": self.close,
            "reserve": self.reserve,
            "release": self.release,
            "interrupt": self.interrupt,
            "connect_info": self.connect_info,
            "task": self.task,
            "dry_run": self.dry_run,
        }
        for action in CONTINUE_STATUS:
            h[action] = functools.partial(self._continue, action)
        return h

    async def start(self) -> None:
        nc = self.env.link.nc
        await ensure_results_stream(self.env.link.js, self.subjects)
        for cmd, handler in self.handlers().items():

            async def cb(msg: Msg, cmd: str = cmd, handler: Handler = handler) -> None:
                await self._serve(cmd, handler, msg)

            await nc.subscribe(self.subjects.env_cmd(cmd), cb=cb)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._publish_states()),
            loop.create_task(self.console.run(nc)),
        ]

    async def _serve(self, cmd: str, handler: Handler, msg: Msg) -> None:
        if not msg.reply:  # `env.state` also carries the state events
            return
        try:
            reply = await handler(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as e:
            reply = CmdReply(success=False, msg=f"Invalid request to '{cmd}': {e}")
        except Exception as e:
            logger.exception("command %s failed", cmd)
            reply = CmdReply(success=False, msg=f"Internal error in '{cmd}': {e!r}")
        await msg.respond(encode(reply))

    async def _settle(self) -> None:
        """Wait until a finished item's result is stored and the environment is idle again.

        Whoever reads the result from the stream may send the next request before this
        process has had the ack of the result: for `run` that is not "busy", and `state`
        and `runs` should not show the finished item as running.
        """
        deadline = time.monotonic() + SETTLE_S
        while self.env.result_pending and time.monotonic() < deadline:
            await asyncio.sleep(0.0005)

    # ----- commands -----

    async def run(self, data: bytes) -> CmdReply:
        req = _run_decoder.decode(data)
        env = self.env
        await self._settle()
        uid = req.item.get("item_uid")
        if not isinstance(uid, str) or not uid:
            return CmdReply(success=False, msg="The item has no 'item_uid'")
        if env.kernel is not None and env.kernel.busy_elsewhere():
            return CmdReply(success=False, msg="IPython kernel (RE Worker) is busy.")
        re_state = env.re_state()
        with env.lock:
            if env.env_state != "idle" or env.running is not None or re_state != "idle":
                return CmdReply(
                    success=False,
                    msg=f"RE Worker is busy: environment state is '{env.env_state}', "
                    f"RE state is '{re_state}'",
                )
            running = Running(item=req.item, user_group=req.user_group, time_start=time.time())
            env.running = running
            env.env_state = "executing_plan"
            env.pause_pending = False
        # Published before the reply: if this process dies from here on, the worker knows
        # which item it was running.
        await env.publish_state()
        refused = await self._submit(env.start_run, running)
        if refused is not None:
            with env.lock:
                env.running = None
                env.env_state = "idle"
            await env.publish_state()
            return CmdReply(success=False, msg=refused)
        return CmdReply()

    async def _submit(self, start: Callable[[Any], str | None], arg: Any) -> str | None:
        """Hand a job to the main thread; in kernel mode capturing the kernel may take time."""
        if self.env.kernel is None:
            return start(arg)
        return await asyncio.get_running_loop().run_in_executor(None, start, arg)

    async def pause(self, data: bytes) -> CmdReply:
        option = _options(data).get("option", "deferred")
        if option not in PAUSE_OPTIONS:
            return CmdReply(
                success=False,
                msg=f"Option {option!r} is not supported. Available options: {PAUSE_OPTIONS}",
            )
        env = self.env
        re_state = env.re_state()
        with env.lock:
            if re_state != "running" or env.running is None:
                return CmdReply(
                    success=False,
                    msg=f"Run engine can be paused only in 'running' state. "
                    f"Current state: '{re_state}'",
                )
            env.pause_pending = True
        logger.info("Pausing Run Engine ...")
        env.notify()
        loop = asyncio.get_running_loop()
        try:
            # request_pause waits on the RunEngine's loop: not on this one.
            await loop.run_in_executor(None, env.RE.request_pause, option == "deferred")
        except Exception as e:
            with env.lock:
                env.pause_pending = False
            env.notify()
            return CmdReply(success=False, msg=f"Failed to pause the plan: {e}")
        return CmdReply()

    async def _continue(self, action: str, data: bytes) -> CmdReply:
        env = self.env
        re_state = env.re_state()
        if env.kernel is not None and env.kernel.busy_elsewhere():
            return CmdReply(success=False, msg="IPython kernel (RE Worker) is busy.")
        with env.lock:
            if env.running is None or re_state != "paused" or env.continue_pending:
                shown = "executing_plan" if env.continue_pending else re_state
                return CmdReply(
                    success=False, msg=f"Run Engine is not paused: current state is '{shown}'"
                )
            env.continue_pending = True
        refused = await self._submit(env.start_continue, action)
        if refused is not None:
            with env.lock:
                env.continue_pending = False
            return CmdReply(success=False, msg=refused)
        return CmdReply()

    async def runs(self, data: bytes) -> RunsReply:
        option = _options(data).get("option", "active")
        if option not in RUNS_OPTIONS:
            return RunsReply(
                success=False,
                msg=f"Error: Option {option!r} is not supported. Available options: {RUNS_OPTIONS}",
            )
        await self._settle()
        runs = self.env.runs.runs()
        if option == "open":
            runs = [r for r in runs if r.is_open]
        elif option == "closed":
            runs = [r for r in runs if not r.is_open]
        return RunsReply(run_list=runs, run_list_uid=self.env.runs.list_uid)

    async def metadata(self, data: bytes) -> MetadataReply:
        return metadata_reply(self.env.RE)

    async def update(self, data: bytes) -> CmdReply:
        env = self.env
        if env.RE is None or env.env_state in ("initializing", "failed", "closing", "closed"):
            return CmdReply(success=False, msg=f"Environment is {env.env_state}")
        lists = await asyncio.get_running_loop().run_in_executor(None, env.describe)
        await env.put_lists(lists)
        env.notify()
        return CmdReply()

    async def task(self, data: bytes) -> msgspec.Struct:
        req = _task_decoder.decode(data)
        env = self.env
        await self._settle()
        if not req.run_in_background and env.kernel is not None and env.kernel.busy_elsewhere():
            # The reference's text: a command typed in the kernel runs.
            msg = "Failed to start the task: IPython kernel (RE Worker) is busy."
            return TaskAccepted(success=False, msg=msg)
        accepted, job = self.tasks.start(req)
        if job is not None:
            refused = await self._submit(env.submit, LettingGo(job))
            if refused is not None:
                self.tasks.not_started(req.task_uid)
                await env.publish_state()
                return TaskAccepted(success=False, msg=refused)
        if accepted.success:
            # Published before the reply, as for `run`: whoever gets the reply may then see
            # the task in the state.
            await env.publish_state()
        return accepted

    async def dry_run(self, data: bytes) -> msgspec.Struct:
        """Simulate a plan item on a thread of its own (ADR 31): never the RunEngine's."""
        return await self.dry_runs.run(_dry_run_decoder.decode(data))

    async def state(self, data: bytes) -> msgspec.Struct:
        await self._settle()
        return self.env.snapshot()

    # ----- kernel mode (ADR 20) -----

    async def reserve(self, data: bytes) -> CmdReply:
        """Capture the kernel for an item or a task about to be sent (held for a while)."""
        kernel = self.env.kernel
        if kernel is None:
            return CmdReply()  # without a kernel the main thread is always ours
        refused = await asyncio.get_running_loop().run_in_executor(None, kernel.reserve)
        return CmdReply(success=refused is None, msg=refused or "")

    async def release(self, data: bytes) -> CmdReply:
        """The queue has nothing more to run: let the kernel go back to its users."""
        if self.env.kernel is not None:
            self.env.kernel.release()
        return CmdReply()

    async def interrupt(self, data: bytes) -> CmdReply:
        """Send Ctrl-C to the kernel, as `kernel_interrupt` asks (the reference's checks)."""
        req = _interrupt_decoder.decode(data.strip() or b"{}")
        env = self.env
        if env.kernel is None:
            return CmdReply(
                success=False, msg="RE Manager is not in IPython mode: IPython kernel is not used"
            )
        state = env.env_state
        if not req.interrupt_plan and state == "executing_plan":
            return CmdReply(success=False, msg="Error: Not allowed to interrupt running plan")
        if not req.interrupt_task and state == "executing_task":
            return CmdReply(success=False, msg="Error: Not allowed to interrupt running task")
        try:
            env.kernel.interrupt()
        except Exception as e:
            return CmdReply(success=False, msg=f"Error: {e}")
        logger.info(
            "kernel interrupt sent (interrupt_task=%s, interrupt_plan=%s)",
            req.interrupt_task,
            req.interrupt_plan,
        )
        return CmdReply()

    async def connect_info(self, data: bytes) -> ConnectInfoReply:
        kernel = self.env.kernel
        if kernel is None or kernel.app is None:
            return ConnectInfoReply()
        return ConnectInfoReply(
            ip_connect_info=kernel.connect_info(), connection_file=str(kernel.connection_file)
        )

    async def close(self, data: bytes) -> CmdReply:
        env = self.env
        await self._settle()
        refused = env.begin_close()
        if refused is not None:
            return CmdReply(success=False, msg=refused)
        logger.info("Closing RE Worker environment ...")
        env.notify()
        env.request_close()
        return CmdReply()

    # ----- events -----

    async def _publish_states(self) -> None:
        """On every change (coalesced), and at least once a second."""
        while True:
            try:
                await asyncio.wait_for(self.env.changed.wait(), HEARTBEAT_S)
                await asyncio.sleep(COALESCE_S)
            except TimeoutError:
                pass
            await self.env.publish_state()

    async def flush(self) -> None:
        """Publish every queued state and console line, then flush the connection."""
        await self.env.publish_state()
        await self.console.send(self.env.link.nc)
        await self.env.link.nc.flush(timeout=2)
