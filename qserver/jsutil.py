"""Small JetStream helpers shared by the services."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator

from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

logger = logging.getLogger(__name__)


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
    **extra: object,
) -> api.StreamInfo:
    """Create a file-backed stream, or update it to this config if it exists."""
    config = api.StreamConfig(
        name=name,
        subjects=subjects,
        storage=api.StorageType.FILE,
        num_replicas=replicas or default_replicas(),
        **extra,  # type: ignore[arg-type]
    )
    try:
        await js.stream_info(name)
    except NotFoundError:
        return await js.add_stream(config)
    return await js.update_stream(config)


async def read_stream(
    js: JetStreamContext, stream: str, subject: str, start_seq: int, batch: int = 1000
) -> AsyncIterator[tuple[int, bytes]]:
    """Yield (sequence, data) of every message on `subject` from `start_seq` to the current end."""
    info = await js.stream_info(stream)
    last = info.state.last_seq
    if last < start_seq or info.state.messages == 0:
        return
    sub = await js.pull_subscribe(
        subject,
        stream=stream,
        config=api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=max(start_seq, 1),
            ack_policy=api.AckPolicy.NONE,
            inactive_threshold=30.0,
        ),
    )
    try:
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
                yield seq, msg.data
    finally:
        await sub.unsubscribe()
