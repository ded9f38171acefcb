"""The document stream (ADR 10): its settings, its readers' positions, and a follower.

Every run document goes into one JetStream stream (`<prefix>.docs.run.<start uid>`, file
storage, replicated like every stream, bounded by age and size). Its readers, the catalog
archiver and the Kafka export, each keep how far they got in a KV bucket and read on from
there with an ephemeral consumer: the Kafka model of a committed offset, so that a reader
that restarts reads again at once from its position (a durable consumer would redeliver
unacknowledged messages only after its AckWait).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from qserver.config import env_flag
from qserver.jsutil import default_replicas, ensure_stream
from qserver.protocol.subjects import Subjects

logger = logging.getLogger(__name__)

DEFAULT_MAX_AGE_DAYS = 7.0
DEFAULT_MAX_DOC_MIB = 64.0
JS_API = "$JS.API"
BATCH = 256
EXPIRES_S = 30.0
# A reader learns that its consumer is gone (a NATS restart) after 3 missed heartbeats: at
# idle the heartbeats are most of what the two readers cost (ADR 28).
HEARTBEAT_S = 5.0
RETRY_S = 0.5
RETRY_MAX_S = 5.0


def enabled() -> bool:
    """Whether documents go into the stream: `$QSERVER_DOCS_STREAM` (default on)."""
    return env_flag("QSERVER_DOCS_STREAM")


def _positive(var: str, default: float) -> float:
    raw = os.environ.get(var) or ""
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise ValueError(f"{var} must be a number, not {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{var} must be positive, not {raw!r}")
    return value


def max_document_bytes() -> int:
    """The largest document kept: `$QSERVER_DOCS_MAX_DOC_MIB` (default 64); larger is refused."""
    return int(_positive("QSERVER_DOCS_MAX_DOC_MIB", DEFAULT_MAX_DOC_MIB) * 2**20)


async def ensure_docs_stream(js: JetStreamContext, subjects: Subjects) -> api.StreamInfo:
    """Create or update the stream: kept `$QSERVER_DOCS_MAX_AGE_DAYS`, and at most
    `$QSERVER_DOCS_MAX_GIB` when that is set.

    Beyond either bound the oldest documents go; a reader that had not read them counts
    them as lost (`StreamFollower.gaps`). No byte bound by default: JetStream reserves a
    stream's max_bytes up front, so a few beamlines' streams would exhaust a server's store.
    """
    days = _positive("QSERVER_DOCS_MAX_AGE_DAYS", DEFAULT_MAX_AGE_DAYS)
    bounded = bool(os.environ.get("QSERVER_DOCS_MAX_GIB"))
    max_bytes = int(_positive("QSERVER_DOCS_MAX_GIB", 1.0) * 2**30) if bounded else -1
    return await ensure_stream(
        js,
        subjects.docs_stream,
        [subjects.run_docs_wildcard],
        max_age=days * 86400.0,
        max_bytes=max_bytes,
        discard=api.DiscardPolicy.OLD,
    )


def describe_error(e: BaseException) -> str:
    """A JetStream API error with its code and description (their str() is empty)."""
    code, description = getattr(e, "err_code", None), getattr(e, "description", None)
    if description:
        return f"{type(e).__name__} {code}: {description}"
    return f"{type(e).__name__}: {e}" if str(e) else repr(e)


class Positions:
    """Where each reader of the stream goes on from: the next sequence, in a KV bucket."""

    def __init__(self, js: JetStreamContext, subjects: Subjects) -> None:
        self.js = js
        self.bucket = subjects.docs_positions_bucket
        self._kv: KeyValue | None = None

    async def _store(self) -> KeyValue:
        if self._kv is None:
            try:
                self._kv = await self.js.key_value(self.bucket)
            except BucketNotFoundError:
                self._kv = await self.js.create_key_value(
                    bucket=self.bucket,
                    history=1,
                    storage=api.StorageType.FILE,
                    replicas=default_replicas(),
                )
        return self._kv

    async def get(self, reader: str) -> int | None:
        kv = await self._store()
        try:
            entry = await kv.get(reader)
        except KeyNotFoundError:
            return None
        try:
            return int(entry.value or b"")
        except ValueError:
            return None

    async def put(self, reader: str, seq: int) -> None:
        kv = await self._store()
        await kv.put(reader, str(seq).encode())


@dataclass(frozen=True)
class StreamMsg:
    seq: int
    subject: str
    headers: dict[str, str] | None
    data: bytes
    pending: int  # messages after this one, when it was delivered


class _Restart(Exception):
    """The consumer is gone or stuck: make a new one from the next sequence."""


class Reconnects:
    """The stream readers of one connection, told when it comes back (its `reconnected_cb`).

    A restarted server has lost their consumers: they make new ones at once, instead of
    after three missed idle heartbeats (ADR 28).
    """

    def __init__(self) -> None:
        self._followers: set[StreamFollower] = set()

    def add(self, follower: StreamFollower) -> None:
        self._followers.add(follower)

    def discard(self, follower: StreamFollower) -> None:
        self._followers.discard(follower)

    async def notify(self) -> None:
        """The connection's `reconnected_cb` (nats-py wants a coroutine function)."""
        for follower in list(self._followers):
            follower.reconnected()


