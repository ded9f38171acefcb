"""The last status event, kept by nats-server for plain `status` requests (ADR 35).

A memory stream of one message captures `<prefix>.events.status`. A client that does not
follow the events reads it with a JetStream direct get: nats-server answers, and the queue
service is not woken. The client takes it only if it was stored less than its period +
`FRESH_MARGIN_S` ago (its `Nats-Time-Stamp`), as a follower trusts an event, and if its
number shows every change the client was told about (`StatusMirror.on_stored`). The stream
keeps a message at most `BACKSTOP_S`: an expiry timer per heartbeat (a `max_age` of the
period + the margin) cost nats-server more at idle than the stream itself.

The leader makes the stream when it takes the lead and again after a reconnection (a
restarted nats-server has lost it), and empties it when it stops cleanly: a `status` right
after a clean stop is asked of the (gone) service, as before.
"""

from __future__ import annotations

import asyncio
import logging

from nats.js import JetStreamContext, api

from qserver.jsutil import ensure_stream
from qserver.protocol.subjects import Subjects

logger = logging.getLogger(__name__)

# How long nats-server keeps a status at most: a dead leader's last one is gone after this
# (clients stop taking it after its period + FRESH_MARGIN_S already).
BACKSTOP_S = 60.0


class StatusStore:
    """The status stream of one queue server, as its leader keeps it."""

    def __init__(self, js: JetStreamContext, subjects: Subjects) -> None:
        self._js = js
        self._subjects = subjects
        self._made = False
        self._task: asyncio.Task[None] | None = None

    async def ensure(self) -> None:
        """Make (or update) the stream; a failure is logged: clients then ask the service."""
        try:
            await asyncio.wait_for(self._ensure(), 10.0)
        except Exception as e:
            logger.warning(
                "the status stream %s could not be made (%r): plain `status` requests go to "
                "the queue service",
                self._subjects.status_stream,
                e,
            )
            return
        self._made = True

    async def _ensure(self) -> None:
        await ensure_stream(
            self._js,
            self._subjects.status_stream,
            [self._subjects.status_event],
            storage=api.StorageType.MEMORY,
            # One node holds it: a copy trusted for the heartbeat plus a margin needs no
            # replicas; while its node is down clients ask the service.
            replicas=1,
            max_msgs=1,
            max_msgs_per_subject=1,
            max_age=BACKSTOP_S,
            allow_direct=True,
            discard=api.DiscardPolicy.OLD,
        )

    def reconnected(self) -> None:
        """After a reconnection: make the stream again if it was made (nats-server may have
        restarted and lost it, being in memory)."""
        if self._made and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self.ensure())

    async def forget(self) -> None:
        """Empty the stream (a clean stop): no `status` is answered for a stopped leader."""
        if self._task is not None:
            self._task.cancel()
        if not self._made:
            return
        try:
            await self._js.purge_stream(self._subjects.status_stream)
        except Exception as e:
            logger.warning("the status stream could not be emptied: %r", e)
