"""Services reply only to inboxes: a reply subject cannot aim a service's permissions elsewhere.

A request names its reply subject, and NATS checks only the responder's right to publish
there. A service may publish to state subjects (the queue to its log and to the worker's
commands, the worker to the results stream), so a client that sends `$SRV.PING` or an API
request with the reply subject `<prefix>.internal.results` would make the service write its
answer into that stream. Every message a service connection receives therefore loses a reply
subject that is not an inbox, unless the message came through a subscription to one of the
connection's own inboxes: JetStream deliveries (which keep their stream subject, with a
`$JS.ACK.` or `$JS.FC.` reply) arrive there, and only services may publish to inboxes.
See ADR 11.

JetStream also answers to whatever reply subject a request names, from its own client, which
no permission restrains: a user allowed one JetStream call (a direct get, a stream's info, a
consumer with a deliver subject of its choosing) can have JetStream publish the answer or the
stream's messages to a service's command or event subject. A service connection therefore
drops such messages on its subscriptions to anything but its inboxes (`relayed`): our
services publish those subjects themselves, never through JetStream (ADR 11, amendment).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from qserver.jsutil import written_by_jetstream

logger = logging.getLogger(__name__)

INBOXES = "_INBOX."


def reply_allowed(subscription: str, reply: str) -> bool:
    """Whether a service may answer at `reply` a message that came through `subscription`."""
    return not reply or reply.startswith(INBOXES) or subscription.startswith(INBOXES)


@dataclass
class InboxReplyMsg(Msg):
    """A received message whose reply subject, if not allowed, is dropped (and logged).

    `relayed`: JetStream's, yet arrived through a subscription that is not an inbox; see
    the module's docstring.
    """

    relayed: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        sub = self._client._subs.get(self._sid) if self._sid is not None else None
        subscription = sub.subject if sub is not None else ""
        if not subscription.startswith(INBOXES):
            self.relayed = written_by_jetstream(self.reply, self.headers, self.data)
        if not reply_allowed(subscription, self.reply):
            logger.warning(
                "not answering a message on %s: its reply subject %r is not an inbox",
                self.subject,
                self.reply,
            )
            self.reply = ""


Callback = Callable[[Msg], Awaitable[None]]


def _dropping_relayed(cb: Callback) -> Callback:
    async def guarded(msg: Msg) -> None:
        if getattr(msg, "relayed", False):
            logger.warning(
                "dropping a message JetStream sent to %s on someone's behalf (reply %r, "
                "headers %s): the services publish this subject themselves",
                msg.subject,
                msg.reply,
                sorted(msg.headers or ()),
            )
            return
        await cb(msg)

    return guarded


def reply_to_inboxes_only(nc: NATS) -> NATS:
    """Make `nc` drop reply subjects that are not inboxes, and drop JetStream's messages
    that arrive on its subscriptions to anything but an inbox (call before subscribing;
    nats.micro's endpoints subscribe through it too)."""
    nc.msg_class = InboxReplyMsg
    subscribe = nc.subscribe

    async def guarded_subscribe(
        subject: str, queue: str = "", cb: Callback | None = None, **kwargs: Any
    ) -> Any:
        if cb is not None and not subject.startswith(INBOXES):
            cb = _dropping_relayed(cb)
        return await subscribe(subject, queue, cb, **kwargs)

    nc.subscribe = guarded_subscribe  # type: ignore[method-assign, assignment]
    return nc
