"""The queue service's proposal methods: propose, list, inspect, edit, approve, reject (ADR 30).

Every change is one event of the queue's log, under the queue's write lock, so proposals
have the queue's guarantees (crash, failover, bad input). A rejection's history record is
kept in the queue state until it is in the history stream, and written again by a new
leader otherwise (the history drops a record it has by its uid).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from qserver.protocol import api
from qserver.protocol.items import HistoryRecord
from qserver.protocol.proposals import (
    EventKind,
    Proposal,
    ProposalApproveReply,
    ProposalEvent,
    ProposalGateReply,
    ProposalListReply,
    ProposalReply,
    proposal_uid,
)
from qserver.protocol.queue_log import ProposalsAdded, RecordsWritten
from services.queue.core import QueueCore
from services.queue.proposal_desk import ProposalDesk
from services.runtime.service_base import Handler, encode

logger = logging.getLogger(__name__)

# A dry run simulates the whole plan in the environment: it may take a while.
DRY_RUN_TIMEOUT_S = 30.0


class ProposalHandlers:
    def __init__(self, svc: QueueCore, desk: ProposalDesk) -> None:
        self.svc = svc
        self.desk = desk

    def handlers(self) -> dict[str, Handler]:
        return {
            "proposal_add": self.on_add,
            "proposal_list": self.on_list,
            "proposal_get": self.on_get,
            "proposal_update": self.on_update,
            "proposal_approve": self.on_approve,
            "proposal_reject": self.on_reject,
            "proposal_gate": self.on_gate,
        }

    # ----- events -----

    async def publish(
        self,
        kind: EventKind,
        p: Proposal,
        *,
        reviewer: str = "",
        reason: str = "",
        index: int | None = None,
    ) -> None:
        ev = ProposalEvent(
            time=time.time(),
            kind=kind,
            uid=proposal_uid(p),
            proposed_by=p.proposed_by,
            user_group=p.user_group,
            proposal=p,
            reviewer=reviewer,
            reason=reason,
            index=index,
            proposals_uid=self.svc.model.proposals_uid,
        )
        with contextlib.suppress(Exception):
            await self.svc.nc.publish(self.svc.subjects.proposals_event, encode(ev))

    async def _announce_added(self, ev: ProposalsAdded, why: list[str]) -> None:
        for p in ev.proposals:
            await self.publish("proposed", p)
        rules = [w for w in why if w]
        for n, item in enumerate(ev.approved):
            p = Proposal(
                item=item,
                proposed_by=str(item.user),
                user_group=str(item.user_group),
                time=time.time(),
            )
            await self.publish("auto_approved", p, reason=rules[n], index=ev.index + n)

    # ----- proposing -----

    async def propose(
        self,
        items: list[api.SubmittedItem],
        user: str,
        group: str,
        lock_key: str | None,
        *,
        note: str = "",
        pos: api.Pos | UnsetType = UNSET,
        before_uid: str | UnsetType = UNSET,
        after_uid: str | UnsetType = UNSET,
    ) -> api.ItemReply:
        async with self.svc.write_lock:
            await self.svc.prepare_edit(lock_key)
            ev, why = self.desk.plan_propose(
                self.svc.model,
                items,
                user,
                group,
                note=note,
                pos=pos,
                before_uid=before_uid,
                after_uid=after_uid,
            )
            await self.svc.commit(ev)
        await self._announce_added(ev, why)
        if ev.approved:
            return api.ItemReply(
                msg=f"The item was approved by the group's {why[0]} and added to the queue",
                item=ev.approved[0],
                qsize=len(self.svc.model.items),
                auto_approved=True,
            )
        return api.ItemReply(
            msg="The item was added to the proposals: it waits for a reviewer",
            item=ev.proposals[0].item,
            qsize=len(self.svc.model.items),
            proposed=True,
        )

    async def propose_batch(self, req: api.QueueItemAddBatch) -> api.BatchReply:
        async with self.svc.write_lock:
            await self.svc.prepare_edit(req.lock_key)
            ev, why, results = self.desk.plan_propose_batch(self.svc.model, req)
            if ev is None:
                bad = sum(not r.success for r in results)
                return api.BatchReply(
                    success=False,
                    msg=f"Failed to add items: {bad} of {len(results)} items are invalid",
                    qsize=len(self.svc.model.items),
                    items=req.items,
                    results=results,
                )
            await self.svc.commit(ev)
        await self._announce_added(ev, why)
        waiting = len(ev.proposals)
        return api.BatchReply(
            msg=f"{waiting} of {len(results)} items wait for review as proposals; "
            f"{len(ev.approved)} were approved by the group's rules",
            items=[*ev.approved, *(p.item for p in ev.proposals)],
            qsize=len(self.svc.model.items),
            results=results,
        )

    async def on_add(self, req: api.ProposalAdd) -> api.ItemReply:
        return await self.propose([req.item], req.user, req.user_group, req.lock_key, note=req.note)

    # ----- reading -----

    async def on_list(self, req: api.Empty) -> ProposalListReply:
        m = self.svc.model
        return ProposalListReply(
            proposals=list(m.proposals.values()), proposals_uid=m.proposals_uid
        )

    async def on_get(self, req: api.ProposalUid) -> ProposalReply:
        p = self.desk.find(self.svc.model, req.uid)
        dry_run = await self.dry_run(p) if req.dry_run else None
        return ProposalReply(proposal=p, dry_run=dry_run)

    async def dry_run(self, p: Proposal) -> dict[str, Any]:
        """The environment's dry run of the item (`item_dry_run`), or why there is none."""
        # The item itself (checked as its proposer's), not its uid: `item_dry_run` would ask
        # `proposal_get` for it, which is this very endpoint, busy with this request.
        body = encode(
            {"item": msgspec.to_builtins(p.item), "user": p.proposed_by, "user_group": p.user_group}
        )
        subject = self.svc.subjects.api("item_dry_run")
        try:
            resp = await self.svc.nc.request(subject, body, timeout=DRY_RUN_TIMEOUT_S)
            out = msgspec.json.decode(resp.data)
        except NoRespondersError:
            return {"success": False, "msg": "Dry runs are not available: no service answers"}
        except NatsTimeout:
            return {"success": False, "msg": f"The dry run took over {DRY_RUN_TIMEOUT_S:.0f} s"}
        except Exception as e:
            return {"success": False, "msg": f"The dry run could not be had: {e!r}"}
        return out if isinstance(out, dict) else {"success": False, "msg": "Bad dry run reply"}

    async def on_gate(self, req: api.ProposalGate) -> ProposalGateReply:
        return ProposalGateReply(gated=self.desk.gated(req.user_group))

    # ----- reviewing -----

    async def on_update(self, req: api.ProposalUpdate) -> ProposalReply:
        async with self.svc.write_lock:
            await self.svc.prepare_edit(None)
            ev = self.desk.plan_edit(self.svc.model, req)
            await self.svc.commit(ev)
        await self.publish("edited", ev.proposal, reviewer=req.user)
        return ProposalReply(proposal=ev.proposal)

    async def on_approve(self, req: api.ProposalApprove) -> ProposalApproveReply:
        async with self.svc.write_lock:
            await self.svc.prepare_edit(req.lock_key)
            p = self.desk.find(self.svc.model, req.uid)
            ev = self.desk.plan_approve(self.svc.model, req)
            await self.svc.commit(ev)
        await self.publish("approved", p, reviewer=req.user, index=ev.index)
        logger.info("proposal %s approved by %s to position %d", req.uid, req.user, ev.index)
        return ProposalApproveReply(item=ev.item, qsize=len(self.svc.model.items))

    async def on_reject(self, req: api.ProposalReject) -> ProposalReply:
        async with self.svc.write_lock:
            await self.svc.prepare_edit(None)
            p = self.desk.find(self.svc.model, req.uid)
            ev = self.desk.plan_reject(self.svc.model, req)
            async with self.svc.status_held():
                await self.svc.commit(ev)
                await self.write_records()
        reason = ev.record.result.reason
        await self.publish("rejected", p, reviewer=req.user, reason=str(reason))
        logger.info("proposal %s rejected by %s", req.uid, req.user)
        return ProposalReply(proposal=p)

    async def write_records(self) -> None:
        """Write the pending records of rejected proposals to the history (lock held)."""
        pending = list(self.svc.model.unwritten_records.values())
        if not pending:
            return
        try:
            seq = 0
            for record in pending:
                seq = await self._publish_record(record)
            await self.svc.sync_history(seq)
            await self.svc.commit(RecordsWritten(record_uids=[r.record_uid for r in pending]))
        except Exception:
            # Kept in the queue state: written again at the next rejection or takeover.
            logger.exception("writing %d rejected proposals to the history failed", len(pending))

    async def _publish_record(self, record: HistoryRecord) -> int:
        js = self.svc.nc.jetstream()
        ack = await js.publish(
            self.svc.subjects.history_log,
            encode(record),
            headers={"Nats-Msg-Id": record.record_uid},
        )
        return int(ack.seq)
