"""The queue service's NATS boundary: requests in, log appends, replies and status events out."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime
import logging
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

import qserver
from qserver.errors import Conflict, QServerError, Refused
from qserver.protocol import api, console
from qserver.protocol.internal import HistoryInfo, HistoryInfoRequest, LockCheck, LockCheckReply
from qserver.protocol.queue_log import (
    AnyEvent,
    ItemReplaced,
    ItemsAdded,
    ItemsMoved,
    LeaderChanged,
    PermissionsSet,
    ProposalApproved,
    ProposalsAdded,
)
from qserver.protocol.status import STATUS_EVERY_HEADER, STATUS_SEQ_HEADER, LockStatus, Status
from qserver.protocol.subjects import Subjects
from qserver.uids import uid as _uid
from services.queue.catalog import PlanCatalog
from services.queue.dry_run_handlers import DryRunHandlers
from services.queue.exec_handlers import ExecutionHandlers
from services.queue.execution import Executor
from services.queue.group_commit import AddGroups, groupable
from services.queue.leader import Lease, Renewal
from services.queue.model import QueueModel
from services.queue.progress import ProgressWatch
from services.queue.proposal_desk import ProposalDesk
from services.queue.proposal_handlers import ProposalHandlers
from services.queue.store import EventLog
from services.queue.task_handlers import TaskHandlers
from services.runtime.refusals import refusal_text
from services.runtime.service_base import Handler, encode

logger = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
# Set inside `status_held` (and in the tasks it starts): this code holds the status.
_holding: contextvars.ContextVar[bool] = contextvars.ContextVar("status_holding", default=False)
# A finished item's status waits this long at most for the history to hold its record.
HISTORY_SYNC_S = 2.5


def autostart_waiting(model: QueueModel) -> bool:
    """Autostart is on and nothing runs: a queue change may start an item."""
    return model.flags.autostart and model.running_item is None


class QueueService:
    """Owns the queue, the manager state and the lock; publishes status on every change."""

    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        subjects: Subjects,
        *,
        emergency_lock_key: str | None = None,
        snapshot_every: int = 2000,
        replicas: int = 1,
        lists_file: Path | None = None,
        permissions_file: Path | None = None,
        instance: str = "",
    ) -> None:
        self.nc = nc
        self.subjects = subjects
        self.instance = instance
        self._emergency_lock_key = emergency_lock_key
        self.model = QueueModel(emergency_lock_key=emergency_lock_key)
        self.catalog = PlanCatalog(
            js, subjects, lists_file=lists_file, permissions_file=permissions_file
        )
        self.model.validate = self.catalog.validate
        self.executor = Executor(self)
        self.desk = ProposalDesk(self.catalog)  # gated groups and their proposals (ADR 30)
        self.proposals = ProposalHandlers(self, self.desk)
        self.progress = ProgressWatch(nc, js, subjects, self.publish_status)
        self.log = EventLog(js, subjects, replicas=replicas, snapshot_every=snapshot_every)
        self.stop_requested = asyncio.Event()
        self.history = HistoryInfo(items_in_history=0, plan_history_uid=_uid())
        self.write_lock = asyncio.Lock()
        self.adds = AddGroups(self.write_lock)  # concurrent adds stored together (ADR 29)
        self._needs_resync = False
        self._status: Status | None = None
        # The number of the last status published (ADR 29): the epoch is this process's.
        self._status_epoch = uuid.uuid4().hex[:12]
        self._status_n = 0
        self._status_headers = self._seq_headers()
        # While held (`status_held`), no status goes out: a change in two steps (an item's
        # end, then its history record) shows whole or not at all.
        self._holds = 0
        self._unheld = asyncio.Event()
        self._unheld.set()
        self._run_list_uid = _uid()
        # Only the leader writes, runs items and publishes status (see services/queue/leader.py).
        self.leading = False
        self.lease: Lease | None = None
        self.on_lease_lost: Callable[[], None] = lambda: None

    # ----- start-up -----

    async def load(self) -> None:
        """Read the state and the plan lists (no writes: a standby loads too)."""
        await self.catalog.load_lists()
        await self.load_state()

    async def load_state(self) -> None:
        """The queue state from the snapshot and the log (again at a takeover)."""
        t0 = time.perf_counter()
        self.model = QueueModel(emergency_lock_key=self._emergency_lock_key)
        self.model.validate = self.catalog.validate
        snap, events = await self.log.open()
        if snap is not None:
            self.model.load(snap)
        for _, ev in events:
            self.model.apply(ev)
        self.catalog.set_permissions(self.model.permissions, self.model.permissions_uid)
        logger.info(
            "queue loaded: %d items, snapshot at seq %d, %d events replayed in %.1f ms",
            len(self.model.items),
            snap.seq if snap else 0,
            len(events),
            (time.perf_counter() - t0) * 1e3,
        )

    async def lead(self, lease: Lease | None) -> None:
        """Become the writer: fence off any earlier leader, then settle what a start settles."""
        self.lease = lease
        self.leading = True
        if self._needs_resync:
            await self.resync()
        if lease is not None:
            await self.commit(LeaderChanged(instance=lease.instance, lease_revision=lease.revision))
        if self.catalog.permissions_file is not None:
            # Permissions are re-read from their file at every start, as the reference does.
            perms = self.catalog.read_permissions_file()
            if perms != self.model.permissions:
                await self.set_permissions(perms)
        async with self.write_lock:  # rejected proposals' records a crash left unwritten
            await self.proposals.write_records()

    async def set_permissions(self, permissions: dict[str, Any]) -> None:
        await self.commit(PermissionsSet(permissions=permissions, uid=_uid()))
        self.catalog.set_permissions(self.model.permissions, self.model.permissions_uid)
        await self.publish_status()  # the allowed lists' uids changed with the catalog

    def run_list_uid(self) -> str:
        env = self.executor.env
        return env.run_list_uid if env is not None and env.run_list_uid else self._run_list_uid

    def kick(self) -> None:
        """Let the queue runner look at the state again, soon, outside the caller's lock."""
        if self.leading:
            asyncio.get_running_loop().create_task(self.advance())

    async def advance(self) -> None:
        async with self.write_lock:
            try:
                await self.executor.advance()
            except Exception:
                logger.exception("starting the next item failed")

    async def resync(self) -> None:
        """Apply events this instance did not see (after a failed or unknown append)."""
        for ev in await self.log.catch_up():
            self.model.apply(ev)
        self._needs_resync = False

    # ----- status -----

    def status(self) -> Status:
        m = self.model
        cat = self.catalog
        return Status(
            msg=f"RE Manager v{qserver.__version__}",
            time=datetime.datetime.now().isoformat(),
            items_in_queue=len(m.items),
            items_in_history=self.history.items_in_history,
            running_item_uid=m.running_item.item_uid if m.running_item else None,  # type: ignore[arg-type]
            manager_state=self.executor.manager_state(),  # type: ignore[arg-type]
            status_uid=self._status.status_uid if self._status else _uid(),
            run_list_uid=self.run_list_uid(),
            plan_queue_uid=m.plan_queue_uid,
            plan_history_uid=self.history.plan_history_uid,
            devices_existing_uid=cat.devices_existing_uid,
            plans_existing_uid=cat.plans_existing_uid,
            devices_allowed_uid=cat.devices_allowed_uid,
            plans_allowed_uid=cat.plans_allowed_uid,
            plan_queue_mode=m.mode,
            lock_info_uid=m.lock_info_uid,
            lock=LockStatus(environment=m.lock.environment, queue=m.lock.queue),
            items_in_proposals=len(m.proposals),
            proposals_uid=m.proposals_uid,
            progress=self.progress.summary(m.running_item.item_uid if m.running_item else None),  # type: ignore[arg-type]
            **self.executor.status_fields(),
        )

    @contextlib.asynccontextmanager
    async def status_held(self) -> AsyncIterator[None]:
        """No status goes out inside; the one after shows every change made inside."""
        self._holds += 1
        self._unheld.clear()
        token = _holding.set(True)
        try:
            yield
        finally:
            _holding.reset(token)
            self._holds -= 1
            if not self._holds:
                self._unheld.set()
                await self.publish_status()

    async def publish_status(self, *, heartbeat: bool = False) -> None:
        """Publish the status event; a new `time` and `status_uid` only when something changed.

        An event that would change nothing, not even the run's progress, is not sent, except
        as the heartbeat (every HEARTBEAT_S, by which followers know their copy is fresh):
        about half of a plan's calls changed nothing (a worker state that the status does not
        show), and each went to every follower.

        While the status is held, the holder's changes wait for its end (which publishes
        them); anyone else waits for that end too, so that a reply never goes out before the
        status that shows its change (HISTORY_SYNC_S at most).
        """
        if not self.leading:
            return
        if self._holds and not _holding.get():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._unheld.wait(), HISTORY_SYNC_S)
        if self._holds:
            return
        st = self.status()
        prev = self._status
        if prev is not None and (
            msgspec.structs.replace(prev, time=st.time, progress=st.progress) == st
        ):
            # Nothing changed: same time, status_uid and number. The run's progress is a
            # reading like the time, not a change of state (ADR 25); a follower takes an
            # event of the same number (ADR 29).
            if st.progress == prev.progress and not heartbeat:
                return
            st = msgspec.structs.replace(prev, progress=st.progress)
        else:
            if prev is not None:
                st = msgspec.structs.replace(st, status_uid=_uid())
            self._status_n += 1
            self._status_headers = self._seq_headers()
        self._status = st
        headers = {**self._status_headers, STATUS_EVERY_HEADER: f"{HEARTBEAT_S:g}"}
        with contextlib.suppress(Exception):
            await self.nc.publish(self.subjects.status_event, encode(st), headers=headers)

    def _seq_headers(self) -> dict[str, str]:
        return {STATUS_SEQ_HEADER: f"{self._status_epoch}:{self._status_n}"}

    def reply_headers(self) -> dict[str, str]:
        """On every reply: the number of the last status published before it (ADR 29)."""
        return self._status_headers

    async def publish_console(self, text: str) -> None:
        """A line of the manager's in the console output, as the reference's manager prints
        its own messages among the environment's (the leader only)."""
        if not self.leading:
            return
        data, headers = console.encode(text)  # with its uid, as every console message
        with contextlib.suppress(Exception):
            await self.nc.publish(self.subjects.console_event, data, headers=headers)

    async def heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            await self.publish_status(heartbeat=True)

    # ----- writing -----

    async def confirm_lead(self) -> None:
        """Return if this instance still leads (renewing its lease if due); else raise Refused."""
        if not self.leading:
            raise Refused("This queue service instance does not lead (it is a standby)")
        if self.lease is not None:
            renewal = await self.lease.confirm()
            if renewal is Renewal.LOST:
                self.on_lease_lost()
                raise Refused("This queue service instance lost its lease to another")
            if renewal is Renewal.UNKNOWN:
                raise Refused(
                    "The queue service cannot confirm its leadership (NATS does not answer); "
                    "nothing was changed: try again"
                )

    async def commit(self, event: AnyEvent | None) -> None:
        """Append the event, apply it once acknowledged, then tell subscribers."""
        if event is None:
            return
        await self.confirm_lead()
        try:
            seq = await self.log.append(event)
        except Conflict:
            self._needs_resync = True
            raise
        except Exception as e:
            # The event may or may not be stored: re-read the log before the next change.
            self._needs_resync = True
            raise Refused(
                f"The change could not be stored ({e!r}); it may not have been applied"
            ) from e
        self.model.apply(event)
        queue_edit = isinstance(
            event, ItemsAdded | ItemsMoved | ItemReplaced | ProposalApproved | ProposalsAdded
        )
        if queue_edit and autostart_waiting(self.model):
            self.kick()
        if self.log.snapshot_due():
            self.log.start_snapshot(self.model.snapshot(seq))
        await self.publish_status()

    async def prepare_edit(self, lock_key: str | None) -> None:
        await self._locked_edit(lock_key)

    async def _locked_edit(self, lock_key: str | None, target: str | None = "queue") -> None:
        """Before a change: catch up with the log if needed, then check the lock."""
        if self._needs_resync:
            await self.resync()
        if target is not None:
            self.model.check_lock(target, lock_key)

    # ----- handlers -----

    def handlers(self) -> dict[str, Handler]:
        return self._execution_handlers() | {
            "ping": self.on_status,
            "status": self.on_status,
            "queue_get": self.on_queue_get,
            "queue_item_add": self.on_item_add,
            "queue_item_add_batch": self.on_item_add_batch,
            "queue_item_get": self.on_item_get,
            "queue_item_remove": self.on_item_remove,
            "queue_item_remove_batch": self.on_item_remove_batch,
            "queue_item_move": self.on_item_move,
            "queue_item_move_batch": self.on_item_move_batch,
            "queue_item_update": self.on_item_update,
            "queue_clear": self.on_queue_clear,
            "queue_mode_set": self.on_mode_set,
            "lock": self.on_lock,
            "lock_info": self.on_lock_info,
            "unlock": self.on_unlock,
            "manager_stop": self.on_manager_stop,
            "manager_kill": self.on_manager_kill,
        }

    def gated_handlers(self) -> dict[str, Handler]:
        """Every method with the proposals' (ADR 30), each refusing what a member of a gated
        group may not ask: the requests that name the caller's group are checked here; the
        others by the gateway, the 0MQ bridge and the NATS permissions of its user."""
        every = self.handlers() | self.proposals.handlers()
        return {method: self._gated(method, h) for method, h in every.items()}

    def _gated(self, method: str, handler: Handler) -> Handler:
        async def checked(req: Any) -> Any:
            group = getattr(req, "user", None) and getattr(req, "user_group", None)
            if isinstance(group, str):
                self.desk.check_allowed(method, group)
            return await handler(req)

        return checked

    def _execution_handlers(self) -> dict[str, Handler]:
        tasks = TaskHandlers(self, self.executor)  # functions and scripts: ADR 16
        dry_runs = DryRunHandlers(self, self.executor)  # simulated plans: ADR 31
        return (
            ExecutionHandlers(self, self.executor).handlers()
            | tasks.handlers()
            | dry_runs.handlers()
        )

    async def on_status(self, req: api.Empty) -> Status:
        return self._status or self.status()

    async def on_queue_get(self, req: api.Empty) -> api.QueueGetReply:
        m = self.model
        return api.QueueGetReply(
            items=m.items.as_list(),
            running_item=m.running_item or {},
            plan_queue_uid=m.plan_queue_uid,
        )

    async def on_item_get(self, req: api.QueueItemGet) -> api.ItemGetReply:
        return api.ItemGetReply(item=self.model.items[self.model.locate(req.pos, req.uid)])

    async def on_item_add(self, req: api.QueueItemAdd) -> api.ItemReply:
        if self.desk.gated(req.user_group) and not isinstance(req.item, msgspec.UnsetType):
            return await self.proposals.propose(
                [req.item],
                req.user,
                req.user_group,
                req.lock_key,
                pos=req.pos,
                before_uid=req.before_uid,
                after_uid=req.after_uid,
            )
        if groupable(req):
            return await self.adds.add(req, lambda: self.model, self._locked_edit, self.commit)
        async with self.write_lock:
            await self._locked_edit(req.lock_key)
            ev = self.model.plan_add(req)
            await self.commit(ev)
            return api.ItemReply(item=ev.items[0], qsize=len(self.model.items))

    async def on_item_add_batch(self, req: api.QueueItemAddBatch) -> api.BatchReply:
        if self.desk.gated(req.user_group):
            return await self.proposals.propose_batch(req)
        async with self.write_lock:
            await self._locked_edit(req.lock_key)
            ev, results = self.model.plan_add_batch(req)
            if ev is None:
                bad = sum(not r.success for r in results)
                return api.BatchReply(
                    success=False,
                    msg=f"Failed to add items: {bad} of {len(results)} items are invalid",
                    qsize=len(self.model.items),
                    items=req.items,
                    results=results,
                )
            await self.commit(ev)
            return api.BatchReply(items=ev.items, qsize=len(self.model.items), results=results)

    async def on_item_remove(self, req: api.QueueItemRemove) -> api.ItemReply:
        async with self.write_lock:
            await self._locked_edit(req.lock_key)
            ev, item = self.model.plan_remove(req)
            await self.commit(ev)
            return api.ItemReply(item=item, qsize=len(self.model.items))

    async def on_item_remove_batch(self, req: api.QueueItemRemoveBatch) -> api.BatchReply:
        async with self.write_lock:
            await self._locked_edit(req.lock_key)
            ev, items = self.model.plan_remove_batch(req)
            await self.commit(ev)
            return api.BatchReply(items=items, qsize=len(self.model.items))

    async def on_item_move(self, req: api.QueueItemMove) -> api.ItemReply:
        async with self.write_lock:
            await self._locked_edit(req.lock_key)
            ev, item = self.model.plan_move(req)
            await self.commit(ev)
            return api.ItemReply(item=item, qsize=len(self.model.items))

    async def on_item_move_batch(self, req: api.QueueItemMoveBatch) -> api.BatchReply:
        async with self.write_lock:
            await self._locked_edit(req.lock_key)
            ev, items = self.model.plan_move_batch(req)
            await self.commit(ev)
            return api.BatchReply(items=items, qsize=len(self.model.items))

    async def on_item_update(self, req: api.QueueItemUpdate) -> api.ItemReply:
        async with self.write_lock:
            await self._locked_edit(req.lock_key)
            ev = self.model.plan_update(req)
            await self.commit(ev)
            return api.ItemReply(item=ev.item, qsize=len(self.model.items))

    async def on_queue_clear(self, req: api.EmptyLocked) -> api.Reply:
        async with self.write_lock:
            await self._locked_edit(req.lock_key)
            await self.commit(self.model.plan_clear())
            return api.Reply()

    async def on_mode_set(self, req: api.QueueModeSet) -> api.Reply:
        async with self.write_lock:
            await self._locked_edit(req.lock_key)
            ev = self.model.plan_mode(req)
            if ev.mode != self.model.mode:
                await self.commit(ev)
            return api.Reply()

    async def on_lock(self, req: api.LockRequest) -> api.LockReply:
        async with self.write_lock:
            await self._locked_edit(None, target=None)
            await self.commit(self.model.plan_lock(req))
            return api.LockReply(lock_info=self.model.lock, lock_info_uid=self.model.lock_info_uid)

    async def on_lock_info(self, req: api.LockInfoRequest) -> api.LockReply:
        try:
            self.model.check_lock_key(req.lock_key)
        except QServerError as e:
            return self._lock_refused("lock_info", e)
        return api.LockReply(lock_info=self.model.lock, lock_info_uid=self.model.lock_info_uid)

    async def on_unlock(self, req: api.UnlockRequest) -> api.LockReply:
        async with self.write_lock:
            await self._locked_edit(None, target=None)
            try:
                event = self.model.plan_unlock(req)
            except QServerError as e:
                return self._lock_refused("unlock", e)
            await self.commit(event)
            return api.LockReply(lock_info=self.model.lock, lock_info_uid=self.model.lock_info_uid)

    def _lock_refused(self, method: str, e: QServerError) -> api.LockReply:
        """A wrong key: the reference's reply carries the lock as it stands."""
        return api.LockReply(
            success=False,
            msg=refusal_text(method, e),
            lock_info=self.model.lock,
            lock_info_uid=self.model.lock_info_uid,
        )

    async def on_manager_stop(self, req: api.ManagerStop) -> api.Reply:
        state = self.executor.manager_state()
        if req.option == "safe_on" and state != "idle":
            raise Refused(
                f"Closing RE Manager with option '{req.option}' is allowed only in 'idle' "
                f"state. Current state: '{state}'"
            )
        if req.option == "safe_off" and self.executor.worker.env_exists:
            await self.executor.environment_destroy()
        logger.info("manager_stop (%s) requested: shutting down", req.option)
        asyncio.get_running_loop().call_later(0.05, self.stop_requested.set)
        return api.Reply()

    async def on_manager_kill(self, req: api.Empty) -> None:
        # Test hook: the reference blocks its event loop so its watchdog restarts it. Here the
        # process dies at once without answering, and its supervisor restarts it.
        logger.warning("manager_kill requested: killing this process without a reply")
        os.kill(os.getpid(), signal.SIGKILL)

    # ----- internal -----

    async def on_history_changed(self, msg: Msg) -> None:
        """The history's news; a request (after a clear) is answered once the status shows it."""
        try:
            info = msgspec.json.decode(msg.data, type=HistoryInfo)
        except msgspec.DecodeError:
            logger.warning("ignoring a malformed history event")
            return
        if info != self.history:
            self.history = info
            await self.publish_status()
        if msg.reply:
            with contextlib.suppress(TimeoutError):  # a held status goes out when let go
                await asyncio.wait_for(self._unheld.wait(), HISTORY_SYNC_S)
            with contextlib.suppress(Exception):
                await msg.respond(b"")

    async def sync_history(self, seq: int) -> None:
        """Take the history's info once it holds the record at `seq` (just written)."""
        try:
            resp = await self.nc.request(
                self.subjects.history_info,
                encode(HistoryInfoRequest(min_seq=seq)),
                timeout=HISTORY_SYNC_S,
            )
            info = msgspec.json.decode(resp.data, type=HistoryInfo)
        except Exception as e:  # the history service is away: its event tells later
            logger.info("the history service did not confirm record %d: %r", seq, e)
            return
        if info != self.history:
            self.history = info
            await self.publish_status()

    async def on_lock_check(self, msg: Msg) -> None:
        try:
            req = msgspec.json.decode(msg.data, type=LockCheck)
            self.model.check_lock(req.target, req.lock_key)
            reply = LockCheckReply(allowed=True)
        except QServerError as e:
            reply = LockCheckReply(allowed=False, msg=e.msg)
        except msgspec.DecodeError as e:
            reply = LockCheckReply(allowed=False, msg=f"malformed lock check: {e}")
        await msg.respond(encode(reply))

    async def fetch_history_info(self) -> None:
        """Ask the history service for its counts until it answers (it may start later)."""
        while True:
            try:
                resp = await self.nc.request(self.subjects.history_info, b"", timeout=1.0)
                await self.on_history_changed(resp)
                return
            except Exception:
                await asyncio.sleep(0.5)

    def summary(self) -> dict[str, Any]:
        return {"items": len(self.model.items), "log_seq": self.log.last_seq}
