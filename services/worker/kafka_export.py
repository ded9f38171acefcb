"""Documents from the document stream to Kafka, in the format bluesky-kafka's RemoteDispatcher
reads, resuming where it stopped (ADR 10).

Topic `<beamline>.bluesky.runengine.documents`, value = the stream message (msgpack
`[name, doc]`, msgpack-numpy arrays, parts joined), key = the run's start uid. The position
(the first document not yet acknowledged by the broker) is kept in the stream's positions
bucket, so documents published while the broker was down, or while this service was, reach
Kafka when both are back. Delivery is at least once: after a restart or a rewind, documents
sent but not yet counted as delivered are sent again.

Configuration (the environment): `QSERVER_KAFKA_BOOTSTRAP` (unset or empty = no export),
`QSERVER_KAFKA_TOPIC` (or `QSERVER_BEAMLINE`), `QSERVER_KAFKA_PRODUCER_CONFIG` (extra
confluent-kafka producer options, a JSON object).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client as NATS

from qserver.documents import Reassembler, StreamDoc, configured_topic
from qserver.protocol.subjects import Subjects
from services.runtime.doc_stream import (
    Positions,
    Reconnects,
    StreamFollower,
    describe_error,
    ensure_docs_stream,
)

logger = logging.getLogger(__name__)

READER = "kafka"
RETRY_S = 1.0
RETRY_MAX_S = 10.0
SERVICE_S = 0.05
SAVE_EVERY_S = 0.5
# A broker that lost its state (a memory-only broker restarted) no longer knows the
# producer's id: it answers "unknown producer id" for ever and reports no error, and
# librdkafka bumps the producer's epoch again and again (about 10 times a second) to recover.
# Documents in flight this long with no delivery, no broker error for QUIET_S, and at least
# STALL_BUMPS epoch bumps since the last delivery: a new producer sends them again from the
# position. A broker that is only slow (a busy machine, a first delivery that waits for
# metadata, the producer id and the topic) bumps nothing, and is waited for: sending again
# then would put the documents in the topic twice once it answers (ADR 10).
STALL_S = 5.0
QUIET_S = 3.0
STALL_BUMPS = 2
# With no bump at all, a producer is replaced only after this long without a delivery: the
# state no signal covers (librdkafka's own delivery timeout is 5 min).
STALL_ANYWAY_S = 60.0
# librdkafka reports its statistics (the producer's id and epoch) this often; while nothing
# is in flight, they are drained this often (they queue until `poll`).
STATS_MS = 1000
IDLE_DRAIN_S = 30.0
_EPOCH = re.compile(rb'"producer_id":\s*(-?\d+),\s*"producer_epoch":\s*(-?\d+)')
PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,
    "linger.ms": 5,
    # The stream holds every document: the producer's own queue need not be large.
    "queue.buffering.max.messages": 10_000,
    "statistics.interval.ms": STATS_MS,
}


@dataclass(frozen=True)
class ExportSettings:
    bootstrap: str
    topic: str
    producer_config: dict[str, Any] = field(default_factory=dict)


def settings_from_environment(env: dict[str, str] | None = None) -> ExportSettings | None:
    """What `$QSERVER_KAFKA_*` ask for, or None when Kafka is off."""
    env = dict(os.environ) if env is None else env
    bootstrap = (env.get("QSERVER_KAFKA_BOOTSTRAP") or "").strip()
    if not bootstrap:
        return None
    raw = env.get("QSERVER_KAFKA_PRODUCER_CONFIG") or ""
    extra = json.loads(raw) if raw else {}
    if not isinstance(extra, dict):
        raise ValueError("QSERVER_KAFKA_PRODUCER_CONFIG must be a JSON object")
    return ExportSettings(bootstrap, configured_topic(env), extra)


@dataclass
class _Sent:
    first_seq: int
    done: bool = False


class EpochWatch:
    """How often librdkafka re-identified its producer (new id or epoch) since a delivery.

    The first id a producer gets is not a bump; every change after it is one: librdkafka
    recovering from "unknown producer id" or a sequence error.
    """

    def __init__(self) -> None:
        self.identity: tuple[int, int] | None = None
        self.bumps = 0

    def seen(self, producer_id: int, epoch: int) -> None:
        if producer_id < 0:
            return  # not assigned yet
        identity = (producer_id, epoch)
        if self.identity is not None and identity != self.identity:
            self.bumps += 1
        self.identity = identity

    def delivered(self) -> None:
        self.bumps = 0

    def seen_stats(self, stats: bytes | str) -> None:
        """From librdkafka's statistics JSON, without parsing all of it."""
        raw = stats.encode() if isinstance(stats, str) else stats
        m = _EPOCH.search(raw)
        if m is not None:
            self.seen(int(m[1]), int(m[2]))


