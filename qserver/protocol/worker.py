"""Messages between the queue service, the worker service and the environment process.

Subjects (all under `<prefix>.internal.`):
- `worker.<cmd>` request-reply to the worker service: `open`, `close`, `destroy`, `state`.
- `worker.events.state` event: `WorkerState`, published by the worker service on every change
  and once a second.
- `env.<cmd>` request-reply to the environment process: `run`, `pause`, `resume`, `stop`,
  `abort`, `halt`, `update`, `runs`, `metadata`, `state`, `close`, `task`
  (`qserver.protocol.tasks`), `dry_run` (`qserver.protocol.dry_run`); in kernel mode
  (ADR 20) also `reserve`, `release`, `interrupt` and `connect_info`.
- `env.events.state` event: `EnvState`, published by the environment process on every change and
  once a second.
- `results`: the JetStream stream `QS_<PREFIX>_RESULTS`, one `PlanResult` per finished
  item, written by the environment process (or by the worker service when the
  environment died mid-plan), consumed by the queue service with a durable consumer.
Stored records and events tolerate unknown fields (newer writers).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from qserver.protocol.items import HistoryResult
from qserver.protocol.tasks import TaskInfo

EnvStateName = Literal[
    "initializing", "idle", "executing_plan", "executing_task", "closing", "closed", "failed"
]


class StartupConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Where the startup code is: exactly one of the three."""

    startup_dir: str | None = None
    startup_module: str | None = None
    startup_script: str | None = None


class OpenRequest(msgspec.Struct, frozen=True, kw_only=True):
    startup: StartupConfig = StartupConfig()
    # The uid the new environment gets, chosen by the caller so that it can tell news of this
    # environment from news of older ones (the worker chooses one when it is not given).
    env_uid: str | None = None


class CmdReply(msgspec.Struct, kw_only=True):
    success: bool = True
    msg: str = ""


class RunInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One run of the RunEngine, as `re_runs` reports it."""

    uid: str
    scan_id: int | None = None
    is_open: bool = True
    exit_status: str | None = None


class EnvState(msgspec.Struct, frozen=True, kw_only=True):
    """What the environment process is doing now."""

    env_uid: str
    pid: int
    env_state: EnvStateName
    re_state: str | None = None
    running_item_uid: str | None = None
    pause_pending: bool = False
    run_list: list[RunInfo] = msgspec.field(default_factory=list)
    run_list_uid: str = ""
    lists_uid: str = ""  # changes when the existing plans/devices were re-read
    # Documents into the document stream (ADR 10): accepted and not yet stored / refused
    # (too large, or no room while the stream did not answer).
    docs_pending: int = 0
    docs_failed: int = 0
    # Tasks (ADR 16): the foreground task running (env_state `executing_task`), the
    # background tasks running, and how many tasks started and finished (their results
    # stored) in this environment so far.
    running_task: TaskInfo | None = None
    background: list[TaskInfo] = msgspec.field(default_factory=list)
    tasks_started: int = 0
    tasks_done: int = 0
    # Kernel mode (ADR 20): the IPython kernel's state (`starting`, `idle`, `busy`,
    # `disabled` once shut down) and whether the execution loop holds it. None: no kernel.
    ip_kernel_state: str | None = None
    ip_kernel_captured: bool | None = None


class WorkerState(msgspec.Struct, frozen=True, kw_only=True):
    """What the worker service knows about the environment process."""

    env_exists: bool = False
    env_uid: str | None = None
    env_pid: int | None = None
    env: EnvState | None = None
    # Set while an open failed or after the environment process died, for status and console.
    last_error: str = ""
    last_traceback: str = ""
    # The environment whose end `last_error` describes (None: no environment ended yet).
    ended_env_uid: str | None = None
    # The worker service instance that publishes this (`<host>:<pid>:<random>`).
    worker: str = ""
    # The environment is being killed (`destroy`): until its end is seen, whoever reads this
    # (a queue service that took over meanwhile too) says `destroying_environment`.
    destroying: bool = False
    # Counts up with every state the worker instance sends (events and replies): a state
    # older than one already seen from the same instance is stale (it was sent before the
    # newer one but arrived after it) and is ignored.
    seq: int = 0
    # Documents from the document stream to Kafka: not delivered yet / lost for good (too
    # large for the broker, or dropped by the stream's limits before they were sent).
    kafka_pending: int = 0
    kafka_failed: int = 0
    # The worker starts its environments in an IPython kernel (ADR 20).
    use_ipython_kernel: bool = False


class RunPlan(msgspec.Struct, frozen=True, kw_only=True):
    """Run one item now (a plan or the `queue_stop` instruction is handled by the queue)."""

    item: dict[str, Any]
    user_group: str = "primary"


class PauseRequest(msgspec.Struct, frozen=True, kw_only=True):
    option: Literal["deferred", "immediate"] = "deferred"


class KernelInterruptRequest(msgspec.Struct, frozen=True, kw_only=True):
    interrupt_task: bool = False
    interrupt_plan: bool = False


class ConnectInfoReply(CmdReply, kw_only=True):
    """The kernel's connection info (the connection file's content); {} without a kernel."""

    ip_connect_info: dict[str, Any] = msgspec.field(default_factory=dict)
    connection_file: str = ""


class RunsRequest(msgspec.Struct, frozen=True, kw_only=True):
    option: Literal["active", "open", "closed"] = "active"


class RunsReply(CmdReply, kw_only=True):
    run_list: list[RunInfo] = msgspec.field(default_factory=list)
    run_list_uid: str = ""


class MetadataReply(CmdReply, kw_only=True):
    """`env.metadata`: `RE.md`, filtered by the permitted keys, as JSON values."""

    re_metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class PlanResult(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of one item, from the environment process (or the worker if it died)."""

    record_uid: str
    item_uid: str
    env_uid: str
    result: HistoryResult
    # Kernel mode: the paused plan was finished from a console, not by the queue; the item
    # is not put back in the queue whatever its outcome says, and the queue stops.
    completed_outside: bool = False


class ExistingLists(msgspec.Struct, frozen=True, kw_only=True):
    """What the startup code defined: plan and device descriptions in the reference format.

    Stored in the object store `QS_<PREFIX>_LISTS` under the name `existing`, so that items
    can be validated before any environment was opened.
    """

    plans_existing: dict[str, Any]
    devices_existing: dict[str, Any]
    uid: str
    # Each list's own uid, kept when that list did not change (a script that adds a device
    # leaves the plans' uids as they were, as in the reference); "" in older records.
    plans_uid: str = ""
    devices_uid: str = ""
