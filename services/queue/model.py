"""The queue as a domain object: validates requests into log events and applies events.

Nothing here talks to NATS. A change is made in two steps so that a failed write never
leaves a half-applied state: `plan_*` checks a request against the current state and
returns the event that describes the change; the service appends that event to the log and
only then calls `apply`, which is also what replay at start-up uses.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from qserver.errors import BadRequest, Locked, NotFound, QServerError, Refused
from qserver.protocol import api
from qserver.protocol.items import HistoryRecord, LockInfo, PlanQueueMode, QueueItem, uid_of
from qserver.protocol.proposals import Proposal, proposal_uid
from qserver.protocol.queue_log import (
    AnyEvent,
    Flags,
    FlagsSet,
    ItemFinished,
    ItemReplaced,
    ItemsAdded,
    ItemsMoved,
    ItemsRemoved,
    ItemStarted,
    LeaderChanged,
    LockCleared,
    LockSet,
    ModeSet,
    PermissionsSet,
    ProposalApproved,
    ProposalEdited,
    ProposalRejected,
    ProposalsAdded,
    QueueCleared,
    RecordsWritten,
    Snapshot,
)
from qserver.uids import uid as new_uid  # item, queue, history and lock uids
from services.queue.ordered import OrderedItems
from services.queue.positions import existing_index, given, insert_index

QUEUE_ITEM_TYPES = ("plan", "instruction")
INSTRUCTIONS = ("queue_stop",)
NO_ITEM = "Failed to add an item: Incorrect request format: request contains no item info"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def normalize_item(item: api.SubmittedItem | QueueItem, user: str, user_group: str) -> QueueItem:
    """Check a submitted item and return it as stored: owner set, `result` dropped, no uid."""
    if not item.name:
        raise BadRequest("Item name is empty")
    if item.item_type not in QUEUE_ITEM_TYPES:
        raise BadRequest(
            f"Item type {item.item_type!r} can not be added to the queue "
            f"(allowed: {', '.join(QUEUE_ITEM_TYPES)})"
        )
    if item.item_type == "instruction" and item.name not in INSTRUCTIONS:
        sent = {k: v for k, v in msgspec.to_builtins(item).items() if v not in ([], {})}
        raise BadRequest(f"Unrecognized instruction: {sent}")
    fields = msgspec.structs.asdict(item)
    fields.pop("result", None)
    fields.update(user=user, user_group=user_group)
    return QueueItem(**fields)


class QueueModel:
    """The queue, the running item, the queue mode and the lock, in memory."""

    def __init__(self, *, emergency_lock_key: str | None = None) -> None:
        self.items = OrderedItems()
        self.running_item: QueueItem | None = None
        self.plan_queue_uid = new_uid()
        self.mode = PlanQueueMode()
        self.lock = LockInfo(emergency_lock_key_is_set=bool(emergency_lock_key))
        self.lock_key_hash = ""
        self.lock_info_uid = new_uid()
        self._emergency_hash = hash_key(emergency_lock_key) if emergency_lock_key else ""
        # Checks a plan against the allowed lists; the service installs the real one.
        self.validate: Callable[[QueueItem], None] = lambda item: None
        self.flags = Flags()
        self.permissions: dict[str, Any] | None = None
        self.permissions_uid = ""
        self.last_record: HistoryRecord | None = None
        self.leader = ""  # the instance that wrote the last LeaderChanged event
        # Items waiting for review, oldest first (ADR 30), and the history records of
        # rejected ones not yet known to be in the history stream.
        self.proposals: dict[str, Proposal] = {}
        self.proposals_uid = new_uid()
        self.unwritten_records: dict[str, HistoryRecord] = {}

    # ----- persistence -----

    def load(self, snap: Snapshot) -> None:
        self.items = OrderedItems(list(snap.items))
        self.running_item = snap.running_item
        self.plan_queue_uid = snap.plan_queue_uid
        self.mode = snap.mode
        self.lock = msgspec.structs.replace(
            snap.lock, emergency_lock_key_is_set=bool(self._emergency_hash)
        )
        self.lock_key_hash = snap.lock_key_hash
        self.lock_info_uid = snap.lock_info_uid or new_uid()
        self.flags = snap.flags
        self.permissions = snap.permissions
        self.permissions_uid = snap.permissions_uid
        self.last_record = snap.last_record
        self.proposals = {proposal_uid(p): p for p in snap.proposals}
        self.proposals_uid = snap.proposals_uid or new_uid()
        self.unwritten_records = {r.record_uid: r for r in snap.unwritten_records}

    def snapshot(self, seq: int) -> Snapshot:
        return Snapshot(
            seq=seq,
            items=list(self.items.as_list()),
            running_item=self.running_item,
            plan_queue_uid=self.plan_queue_uid,
            mode=self.mode,
            lock=self.lock,
            lock_key_hash=self.lock_key_hash,
            lock_info_uid=self.lock_info_uid,
            flags=self.flags,
            permissions=self.permissions,
            permissions_uid=self.permissions_uid,
            last_record=self.last_record,
            proposals=list(self.proposals.values()),
            proposals_uid=self.proposals_uid,
            unwritten_records=list(self.unwritten_records.values()),
        )

    # ----- applying events -----

    def apply(self, ev: AnyEvent) -> None:
        match ev:
            case ItemsAdded(items=items, index=index):
                self.items.insert(index, items)
                self.plan_queue_uid = ev.queue_uid
            case ItemsRemoved(uids=uids):
                self.items.remove(uids)
                self.plan_queue_uid = ev.queue_uid
            case ItemsMoved(uids=uids, index=index):
                self.items.insert(index, self.items.remove(uids))
                self.plan_queue_uid = ev.queue_uid
            case ItemReplaced(uid=uid, item=item):
                self.items.replace(uid, item)
                self.plan_queue_uid = ev.queue_uid
            case QueueCleared():
                self.items.clear()
                self.plan_queue_uid = ev.queue_uid
            case ModeSet(mode=mode):
                self.mode = mode
            case LockSet(info=info, key_hash=key_hash):
                self.lock = msgspec.structs.replace(
                    info, emergency_lock_key_is_set=bool(self._emergency_hash)
                )
                self.lock_key_hash = key_hash
                self.lock_info_uid = ev.lock_info_uid
            case LockCleared():
                self.lock = LockInfo(emergency_lock_key_is_set=bool(self._emergency_hash))
                self.lock_key_hash = ""
                self.lock_info_uid = ev.lock_info_uid
            case ItemStarted(item=item, from_queue=from_queue):
                if from_queue:
                    self.items.remove([item.item_uid])  # type: ignore[list-item]
                self.running_item = item
                self.plan_queue_uid = ev.queue_uid
            case ItemFinished():
                if self.running_item is not None and self.running_item.item_uid == ev.uid:
                    self.running_item = None
                if ev.requeue_front is not None:
                    self.items.insert(0, [ev.requeue_front])
                if ev.requeue_back is not None:
                    self.items.insert(len(self.items), [ev.requeue_back])
                if ev.flags is not None:
                    self.flags = ev.flags
                if ev.record is not None:
                    self.last_record = ev.record
                self.plan_queue_uid = ev.queue_uid
            case FlagsSet(flags=flags):
                self.flags = flags
            case PermissionsSet(permissions=permissions, uid=uid):
                self.permissions = permissions
                self.permissions_uid = uid
            case LeaderChanged(instance=instance):
                self.leader = instance
            case ProposalsAdded() | ProposalEdited() | ProposalApproved() | ProposalRejected():
                self._apply_proposal(ev)
            case RecordsWritten(record_uids=uids):
                for uid in uids:
                    self.unwritten_records.pop(uid, None)
            case _:
                raise TypeError(f"unknown queue event {type(ev).__name__}")

    def _apply_proposal(
        self, ev: ProposalsAdded | ProposalEdited | ProposalApproved | ProposalRejected
    ) -> None:
        match ev:
            case ProposalsAdded(proposals=proposals, approved=approved, index=index):
                for p in proposals:
                    self.proposals[proposal_uid(p)] = p
                if approved:
                    self.items.insert(index, approved)
                    self.plan_queue_uid = ev.queue_uid
            case ProposalEdited(proposal=p):
                self.proposals[proposal_uid(p)] = p
            case ProposalApproved(uid=uid, item=item, index=index):
                self.proposals.pop(uid, None)
                self.items.insert(index, [item])
                self.plan_queue_uid = ev.queue_uid
            case ProposalRejected(uid=uid, record=record):
                self.proposals.pop(uid, None)
                self.unwritten_records[record.record_uid] = record
        self.proposals_uid = ev.proposals_uid

    # ----- queries -----

    def index_of(self, uid: str) -> int:
        """Index of a queued item (the reference's words when it is not one)."""
        if uid not in self.items:
            raise NotFound(self._not_queued(uid, "get"))
        return self.items.position(uid)

    def _not_queued(self, uid: str, purpose: str) -> str:
        """Why `uid` names no queued item, as the reference says it for `purpose`."""
        running = self.running_item is not None and self.running_item.item_uid == uid
        if purpose == "remove":
            if running:
                return "Can not remove an item which is currently running."
            return f"Plan with UID '{uid}' is not in the queue."
        if running:
            return f"The item with UID '{uid}' is currently running."
        return f"Item with UID '{uid}' is not in the queue."

    def locate(self, pos: api.Pos | UnsetType, uid: str | UnsetType, purpose: str = "get") -> int:
        """Index of an existing item named by `pos` or `uid`; the back item by default."""
        if pos is not UNSET and uid is not UNSET:
            raise BadRequest("Ambiguous parameters: plan position and UID is specified")
        if isinstance(uid, str):
            if uid not in self.items:
                raise NotFound(self._not_queued(uid, purpose))
            return self.items.position(uid)
        where: api.Pos = "back" if isinstance(pos, UnsetType) else pos
        if purpose == "remove" and where in ("front", "back") and not self.items:
            raise NotFound("Queue is empty")
        return existing_index(where, len(self.items))

    def insertion(
        self, pos: api.Pos | UnsetType, before_uid: str | UnsetType, after_uid: str | UnsetType
    ) -> int:
        """Where an added item goes, as `queue_item_add` places it."""
        return self._insertion(pos, before_uid, after_uid)

    def _insertion(
        self, pos: api.Pos | UnsetType, before_uid: str | UnsetType, after_uid: str | UnsetType
    ) -> int:
        if pos is not UNSET and (before_uid is not UNSET or after_uid is not UNSET):
            raise BadRequest("Ambiguous parameters: plan position and UID is specified")
        if before_uid is not UNSET and after_uid is not UNSET:
            raise BadRequest(
                "Ambiguous parameters: request to insert the plan before and after the "
                "reference plan"
            )
        target = before_uid if isinstance(before_uid, str) else after_uid
        if isinstance(target, str):
            if self.running_item is not None and self.running_item.item_uid == target:
                if target == before_uid:
                    raise BadRequest(
                        "Can not insert a plan in the queue before a currently running plan."
                    )
                return 0  # after the running item: the front of the queue
            if target not in self.items:
                raise NotFound(f"Plan with UID '{target}' is not in the queue.")
            return self.items.position(target) + (0 if target == before_uid else 1)
        return insert_index(pos, len(self.items))

    # ----- locks -----

    def check_lock(self, target: str, lock_key: str | None) -> None:
        """Refuse a request on a locked environment or queue unless it carries the key."""
        locked = self.lock.environment if target == "environment" else self.lock.queue
        if not locked or self._key_matches(lock_key):
            return
        raise Locked(self.invalid_key_msg())

    def lock_text(self) -> str:
        """The lock as the reference's messages describe it (never the key)."""
        info = self.lock
        return (
            f"RE Manager is locked by {info.user} at {info.time_str}\n"
            f"Environment is locked: {info.environment}\n"
            f"Queue is locked:       {info.queue}\n"
            f"Emergency lock key:    {'set' if self._emergency_hash else 'not set'}\n"
            f"Note: {info.note or '---'}"
        )

    def invalid_key_msg(self) -> str:
        """The reference's text for a missing or wrong key (clients match its start)."""
        return f"Invalid lock key: \n{self.lock_text()}"

    def _key_matches(self, lock_key: str | None) -> bool:
        if not lock_key:
            return False
        h = hash_key(lock_key)
        if self.lock_key_hash and hmac.compare_digest(h, self.lock_key_hash):
            return True
        return bool(self._emergency_hash) and hmac.compare_digest(h, self._emergency_hash)

    def plan_lock(self, req: api.LockRequest) -> LockSet:
        # The reference's checks, texts and order: key, then a lock held with another
        # key, then what to lock.
        if not req.lock_key:
            raise BadRequest(f"Lock key must be a non-empty string: lock_key = {req.lock_key!r}")
        if (self.lock.environment or self.lock.queue) and not hmac.compare_digest(
            hash_key(req.lock_key), self.lock_key_hash
        ):
            raise Refused(f"RE Manager was locked with a different key: \n{self.lock_text()}")
        if not (req.environment or req.queue):
            raise BadRequest(
                "Invalid option: environment and/or queue must be selected: "
                f"environment={req.environment} queue={req.queue}"
            )
        now = time.time()
        info = LockInfo(
            environment=req.environment,
            queue=req.queue,
            user=req.user,
            note=req.note,
            time=now,
            time_str=time.strftime("%m/%d/%Y %H:%M:%S", time.localtime(now)),
        )
        return LockSet(info=info, key_hash=hash_key(req.lock_key), lock_info_uid=new_uid())

    def check_lock_key(self, lock_key: str | None) -> None:
        """For `lock_info`: a given key must be the one the lock was set with."""
        locked = self.lock.environment or self.lock.queue
        if lock_key is not None and locked and not self._key_matches(lock_key):
            raise Refused(self.invalid_key_msg())

    def plan_unlock(self, req: api.UnlockRequest) -> LockCleared | None:
        """None when nothing is locked: unlocking then succeeds, as in the reference."""
        if not (self.lock.environment or self.lock.queue):
            return None
        if not self._key_matches(req.lock_key):
            raise Refused(self.invalid_key_msg())
        return LockCleared(lock_info_uid=new_uid())

    # ----- queue edits -----

    def plan_add(self, req: api.QueueItemAdd) -> ItemsAdded:
        if isinstance(req.item, UnsetType):
            raise BadRequest(NO_ITEM)
        item = normalize_item(req.item, req.user, req.user_group)
        self.validate(item)
        index = self._insertion(req.pos, req.before_uid, req.after_uid)
        item = msgspec.structs.replace(item, item_uid=new_uid())
        return ItemsAdded(items=[item], index=index, queue_uid=new_uid())

    def plan_add_batch(
        self, req: api.QueueItemAddBatch
    ) -> tuple[ItemsAdded | None, list[api.BatchResult]]:
        """All or nothing: the event, or None and the per-item reasons."""
        items: list[QueueItem] = []
        results: list[api.BatchResult] = []
        for raw in req.items:
            try:
                sub = msgspec.convert(raw, api.SubmittedItem)
                item = normalize_item(sub, req.user, req.user_group)
                self.validate(item)
                items.append(msgspec.structs.replace(item, item_uid=new_uid()))
                results.append(api.BatchResult(success=True))
            except msgspec.ValidationError as e:
                results.append(api.BatchResult(success=False, msg=f"Invalid item: {e}"))
            except QServerError as e:
                results.append(api.BatchResult(success=False, msg=e.msg))
        index = self._insertion(req.pos, req.before_uid, req.after_uid)
        if not all(r.success for r in results):
            return None, results
        return ItemsAdded(items=items, index=index, queue_uid=new_uid()), results

    def plan_remove(self, req: api.QueueItemRemove) -> tuple[ItemsRemoved, QueueItem]:
        item = self.items[self.locate(req.pos, req.uid, "remove")]
        return ItemsRemoved(uids=[item.item_uid], queue_uid=new_uid()), item  # type: ignore[list-item]

    def plan_remove_batch(
        self, req: api.QueueItemRemoveBatch
    ) -> tuple[ItemsRemoved | None, list[QueueItem]]:
        # A repeated uid removes its item once, as in the reference (move_batch refuses them).
        uids = list(dict.fromkeys(req.uids))
        missing = [uid for uid in uids if uid not in self.items]
        if missing and not req.ignore_missing:
            raise NotFound(missing_msg(missing))
        found = [self.items[self.items.position(uid)] for uid in uids if uid in self.items]
        if not found:
            return None, []
        return ItemsRemoved(uids=[uid_of(it) for it in found], queue_uid=new_uid()), found

    def plan_move(self, req: api.QueueItemMove) -> tuple[ItemsMoved | None, QueueItem]:
        # The reference's checks, order and words (plan_queue_ops.move_item).
        if req.pos is UNSET and req.uid is UNSET:
            raise BadRequest("Source position or UID is not specified.")
        dests = given(pos_dest=req.pos_dest, before_uid=req.before_uid, after_uid=req.after_uid)
        if not dests:
            raise BadRequest("Destination position or UID is not specified.")
        if req.pos is not UNSET and req.uid is not UNSET:
            raise BadRequest(
                "Ambiguous parameters: Both position and uid is specified for the source plan."
            )
        if "pos_dest" in dests and len(dests) > 1:
            raise BadRequest(
                "Ambiguous parameters: Both position and uid is specified for the destination plan."
            )
        if len(dests) > 1:
            raise BadRequest(
                "Ambiguous parameters: source should be moved 'before' and 'after' the destination."
            )
        src_txt = f"UID '{req.uid}'" if isinstance(req.uid, str) else f"position {req.pos}"
        try:
            src = self.locate(req.pos, req.uid)
        except QServerError as e:
            raise NotFound(f"Source plan ({src_txt}) was not found: {e.msg}.") from None
        item = self.items[src]
        uid: str = item.item_uid  # type: ignore[assignment]
        (which,) = dests
        target = req.pos_dest if which == "pos_dest" else getattr(req, which)
        dest_txt = f"position {target}" if which == "pos_dest" else f"UID '{target}'"
        try:
            if which == "pos_dest":
                dest = existing_index(req.pos_dest, len(self.items))  # type: ignore[arg-type]
            else:
                if target == uid:
                    return None, item  # moving an item next to itself changes nothing
                dest = self.index_of(str(target))
        except QServerError as e:
            raise NotFound(f"Destination plan ({dest_txt}) was not found: {e.msg}.") from None
        if which != "pos_dest":
            dest = dest - 1 if dest > src else dest  # index once the item is taken out
            dest += 1 if which == "after_uid" else 0
        if dest == src:
            return None, item
        return ItemsMoved(uids=[uid], index=dest, queue_uid=new_uid()), item

    def plan_move_batch(
        self, req: api.QueueItemMoveBatch
    ) -> tuple[ItemsMoved | None, list[QueueItem]]:
        # The reference's checks, order and words (plan_queue_ops.move_batch).
        dests = given(pos_dest=req.pos_dest, before_uid=req.before_uid, after_uid=req.after_uid)
        if not dests:
            raise BadRequest(
                "Destination for the batch is not specified: use parameters 'pos_dest', "
                "'before_uid' or 'after_uid'"
            )
        if len(dests) > 1:
            raise BadRequest(
                "The function was called with more than one mutually exclusive parameter "
                "('pos_dest', 'before_uid', 'after_uid')"
            )
        _check_unique(req.uids)
        missing = [uid for uid in req.uids if uid not in self.items]
        if missing:
            raise NotFound(missing_msg(missing))
        (which,) = dests
        batch = set(req.uids)
        if which != "pos_dest":
            target: str = getattr(req, which)
            if target in batch:
                raise BadRequest(f"Parameter '{which}': item with UID '{target}' is in the batch")
        if not req.uids:
            return None, []
        positions = {uid: self.items.position(uid) for uid in req.uids}
        uids = sorted(req.uids, key=positions.__getitem__) if req.reorder else list(req.uids)
        if which == "pos_dest":
            index = 0 if req.pos_dest == "front" else len(self.items) - len(batch)
        else:
            at = self.index_of(target)
            # The target's index once the batch is taken out of the queue.
            index = at - sum(1 for p in positions.values() if p < at)
            index += 1 if which == "after_uid" else 0
        moved = [self.items[positions[uid]] for uid in uids]
        return ItemsMoved(uids=uids, index=index, queue_uid=new_uid()), moved  # type: ignore[arg-type]

    def plan_update(self, req: api.QueueItemUpdate) -> ItemReplaced:
        uid = req.item.item_uid
        item = normalize_item(req.item, req.user, req.user_group)
        self.validate(item)
        if not isinstance(uid, str) or not uid:
            if not req.replace:
                raise BadRequest("Item description contains no UID and UID generation is skipped")
            uid = "None"
        if self.running_item is not None and self.running_item.item_uid == uid:
            raise Refused(f"Failed to replace item: Item with UID '{uid}' is currently running")
        if uid not in self.items:
            raise NotFound(f"Failed to replace item: Item with UID '{uid}' is not in the queue")
        item = msgspec.structs.replace(item, item_uid=new_uid() if req.replace else uid)
        return ItemReplaced(uid=uid, item=item, queue_uid=new_uid())

    def plan_clear(self) -> QueueCleared | None:
        return QueueCleared(queue_uid=new_uid()) if self.items else None

    def plan_mode(self, req: api.QueueModeSet) -> ModeSet:
        if req.mode == "default":
            return ModeSet(mode=PlanQueueMode())
        if not isinstance(req.mode, dict):
            raise BadRequest("mode must be an object or 'default'")
        fields: dict[str, Any] = msgspec.structs.asdict(self.mode)
        for key, value in req.mode.items():
            if key not in fields:
                raise BadRequest(
                    f"Unknown queue mode parameter {key!r} (supported: {', '.join(fields)})"
                )
            if not isinstance(value, bool):
                raise BadRequest(
                    f"Queue mode parameter {key!r} must be true or false, not {value!r}"
                )
            fields[key] = value
        return ModeSet(mode=PlanQueueMode(**fields))


def missing_msg(uids: list[str]) -> str:
    """The reference's text for batch uids that are not in the queue."""
    return f"The queue does not contain items with the following UIDs: {uids}"


def _check_unique(uids: list[str]) -> None:
    if len(set(uids)) != len(uids):
        # "The list of contains" is the reference's wording, kept as its clients see it.
        raise BadRequest(f"The list of contains repeated UIDs ({len(uids) - len(set(uids))} UIDs)")
