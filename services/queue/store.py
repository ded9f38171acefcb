"""The queue's durable event log: a JetStream stream plus snapshots in an object store.

Each change is one small message, so an edit costs the same whatever the queue length.
Appends carry the expected last sequence: a second writer (a stale leader) fails instead of
forking the log. A snapshot is written every `snapshot_every` events, off the request path,
and the events it covers are then purged.
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import APIError, BadRequestError, NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from qserver.errors import Conflict
from qserver.jsutil import ensure_stream, read_stream
from qserver.protocol.queue_log import AnyEvent, Snapshot
from qserver.protocol.subjects import Subjects

logger = logging.getLogger(__name__)

SNAPSHOT_NAME = "queue"
WRONG_LAST_SEQUENCE = 10071

_event_decoder = msgspec.json.Decoder(AnyEvent)  # type: ignore[arg-type]
_snapshot_decoder = msgspec.msgpack.Decoder(Snapshot)
_encoder = msgspec.json.Encoder()


class EventLog:
    """Append-only queue log with snapshots; one writer at a time."""

    def __init__(
        self,
        js: JetStreamContext,
        subjects: Subjects,
        *,
        replicas: int = 1,
        snapshot_every: int = 2000,
    ) -> None:
        self._js = js
        self._subjects = subjects
        self._replicas = replicas
        self.snapshot_every = snapshot_every
        self.last_seq = 0
        self._snapshot_seq = 0
        self._snapshot_task: asyncio.Task[None] | None = None
        self._obs: ObjectStore | None = None

    async def open(self) -> tuple[Snapshot | None, list[tuple[int, AnyEvent]]]:
        """Create the stream and bucket if needed; return the last snapshot and later events."""
        s = self._subjects
        if self._obs is None:
            info = await ensure_stream(
                self._js,
                s.queue_stream,
                [s.queue_log],
                replicas=self._replicas,
                max_msg_size=8 * 1024 * 1024,
            )
            self._obs = await self._js.create_object_store(
                s.snapshot_bucket, replicas=self._replicas
            )
        else:  # opened before (a standby taking over): only read
            info = await self._js.stream_info(s.queue_stream)
        snap = await self._load_snapshot()
        start = snap.seq + 1 if snap else 1
        events = [
            (seq, _event_decoder.decode(data))
            async for seq, data in read_stream(self._js, s.queue_stream, s.queue_log, start)
        ]
        self.last_seq = max(info.state.last_seq, events[-1][0] if events else 0)
        self._snapshot_seq = snap.seq if snap else 0
        return snap, events

    async def catch_up(self) -> list[AnyEvent]:
        """Events appended after the last one this instance wrote or read."""
        s = self._subjects
        events = []

        def skipped(seq: int) -> None:  # not an event, but the next append comes after it
            self.last_seq = seq

        async for seq, data in read_stream(
            self._js, s.queue_stream, s.queue_log, self.last_seq + 1, skipped=skipped
        ):
            events.append(_event_decoder.decode(data))
            self.last_seq = seq
        return events

    async def _load_snapshot(self) -> Snapshot | None:
        try:
            assert self._obs is not None
            result = await self._obs.get(SNAPSHOT_NAME)
        except (ObjectNotFoundError, NotFoundError):
            return None
        assert result.data is not None
        return _snapshot_decoder.decode(result.data)

    async def append(self, event: AnyEvent) -> int:
        """Write one event and wait for JetStream's acknowledgement; return its sequence."""
        try:
            ack = await self._js.publish(
                self._subjects.queue_log,
                _encoder.encode(event),
                headers={"Nats-Expected-Last-Sequence": str(self.last_seq)},
            )
        except (BadRequestError, APIError) as e:
            if getattr(e, "err_code", None) == WRONG_LAST_SEQUENCE:
                raise Conflict(
                    "The queue log was changed by another writer; this instance is stale"
                ) from e
            raise
        self.last_seq = ack.seq
        return ack.seq

    def snapshot_due(self) -> bool:
        return self.last_seq - self._snapshot_seq >= self.snapshot_every and not self.snapshotting

    @property
    def snapshotting(self) -> bool:
        return self._snapshot_task is not None and not self._snapshot_task.done()

    def start_snapshot(self, snap: Snapshot) -> None:
        """Save a snapshot in the background; the caller has taken it at `snap.seq`."""
        self._snapshot_task = asyncio.get_running_loop().create_task(self.save_snapshot(snap))

    async def save_snapshot(self, snap: Snapshot) -> None:
        t0 = time.perf_counter()
        try:
            assert self._obs is not None
            await self._obs.put(SNAPSHOT_NAME, msgspec.msgpack.encode(snap))
            # Keep every event after the snapshot; older ones are covered by it.
            await self._js.purge_stream(self._subjects.queue_stream, seq=snap.seq + 1)
            self._snapshot_seq = snap.seq
            logger.info(
                "snapshot at seq %d with %d items saved in %.1f ms",
                snap.seq,
                len(snap.items),
                (time.perf_counter() - t0) * 1e3,
            )
        except Exception:
            logger.exception("saving the queue snapshot at seq %d failed", snap.seq)

    async def close(self) -> None:
        if self._snapshot_task is not None:
            await asyncio.gather(self._snapshot_task, return_exceptions=True)
