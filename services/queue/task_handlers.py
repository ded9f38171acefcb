"""Handlers of the task methods: function_execute, script_upload, environment_update,
task_status, task_result (ADR 16).

Refusals carry the reference's words where its clients look at them, and the reference's
reply keys (`item`, `task_uid`, `status`, `result`) even when they fail.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from typing import Any

import msgspec
from msgspec import UNSET

from qserver.errors import BadRequest, QServerError, Refused
from qserver.protocol import api
from qserver.protocol.items import DROPPED_ITEM_KEYS, ITEM_KEYS
from qserver.protocol.tasks import (
    FunctionCall,
    FunctionExecuteReply,
    ScriptRun,
    TaskAccepted,
    TaskInfo,
    TaskOutcome,
    TaskRequest,
    TaskResultReply,
    TaskStatusName,
    TaskStatusReply,
)
from services.queue.core import QueueCore
from services.queue.execution import Executor
from services.queue.tasks import Started
from services.runtime.refusals import refusal_text
from services.runtime.service_base import Handler
from services.runtime.task_results import TaskResults

logger = logging.getLogger(__name__)

FORMAT = "Incorrect request format: "
READ_TIMEOUT_S = 5.0
# A foreground task's result is stored a moment before the environment's state lets the task
# go; `task_result` waits this long at most for that state before it says "completed".
LET_GO_S = 2.0
LOOKUPS_AT_ONCE = 64  # results read at once for a list of uids
# What a KV key may be (nats.py's rule); anything else cannot name a stored result.
_KEY = re.compile(r"^[-/_=a-zA-Z0-9]+(\.[-/_=a-zA-Z0-9]+)*$")
_accepted = msgspec.json.Decoder(TaskAccepted)


class TaskHandlers:
    def __init__(self, svc: QueueCore, executor: Executor) -> None:
        self.svc = svc
        self.ex = executor
        self.results = TaskResults(svc.nc.jetstream(), svc.subjects)

    def handlers(self) -> dict[str, Handler]:
        return {
            "function_execute": self.on_function_execute,
            "script_upload": self.on_script_upload,
            "environment_update": self.on_environment_update,
            "task_status": self.on_task_status,
            "task_result": self.on_task_result,
        }

    # ----- starting tasks -----

    async def on_function_execute(self, req: api.FunctionExecute) -> FunctionExecuteReply:
        item: dict[str, Any] | None = None
        try:
            self.svc.model.check_lock("environment", req.lock_key)
            item = self._function_item(req)
            call = FunctionCall(
                name=item["name"],
                args=item.get("args", []),
                kwargs=item.get("kwargs", {}),
                user=item["user"],
                user_group=item["user_group"],
            )
            task = TaskRequest(
                task_uid=item["item_uid"], run_in_background=req.run_in_background, function=call
            )
            await self._start(task)
        except QServerError as e:
            msg = refusal_text("function_execute", e)
            return FunctionExecuteReply(success=False, msg=msg, item=item)
        return FunctionExecuteReply(item=item, task_uid=item["item_uid"])

    async def on_script_upload(self, req: api.ScriptUpload) -> api.TaskReply:
        try:
            self.svc.model.check_lock("environment", req.lock_key)
            if req.script is UNSET:
                raise BadRequest("Required 'script' parameter is missing in the API call.")
            if not isinstance(req.script, str):
                raise BadRequest(
                    "Type of the 'script' parameter in the API call is incorrect: "
                    f"{type(req.script).__name__} (a string is expected)"
                )
            run = ScriptRun(
                script=req.script, update_lists=req.update_lists, update_re=req.update_re
            )
            return await self._script(run, req.run_in_background)
        except QServerError as e:
            return api.TaskReply(success=False, msg=refusal_text("script_upload", e))

    async def on_environment_update(self, req: api.EnvironmentUpdate) -> api.TaskReply:
        # As the reference: an empty script that reads the lists and `RE` again.
        try:
            self.svc.model.check_lock("environment", req.lock_key)
            run = ScriptRun(script="", update_lists=True, update_re=True)
            return await self._script(run, req.run_in_background)
        except QServerError as e:
            return api.TaskReply(success=False, msg=refusal_text("environment_update", e))

    async def _script(self, run: ScriptRun, background: bool) -> api.TaskReply:
        task_uid = str(uuid.uuid4())
        await self._start(TaskRequest(task_uid=task_uid, run_in_background=background, script=run))
        return api.TaskReply(task_uid=task_uid)

    async def _start(self, task: TaskRequest) -> None:
        """Have the environment start the task; Refused (nothing started) if it cannot."""
        if task.run_in_background:
            await self._send(task)
            return
        # Foreground: nothing else may start meanwhile (queue_start takes this lock too).
        async with self.svc.write_lock:
            await self._send(task)

    async def _send(self, task: TaskRequest) -> None:
        ex = self.ex
        if not ex.env_exists:
            raise Refused("RE Worker environment is not open", bare=True)
        state = ex.manager_state()
        if not task.run_in_background and state != "idle":
            raise Refused(
                "Failed to start the task: RE Manager must be in idle state. "
                f"Current state: '{state}'",
                bare=True,
            )
        if not task.run_in_background and ex.kernel_busy_elsewhere():
            # Raised, not returned, by the reference: it goes out with its `Error: ` prefix.
            raise Refused("Failed to start the task: IPython kernel (RE Worker) is busy.")
        env_uid = ex.worker.env_uid or ""
        try:
            reply = _accepted.decode(await ex.env_raw("task", task))
        except Exception as e:
            msg = f"The environment did not answer 'task' ({type(e).__name__})"
            raise Refused(msg, bare=True) from None
        if not reply.success or reply.task is None:
            raise Refused(reply.msg or "The environment refused the task", bare=True)
        ex.tasks.accepted(Started(reply.task, reply.seq, env_uid))
        # Before the reply: whoever reads the status next sees the task (executing_task).
        await self.svc.publish_status()

    def _function_item(self, req: api.FunctionExecute) -> dict[str, Any]:
        """The function item to run, checked as the reference checks it, with a new uid."""
        item = req.item
        if item is UNSET:
            raise BadRequest(f"{FORMAT}request contains no item info")
        if not isinstance(item, dict):
            raise BadRequest(
                f"{FORMAT}incorrect type ('{type(item)}') of item parameter: "
                "item parameter must have type 'dict'"
            )
        item_type = item.get("item_type")
        if item_type is None:
            raise BadRequest(f"{FORMAT}'item_type' key is not found")
        if item_type != "function":
            raise BadRequest(
                f"{FORMAT}unsupported 'item_type' value: '{item_type}', "
                "supported item types ('function',)"
            )
        if req.user_group is UNSET:
            raise BadRequest(f"{FORMAT}user group is not specified")
        if req.user is UNSET:
            raise BadRequest(f"{FORMAT}user name is not specified")
        user, group = req.user, req.user_group
        unknown = sorted(set(item) - ITEM_KEYS - DROPPED_ITEM_KEYS)
        if unknown:
            raise BadRequest(f"{FORMAT}unknown keys in the function item: {unknown}")
        permissions = self.svc.catalog.permissions
        if permissions is None:
            raise Refused(
                "No user group permissions are loaded: "
                "use 'permissions_set' or 'permissions_reload'"
            )
        if group not in (permissions.get("user_groups") or {}):
            raise BadRequest(f"Unknown user group: '{group}'")
        name = item.get("name")
        if name is None:
            raise BadRequest(f"Function name is not specified: {item}")
        if not isinstance(name, str) or not name:
            raise BadRequest(f"Function name must be a non-empty string: {name!r}")
        if not isinstance(item.get("args", []), list):
            raise BadRequest(f"Parameter 'args' is not a tuple or a list: {type(item['args'])}")
        if not isinstance(item.get("kwargs", {}), dict):
            raise BadRequest(f"Parameter 'kwargs' is not a dictionary: {type(item['kwargs'])}")
        from qserver.plan_tools.permissions import function_allowed

        if not function_allowed(name, group, permissions):
            raise Refused(f"Function {name!r} is not allowed for users from {group!r} group.")
        out = {k: v for k, v in item.items() if k not in DROPPED_ITEM_KEYS}
        # A new uid always: it is the task's uid too.
        out.update(user=user, user_group=group, item_uid=str(uuid.uuid4()))
        return out

    # ----- status and results -----

    async def on_task_status(self, req: api.TaskStatus) -> TaskStatusReply:
        uid = req.task_uid
        try:
            if uid is UNSET:
                raise BadRequest("Required 'task_uid' parameter is missing in the API call.")
            if isinstance(uid, str):
                return TaskStatusReply(task_uid=uid, status=(await self._find(uid))[0])
            if isinstance(uid, list) and all(isinstance(u, str) for u in uid):
                uids = list(dict.fromkeys(uid))
                found: list[tuple[TaskStatusName, Any]] = []
                for at in range(0, len(uids), LOOKUPS_AT_ONCE):
                    chunk = uids[at : at + LOOKUPS_AT_ONCE]
                    found += await asyncio.gather(*(self._find(u) for u in chunk))
                status = {u: f[0] for u, f in zip(uids, found, strict=True)}
                return TaskStatusReply(task_uid=uid, status=status)
            raise BadRequest(
                f"'task_uid' must be a string or a list of strings: type(task_uid)={type(uid)!r}"
            )
        except QServerError as e:
            msg = refusal_text("task_status", e)
            return TaskStatusReply(success=False, msg=msg, task_uid=None if uid is UNSET else uid)

    async def on_task_result(self, req: api.TaskResult) -> TaskResultReply:
        uid = req.task_uid
        try:
            if uid is UNSET:
                raise BadRequest("Required 'task_uid' parameter is missing in the API call.")
            if not isinstance(uid, str):
                raise BadRequest(f"'task_uid' must be a string: type(task_uid)={type(uid)!r}")
            status, result = await self._find(uid)
            return TaskResultReply(task_uid=uid, status=status, result=result)
        except QServerError as e:
            msg = refusal_text("task_result", e)
            return TaskResultReply(success=False, msg=msg, task_uid=None if uid is UNSET else uid)

    async def _until_let_go(self, task_uid: str) -> None:
        """Wait (at most LET_GO_S) until the environment's state no longer shows the task.

        The environment stores a result before its state ends the task. Answering
        "completed" only once that state is here means whoever reads the result may start
        the next foreground task at once: the manager is idle by then, not still
        `executing_task` (a busy test run once read the result, sent `environment_update`,
        and was refused). The state follows the result by a few milliseconds; past the
        bound (an environment that died) the result is answered anyway.
        """
        deadline = time.monotonic() + LET_GO_S
        while self.ex.tasks.running(task_uid) is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.005)

    async def _find(
        self, task_uid: str
    ) -> tuple[TaskStatusName, TaskOutcome | TaskInfo | dict[str, Any]]:
        """The task's status and what is known of it.

        Whether it runs is taken before its result is read: a task seen running, then
        finished while its result was read, is "running" (true a moment ago), never "not
        found"; one not seen running had its result stored before the state that ended
        it, so the read finds it. A result found wins over a state that still shows it.
        """
        info = self.ex.tasks.running(task_uid)
        if _KEY.match(task_uid):
            try:
                outcome = await asyncio.wait_for(self.results.get(task_uid), READ_TIMEOUT_S)
            except Exception as e:
                logger.warning("task results not readable: %r", e)
                raise Refused(f"The task results cannot be read now ({e!r}): try again") from None
            if outcome is not None:
                if info is not None and not info.run_in_background:
                    await self._until_let_go(task_uid)
                return "completed", outcome
        if info is not None:
            return "running", info
        return "not_found", {}