def stalled(silent_s: float, quiet_s: float, bumps: int) -> bool:
    """Is a producer with documents in flight, no delivery for `silent_s`, no broker error
    for `quiet_s` and `bumps` epoch bumps one the broker has forgotten?"""
    if quiet_s <= QUIET_S:
        return False  # the broker is down or failing: it reports so, and delivery resumes
    return (silent_s > STALL_S and bumps >= STALL_BUMPS) or silent_s > STALL_ANYWAY_S


class _Rewind(Exception):
    """Send again from the position, with a new producer."""


class Progress:
    """Which stream messages are delivered: the position is the first one that is not."""

    def __init__(self, start: int) -> None:
        self.read_upto = start  # one past the last message read
        self._sent: deque[_Sent] = deque()

    def read(self, seq: int) -> None:
        self.read_upto = seq + 1

    def sent(self, first_seq: int) -> _Sent:
        entry = _Sent(first_seq)
        self._sent.append(entry)
        return entry

    @property
    def in_flight(self) -> int:
        return sum(1 for e in self._sent if not e.done)

    def position(self, partial_first: int | None = None) -> int:
        """Where to read again from: the first undelivered document (or unjoined part)."""
        while self._sent and self._sent[0].done:
            self._sent.popleft()
        if self._sent:
            return self._sent[0].first_seq
        return partial_first or self.read_upto


