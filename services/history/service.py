"""The history service's NATS boundary: history_get/history_clear and the history stream."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as jsapi

from qserver.errors import Locked, Refused
from qserver.jsutil import ensure_stream, read_stream
from qserver.protocol import api
from qserver.protocol.api import REQUEST_TYPES
from qserver.protocol.internal import LockCheck, LockCheckReply
from qserver.protocol.items import HistoryRecord
from qserver.protocol.subjects import Subjects
from qserver.service_base import Handler, encode, failure
from services.history.model import History

logger = logging.getLogger(__name__)

DUPLICATE_WINDOW_S = 3600.0
_record_decoder = msgspec.json.Decoder(HistoryRecord)


class HistoryService:
    """Owns plan history: reads the history stream, answers queries, purges on clear."""

    def __init__(
        self, nc: NATS, js: JetStreamContext, subjects: Subjects, *, replicas: int = 1
    ) -> None:
        self.nc = nc
        self.js = js
        self.subjects = subjects
        self.replicas = replicas
        self.history = History(subjects.history_stream)
        self.stop_requested = asyncio.Event()
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        s = self.subjects
        await ensure_stream(
            self.js,
            s.history_stream,
            [s.history_log],
            replicas=self.replicas,
            duplicate_window=DUPLICATE_WINDOW_S,
            max_msg_size=8 * 1024 * 1024,
        )
        async for seq, data in read_stream(self.js, s.history_stream, s.history_log, 1):
            self._add(seq, data)
        await self.js.subscribe(
            s.history_log,
            stream=s.history_stream,
            cb=self.on_record,
            ordered_consumer=True,
            idle_heartbeat=2.0,
            config=jsapi.ConsumerConfig(
                deliver_policy=jsapi.DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=self.history.last_seq + 1,
            ),
        )
        logger.info("history loaded: %d items", len(self.history.records))

    def _add(self, seq: int, data: bytes) -> bool:
        try:
            return self.history.append(seq, _record_decoder.decode(data))
        except msgspec.DecodeError:
            logger.error("skipping malformed history record at seq %d", seq)
            return False

    async def on_record(self, msg: Msg) -> None:
        assert msg.metadata.sequence is not None
        async with self._lock:
            if self._add(msg.metadata.sequence.stream, msg.data):
                await self.publish_info()

    async def publish_info(self) -> None:
        with contextlib.suppress(Exception):
            await self.nc.publish(self.subjects.history_changed, encode(self.history.info()))

    def handlers(self) -> dict[str, Handler]:
        return {"history_get": self.on_history_get, "history_clear": self.on_history_clear}

    async def on_history_get(self, req: api.HistoryGet) -> api.HistoryGetReply:
        info = self.history.info()
        return api.HistoryGetReply(
            items=self.history.page(req.offset, req.limit),
            plan_history_uid=info.plan_history_uid,
            total=info.items_in_history,
        )

    async def on_history_clear(self, req: api.HistoryClear) -> api.Reply:
        await self._check_lock(req.lock_key)
        async with self._lock:
            keep, below = self.history.purge_point(req)
            await self.js.purge_stream(self.subjects.history_stream, seq=below, keep=keep)
            self.history.purge(keep, below)
        await self.publish_info()
        return api.Reply()

    async def _check_lock(self, lock_key: str | None) -> None:
        try:
            resp = await self.nc.request(
                self.subjects.lock_check, encode(LockCheck(lock_key=lock_key)), timeout=2.0
            )
        except Exception as e:
            raise Refused(
                f"Could not check the queue lock with the queue service ({e!r}); try again"
            ) from e
        reply = msgspec.json.decode(resp.data, type=LockCheckReply)
        if not reply.allowed:
            raise Locked(reply.msg)

    async def on_history_info(self, msg: Msg) -> None:
        await msg.respond(encode(self.history.info()))

    async def on_any_api(self, msg: Msg) -> None:
        """Answer methods that no service implements; known ones are left to their owners."""
        method = msg.subject.rsplit(".", 1)[-1]
        if method not in REQUEST_TYPES and msg.reply:
            await msg.respond(failure(f"Unknown method '{method}'"))
