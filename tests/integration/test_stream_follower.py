"""The stream reader of the document stream, the history and the console (ADR 10, ADR 28)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import nats
import pytest
from nats.aio.client import Client as NATS

from services.runtime.doc_stream import Reconnects, StreamFollower, StreamMsg
from services.stack.natsserver import NatsServer
from tests.conftest import unique_prefix

T = 30.0


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    conn = await nats.connect(nats_server.url)
    yield conn
    await conn.close()


async def test_a_reconnection_makes_a_new_consumer_at_once_and_loses_nothing(nc: NATS) -> None:
    js = nc.jetstream()
    subject = f"{unique_prefix()}.s"
    stream = subject.replace(".", "_").upper()
    await js.add_stream(name=stream, subjects=[subject])
    reconnects = Reconnects()
    follower = StreamFollower(nc, stream, None, reconnects)
    got: list[StreamMsg] = []
    reading = asyncio.create_task(follower.follow(lambda m: _append(got, m)))
    try:
        await js.publish(subject, b"1")
        await js.publish(subject, b"2")
        await _until(lambda: len(got) == 2)
        first_consumer = follower._consumer
        await reconnects.notify()  # what the connection's reconnected_cb calls
        await js.publish(subject, b"3")
        await _until(lambda: len(got) == 3)
        assert follower._consumer and follower._consumer != first_consumer
        assert [(m.seq, m.data) for m in got] == [(1, b"1"), (2, b"2"), (3, b"3")]
    finally:
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading


async def _append(got: list[StreamMsg], m: StreamMsg) -> None:
    got.append(m)


async def _until(cond: Callable[[], bool]) -> None:
    async def wait() -> None:
        while not cond():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(wait(), T)
