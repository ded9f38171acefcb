"""The history service's NATS boundary: history_get/history_clear and the history stream."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from qserver import result_texts
from qserver.errors import BadRequest, Locked, NotFound, Refused
from qserver.jsutil import default_replicas, ensure_stream, read_stream
from qserver.protocol import api
from qserver.protocol.internal import HistoryInfoRequest, LockCheck, LockCheckReply
from qserver.protocol.items import HistoryRecord
from qserver.protocol.subjects import Subjects
from services.history.model import History, as_history_item
from services.runtime.doc_stream import ReadProgress, Reconnects, StreamFollower, StreamMsg
from services.runtime.service_base import Handler, encode

if TYPE_CHECKING:
    from services.history.tiled_catalog import TiledCatalog

logger = logging.getLogger(__name__)

DUPLICATE_WINDOW_S = 3600.0
# How long a change waits for the queue service's status to carry it before it is answered
# anyway (the queue service is away: it asks for the history's info when it leads again).
QUEUE_ACK_S = 2.0
# How long an info request with `min_seq` waits for the stream to reach that record.
SEQ_WAIT_S = 2.0
MIN_PARTIAL_UID = 5
_record_decoder = msgspec.json.Decoder(HistoryRecord)


class HistoryService:
    """Owns plan history: reads the history stream, answers queries, purges on clear."""

    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        subjects: Subjects,
        *,
        replicas: int | None = None,
        catalog: TiledCatalog | None = None,
        reconnects: Reconnects | None = None,
    ) -> None:
        self.nc = nc
        self.catalog = catalog  # for the link queries; the archiver has its own connection
        self._catalog_ready = False
        self.js = js
        self.subjects = subjects
        self.replicas = replicas or default_replicas()
        self.history = History(subjects.history_stream)
        self.stop_requested = asyncio.Event()
        self._lock = asyncio.Lock()
        self._progress = ReadProgress()  # for `min_seq` requests
        self._waiters: set[asyncio.Task[None]] = set()
        self.reconnects = reconnects or Reconnects()
        self._following: asyncio.Task[None] | None = None

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
        if self._following is None:
            # A pull consumer with rare heartbeats, made anew when NATS comes back (ADR 28):
            # an ordered push consumer made nats-py poll its flow control 4 times a second.
            follower = StreamFollower(
                self.nc, s.history_stream, self.history.last_seq + 1, self.reconnects
            )
            self._following = asyncio.create_task(follower.follow(self.on_record))
        logger.info("history loaded: %d items", len(self.history.records))

    async def close(self) -> None:
        if self._following is not None:
            self._following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._following

    def _add(self, seq: int, data: bytes) -> bool:
        try:
            return self.history.append(seq, _record_decoder.decode(data))
        except msgspec.DecodeError:
            logger.error("skipping malformed history record at seq %d", seq)
            return False

    async def on_record(self, msg: StreamMsg) -> None:
        async with self._lock:
            added = self._add(msg.seq, msg.data)
        self._progress.read()
        if added:
            await self.publish_info()

    async def publish_info(self) -> None:
        with contextlib.suppress(Exception):
            await self.nc.publish(self.subjects.history_changed, encode(self.history.info()))

    def handlers(self) -> dict[str, Handler]:
        return {
            "history_get": self.on_history_get,
            "history_clear": self.on_history_clear,
            "history_runs": self.on_history_runs,
            "history_run_item": self.on_history_run_item,
            "history_result_get": self.on_history_result_get,
        }

    async def on_history_get(self, req: api.HistoryGet) -> api.HistoryGetReply:
        return api.HistoryGetReply(
            items=self.history.page(req.offset, req.limit),
            plan_history_uid=self.history.info().plan_history_uid,
        )

    async def on_history_clear(self, req: api.HistoryClear) -> api.Reply:
        await self._check_lock(req.lock_key)
        async with self._lock:
            keep, below = self.history.purge_point(req)
            await self.js.purge_stream(self.subjects.history_stream, seq=below, keep=keep)
            dropped = self.history.purge(keep, below)
        await self.tell_queue()
        # The whole texts of cut results leave with their records.
        cut = [r.record_uid for r in dropped if r.result.truncated]
        await result_texts.drop(self.js, self.subjects, cut)
        return api.Reply()

    async def on_history_result_get(self, req: api.HistoryResultGet) -> api.HistoryResultGetReply:
        rec = self.history.find_item(req.item_uid)
        result, whole = rec.result, True
        if rec.result.truncated:
            texts = await result_texts.load(self.js, self.subjects, rec.record_uid)
            if texts is None:
                whole = False
            else:
                result = msgspec.structs.replace(result, msg=texts.msg, traceback=texts.traceback)
        return api.HistoryResultGetReply(
            item_uid=req.item_uid,
            result=result,
            whole=whole,
            msg="" if whole else "The whole text of this result was not kept: it is shown cut",
        )

    async def on_history_runs(self, req: api.HistoryRuns) -> api.HistoryRunsReply:
        rec = self.history.find_item(req.item_uid)
        scan_ids: list[int | None] = list(rec.result.scan_ids)
        scan_ids += [None] * (len(rec.result.run_uids) - len(scan_ids))
        runs = [
            api.RunLocation(run_uid=uid, scan_id=scan_id)
            for uid, scan_id in zip(rec.result.run_uids, scan_ids, strict=False)
        ]
        if self.catalog is not None:
            for run in runs:
                summary = await self._catalog_call(self.catalog.run_summary, run.run_uid)
                if summary is not None:
                    run.saved, run.url = summary["saved"], summary["url"]
        return api.HistoryRunsReply(
            item_uid=req.item_uid,
            runs=runs,
            catalog_url=self.catalog.settings.catalog_url if self.catalog else None,
        )

    async def on_history_run_item(self, req: api.HistoryRunItem) -> api.HistoryRunItemReply:
        if len(req.run_uid) < MIN_PARTIAL_UID:
            raise BadRequest(
                f"run_uid {req.run_uid!r} is too short: give at least {MIN_PARTIAL_UID} characters"
            )
        found = self.history.find_run(req.run_uid)
        if found is not None:
            uid, rec = found
            scan_id = None
            if uid in rec.result.run_uids and len(rec.result.scan_ids) == len(rec.result.run_uids):
                scan_id = rec.result.scan_ids[rec.result.run_uids.index(uid)]
            reply = api.HistoryRunItemReply(
                run_uid=uid,
                item_uid=rec.item.get("item_uid"),
                user=rec.item.get("user"),
                user_group=rec.item.get("user_group"),
                scan_id=scan_id,
                item=as_history_item(rec),
            )
        else:
            start = None
            if self.catalog is not None:
                start = await self._catalog_call(self.catalog.start_metadata, req.run_uid)
            if not start:
                raise NotFound(f"No run with uid {req.run_uid!r} in the history or the catalog")
            reply = api.HistoryRunItemReply(
                run_uid=start["uid"],
                item_uid=start.get("qserver_item_uid"),
                user=start.get("qserver_user"),
                user_group=start.get("qserver_user_group"),
                scan_id=start.get("scan_id"),
            )
        if self.catalog is not None:
            summary = await self._catalog_call(self.catalog.run_summary, reply.run_uid)
            if summary is not None:
                reply.saved, reply.url = summary["saved"], summary["url"]
        return reply

    async def _catalog_call(self, fn: Any, *args: Any) -> Any:
        """A blocking catalog query on a thread; None (and a log line) if the catalog is down."""
        assert self.catalog is not None
        try:
            if not self._catalog_ready:
                await asyncio.to_thread(self.catalog.connect)
                self._catalog_ready = True
            return await asyncio.to_thread(fn, *args)
        except Exception as e:
            self._catalog_ready = False
            logger.warning("catalog query failed: %r", e)
            return None

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

    async def tell_queue(self) -> None:
        """Tell the queue service of a change, and wait until its status carries it.

        The reply to the request that made the change comes after this, so a client that
        reads the status next sees the new `plan_history_uid` (the reference's client
        reuses its copy of the history while that uid stays the same).
        """
        try:
            await self.nc.request(
                self.subjects.history_changed, encode(self.history.info()), timeout=QUEUE_ACK_S
            )
        except Exception as e:
            logger.warning("the queue service did not confirm the history change: %r", e)
            await self.publish_info()

    async def on_history_info(self, msg: Msg) -> None:
        """The info now, or (with `min_seq`) once the record at that sequence was read."""
        try:
            req = msgspec.json.decode(msg.data or b"{}", type=HistoryInfoRequest)
        except msgspec.DecodeError:
            req = HistoryInfoRequest()
        if self.history.last_seq >= req.min_seq:
            await msg.respond(encode(self.history.info()))
            return
        # Waited for aside: the subscription's other requests must not queue behind it.
        task = asyncio.get_running_loop().create_task(self._info_at(msg, req.min_seq))
        self._waiters.add(task)
        task.add_done_callback(self._waiters.discard)

    async def _info_at(self, msg: Msg, seq: int) -> None:
        await self._progress.until(lambda: self.history.last_seq >= seq, SEQ_WAIT_S)
        with contextlib.suppress(Exception):
            await msg.respond(encode(self.history.info()))
