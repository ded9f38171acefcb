"""Proposals: items that wait for a reviewer before they reach the queue (ADR 30).

A proposal is stored in the queue's log (queue_log.py) with the same guarantees as the
queue. Its uid is the uid its item keeps in the queue once approved. Requests are in api.py
(`proposal_*`); this module holds the stored record, the replies and the event published on
`<prefix>.events.proposals`.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from qserver.protocol.api import Reply
from qserver.protocol.items import QueueItem


class Proposal(msgspec.Struct, frozen=True, kw_only=True):
    """An item waiting for review, with who proposed it, when, and why."""

    item: QueueItem  # as it would be queued: uid, user and user_group set
    proposed_by: str
    user_group: str
    time: float  # when proposed (unix s)
    note: str = ""
    edited_by: str = ""  # the last reviewer who edited it, if any


def proposal_uid(p: Proposal) -> str:
    return str(p.item.item_uid)


EventKind = Literal["proposed", "auto_approved", "edited", "approved", "rejected"]


class ProposalEvent(msgspec.Struct, frozen=True, kw_only=True):
    """Published on `<prefix>.events.proposals` after the change is stored.

    The proposer learns the fate of its proposal from these (`proposed_by`).
    """

    time: float
    kind: EventKind
    uid: str
    proposed_by: str
    user_group: str
    proposal: Proposal | None = None  # as it is (proposed, edited) or was (the others)
    reviewer: str = ""  # who edited, approved or rejected it
    reason: str = ""  # why it was rejected, or which rule approved it
    index: int | None = None  # where it went in the queue (approved, auto_approved)
    proposals_uid: str = ""  # changes with every change of the list


class ProposalListReply(Reply, kw_only=True):
    proposals: list[Proposal]
    proposals_uid: str


class ProposalReply(Reply, kw_only=True):
    proposal: Proposal
    # `proposal_get` with `dry_run`: the reply of `item_dry_run` for the item, or why there
    # is none (`{"success": false, "msg": ...}`).
    dry_run: dict[str, Any] | None = None


class ProposalApproveReply(Reply, kw_only=True):
    item: QueueItem
    qsize: int


class ProposalGateReply(Reply, kw_only=True):
    gated: bool
