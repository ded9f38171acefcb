"""The manager status: the reply of `status`/`ping` and the `<prefix>.events.status` event."""

from __future__ import annotations

from typing import Literal

import msgspec

from qserver.protocol.items import PlanQueueMode
from qserver.protocol.progress import ProgressSummary

ManagerState = Literal[
    "initializing",
    "idle",
    "paused",
    "creating_environment",
    "starting_queue",
    "executing_queue",
    "executing_task",
    "closing_environment",
    "destroying_environment",
]


class LockStatus(msgspec.Struct, frozen=True, kw_only=True):
    environment: bool = False
    queue: bool = False


class Status(msgspec.Struct, frozen=True, kw_only=True):
    """The reference server's 27 status keys, in its order, with the same meanings.

    `time` is when the status last changed, as in the reference, not when it was asked for.
    """

    msg: str
    time: str
    items_in_queue: int
    items_in_history: int
    running_item_uid: str | None
    manager_state: ManagerState
    queue_stop_pending: bool
    queue_autostart_enabled: bool
    worker_environment_exists: bool
    worker_environment_state: str
    worker_background_tasks: int
    re_state: str | None
    ip_kernel_state: str | None
    ip_kernel_captured: bool | None
    pause_pending: bool
    status_uid: str
    run_list_uid: str
    plan_queue_uid: str
    plan_history_uid: str
    devices_existing_uid: str
    plans_existing_uid: str
    devices_allowed_uid: str
    plans_allowed_uid: str
    plan_queue_mode: PlanQueueMode
    task_results_uid: str
    lock_info_uid: str
    lock: LockStatus
    # Ours, not the reference's (ADR 10): documents the environment has not stored in the
    # document stream yet (docs_pending) or could not keep (docs_failed: too large, or no
    # room while the stream did not answer); documents of the stream not delivered to
    # Kafka yet (kafka_pending) or lost for Kafka (kafka_failed).
    docs_pending: int = 0
    docs_failed: int = 0
    kafka_pending: int = 0
    kafka_failed: int = 0
    # Ours (ADR 30): items waiting for review, and a uid that changes with that list.
    items_in_proposals: int = 0
    proposals_uid: str = ""
    # Ours (ADR 25): the running plan's run progress, compact; None when no run is open.
    # The full events are `<prefix>.events.progress`.
    progress: ProgressSummary | None = None