class KafkaExport:
    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        settings: ExportSettings,
        reconnects: Reconnects | None = None,
    ) -> None:
        self.nc = nc
        self.reconnects = reconnects
        self.subjects = subjects
        self.settings = settings
        self.positions = Positions(nc.jetstream(), subjects)
        self.delivered = 0
        self.failed = 0  # too large for the broker, or dropped by the stream before sent
        self._follower: StreamFollower | None = None
        self._progress: Progress | None = None
        self._last_error = ""
        self._last_error_at = 0.0
        self._last_delivery = time.monotonic()
        self._epochs = EpochWatch()
        self._rewind = ""
        self._broker_trouble = False
        self._saved: int | None = None
        self._saved_at = 0.0
        self._work = asyncio.Event()  # documents were read: `_serve` has work

    @property
    def pending(self) -> int:
        """Documents in the stream not yet delivered to Kafka (an estimate while reading)."""
        follower, progress = self._follower, self._progress
        if follower is None or progress is None:
            return 0
        return progress.in_flight + follower.pending

    async def run(self) -> None:
        """Export until cancelled; failures are logged and retried with back-off."""
        delay = RETRY_S
        while True:
            try:
                await self._export()
            except Exception as e:
                while isinstance(e, ExceptionGroup):  # from the task group
                    e = e.exceptions[0]
                if isinstance(e, _Rewind):
                    delay = RETRY_S
                    continue
                self._log_error(describe_error(e))
                await asyncio.sleep(delay)
                delay = min(2 * delay, RETRY_MAX_S)

    async def _export(self) -> None:
        from confluent_kafka import Producer

        await ensure_docs_stream(self.nc.jetstream(), self.subjects)
        start = await self.positions.get(READER)
        follower = StreamFollower(self.nc, self.subjects.docs_stream, start, self.reconnects)
        progress = Progress(start or 0)
        producer = Producer(self._producer_config())
        self._follower, self._progress, self._rewind = follower, progress, ""
        self._last_delivery = time.monotonic()
        self._epochs = EpochWatch()
        joiner = Reassembler()
        logger.info(
            "exporting documents to Kafka %s topic %s from stream position %s",
            self.settings.bootstrap,
            self.settings.topic,
            start or "start",
        )
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._consume(follower, progress, producer, joiner))
                tasks.create_task(self._serve(follower, progress, producer, joiner))
        finally:
            producer.purge()
            producer.poll(0)
            await follower.close()
            self._follower = None
            await self._save(progress.position(joiner.first_seq), force=True)

    async def _consume(
        self, follower: StreamFollower, progress: Progress, producer: Any, joiner: Reassembler
    ) -> None:
        gaps = 0
        async for batch in follower.batches():
            for m in batch:
                doc = joiner.add(m.seq, m.subject, m.headers, m.data)
                progress.read(m.seq)
                if doc is not None:
                    await self._produce(producer, progress, doc)
            lost = follower.gaps + joiner.dropped - gaps
            if lost:
                self.failed += lost
                gaps += lost
            self._work.set()  # `_serve` delivers and saves the position

    async def _produce(self, producer: Any, progress: Progress, doc: StreamDoc) -> None:
        from confluent_kafka import KafkaException

        entry = progress.sent(doc.first_seq)

        def on_delivery(err: Any, msg: Any) -> None:
            self._delivered(entry, err)

        while True:
            try:
                producer.produce(
                    self.settings.topic,
                    value=doc.value,
                    key=doc.run_uid.encode(),
                    on_delivery=on_delivery,
                )
                return
            except BufferError:  # the broker is slow or down: wait, the stream keeps the rest
                await asyncio.sleep(SERVICE_S)
                if self._rewind:
                    raise _Rewind(self._rewind) from None
            except KafkaException as e:  # e.g. too large for the broker: never deliverable
                self._lost_for_good(entry, str(e))
                return

    def _delivered(self, entry: _Sent, err: Any) -> None:
        if err is None:
            entry.done = True
            self.delivered += 1
            self._last_delivery = time.monotonic()
            self._epochs.delivered()
            if self._broker_trouble:
                logger.info("documents reach Kafka again")
                self._broker_trouble, self._last_error = False, ""
            return
        from confluent_kafka import KafkaError

        if err.code() in (KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE):
            self._lost_for_good(entry, str(err))
        elif not self._rewind and err.code() not in (
            KafkaError._PURGE_QUEUE,
            KafkaError._PURGE_INFLIGHT,
        ):
            self._rewind = f"a document was not delivered ({err})"

    def _lost_for_good(self, entry: _Sent, why: str) -> None:
        entry.done = True
        self.failed += 1
        logger.warning("a document cannot be delivered to Kafka (%s): skipped", why)

    async def _serve(
        self, follower: StreamFollower, progress: Progress, producer: Any, joiner: Reassembler
    ) -> None:
        """Delivery reports, the stall check and the position, while `_consume` reads."""
        while True:
            producer.poll(0)
            now = time.monotonic()
            if progress.in_flight == 0:
                self._last_delivery = now
                self._epochs.delivered()
            elif stalled(now - self._last_delivery, now - self._last_error_at, self._epochs.bumps):
                self._rewind = (
                    f"no delivery for {now - self._last_delivery:.0f} s with the broker up "
                    f"({progress.in_flight} in flight, the producer re-identified "
                    f"{self._epochs.bumps} times): a new producer sends them again"
                )
            if self._rewind:
                logger.warning("Kafka export: %s", self._rewind)
                raise _Rewind(self._rewind)
            position = progress.position(joiner.first_seq)
            await self._save(position)
            if progress.in_flight == 0 and position == self._saved:
                # Nothing to deliver nor to save: sleep until the stream brings more (ADR 28),
                # waking now and then to drain librdkafka's statistics.
                self._work.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._work.wait(), IDLE_DRAIN_S)
            else:
                await asyncio.sleep(SERVICE_S)

    async def _save(self, position: int, force: bool = False) -> None:
        now = time.monotonic()
        if position == self._saved or (not force and now - self._saved_at < SAVE_EVERY_S):
            return
        try:
            await self.positions.put(READER, position)
        except Exception as e:
            logger.debug("Kafka export position not saved: %r", e)
            return
        self._saved, self._saved_at = position, now

    def _producer_config(self) -> dict[str, Any]:
        log = logging.getLogger(f"{__name__}.rdkafka")
        log.setLevel(logging.CRITICAL)  # its errors reach `_on_error`, rate-limited
        return {
            **PRODUCER_DEFAULTS,
            **self.settings.producer_config,
            "bootstrap.servers": self.settings.bootstrap,
            "error_cb": self._on_error,
            "stats_cb": self._epochs_seen,
            "logger": log,
        }

    def _epochs_seen(self, stats: str) -> None:
        self._epochs.seen_stats(stats)

    def _on_error(self, err: Any) -> None:
        self._last_error_at = time.monotonic()
        self._broker_trouble = True
        self._log_error(f"Kafka: {err}")

    def _log_error(self, message: str) -> None:
        if message != self._last_error:
            logger.warning("Kafka export waits (%s); documents stay in the stream", message)
        self._last_error = message
