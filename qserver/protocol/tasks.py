"""Tasks: functions and scripts run in the environment's namespace, and their results.

Public replies (`function_execute`, `script_upload`, `task_status`, `task_result`) have the
reference's keys. Internally the queue service asks the environment to start a task
(`<prefix>.internal.env.task`, `TaskRequest` -> `TaskAccepted`); the environment reports its
running tasks in its state (`EnvState.running_task`, `background`), and stores each
finished task's `TaskOutcome` in the KV bucket `QS_<PREFIX>_TASKS` under the task uid,
where `task_status` and `task_result` read it (ADR 16).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from qserver.protocol.api import Reply

TaskStatusName = Literal["running", "completed", "not_found"]


class TaskInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A running task, as `task_result` reports it (the reference's payload)."""

    task_uid: str
    time_start: float
    run_in_background: bool


class TaskOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """A finished task, as `task_result` reports it (the reference's keys)."""

    task_uid: str
    success: bool
    msg: str = ""
    traceback: str = ""
    return_value: Any = None
    time_start: float
    time_stop: float


# ----- public replies -----


class FunctionExecuteReply(Reply, kw_only=True):
    # The function item as it runs (owner and a new uid set), also on most failures.
    item: dict[str, Any] | None = None
    task_uid: str | None = None  # equal to item["item_uid"]


class TaskStatusReply(Reply, kw_only=True):
    task_uid: Any = None
    # One status for one uid, a dict uid -> status for a list; None on a failure.
    status: TaskStatusName | dict[str, TaskStatusName] | None = None


class TaskResultReply(Reply, kw_only=True):
    task_uid: Any = None
    status: TaskStatusName | None = None
    # `TaskInfo` while running, `TaskOutcome` when completed, `{}` when not found.
    result: TaskInfo | TaskOutcome | dict[str, Any] | None = None


# ----- queue service -> environment -----


class FunctionCall(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    args: list[Any] = msgspec.field(default_factory=list)
    kwargs: dict[str, Any] = msgspec.field(default_factory=dict)
    user: str = ""
    user_group: str = ""


class ScriptRun(msgspec.Struct, frozen=True, kw_only=True):
    """Python code executed in the namespace; `""` with `update_lists` is environment_update."""

    script: str
    update_lists: bool = True
    update_re: bool = False


class TaskRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Start a task now: exactly one of `function` and `script`."""

    task_uid: str
    run_in_background: bool = False
    function: FunctionCall | None = None
    script: ScriptRun | None = None


class TaskAccepted(msgspec.Struct, kw_only=True):
    """The environment's answer: started (with its number, `seq`) or refused (`msg`)."""

    success: bool = True
    msg: str = ""
    task: TaskInfo | None = None
    # The task's number in this environment (1, 2, ...): the state says how many started.
    seq: int = 0
