"""The console's backlog: the console stream followed, `console_output*` answered from it.

Every gateway, web page and CLI monitor asks here, so they all see the same recent output
with the same uids, whenever they started (ADR 18).

The stream is followed only while someone reads the console: from a `console_output*`
request until `FOLLOW_FOR_S` after the last one. A request that finds the stream not
followed first reads what came meanwhile (the stream keeps it), then follows again, so
every answer is the same as with the stream followed all along. On a stack whose console
no one reads, the console lines of each request (two per `queue_item_add`) cost this
service nothing.

Every answer holds what the stream held when it was asked: a request that finds the stream
followed waits (CATCH_UP_S at most) until the follower has handed over the stream's last
message of that moment. A client that saw a plan end and then reads the console gets the
plan's last lines, however far behind a loaded machine left the follower (ADR 18).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgspec
from nats.aio.client import Client as NATS
from nats.js import api as jsapi

from qserver.jsutil import read_stream_with_headers
from qserver.protocol import api, console
from qserver.protocol.subjects import Subjects
from services.history.console_backlog import ConsoleBacklog
from services.runtime.console import _positive, ensure_console_stream
from services.runtime.doc_stream import ReadProgress, Reconnects, StreamFollower, StreamMsg
from services.runtime.service_base import Handler

logger = logging.getLogger(__name__)

# How long the stream is followed after the last `console_output*` request (pollers ask
# every 0.1-1 s; the web page's console and `qserver monitor` take the events directly).
FOLLOW_FOR_S = 60.0
FOLLOW_ENV = "QSERVER_CONSOLE_FOLLOW_S"
# How long a request waits for a follower that is behind the stream (then it is answered
# with what is there, and the wait is logged).
CATCH_UP_S = 2.0


class ConsoleKeeper:
    """Follows the console stream from its last `MAX_MSGS` messages on."""

    def __init__(self, nc: NATS, subjects: Subjects, reconnects: Reconnects | None = None) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.subjects = subjects
        self.backlog = ConsoleBacklog()
        self.reconnects = reconnects or Reconnects()
        self._following: asyncio.Task[None] | None = None
        self._identity = ""  # the stream's name and creation time, as loaded
        self._lock = asyncio.Lock()  # one catch-up at a time
        self._stop_at = 0.0  # loop time after which following stops (no request since)
        self._stopper: asyncio.TimerHandle | None = None
        self.follow_for = _positive(FOLLOW_ENV, FOLLOW_FOR_S)
        self._seen = 0  # the stream's highest sequence handed over (kept or not)
        self._progress = ReadProgress()

    async def load(self) -> None:
        """Read the stream's last `MAX_MSGS` messages (at start; not followed until asked)."""
        info = await ensure_console_stream(self.js, self.subjects)
        await self._read(info, reset=True)
        logger.info("console backlog loaded: %d messages", len(self.backlog.entries))

    async def _read(self, info: jsapi.StreamInfo, *, reset: bool) -> None:
        """Read the stream from after the backlog's last message (or its last `MAX_MSGS`,
        starting over, if `reset` or the stream is not the one loaded)."""
        s = self.subjects
        created = info.created.isoformat() if info.created else ""
        identity = f"{s.console_stream}:{created}"
        state = info.state
        if reset or identity != self._identity or state.last_seq < self.backlog.last_seq:
            first = max(state.first_seq, state.last_seq - self.backlog.max_msgs + 1, 1)
            self.backlog.reset(identity, first - 1)
            self._identity = identity
            self._seen = first - 1
        first = self.backlog.last_seq + 1
        messages = read_stream_with_headers(self.js, s.console_stream, s.console_event, first)
        async for seq, data, headers in messages:
            self._add(seq, data, headers)

    async def _follow_while_asked(self) -> None:
        """Follow the stream (catching up first if it was not followed) until
        `follow_for` seconds after the last call."""
        loop = asyncio.get_running_loop()
        self._stop_at = loop.time() + self.follow_for
        if self._following is not None and not self._following.done():
            await self._caught_up()
            return
        async with self._lock:
            if self._following is not None and not self._following.done():
                await self._caught_up()
                return
            await self._read(await self.js.stream_info(self.subjects.console_stream), reset=False)
            # A pull consumer, as the history's (ADR 28).
            follower = StreamFollower(
                self.nc, self.subjects.console_stream, self.backlog.last_seq + 1, self.reconnects
            )
            self._following = asyncio.create_task(follower.follow(self.on_msg))
            self._stopper = loop.call_at(self._stop_at, self._maybe_stop)
            logger.debug("following the console stream from %d", self.backlog.last_seq + 1)

    async def _caught_up(self) -> None:
        """Wait until the follower has handed over what the stream holds now (CATCH_UP_S
        at most; the stream's state is asked of JetStream, one small request)."""
        try:
            info = await self.js.stream_info(self.subjects.console_stream)
        except Exception as e:  # JetStream away: answer with what is kept
            logger.debug("console stream state: %r", e)
            return
        target = info.state.last_seq
        if not await self._progress.until(lambda: self._seen >= target, CATCH_UP_S):
            logger.info(
                "the console follower is still behind the stream (at %d of %d) after %g s; "
                "answering with what it has",
                self._seen,
                target,
                CATCH_UP_S,
            )

    def _maybe_stop(self) -> None:
        """No request for `follow_for` seconds: stop following; else look again then."""
        loop = asyncio.get_running_loop()
        if loop.time() < self._stop_at:
            self._stopper = loop.call_at(self._stop_at, self._maybe_stop)
            return
        self._stopper = None
        if self._following is not None:
            self._following.cancel()  # StreamFollower.follow deletes its consumer
            self._following = None
            logger.debug("not following the console stream: no one asked for a while")

    def _add(self, seq: int, data: bytes, headers: dict[str, str] | None) -> None:
        if seq > self._seen:
            self._seen = seq
            self._progress.read()
        try:
            m = console.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return  # not a console message: nothing to show
        uid = (headers or {}).get(console.UID_HEADER)
        self.backlog.add(seq, uid, m.time, m.msg)

    async def on_msg(self, msg: StreamMsg) -> None:
        self._add(msg.seq, msg.data, msg.headers)

    async def close(self) -> None:
        if self._stopper is not None:
            self._stopper.cancel()
        if self._following is not None:
            self._following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._following

    def handlers(self) -> dict[str, Handler]:
        return {
            "console_output": self.on_console_output,
            "console_output_uid": self.on_console_output_uid,
            "console_output_update": self.on_console_output_update,
        }

    async def on_console_output(self, req: api.ConsoleOutput) -> api.ConsoleOutputReply:
        await self._follow_while_asked()
        return api.ConsoleOutputReply(text=self.backlog.text(req.nlines))

    async def on_console_output_uid(self, req: api.Empty) -> api.ConsoleOutputUidReply:
        await self._follow_while_asked()
        return api.ConsoleOutputUidReply(console_output_uid=self.backlog.text_uid)

    async def on_console_output_update(
        self, req: api.ConsoleOutputUpdate
    ) -> api.ConsoleOutputUpdateReply:
        await self._follow_while_asked()
        msgs = self.backlog.since(req.last_msg_uid, req.with_uids)
        return api.ConsoleOutputUpdateReply(
            last_msg_uid=self.backlog.last_msg_uid, console_output_msgs=msgs
        )
