"""Proposals as domain logic: requests checked against the queue state, turned into events.

Nothing here talks to NATS (as model.py): each `plan_*` validates a request and returns the
one log event that makes the change; the service appends it and then applies it. Approval
is one event that both removes the proposal and inserts the item (ADR 30).
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from qserver.errors import BadRequest, NotFound, QServerError, Refused
from qserver.plan_tools.proposal_rules import Rule, first_match, gate_of
from qserver.protocol import api
from qserver.protocol.items import HistoryRecord, HistoryResult, QueueItem
from qserver.protocol.methods import GATED_METHODS
from qserver.protocol.proposals import Proposal
from qserver.protocol.queue_log import (
    ProposalApproved,
    ProposalEdited,
    ProposalRejected,
    ProposalsAdded,
)
from services.queue.catalog import PlanCatalog
from services.queue.model import QueueModel, new_uid, normalize_item

MAX_NOTE = 4096
MAX_REASON = 4096


def gated_refusal(method: str, group: str) -> Refused:
    return Refused(
        f"User group '{group}' may only propose items for review: '{method}' is not "
        "allowed to its members (their adds become proposals; see 'proposal_add')"
    )


class ProposalDesk:
    """Which groups are gated, and the events of proposing, editing, approving, rejecting."""

    def __init__(self, catalog: PlanCatalog) -> None:
        self.catalog = catalog
        self._rules: dict[str, tuple[Rule, ...] | None] = {}
        self._rules_of = ""  # the permissions uid `_rules` was made from

    def rules(self, group: str) -> tuple[Rule, ...] | None:
        """The auto-approve rules of a gated group; None if its items go to the queue."""
        if self._rules_of != self.catalog.permissions_uid:
            self._rules, self._rules_of = {}, self.catalog.permissions_uid
        if group not in self._rules:
            self._rules[group] = gate_of(self.catalog.permissions, group)
        return self._rules[group]

    def gated(self, group: str) -> bool:
        return self.rules(group) is not None

    def check_allowed(self, method: str, group: str) -> None:
        """Refuse what a gated group's member may not ask for."""
        if method not in GATED_METHODS and self.gated(group):
            raise gated_refusal(method, group)

    # ----- proposing -----

    def _auto_rule(self, rules: tuple[Rule, ...], item: QueueItem) -> Rule | None:
        if not rules or item.item_type != "plan":
            return None
        from qserver.plan_tools.permissions import device_names

        plans, devices = self.catalog.allowed(str(item.user_group))
        plan = plans.get(item.name)
        if plan is None:
            return None
        return first_match(
            rules, item.name, list(item.args), item.kwargs, plan, device_names(devices)
        )

    def plan_propose(
        self,
        m: QueueModel,
        items: list[api.SubmittedItem],
        user: str,
        group: str,
        *,
        note: str = "",
        pos: api.Pos | UnsetType = UNSET,
        before_uid: str | UnsetType = UNSET,
        after_uid: str | UnsetType = UNSET,
    ) -> tuple[ProposalsAdded, list[str]]:
        """The event adding these items as proposals (or to the queue, where a rule of the
        group lets them through), and for each item the rule that approved it or ""."""
        if len(note) > MAX_NOTE:
            raise BadRequest(f"The note is too long ({len(note)} characters, at most {MAX_NOTE})")
        rules = self.rules(group) or ()
        index = m.insertion(pos, before_uid, after_uid)
        now = time.time()
        proposals: list[Proposal] = []
        approved: list[QueueItem] = []
        why: list[str] = []
        for sub in items:
            item = normalize_item(sub, user, group)
            m.validate(item)
            item = msgspec.structs.replace(item, item_uid=new_uid())
            rule = self._auto_rule(rules, item)
            if rule is not None:
                approved.append(item)
                why.append(rule.describe())
            else:
                proposals.append(
                    Proposal(item=item, proposed_by=user, user_group=group, time=now, note=note)
                )
                why.append("")
        ev = ProposalsAdded(
            proposals=proposals,
            approved=approved,
            index=index,
            queue_uid=new_uid() if approved else "",
            proposals_uid=new_uid(),
        )
        return ev, why

    def plan_propose_batch(
        self, m: QueueModel, req: api.QueueItemAddBatch
    ) -> tuple[ProposalsAdded | None, list[str], list[api.BatchResult]]:
        """All or nothing, as `queue_item_add_batch`: the event, or None and the reasons."""
        subs: list[api.SubmittedItem] = []
        results: list[api.BatchResult] = []
        for raw in req.items:
            try:
                sub = msgspec.convert(raw, api.SubmittedItem)
                item = normalize_item(sub, req.user, req.user_group)
                m.validate(item)
                subs.append(sub)
                results.append(api.BatchResult(success=True))
            except msgspec.ValidationError as e:
                results.append(api.BatchResult(success=False, msg=f"Invalid item: {e}"))
            except QServerError as e:
                results.append(api.BatchResult(success=False, msg=e.msg))
        if not all(r.success for r in results):
            return None, [], results
        ev, why = self.plan_propose(
            m,
            subs,
            req.user,
            req.user_group,
            pos=req.pos,
            before_uid=req.before_uid,
            after_uid=req.after_uid,
        )
        return ev, why, results

    # ----- reviewing -----

    @staticmethod
    def find(m: QueueModel, uid: str) -> Proposal:
        p = m.proposals.get(uid)
        if p is None:
            raise NotFound(f"There is no proposal with UID '{uid}' (approved, rejected or unknown)")
        return p

    def plan_edit(self, m: QueueModel, req: api.ProposalUpdate) -> ProposalEdited:
        p = self.find(m, req.uid)
        if isinstance(req.item, UnsetType) and isinstance(req.note, UnsetType):
            raise BadRequest("Nothing to change: give 'item' and/or 'note'")
        item = p.item
        if not isinstance(req.item, UnsetType):
            # Checked as the proposer's: an edit does not widen what the group may run.
            item = normalize_item(req.item, p.proposed_by, p.user_group)
            m.validate(item)
            item = msgspec.structs.replace(item, item_uid=req.uid)
        note = p.note if isinstance(req.note, UnsetType) else req.note
        if len(note) > MAX_NOTE:
            raise BadRequest(f"The note is too long ({len(note)} characters, at most {MAX_NOTE})")
        edited = msgspec.structs.replace(p, item=item, note=note, edited_by=req.user)
        return ProposalEdited(proposal=edited, proposals_uid=new_uid())

    def plan_approve(self, m: QueueModel, req: api.ProposalApprove) -> ProposalApproved:
        p = self.find(m, req.uid)
        # The lists or the permissions may have changed since it was proposed.
        m.validate(p.item)
        index = m.insertion(req.pos, req.before_uid, req.after_uid)
        return ProposalApproved(
            uid=req.uid,
            item=p.item,
            index=index,
            reviewer=req.user,
            queue_uid=new_uid(),
            proposals_uid=new_uid(),
        )

    def plan_reject(self, m: QueueModel, req: api.ProposalReject) -> ProposalRejected:
        p = self.find(m, req.uid)
        reason = req.reason.strip()
        if not reason:
            raise BadRequest("A rejection needs a reason")
        if len(reason) > MAX_REASON:
            raise BadRequest(
                f"The reason is too long ({len(reason)} characters, at most {MAX_REASON})"
            )
        item: dict[str, Any] = msgspec.to_builtins(p.item)
        item.pop("properties", None)
        result = HistoryResult(
            exit_status="rejected",
            time_start=p.time,
            time_stop=time.time(),
            msg=f"Rejected by '{req.user}': {reason}",
            reviewer=req.user,
            reason=reason,
        )
        record = HistoryRecord(record_uid=new_uid(), item=item, result=result)
        return ProposalRejected(uid=req.uid, record=record, proposals_uid=new_uid())
