"""The console's backlog: the console stream followed, `console_output*` answered from it.

Every gateway, web page and CLI monitor asks here, so they all see the same recent output
with the same uids, whenever they started (ADR 18).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgspec
from nats.aio.client import Client as NATS

from qserver.jsutil import read_stream_with_headers
from qserver.protocol import api, console
from qserver.protocol.subjects import Subjects
from services.history.console_backlog import ConsoleBacklog
from services.runtime.console import ensure_console_stream
from services.runtime.doc_stream import Reconnects, StreamFollower, StreamMsg
from services.runtime.service_base import Handler

logger = logging.getLogger(__name__)


class ConsoleKeeper:
    """Follows the console stream from its last `MAX_MSGS` messages on."""

    def __init__(self, nc: NATS, subjects: Subjects, reconnects: Reconnects | None = None) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.subjects = subjects
        self.backlog = ConsoleBacklog()
        self.reconnects = reconnects or Reconnects()
        self._following: asyncio.Task[None] | None = None

    async def load(self) -> None:
        s = self.subjects
        info = await ensure_console_stream(self.js, s)
        created = info.created.isoformat() if info.created else ""
        state = info.state
        first = max(state.first_seq, state.last_seq - self.backlog.max_msgs + 1, 1)
        self.backlog.reset(f"{s.console_stream}:{created}", first - 1)
        messages = read_stream_with_headers(self.js, s.console_stream, s.console_event, first)
        async for seq, data, headers in messages:
            self._add(seq, data, headers)
        if self._following is None:  # a pull consumer, as the history's (ADR 28)
            follower = StreamFollower(
                self.nc, s.console_stream, self.backlog.last_seq + 1, self.reconnects
            )
            self._following = asyncio.create_task(follower.follow(self.on_msg))
        logger.info("console backlog loaded: %d messages", len(self.backlog.entries))

    def _add(self, seq: int, data: bytes, headers: dict[str, str] | None) -> None:
        try:
            m = console.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return  # not a console message: nothing to show
        uid = (headers or {}).get(console.UID_HEADER)
        self.backlog.add(seq, uid, m.time, m.msg)

    async def on_msg(self, msg: StreamMsg) -> None:
        self._add(msg.seq, msg.data, msg.headers)

    async def close(self) -> None:
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
        return api.ConsoleOutputReply(text=self.backlog.text(req.nlines))

    async def on_console_output_uid(self, req: api.Empty) -> api.ConsoleOutputUidReply:
        return api.ConsoleOutputUidReply(console_output_uid=self.backlog.text_uid)

    async def on_console_output_update(
        self, req: api.ConsoleOutputUpdate
    ) -> api.ConsoleOutputUpdateReply:
        msgs = self.backlog.since(req.last_msg_uid, req.with_uids)
        return api.ConsoleOutputUpdateReply(
            last_msg_uid=self.backlog.last_msg_uid, console_output_msgs=msgs
        )
