"""`item_dry_run`: find the item, check it as an add would, have the environment simulate it.

The queue service only chooses and checks the item; the environment runs the plan's
generator against bluesky's simulator on a thread of its own (ADR 31).
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from msgspec import UNSET
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from qserver.errors import BadRequest, NotFound, QServerError, Refused
from qserver.protocol import api
from qserver.protocol.dry_run import (
    ENV_TIMEOUT_S,
    DryRunReply,
    DryRunSource,
    EnvDryRun,
    EnvDryRunReply,
)
from qserver.protocol.items import QueueItem
from services.queue.core import QueueCore
from services.queue.execution import Executor
from services.queue.model import normalize_item
from services.runtime.refusals import refusal_text
from services.runtime.service_base import Handler, encode

logger = logging.getLogger(__name__)

# The proposals' method (issue 15): `{"uid": ...}` -> a reply with the proposal's item.
PROPOSAL_METHOD = "proposal_get"
PROPOSAL_TIMEOUT_S = 5.0
_env_reply = msgspec.json.Decoder(EnvDryRunReply)


class DryRunHandlers:
    def __init__(self, svc: QueueCore, executor: Executor) -> None:
        self.svc = svc
        self.ex = executor

    def handlers(self) -> dict[str, Handler]:
        return {"item_dry_run": self.on_item_dry_run}

    async def on_item_dry_run(self, req: api.ItemDryRun) -> DryRunReply:
        item: QueueItem | None = None
        source: DryRunSource | None = None
        try:
            item, source = await self._find(req)
            # As when it starts: the owner's permissions may have changed since it was added.
            self.svc.catalog.validate(item)
            if item.item_type != "plan":
                raise BadRequest(f"Only plans can be dry-run: the item is {item.item_type!r}")
            reply = await self._simulate(item)
        except QServerError as e:
            return DryRunReply(
                success=False, msg=refusal_text("item_dry_run", e), item=_shown(item), source=source
            )
        if not reply.success:
            return DryRunReply(success=False, msg=reply.msg, item=_shown(item), source=source)
        return DryRunReply(item=_shown(item), source=source, report=reply.report)

    async def _find(self, req: api.ItemDryRun) -> tuple[QueueItem, DryRunSource]:
        given = [k for k in ("uid", "proposal_uid", "item") if getattr(req, k) is not UNSET]
        if len(given) != 1:
            raise BadRequest(
                "Specify exactly one of 'uid' (a queued or the running item), "
                f"'proposal_uid' (a proposal) or 'item' (an item): got {given or 'none'}"
            )
        model = self.svc.model
        if isinstance(req.uid, str):
            running = model.running_item
            if running is not None and running.item_uid == req.uid:
                return running, "running"
            if req.uid not in model.items:
                raise NotFound(f"Item with UID {req.uid!r} is not in the queue")
            return model.items[model.items.position(req.uid)], "queue"
        if isinstance(req.proposal_uid, str):
            return await self._proposal(req.proposal_uid), "proposal"
        assert not isinstance(req.item, msgspec.UnsetType)
        if isinstance(req.user_group, msgspec.UnsetType):
            raise BadRequest("The user group is not specified: an item is checked as its group's")
        user = req.user if isinstance(req.user, str) else ""
        return normalize_item(req.item, user, req.user_group), "item"

    async def _proposal(self, uid: str) -> QueueItem:
        """The proposal's item, from the proposals' own method."""
        subject = self.svc.subjects.api(PROPOSAL_METHOD)
        try:
            msg = await self.svc.nc.request(
                subject, msgspec.json.encode({"uid": uid}), timeout=PROPOSAL_TIMEOUT_S
            )
            reply = msgspec.json.decode(msg.data)
        except NoRespondersError:
            raise Refused(
                f"Proposals are not available on this server ('{PROPOSAL_METHOD}' does not answer)"
            ) from None
        except NatsTimeout:
            raise Refused(f"'{PROPOSAL_METHOD}' did not answer: try again") from None
        except msgspec.DecodeError as e:
            raise Refused(f"'{PROPOSAL_METHOD}' answered with malformed JSON: {e}") from None
        if not isinstance(reply, dict):
            raise Refused(f"'{PROPOSAL_METHOD}' answered with {type(reply).__name__}")
        if reply.get("success") is False:
            raise NotFound(str(reply.get("msg") or f"Proposal {uid!r} is not found"))
        raw = _proposal_item(reply)
        if raw is None:
            raise Refused(f"'{PROPOSAL_METHOD}' answered without the proposal's item")
        try:
            return msgspec.convert(raw, QueueItem)
        except msgspec.ValidationError as e:
            raise Refused(f"The proposal's item is not an item: {e}") from None

    async def _simulate(self, item: QueueItem) -> EnvDryRunReply:
        ex = self.ex
        if not ex.env_exists:
            raise Refused(
                "RE Worker environment is not open: a dry run needs the environment's plans "
                "and devices (open it with 'environment_open')"
            )
        state = ex.manager_state()
        if state in ("closing_environment", "destroying_environment"):
            raise Refused(f"The environment is closing (manager state '{state}')")
        request = EnvDryRun(item=msgspec.to_builtins(item), user_group=str(item.user_group))
        try:
            msg = await self.svc.nc.request(
                self.svc.subjects.env_cmd("dry_run"), encode(request), timeout=ENV_TIMEOUT_S
            )
            return _env_reply.decode(msg.data)
        except NoRespondersError:
            raise Refused("The environment does not answer (it may have just closed)") from None
        except NatsTimeout:
            raise Refused(
                f"The environment did not finish the dry run within {ENV_TIMEOUT_S:g} s"
            ) from None
        except msgspec.DecodeError as e:
            # An environment of an older version answers `dry_run` as an unknown command.
            raise Refused(f"The environment's answer is not a dry run report: {e}") from None


def _proposal_item(reply: dict[str, Any]) -> Any:
    """The item in a proposal reply: `item`, `proposal.item`, or the proposal itself."""
    if isinstance(reply.get("item"), dict):
        return reply["item"]
    proposal = reply.get("proposal")
    if isinstance(proposal, dict):
        if isinstance(proposal.get("item"), dict):
            return proposal["item"]
        if "name" in proposal:
            return {k: v for k, v in proposal.items() if k in QueueItem.__struct_fields__}
    return None


def _shown(item: QueueItem | None) -> dict[str, Any] | None:
    return None if item is None else msgspec.to_builtins(item)  # type: ignore[no-any-return]
