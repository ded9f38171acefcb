"""Records of the queue service's event log (a JetStream stream) and its snapshots.

The queue service holds the queue in memory, appends one of these events per change and
replies only after JetStream acknowledged it. Start-up loads the newest snapshot and
replays the events after it. Stored records tolerate unknown fields (newer writers).
"""

from __future__ import annotations

from typing import Any

import msgspec

from qserver.protocol.items import HistoryRecord, LockInfo, PlanQueueMode, QueueItem
from qserver.protocol.proposals import Proposal


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind"):
    """Base of every queue log event."""


class ItemsAdded(Event, frozen=True, kw_only=True, tag="items_added"):
    items: list[QueueItem]
    index: int
    queue_uid: str


class ItemsRemoved(Event, frozen=True, kw_only=True, tag="items_removed"):
    uids: list[str]
    queue_uid: str


class ItemsMoved(Event, frozen=True, kw_only=True, tag="items_moved"):
    """The items are taken out, then inserted in this order at `index` of what remains."""

    uids: list[str]
    index: int
    queue_uid: str


class ItemReplaced(Event, frozen=True, kw_only=True, tag="item_replaced"):
    uid: str
    item: QueueItem
    queue_uid: str


class QueueCleared(Event, frozen=True, kw_only=True, tag="queue_cleared"):
    queue_uid: str


class ModeSet(Event, frozen=True, kw_only=True, tag="mode_set"):
    mode: PlanQueueMode


class LockSet(Event, frozen=True, kw_only=True, tag="lock_set"):
    info: LockInfo
    key_hash: str
    lock_info_uid: str


class LockCleared(Event, frozen=True, kw_only=True, tag="lock_cleared"):
    lock_info_uid: str


class Flags(msgspec.Struct, frozen=True, kw_only=True):
    """Queue execution switches that survive a restart of the queue service."""

    queue_running: bool = False
    stop_pending: bool = False
    autostart: bool = False


class ItemStarted(Event, frozen=True, kw_only=True, tag="item_started"):
    """The item becomes the running item; taken from the queue unless executed directly."""

    item: QueueItem
    from_queue: bool = True
    queue_uid: str


class ItemFinished(Event, frozen=True, kw_only=True, tag="item_finished"):
    """The running item is done; a copy may go back to the front (abort, halt, failure) or
    to the back (loop mode). The history record with `record_uid` is written after this."""

    uid: str
    record_uid: str
    requeue_front: QueueItem | None = None
    requeue_back: QueueItem | None = None
    queue_uid: str
    flags: Flags | None = None  # new execution flags, changed in the same step
    # The history record, kept until the next item finishes so that it can be written
    # again (de-duplicated) if the service died before writing it.
    record: HistoryRecord | None = None


class FlagsSet(Event, frozen=True, kw_only=True, tag="flags_set"):
    flags: Flags


class PermissionsSet(Event, frozen=True, kw_only=True, tag="permissions_set"):
    permissions: dict[str, Any]
    uid: str


class LeaderChanged(Event, frozen=True, kw_only=True, tag="leader_changed"):
    """A queue service instance took the lease and leads from here on.

    Written first by every new leader: it moves the log's last sequence, so a stale leader's
    append (which names the sequence it last saw) is refused from this event on.
    """

    instance: str
    lease_revision: int


class ProposalsAdded(Event, frozen=True, kw_only=True, tag="proposals_added"):
    """A gated group's add: its items wait for review (`proposals`) or, when a rule lets
    them through, go into the queue at `index` (`approved`), all in this one write."""

    proposals: list[Proposal] = msgspec.field(default_factory=list)
    approved: list[QueueItem] = msgspec.field(default_factory=list)
    index: int = 0
    queue_uid: str = ""
    proposals_uid: str


class ProposalEdited(Event, frozen=True, kw_only=True, tag="proposal_edited"):
    proposal: Proposal
    proposals_uid: str


class ProposalApproved(Event, frozen=True, kw_only=True, tag="proposal_approved"):
    """The proposal leaves the list and its item enters the queue at `index`: one write."""

    uid: str
    item: QueueItem
    index: int
    reviewer: str
    queue_uid: str
    proposals_uid: str


class ProposalRejected(Event, frozen=True, kw_only=True, tag="proposal_rejected"):
    """The proposal leaves the list; its history record is kept until it is written."""

    uid: str
    record: HistoryRecord
    proposals_uid: str


class RecordsWritten(Event, frozen=True, kw_only=True, tag="records_written"):
    """These records (of rejected proposals) are in the history stream."""

    record_uids: list[str]


AnyEvent = (
    ItemsAdded
    | ItemsRemoved
    | ItemsMoved
    | ItemReplaced
    | QueueCleared
    | ModeSet
    | LockSet
    | LockCleared
    | ItemStarted
    | ItemFinished
    | FlagsSet
    | PermissionsSet
    | LeaderChanged
    | ProposalsAdded
    | ProposalEdited
    | ProposalApproved
    | ProposalRejected
    | RecordsWritten
)


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    """The whole queue state after the event with sequence number `seq` was applied."""

    seq: int
    items: list[QueueItem]
    running_item: QueueItem | None = None
    plan_queue_uid: str
    mode: PlanQueueMode = PlanQueueMode()
    lock: LockInfo = LockInfo()
    lock_key_hash: str = ""
    lock_info_uid: str = ""
    flags: Flags = Flags()
    permissions: dict[str, Any] | None = None
    permissions_uid: str = ""
    last_record: HistoryRecord | None = None
    proposals: list[Proposal] = msgspec.field(default_factory=list)
    proposals_uid: str = ""
    unwritten_records: list[HistoryRecord] = msgspec.field(default_factory=list)
