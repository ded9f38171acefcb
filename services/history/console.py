"""The console's backlog: the console stream followed, `console_output*` answered from it.

Every gateway, web page and CLI monitor asks here, so they all see the same recent output
with the same uids, whenever they started (ADR 18).
"""

from __future__ import annotations

import logging

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as jsapi

from qserver.jsutil import read_stream_with_headers
from qserver.protocol import api, console
from qserver.protocol.subjects import Subjects
from services.history.console_backlog import ConsoleBacklog
from services.runtime.console import ensure_console_stream
from services.runtime.service_base import Handler

logger = logging.getLogger(__name__)


class ConsoleKeeper:
    """Follows the console stream from its last `MAX_MSGS` messages on."""

    def __init__(self, js: JetStreamContext, subjects: Subjects) -> None:
        self.js = js
        self.subjects = subjects
        self.backlog = ConsoleBacklog()

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
        await self.js.subscribe(
            s.console_event,
            stream=s.console_stream,
            cb=self.on_msg,
            ordered_consumer=True,
            idle_heartbeat=2.0,
            config=jsapi.ConsumerConfig(
                deliver_policy=jsapi.DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=self.backlog.last_seq + 1,
            ),
        )
        logger.info("console backlog loaded: %d messages", len(self.backlog.entries))

    def _add(self, seq: int, data: bytes, headers: dict[str, str] | None) -> None:
        try:
            m = console.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return  # not a console message: nothing to show
        uid = (headers or {}).get(console.UID_HEADER)
        self.backlog.add(seq, uid, m.time, m.msg)

    async def on_msg(self, msg: Msg) -> None:
        assert msg.metadata.sequence is not None
        self._add(msg.metadata.sequence.stream, msg.data, msg.headers)

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
