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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

logger = logging.getLogger(__name__)

INBOXES = "_INBOX."


def reply_allowed(subscription: str, reply: str) -> bool:
    """Whether a service may answer at `reply` a message that came through `subscription`."""
    return not reply or reply.startswith(INBOXES) or subscription.startswith(INBOXES)


@dataclass
class InboxReplyMsg(Msg):
    """A received message whose reply subject, if not allowed, is dropped (and logged)."""

    def __post_init__(self) -> None:
        sub = self._client._subs.get(self._sid) if self._sid is not None else None
        if not reply_allowed(sub.subject if sub is not None else "", self.reply):
            logger.warning(
                "not answering a message on %s: its reply subject %r is not an inbox",
                self.subject,
                self.reply,
            )
            self.reply = ""


def reply_to_inboxes_only(nc: NATS) -> NATS:
    """Make `nc` drop reply subjects that are not inboxes (call before subscribing)."""
    nc.msg_class = InboxReplyMsg
    return nc
