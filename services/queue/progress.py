"""The status's `progress` key: the running run's progress, from the progress events (ADR 25).

Every queue service instance (the standby too) follows `<prefix>.events.progress` and, at
start, reads the last event kept in the progress stream, so a restarted or new leader shows
the progress of a plan that kept running (or is paused) without waiting for its next point.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from qserver.protocol.progress import Progress, ProgressSummary, progress_decoder, summary
from qserver.protocol.subjects import Subjects
from services.runtime.progress_stream import ensure_progress_stream_logged

logger = logging.getLogger(__name__)

# Point updates alone publish the status at most this often; a run's start and end at once.
STATUS_EVERY_S = 1.0


class ProgressWatch:
    """The last progress event, and a status publication when the summary changes enough."""

    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        subjects: Subjects,
        publish_status: Callable[[], Awaitable[None]],
    ) -> None:
        self._nc = nc
        self._js = js
        self._subjects = subjects
        self._publish_status = publish_status
        self.latest: Progress | None = None
        self._published_at = 0.0  # time.monotonic() of the last status sent for a point

    async def watch(self) -> None:
        await ensure_progress_stream_logged(self._js, self._subjects)
        await self._nc.subscribe(self._subjects.progress_event, cb=self.on_progress)
        try:
            msg = await self._js.get_last_msg(
                self._subjects.progress_stream, self._subjects.progress_event
            )
        except NotFoundError:
            return  # no run since the stream was made
        except Exception as e:
            logger.warning("the last progress event could not be read: %r", e)
            return
        if self.latest is None and msg.data:
            self._take(msg.data)

    async def on_progress(self, msg: Msg) -> None:
        before = self.latest
        if not self._take(msg.data):
            return
        now = time.monotonic()
        new_run = before is None or before.done or before.run_uid != self.latest.run_uid  # type: ignore[union-attr]
        if new_run or self.latest.done or now - self._published_at >= STATUS_EVERY_S:  # type: ignore[union-attr]
            self._published_at = now
            await self._publish_status()

    def _take(self, data: bytes) -> bool:
        try:
            p = progress_decoder.decode(data)
        except msgspec.ValidationError as e:
            logger.warning("a progress event was not understood: %s", e)
            return False
        last = self.latest
        if last is not None and last.run_uid == p.run_uid and p.time < last.time:
            return False  # an older one, come late
        self.latest = p
        return True

    def summary(self, running_item_uid: str | None) -> ProgressSummary | None:
        """The running item's run progress; None when no run of it is open."""
        p = self.latest
        if p is None or p.done or running_item_uid is None:
            return None
        if p.item_uid is not None and p.item_uid != running_item_uid:
            return None  # a run of an item that is no longer running
        return summary(p)
