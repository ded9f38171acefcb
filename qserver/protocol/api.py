"""Requests and replies of the public API, subject `<prefix>.api.<method>`.

A request body is the reference server's `params` object, JSON encoded. Requests forbid
unknown fields so that typos are reported instead of ignored.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from qserver.protocol.items import HistoryResult, LockInfo, PlanQueueMode, QueueItem

Pos = int | Literal["front", "back"]
MAX_REQUEST_BYTES = 512 * 1024  # below NATS max_payload (1 MiB) so that the service can answer


class Request(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every API request."""


class Locked(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A request that a lock may refuse unless it carries the key."""

    lock_key: str | None = None


class SubmittedItem(QueueItem, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An item as a client submits it: unknown keys are errors; `result` is accepted and dropped."""

    result: Any = UNSET


class Empty(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Methods without parameters: ping, status, queue_get, manager_kill, ..."""


class EmptyLocked(Locked, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Methods whose only parameter is the lock key: queue_clear, queue_start, ..."""


class QueueItemAdd(Locked, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # Optional in the type so that a request without it gets the reference's reply
    # (`success: false`, "request contains no item info"), over NATS and HTTP alike.
    item: SubmittedItem | UnsetType = UNSET
    user: str
    user_group: str
    pos: Pos | UnsetType = UNSET
    before_uid: str | UnsetType = UNSET
    after_uid: str | UnsetType = UNSET


class QueueItemAddBatch(Locked, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # Items are checked one by one so that the reply can say which ones are bad.
    items: list[Any]
    user: str
    user_group: str
    pos: Pos | UnsetType = UNSET
    before_uid: str | UnsetType = UNSET
    after_uid: str | UnsetType = UNSET


class QueueItemGet(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pos: Pos | UnsetType = UNSET
    uid: str | UnsetType = UNSET


class QueueItemRemove(Locked, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pos: Pos | UnsetType = UNSET
    uid: str | UnsetType = UNSET


class QueueItemRemoveBatch(Locked, frozen=True, kw_only=True, forbid_unknown_fields=True):
    uids: list[str]
    ignore_missing: bool = True


class QueueItemMove(Locked, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pos: Pos | UnsetType = UNSET
    uid: str | UnsetType = UNSET
    pos_dest: Pos | UnsetType = UNSET
    before_uid: str | UnsetType = UNSET
    after_uid: str | UnsetType = UNSET


class QueueItemMoveBatch(Locked, frozen=True, kw_only=True, forbid_unknown_fields=True):
    uids: list[str]
    pos_dest: Literal["front", "back"] | UnsetType = UNSET
    before_uid: str | UnsetType = UNSET
    after_uid: str | UnsetType = UNSET
    reorder: bool = False


class QueueItemUpdate(Locked, frozen=True, kw_only=True, forbid_unknown_fields=True):
    item: SubmittedItem
    user: str
    user_group: str
    replace: bool = False


class QueueModeSet(Locked, frozen=True, kw_only=True, forbid_unknown_fields=True):
    mode: dict[str, Any] | Literal["default"]


class LockRequest(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    lock_key: str
    environment: bool = False
    queue: bool = False
    user: str
    note: str | None = None


class LockInfoRequest(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    lock_key: str | None = None


class UnlockRequest(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    lock_key: str


class ManagerStop(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    option: Literal["safe_on", "safe_off"] = "safe_on"


class HistoryGet(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Without `limit` the whole history is returned, as the reference does."""

    offset: int = 0
    limit: int | None = None


class HistoryClear(Locked, frozen=True, kw_only=True, forbid_unknown_fields=True):
    size: int | UnsetType = UNSET
    item_uid: str | UnsetType = UNSET


class HistoryRuns(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where the runs of a history item are: `item_uid` of an item in the history."""

    item_uid: str


class HistoryResultGet(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The whole result of a history item: `msg` and `traceback` as the plan reported them,
    where the history keeps them cut to a bounded size (ADR 8)."""

    item_uid: str


class HistoryRunItem(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which queue item made a run, and who submitted it: `run_uid`, full or partial."""

    run_uid: str


class EnvironmentUpdate(Locked, frozen=True, kw_only=True, forbid_unknown_fields=True):
    run_in_background: bool = False


class KernelInterrupt(Locked, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Ctrl-C to the environment's IPython kernel; also while a task or a plan runs only
    if these allow it."""

    interrupt_task: bool = False
    interrupt_plan: bool = False


class FunctionExecute(Locked, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Run a function of the environment's namespace as a task.

    `item`, and whether `user` and `user_group` are there, are checked by the queue service,
    so that a bad value gets the reference's words (its clients match them), not a decoder's.
    """

    item: Any = UNSET
    user: str | UnsetType = UNSET
    user_group: str | UnsetType = UNSET
    run_in_background: bool = False


class ScriptUpload(Locked, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Execute Python code in the environment's namespace as a task."""

    script: Any = UNSET  # a string; checked by the queue service
    update_lists: bool = True
    update_re: bool = False
    run_in_background: bool = False


class TaskStatus(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`task_uid`: one uid (the status is a string) or a list of them (a dict)."""

    task_uid: Any = UNSET


class TaskResult(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    task_uid: Any = UNSET


class ItemDryRun(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Simulate a plan (ADR 31): a queued (or the running) item by `uid`, a proposal by
    `proposal_uid`, or an `item` body, checked as `queue_item_add` checks it."""

    uid: str | UnsetType = UNSET
    proposal_uid: str | UnsetType = UNSET
    item: SubmittedItem | UnsetType = UNSET
    user: str | UnsetType = UNSET
    user_group: str | UnsetType = UNSET


class QueueAutostart(Locked, frozen=True, kw_only=True, forbid_unknown_fields=True):
    enable: bool


class QueueItemExecute(Locked, frozen=True, kw_only=True, forbid_unknown_fields=True):
    item: SubmittedItem
    user: str
    user_group: str


class RePause(Locked, frozen=True, kw_only=True, forbid_unknown_fields=True):
    option: Literal["deferred", "immediate"] = "deferred"


class ReRuns(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    option: Literal["active", "open", "closed"] = "active"


class UserGroup(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    user_group: str
    reduced: bool = False


class Existing(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    reduced: bool = False


class PermissionsSetRequest(Locked, frozen=True, kw_only=True, forbid_unknown_fields=True):
    user_group_permissions: dict[str, Any]


class PermissionsReload(Locked, frozen=True, kw_only=True, forbid_unknown_fields=True):
    restore_plans_devices: bool = False
    restore_permissions: bool = True


# ----- proposals: items that wait for review (ADR 30) -----


class ProposalAdd(Locked, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Propose an item for review (any group); `note` is for the reviewer."""

    item: SubmittedItem
    note: str = ""
    user: str
    user_group: str


class ProposalUid(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`proposal_get`: one proposal; with `dry_run`, the environment's dry run of it too."""

    uid: str
    dry_run: bool = False


class ProposalUpdate(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A reviewer edits a proposal: its item (checked as the proposer's) and/or its note."""

    uid: str
    item: SubmittedItem | UnsetType = UNSET
    note: str | UnsetType = UNSET
    user: str
    user_group: str


class ProposalApprove(Locked, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Move a proposal into the queue at a position (the back by default), in one write."""

    uid: str
    pos: Pos | UnsetType = UNSET
    before_uid: str | UnsetType = UNSET
    after_uid: str | UnsetType = UNSET
    user: str
    user_group: str


class ProposalReject(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Turn a proposal down; it goes to the history as `rejected` with the reason."""

    uid: str
    reason: str
    user: str
    user_group: str


class ProposalGate(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Whether a user group is gated (its items wait for review): asked by the gateway and
    the 0MQ bridge before they forward anything but reads and proposals for its members."""

    user_group: str


class ConsoleOutput(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The last `nlines` lines of the console text (the reference's default: 200)."""

    nlines: int = 200


class ConsoleOutputUpdate(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The console messages after `last_msg_uid` ("ALL": every one kept)."""

    last_msg_uid: str = "ALL"
    # Each message also carries its `uid` (the live event's `Qs-Console-Uid` header), so a
    # reader can join the backlog to the live events without a gap or a repeat.
    with_uids: bool = False


# ----- replies -----


class Reply(msgspec.Struct, kw_only=True):
    """Every reply carries `success` and `msg`; a failure also carries the reference's other
    keys of the method, empty (services/runtime/refusals.py)."""

    success: bool = True
    msg: str = ""


class QueueGetReply(Reply, kw_only=True):
    items: list[QueueItem]
    running_item: QueueItem | dict[str, Any]
    plan_queue_uid: str


class ItemReply(Reply, kw_only=True):
    item: QueueItem
    qsize: int
    # Ours (ADR 30): set when the add of a gated group's member became a proposal
    # (`proposed`) or was let through by an auto-approve rule (`auto_approved`).
    proposed: bool | UnsetType = UNSET
    auto_approved: bool | UnsetType = UNSET


class ItemGetReply(Reply, kw_only=True):
    item: QueueItem


class BatchResult(msgspec.Struct, kw_only=True):
    success: bool
    msg: str = ""


class BatchReply(Reply, kw_only=True):
    qsize: int
    items: list[Any]
    results: list[BatchResult] = msgspec.field(default_factory=list)


class LockReply(Reply, kw_only=True):
    lock_info: LockInfo
    lock_info_uid: str


class ModeReply(Reply, kw_only=True):
    plan_queue_mode: PlanQueueMode


class HistoryGetReply(Reply, kw_only=True):
    # The reference's keys only; the length of the whole history is `items_in_history`
    # in the status.
    items: list[dict[str, Any]]
    plan_history_uid: str


class RunLocation(msgspec.Struct, kw_only=True):
    run_uid: str
    scan_id: int | None = None
    saved: bool = False  # complete in the catalog (start to stop)
    url: str | None = None  # the run in the Tiled catalog; None without a catalog


class HistoryRunsReply(Reply, kw_only=True):
    item_uid: str
    runs: list[RunLocation]
    catalog_url: str | None = None


class HistoryResultGetReply(Reply, kw_only=True):
    item_uid: str
    result: HistoryResult  # `msg` and `traceback` whole (when `whole`)
    whole: bool = True  # False: the whole text was not kept; `result` is what history has


class HistoryRunItemReply(Reply, kw_only=True):
    run_uid: str
    item_uid: str | None
    user: str | None
    user_group: str | None
    scan_id: int | None = None
    item: dict[str, Any] | None = None  # the history item, while it is in the history
    saved: bool = False
    url: str | None = None


class ConfigGetReply(Reply, kw_only=True):
    # `ip_connect_info`: the kernel's connection info in kernel mode with an environment
    # open (what `jupyter console --existing` reads), else {}.
    config: dict[str, Any] = msgspec.field(default_factory=dict)


class TaskReply(Reply, kw_only=True):
    # None when no task was started (a failure), as the reference sends it.
    task_uid: str | None = None


class RunsReply(Reply, kw_only=True):
    run_list: list[Any]
    run_list_uid: str


class ReMetadataReply(Reply, kw_only=True):
    # Also on failure (`{}`), as the reference replies.
    re_metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class PlansAllowedReply(Reply, kw_only=True):
    plans_allowed: dict[str, Any]
    plans_allowed_uid: str


class DevicesAllowedReply(Reply, kw_only=True):
    devices_allowed: dict[str, Any]
    devices_allowed_uid: str


class PlansExistingReply(Reply, kw_only=True):
    plans_existing: dict[str, Any]
    plans_existing_uid: str


class DevicesExistingReply(Reply, kw_only=True):
    devices_existing: dict[str, Any]
    devices_existing_uid: str


class PermissionsReply(Reply, kw_only=True):
    user_group_permissions: dict[str, Any]


class ConsoleOutputReply(Reply, kw_only=True):
    text: str


class ConsoleOutputUidReply(Reply, kw_only=True):
    console_output_uid: str  # changes whenever the text does


class ConsoleOutputUpdateReply(Reply, kw_only=True):
    last_msg_uid: str  # send it back to get what comes after
    console_output_msgs: list[dict[str, Any]]  # `{time, msg}` each (and `uid` if asked)


# The request type of every method of the core services. Methods absent from this table are
# reported as unknown.
REQUEST_TYPES: dict[str, type[Request]] = {
    "ping": Empty,
    "status": Empty,
    "queue_get": Empty,
    "queue_item_add": QueueItemAdd,
    "queue_item_add_batch": QueueItemAddBatch,
    "queue_item_get": QueueItemGet,
    "queue_item_remove": QueueItemRemove,
    "queue_item_remove_batch": QueueItemRemoveBatch,
    "queue_item_move": QueueItemMove,
    "queue_item_move_batch": QueueItemMoveBatch,
    "queue_item_update": QueueItemUpdate,
    "queue_clear": EmptyLocked,
    "queue_mode_set": QueueModeSet,
    "lock": LockRequest,
    "lock_info": LockInfoRequest,
    "unlock": UnlockRequest,
    "manager_stop": ManagerStop,
    "manager_kill": Empty,
    "history_get": HistoryGet,
    "history_clear": HistoryClear,
    "history_runs": HistoryRuns,
    "history_run_item": HistoryRunItem,
    "history_result_get": HistoryResultGet,
    "environment_open": EmptyLocked,
    "environment_close": EmptyLocked,
    "environment_destroy": EmptyLocked,
    "environment_update": EnvironmentUpdate,
    "queue_start": EmptyLocked,
    "queue_stop": EmptyLocked,
    "queue_stop_cancel": EmptyLocked,
    "queue_autostart": QueueAutostart,
    "queue_item_execute": QueueItemExecute,
    "re_pause": RePause,
    "re_resume": EmptyLocked,
    "re_stop": EmptyLocked,
    "re_abort": EmptyLocked,
    "re_halt": EmptyLocked,
    "re_runs": ReRuns,
    "re_metadata": Empty,
    "plans_allowed": UserGroup,
    "devices_allowed": UserGroup,
    "plans_existing": Existing,
    "devices_existing": Existing,
    "permissions_get": Empty,
    "permissions_set": PermissionsSetRequest,
    "permissions_reload": PermissionsReload,
    "kernel_interrupt": KernelInterrupt,
    "config_get": Empty,
    "console_output": ConsoleOutput,
    "console_output_uid": Empty,
    "console_output_update": ConsoleOutputUpdate,
    "function_execute": FunctionExecute,
    "script_upload": ScriptUpload,
    "task_status": TaskStatus,
    "task_result": TaskResult,
    "proposal_add": ProposalAdd,
    "proposal_list": Empty,
    "proposal_get": ProposalUid,
    "proposal_update": ProposalUpdate,
    "proposal_approve": ProposalApprove,
    "proposal_reject": ProposalReject,
    "proposal_gate": ProposalGate,
    "item_dry_run": ItemDryRun,
}

# The methods the history service answers; the queue service answers all the others.
HISTORY_METHODS = frozenset(
    {"history_get", "history_clear", "history_runs", "history_run_item", "history_result_get"}
    # The console's backlog (ADR 18): kept by the history service, like the plan history.
    | {"console_output", "console_output_uid", "console_output_update"}
)


def service_of(method: str) -> str | None:
    """Which service answers `method`, "queue" or "history"; None for an unknown method."""
    if method not in REQUEST_TYPES:
        return None
    return "history" if method in HISTORY_METHODS else "queue"


def unknown_method_reply(method: str) -> bytes:
    """The reply to a method no service implements, in the reference's words."""
    return msgspec.json.encode(Reply(success=False, msg=f"Unknown method '{method}'"))
