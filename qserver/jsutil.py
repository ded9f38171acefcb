"""Small JetStream helpers shared by the services, and the patience they start up with."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TypeVar

import nats.errors
from nats.js import JetStreamContext, api
from nats.js.errors import (
    APIError,
    BucketNotFoundError,
    NoStreamResponseError,
    NotFoundError,
    ServiceUnavailableError,
)
from nats.js.kv import KeyValue

logger = logging.getLogger(__name__)

T = TypeVar("T")

# JetStream API errors that say "not now" rather than "never": the system is unavailable
# (10008), or a clustered stream cannot be placed yet while peers join (10005, 10023).
TRANSIENT_ERR_CODES = frozenset({10005, 10008, 10023})
FIRST_DELAY_S = 0.1
MAX_DELAY_S = 2.0
REPORT_EVERY_S = 10.0


def transient(e: BaseException) -> bool:
    """Whether `e` means NATS or JetStream is not there yet (or for now), not a wrong request.

    A timeout or "no responders" is what a JetStream API request gets while nats-server
    starts, while a cluster elects its meta leader, or while a stream elects its leader.
    """
    if isinstance(e, nats.errors.ConnectionClosedError):
        return False  # this connection is over: waiting cannot help
    if isinstance(
        e,
        asyncio.TimeoutError
        | nats.errors.TimeoutError
        | nats.errors.NoRespondersError
        | nats.errors.ConnectionReconnectingError
        | nats.errors.StaleConnectionError
        | NoStreamResponseError
        # A pull request's 503 status (no stream leader yet) comes without a code: a fresh
        # cluster's history service once exited on it at start-up.
        | ServiceUnavailableError
        | OSError,
    ):
        return True
    if isinstance(e, APIError):
        return e.code in (408, 503) or e.err_code in TRANSIENT_ERR_CODES
    return False


async def patiently(
    what: str,
    op: Callable[[], Awaitable[T]],
    *,
    is_transient: Callable[[BaseException], bool] = transient,
) -> T:
    """`await op()` until it stops failing for a transient reason, backing off up to 2 s.

    Services start before NATS or JetStream may be ready (a fresh cluster electing its
    leaders, a node restarting): they wait here, saying so in the log, instead of exiting.
    `op` must be safe to call again after a failure. Other errors are raised.
    """
    delay = FIRST_DELAY_S
    started = time.monotonic()
    reported = 0.0
    while True:
        try:
            result = await op()
        except Exception as e:
            if not is_transient(e):
                raise
            now = time.monotonic()
            if not reported or now - reported >= REPORT_EVERY_S:
                logger.warning("waiting for JetStream: %s failed (%r); retrying", what, e)
                reported = now
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_DELAY_S)
            continue
        if reported:
            logger.info("%s: done after waiting %.1f s", what, time.monotonic() - started)
        return result


def default_replicas() -> int:
    """Replicas of every stream and bucket: `$QSERVER_JS_REPLICAS` (3 on a 3-node cluster)."""
    value = os.environ.get("QSERVER_JS_REPLICAS") or "1"
    try:
        replicas = int(value)
    except ValueError:
        raise ValueError(f"QSERVER_JS_REPLICAS must be 1 to 5, not {value!r}") from None
    if not 1 <= replicas <= 5:
        raise ValueError(f"QSERVER_JS_REPLICAS must be 1 to 5, not {replicas}")
    return replicas


async def ensure_stream(
    js: JetStreamContext,
    name: str,
    subjects: list[str],
    *,
    replicas: int | None = None,
    storage: api.StorageType = api.StorageType.FILE,
    **extra: object,
) -> api.StreamInfo:
    """Create a stream (file-backed unless told), or update it to this config if it exists.

    Waits (`patiently`) while JetStream is not ready.
    """
    config = api.StreamConfig(
        name=name,
        subjects=subjects,
        storage=storage,
        num_replicas=replicas or default_replicas(),
        **extra,  # type: ignore[arg-type]
    )

    async def ensure() -> api.StreamInfo:
        try:
            await js.stream_info(name)
        except NotFoundError:
            return await js.add_stream(config)
        return await js.update_stream(config)

    return await patiently(f"creating the stream {name}", ensure)


async def ensure_key_value(
    js: JetStreamContext, bucket: str, *, replicas: int | None = None, history: int = 1
) -> KeyValue:
    """Open a file-backed KV bucket, creating it if needed; waits while JetStream is not ready."""

    async def ensure() -> KeyValue:
        try:
            return await js.key_value(bucket)
        except BucketNotFoundError:
            return await js.create_key_value(
                api.KeyValueConfig(
                    bucket=bucket,
                    history=history,
                    storage=api.StorageType.FILE,
                    replicas=replicas or default_replicas(),
                )
            )

    return await patiently(f"opening the bucket {bucket}", ensure)


# How a JetStream API answer starts (its `type` comes first).
JS_API_ANSWER = b'{"type":"io.nats.jetstream.api.v1.'


def written_by_jetstream(reply: str, headers: Mapping[str, str] | None, data: bytes) -> bool:
    """Whether a message is JetStream's: a consumer's delivery (its reply is an ack or flow
    control subject), a stored message a direct get returns (`Nats-Stream`), a status
    (`Status`: a heartbeat, a 404), or the answer to a JetStream API call.

    JetStream publishes its answers at whatever reply subject the asker named, past every
    permission (ADR 11): on a service's command subject, or into a stream or KV bucket of
    the account. No service writes a message that looks like this.
    """
    if reply.startswith("$JS."):
        return True
    if headers and ("Nats-Stream" in headers or "Status" in headers):
        return True
    return data.startswith(JS_API_ANSWER)


def _foreign(stream: str, seq: int, headers: Mapping[str, str] | None, data: bytes) -> bool:
    """A stored message that JetStream wrote on someone's behalf: skipped, and said so."""
    if not written_by_jetstream("", headers, data):
        return False
    logger.warning(
        "skipping message %d of %s: JetStream wrote it on someone's behalf (an answer aimed "
        "at the stream's subject), not a service",
        seq,
        stream,
    )
    return True


