"""Tasks in the environment: functions and scripts run in the namespace (ADR 16).

A foreground task runs on the main thread, as a plan does, and the environment is
`executing_task` meanwhile; a background task runs on a thread of its own, beside a plan or
a foreground task, as in the reference. Each finished task's outcome is stored in the KV
bucket of task results before the state counts it done, so whoever sees the count go up
finds the result there.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import inspect
import json
import linecache
import logging
import os
import sys
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any

from qserver.protocol.tasks import (
    FunctionCall,
    ScriptRun,
    TaskAccepted,
    TaskInfo,
    TaskOutcome,
    TaskRequest,
)
from qserver.result_texts import MSG_KEPT, TRACEBACK_KEPT, cut
from services.runtime.task_results import TaskResults

if TYPE_CHECKING:
    from services.worker.env.engine import Environment, Job

logger = logging.getLogger(__name__)

# Background tasks are threads, which Python cannot stop: a bound keeps a runaway client
# from exhausting the process.
MAX_BACKGROUND_TASKS = 100
WHOLE_AT = "the environment's console output"


class TaskError(Exception):
    """A task failed; `tb` is the traceback to report (the script's, not ours)."""

    def __init__(self, msg: str, tb: str) -> None:
        super().__init__(msg)
        self.tb = tb


class Tasks:
    """Starts tasks, runs them and reports their outcomes."""

    def __init__(self, env: Environment) -> None:
        self.env = env
        self.results = TaskResults(env.link.js, env.subjects)

    # ----- starting (on the NATS thread) -----

    def start(self, req: TaskRequest) -> tuple[TaskAccepted, Job | None]:
        """Register the task and start it if it runs in the background; for a foreground
        one, the job to hand to the main thread (`Environment.submit`), then `started`."""
        env = self.env
        name = "Execute function" if req.function is not None else "Load script"
        if (req.function is None) == (req.script is None):
            return TaskAccepted(success=False, msg="A task is a function or a script"), None
        info = TaskInfo(
            task_uid=req.task_uid, time_start=time.time(), run_in_background=req.run_in_background
        )
        with env.lock:
            refused = self._refusal(req)
            if refused:
                msg = f"Task {name!r} was rejected by the environment: {refused}"
                return TaskAccepted(success=False, msg=msg), None
            env.tasks_started += 1
            seq = env.tasks_started
            if req.run_in_background:
                env.background[req.task_uid] = info
            else:
                env.running_task = info
                env.env_state = "executing_task"
        job = functools.partial(self._run, req, info, name)
        logger.info("task %s started (%s%s)", req.task_uid, name, self._what(req))
        if not req.run_in_background:
            return TaskAccepted(task=info, seq=seq), job
        thread_name = f"qserver task {req.task_uid.split('-')[-1]}"
        threading.Thread(target=job, name=thread_name, daemon=True).start()
        return TaskAccepted(task=info, seq=seq), None

    def not_started(self, task_uid: str) -> None:
        """The main thread did not take the foreground task (kernel mode: the kernel could not
        be captured): the environment is idle again."""
        with self.env.lock:
            if self.env.running_task is not None and self.env.running_task.task_uid == task_uid:
                self.env.running_task = None
                if self.env.env_state == "executing_task":
                    self.env.env_state = "idle"

    def _refusal(self, req: TaskRequest) -> str:
        """Why the task cannot start now ("" if it can); called with the lock held."""
        env = self.env
        if env.env_state not in ("idle", "executing_plan", "executing_task"):
            return f"the environment is {env.env_state}"
        if req.run_in_background:
            if len(env.background) >= MAX_BACKGROUND_TASKS:
                return (
                    f"{MAX_BACKGROUND_TASKS} background tasks are running: "
                    "wait for some of them to finish"
                )
            return ""
        if env.env_state != "idle" or env.running is not None:
            return f"the environment is {env.env_state}, not idle"
        return ""

    @staticmethod
    def _what(req: TaskRequest) -> str:
        if req.function is not None:
            return f": {req.function.name}"
        return ", in the background" if req.run_in_background else ""

    # ----- running (on the main thread or a thread of the task's own) -----

    def _run(self, req: TaskRequest, info: TaskInfo, name: str) -> None:
        re_loop = getattr(self.env.RE, "loop", None)
        if req.run_in_background and isinstance(re_loop, asyncio.AbstractEventLoop):
            # What the reference offers background code that asks for the event loop.
            asyncio.set_event_loop(re_loop)
        value: Any = None
        try:
            if req.function is not None:
                value = self._call(req.function)
            else:
                assert req.script is not None
                self._script(req.script, req.task_uid)
            # The value goes back as JSON: one that cannot fails the task here, clearly.
            try:
                json.dumps(value)
            except Exception as e:
                raise ValueError(f"Task result can not be serialized as JSON: {e}") from e
            success, msg, tb = True, "", ""
        except BaseException as e:
            value, success = None, False
            msg = f"Error occurred while executing {name!r}: {e}"
            tb = e.tb if isinstance(e, TaskError) else traceback.format_exc()
            logger.error("task %s failed: %s\n%s", req.task_uid, msg, tb)
        outcome = TaskOutcome(
            task_uid=req.task_uid,
            success=success,
            msg=cut(msg, MSG_KEPT, WHOLE_AT),
            traceback=cut(tb, TRACEBACK_KEPT, WHOLE_AT),
            return_value=value,
            time_start=info.time_start,
            time_stop=time.time(),
        )
        self._finish(req, outcome)

    def _call(self, call: FunctionCall) -> Any:
        ns = self.env.ns
        if call.name not in ns:
            raise RuntimeError(f"Function {call.name!r} is not found in the worker namespace")
        func = ns[call.name]
        if not callable(func):
            raise RuntimeError(f"Object {call.name!r} defined in worker namespace is not callable")
        # A generator function is a plan: calling it would do nothing.
        if inspect.isgeneratorfunction(func):
            raise RuntimeError(
                f"Object {call.name!r} defined in worker namespace is a generator function"
            )
        return func(*call.args, **call.kwargs)

    def _script(self, run: ScriptRun, task_uid: str) -> None:
        env = self.env
        if run.script:
            exec_script(env.ns, run.script, task_uid, env.script_root(), keep_re=not run.update_re)
        if run.update_re:
            env.take_run_engine()
        if run.update_lists:
            env.update_lists()

    def _finish(self, req: TaskRequest, outcome: TaskOutcome) -> None:
        env = self.env
        stored = True
        try:
            env.link.call(self.results.put(outcome))
        except Exception as e:  # the connection is gone: the process is ending
            stored = False
            logger.error("the result of task %s was not stored: %r", req.task_uid, e)
        with env.lock:
            if req.run_in_background:
                env.background.pop(req.task_uid, None)
            elif env.running_task is not None and env.running_task.task_uid == req.task_uid:
                env.running_task = None
                if env.env_state == "executing_task":
                    env.env_state = "idle"
            if stored:
                env.tasks_done += 1
        logger.info("task %s: %s", req.task_uid, "done" if outcome.success else "failed")
        with contextlib.suppress(Exception):  # the process is ending
            env.link.call(env.publish_state(), timeout=5.0)


def exec_script(
    ns: dict[str, Any], script: str, task_uid: str, root: str | None, *, keep_re: bool
) -> None:
    """Execute `script` in `ns`, as the reference does; TaskError with the script's traceback.

    `RE` and `db` stay as they were unless `keep_re` is false. Local imports work from
    `root` (the startup directory), and modules imported from there are imported again by
    the next script, so that an edited file is read again.
    """
    kept: dict[str, Any] = {k: ns[k] for k in ("RE", "db") if k in ns} if keep_re else {}
    filename = f"<script {task_uid.split('-')[0]}>"
    # Tracebacks show the script's lines.
    linecache.cache[filename] = (len(script), None, script.splitlines(keepends=True), filename)
    importlib.invalidate_caches()
    if root and os.path.isdir(root) and root not in sys.path:
        sys.path.insert(0, root)
    before = set(sys.modules)
    ns["__name__"] = "__main__"
    try:
        exec(compile(script, filename, "exec"), ns)
    except BaseException as e:
        msg = f"Failed to execute the script: {e}"
        raise TaskError(msg, traceback.format_exc() + "\n" + msg) from e
    finally:
        if keep_re:
            ns.pop("RE", None)
            ns.pop("db", None)
            ns.update(kept)
        if root:
            _forget_local_modules(before, os.path.abspath(root))


def _forget_local_modules(before: set[str], root: str) -> None:
    """Drop modules first imported from `root` by the script (never others: a C extension
    imported twice breaks)."""
    for name in set(sys.modules) - before:
        path = getattr(sys.modules.get(name), "__file__", None) or ""
        if os.path.abspath(path).startswith(root + os.sep):
            sys.modules.pop(name, None)