class ReadProgress:
    """Wakes whoever waits for a follower to reach a point of its stream, at each read."""

    def __init__(self) -> None:
        self._read = asyncio.Event()

    def read(self) -> None:
        """Something was read: the waiters look at their condition again."""
        self._read.set()
        self._read = asyncio.Event()

    async def until(self, reached: Callable[[], bool], timeout: float) -> bool:
        """Once `reached()` holds, or after `timeout` seconds; what `reached()` says then."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not reached() and (left := deadline - loop.time()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._read.wait(), left)
        return reached()


class StreamFollower:
    """Every message of a stream from `start_seq` on, in order, as they come, for ever.

    A pull consumer without acks, asked for `BATCH` messages at a time with heartbeats:
    when the server restarts, the consumer is lost, or the connection drops, a new one is
    made from the next sequence. Messages the stream no longer holds (its limits dropped
    them before they were read) are counted in `gaps`.
    """

    def __init__(
        self, nc: NATS, stream: str, start_seq: int | None, reconnects: Reconnects | None = None
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.stream = stream
        self.next_seq = start_seq or 0  # 0: from the first message the stream has
        self.gaps = 0
        self.pending = 0  # messages in the stream after the last one delivered
        self._consumer = ""
        self._sub: Subscription | None = None
        self._queue: asyncio.Queue[Msg | None] = asyncio.Queue()  # None: reconnected
        self._left = 0  # messages the current pull request may still deliver
        self._last_error = ""
        self._reconnects = reconnects
        if reconnects is not None:
            reconnects.add(self)

    async def batches(self) -> AsyncIterator[list[StreamMsg]]:
        """Wait for at least one message, then yield it with all that are already here."""
        while True:
            batch: list[StreamMsg] = []
            try:
                msg = await self._next(block=True)
                while msg is not None:
                    got = self._take(msg)
                    if got is not None:
                        batch.append(got)
                    msg = await self._next(block=False) if len(batch) < BATCH else None
            except _Restart as e:
                await self._reset(str(e))
            if batch:
                yield batch

    async def follow(self, handle: Callable[[StreamMsg], Awaitable[None]]) -> None:
        """Hand every message to `handle`, in order, until cancelled."""
        try:
            async for batch in self.batches():
                for m in batch:
                    await handle(m)
        finally:
            await self.close()

    def reconnected(self) -> None:
        """The connection came back: a new consumer from the next sequence, now."""
        self._queue.put_nowait(None)

    async def close(self) -> None:
        if self._reconnects is not None:
            self._reconnects.discard(self)
        await self._drop_consumer()

    # ----- one message -----

    def _take(self, msg: Msg) -> StreamMsg | None:
        meta = msg.metadata
        seq = meta.sequence.stream if meta.sequence else 0
        if seq < self.next_seq:  # already delivered by a consumer before this one
            return None
        if self.next_seq and seq > self.next_seq:
            missed = seq - self.next_seq
            self.gaps += missed
            logger.warning(
                "stream %s: %d messages from %d on were dropped by its limits before they "
                "were read",
                self.stream,
                missed,
                self.next_seq,
            )
        self.next_seq = seq + 1
        self.pending = meta.num_pending or 0
        return StreamMsg(seq, msg.subject, dict(msg.headers or {}), msg.data, self.pending)

    async def _next(self, block: bool) -> Msg | None:
        """The next data message; None when none is queued (`block=False`)."""
        while True:
            if self._sub is None:
                await self._create()
            if self._left <= 0:
                await self._request()
            try:
                if block:
                    msg = await asyncio.wait_for(self._queue.get(), 3 * HEARTBEAT_S)
                else:
                    msg = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return None
            except TimeoutError:
                raise _Restart("no message nor heartbeat") from None
            if msg is None:
                raise _Restart("reconnected to NATS")
            status = (msg.headers or {}).get("Status")
            if not status:
                self._left -= 1
                return msg
            if status == "100":  # idle heartbeat (or flow control)
                continue
            description = (msg.headers or {}).get("Description", "")
            if status == "408" or (status == "409" and "Consumer Deleted" not in description):
                self._left = 0  # the request expired or ended: ask again
                continue
            raise _Restart(f"{status} {description}".strip())

    # ----- the consumer -----

    async def _create(self) -> None:
        """A new ephemeral consumer at `next_seq`, retried with back-off until it exists."""
        delay = RETRY_S
        while True:
            try:
                await self._create_once()
                if self._last_error:
                    logger.info("reading stream %s again from %d", self.stream, self.next_seq)
                self._last_error = ""
                return
            except Exception as e:
                await self._drop_consumer()
                message = describe_error(e)
                if message != self._last_error:
                    logger.warning("cannot read stream %s yet (%s); retrying", self.stream, message)
                self._last_error = message
                await asyncio.sleep(delay)
                delay = min(2 * delay, RETRY_MAX_S)

    async def _create_once(self) -> None:
        info = await self.js.stream_info(self.stream)
        first, last = info.state.first_seq, info.state.last_seq
        if self.next_seq > last + 1:
            logger.warning(
                "stream %s ends at %d but reading was to go on from %d (was it made anew?): "
                "reading from its start",
                self.stream,
                last,
                self.next_seq,
            )
            self.next_seq = 0
        if self.next_seq and self.next_seq < first:
            self.gaps += first - self.next_seq
            logger.warning(
                "stream %s: %d messages before %d were dropped by its limits before they were read",
                self.stream,
                first - self.next_seq,
                first,
            )
            self.next_seq = first
        config = api.ConsumerConfig(
            ack_policy=api.AckPolicy.NONE,
            inactive_threshold=60.0,
            mem_storage=True,
            num_replicas=1,
        )
        if self.next_seq:
            config.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = self.next_seq
        else:
            config.deliver_policy = api.DeliverPolicy.ALL
        queue: asyncio.Queue[Msg | None] = asyncio.Queue()
        self._queue = queue

        async def deliver(msg: Msg) -> None:
            queue.put_nowait(msg)

        self._sub = await self.nc.subscribe(
            self.nc.new_inbox(),
            cb=deliver,
            pending_msgs_limit=-1,
            pending_bytes_limit=-1,
        )
        created = await self.js.add_consumer(self.stream, config)
        self._consumer = created.name
        self._left = 0

    async def _request(self) -> None:
        assert self._sub is not None
        body = {
            "batch": BATCH,
            "expires": int(EXPIRES_S * 1e9),
            "idle_heartbeat": int(HEARTBEAT_S * 1e9),
        }
        subject = f"{JS_API}.CONSUMER.MSG.NEXT.{self.stream}.{self._consumer}"
        try:
            await self.nc.publish(subject, json.dumps(body).encode(), reply=self._sub.subject)
        except Exception as e:
            raise _Restart(f"pull request failed: {e!r}") from None
        self._left = BATCH

    async def _reset(self, why: str) -> None:
        logger.info("stream %s: a new consumer from %d (%s)", self.stream, self.next_seq, why)
        await self._drop_consumer()

    async def _drop_consumer(self) -> None:
        sub, name = self._sub, self._consumer
        self._sub, self._consumer, self._left = None, "", 0
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if name:
            with contextlib.suppress(Exception, NotFoundError):
                await asyncio.wait_for(self.js.delete_consumer(self.stream, name), 2.0)