async def read_stream(
    js: JetStreamContext,
    stream: str,
    subject: str,
    start_seq: int,
    batch: int = 1000,
    skipped: Callable[[int], None] | None = None,
) -> AsyncIterator[tuple[int, bytes]]:
    """Yield (sequence, data) of every message on `subject` from `start_seq` to the current end.

    Messages JetStream wrote on someone's behalf are not yielded (`written_by_jetstream`);
    `skipped` is given each one's sequence (a writer that expects the last sequence counts
    them).
    """
    async for seq, data, _ in read_stream_with_headers(
        js, stream, subject, start_seq, batch, skipped
    ):
        yield seq, data


async def read_stream_with_headers(
    js: JetStreamContext,
    stream: str,
    subject: str,
    start_seq: int,
    batch: int = 1000,
    skipped: Callable[[int], None] | None = None,
) -> AsyncIterator[tuple[int, bytes, dict[str, str] | None]]:
    """`read_stream`, with each message's headers."""
    info = await js.stream_info(stream)
    last = info.state.last_seq
    if last < start_seq or info.state.messages == 0:
        return
    start = api.DeliverPolicy.BY_START_SEQUENCE
    async with _reader(js, stream, subject, start, opt_start_seq=max(start_seq, 1)) as sub:
        seq = start_seq - 1
        while seq < last:
            pending = (await sub.consumer_info()).num_pending or 0
            if pending == 0:
                break
            msgs = await sub.fetch(min(batch, pending), timeout=5)
            for msg in msgs:
                assert msg.metadata.sequence is not None
                seq = msg.metadata.sequence.stream
                if seq > last:
                    break
                if _foreign(stream, seq, msg.headers, msg.data):
                    if skipped is not None:
                        skipped(seq)
                    continue
                yield seq, msg.data, msg.headers


@contextlib.asynccontextmanager
async def _reader(
    js: JetStreamContext,
    stream: str,
    subject: str,
    deliver: api.DeliverPolicy,
    opt_start_seq: int | None = None,
) -> AsyncIterator[JetStreamContext.PullSubscription]:
    """An ephemeral pull consumer without acks, removed when the block ends."""
    config = api.ConsumerConfig(
        deliver_policy=deliver,
        opt_start_seq=opt_start_seq,
        ack_policy=api.AckPolicy.NONE,
        inactive_threshold=30.0,
    )
    sub = await js.pull_subscribe(subject, stream=stream, config=config)
    try:
        yield sub
    finally:
        await sub.unsubscribe()
        # The consumer goes now, not after its inactive threshold: a reader that reads
        # often (the console's catch-up, the gateway's login scans) leaves none behind.
        with contextlib.suppress(Exception):
            await js.delete_consumer(stream, sub._consumer)


async def kv_scan(js: JetStreamContext, bucket: str, prefix: str) -> list[tuple[str, bytes]]:
    """(key, value) of every live key of KV `bucket` under `prefix.`, as of the call.

    A pull consumer delivering the last message per key: its pending count before the
    first fetch is exact, so the scan knows when it has seen everything. (A KV watcher
    cannot: nats-py marks the end of its initial values from a consumer count it reads
    after the messages start to flow, so a scan through one can end before the first key,
    and a key made just before looked absent.)
    """
    head = f"$KV.{bucket}."
    out: list[tuple[str, bytes]] = []
    last = api.DeliverPolicy.LAST_PER_SUBJECT
    async with _reader(js, f"KV_{bucket}", f"{head}{prefix}.>", last) as sub:
        pending = (await sub.consumer_info()).num_pending or 0
        while pending:
            for msg in await sub.fetch(min(pending, 1000), timeout=5):
                pending = msg.metadata.num_pending or 0
                headers = msg.headers or {}
                if headers.get("KV-Operation") in ("DEL", "PURGE"):
                    continue
                if "Nats-Marker-Reason" in headers:  # a server's expiry or removal marker
                    continue
                seq = msg.metadata.sequence.stream if msg.metadata.sequence else 0
                if _foreign(f"KV_{bucket}", seq, headers, msg.data):
                    continue
                out.append((msg.subject[len(head) :], msg.data))
    return out
