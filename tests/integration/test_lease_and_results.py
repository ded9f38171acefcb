"""The leader lease and the results feed on their own, against a real nats-server (ADR 9)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import KeyWrongLastSequenceError

from qserver.errors import Refused
from qserver.protocol.subjects import Subjects
from services.queue.leader import KEY, Lease, Renewal
from services.queue.results import CONSUMER_PREFIX, ResultFeed
from services.stack.natsserver import NatsServer
from tests.conftest import unique_prefix

T = 30.0


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    conn = await nats.connect(nats_server.url)
    yield conn
    await conn.close()


async def leader(nc: NATS, subjects: Subjects, name: str) -> Lease:
    lease = Lease(nc, subjects, name)
    await lease.open()
    return lease


async def test_concurrent_renewals_of_a_held_lease_all_succeed(nc: NATS) -> None:
    """The wake-up of a paused leader: its keeper and a pending write renew at once."""
    lease = await leader(nc, Subjects(unique_prefix()), "a")
    assert await lease.try_acquire()
    outcomes = await asyncio.gather(*(lease.renew() for _ in range(5)))
    assert outcomes == [Renewal.RENEWED] * 5


async def test_a_renewal_whose_answer_was_lost_is_still_ours(nc: NATS) -> None:
    """The key moved on, but by our own write: renewed, not given up."""
    lease = await leader(nc, Subjects(unique_prefix()), "a")
    assert await lease.try_acquire()
    await lease.kv.update(KEY, lease._value(), last=lease.revision)  # our write, answer lost
    assert await lease.renew() is Renewal.RENEWED
    assert lease.valid()


async def test_a_lease_taken_by_a_standby_is_lost(nc: NATS) -> None:
    subjects = Subjects(unique_prefix())
    a = await leader(nc, subjects, "a")
    assert await a.try_acquire()
    b = await leader(nc, subjects, "b")
    b.stale_after = 0.0  # a standby that finds the leader's lease stale at once
    deadline = time.monotonic() + T
    while not await b.try_acquire():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    assert await a.renew() is Renewal.LOST
    assert a.holder == "b"


async def until(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + T
    while not cond():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def test_an_idle_leader_answers_pings_and_never_rewrites_its_lease(nc: NATS) -> None:
    """ADR 28: at idle nothing is written; a standby that hears the leader never takes over."""
    subjects = Subjects(unique_prefix())
    a = await leader(nc, subjects, "a")
    assert await a.try_acquire()
    lost = asyncio.Event()
    keeper = asyncio.create_task(a.keep(lost.set))
    b = await leader(nc, subjects, "b")
    assert not await b.try_acquire()
    stopping = asyncio.Event()
    standby = asyncio.create_task(b.acquire(stopping))
    try:
        # 20 answers at one per PING_S: more than four times the standby's patience.
        await until(lambda: b.pings_answered >= 20 or standby.done(), "no answers to pings")
        assert not standby.done(), "the standby took over a live leader"
        assert (await a.kv.get(KEY)).revision == a.revision  # not rewritten at idle
        assert not a.valid()  # idle: not trusted by the clock, renewed before a write
        assert await a.confirm() is Renewal.RENEWED
        assert a.valid() and (await a.kv.get(KEY)).revision == a.revision
        assert not lost.is_set()
    finally:
        stopping.set()
        assert await standby is False
        keeper.cancel()


async def test_a_silent_leader_is_replaced_and_cannot_write(nc: NATS) -> None:
    """A leader that stops answering (frozen) loses the lease; awake, it learns so at once."""
    subjects = Subjects(unique_prefix())
    a = await leader(nc, subjects, "a")
    assert await a.try_acquire()
    keeper = asyncio.create_task(a.keep(lambda: None))
    b = await leader(nc, subjects, "b")
    assert not await b.try_acquire()
    stopping = asyncio.Event()
    standby = asyncio.create_task(b.acquire(stopping))
    await until(lambda: b.pings_answered >= 3, "no answers to pings")
    keeper.cancel()  # frozen: no answers, no watch
    assert await asyncio.wait_for(standby, T) is True
    assert b.valid() and b.holder == "b"
    assert await a.confirm() is Renewal.LOST  # its next write is refused
    lost = asyncio.Event()
    woken = asyncio.create_task(a.keep(lost.set))  # what it runs when it wakes up
    await asyncio.wait_for(lost.wait(), T)
    await asyncio.wait_for(woken, T)


async def test_a_standbys_failed_attempt_does_not_unseat_the_leader(nc: NATS) -> None:
    """The leader hears a foreign write of its key, and a renewal tells it failed."""
    subjects = Subjects(unique_prefix())
    a = await leader(nc, subjects, "a")
    assert await a.try_acquire()
    lost = asyncio.Event()
    keeper = asyncio.create_task(a.keep(lost.set))
    held = a.revision
    b = await leader(nc, subjects, "b")
    await nc.request(subjects.leader_ping(a._token), b"", timeout=T)  # the keeper listens
    with pytest.raises(KeyWrongLastSequenceError):
        await b.kv.update(KEY, b._value(), last=held - 1 if held > 1 else held + 5)
    await until(lambda: a.revision > held, "the leader did not check its lease")
    assert not lost.is_set() and a.valid()
    keeper.cancel()


def result(n: int) -> bytes:
    return json.dumps(
        {
            "record_uid": f"r{n}",
            "item_uid": f"i{n}",
            "env_uid": "e",
            "result": {"exit_status": "completed"},
        }
    ).encode()


class Puller:
    """A results feed as a leader runs it; `ack=False` plays a leader frozen mid-result."""

    def __init__(self, nc: NATS, subjects: Subjects, *, ack: bool) -> None:
        self.got: list[Msg] = []
        self.ack = ack
        self.leading = True
        self.feed = ResultFeed(nc, subjects, confirm=self.confirm, handle=self.handle)
        self.task = asyncio.create_task(self.feed.run())

    async def confirm(self) -> None:
        if not self.leading:
            raise Refused("not the leader")

    async def handle(self, msg: Msg) -> None:
        self.got.append(msg)
        if self.ack:
            await msg.ack()
        else:
            await asyncio.Event().wait()  # frozen: never acks, never pulls again

    async def until(self, n: int) -> None:
        deadline = time.monotonic() + T
        while len(self.got) < n:
            assert time.monotonic() < deadline, [m.data for m in self.got]
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.feed.close()


async def test_a_result_held_by_a_former_leader_is_delivered_to_the_new_one_at_once(
    nc: NATS,
) -> None:
    """Not after the ack wait: the new leader's consumer is new, so its delivery is a first."""
    subjects = Subjects(unique_prefix())
    js = nc.jetstream()
    old = Puller(nc, subjects, ack=False)
    await old.feed.drained(time.monotonic(), T)  # its consumer exists
    await js.publish(subjects.results, result(1))
    await old.until(1)
    old.leading = False  # a standby takes over while the old leader is frozen
    new = Puller(nc, subjects, ack=True)
    try:
        await new.until(1)
        assert new.got[0].data == result(1)
        assert new.got[0].metadata.num_delivered == 1  # not a redelivery after the ack wait
        consumers = [c.name for c in await js.consumers_info(subjects.results_stream)]
        assert len(consumers) == 1 and consumers[0].startswith(CONSUMER_PREFIX)
        # The old leader's consumer is gone: it cannot take the next result away.
        await js.publish(subjects.results, result(2))
        await new.until(2)
        assert [m.data for m in new.got] == [result(1), result(2)]
        assert len(old.got) == 1
    finally:
        await old.stop()
        await new.stop()


async def test_a_new_term_starts_after_the_last_acknowledged_result(nc: NATS) -> None:
    subjects = Subjects(unique_prefix())
    js = nc.jetstream()
    first = Puller(nc, subjects, ack=True)
    await first.feed.drained(time.monotonic(), T)
    for n in (1, 2):
        await js.publish(subjects.results, result(n))
    await first.until(2)
    await first.stop()
    await js.publish(subjects.results, result(3))
    second = Puller(nc, subjects, ack=True)
    try:
        await second.until(1)
        await second.feed.drained(time.monotonic(), T)
        assert [m.data for m in second.got] == [result(3)]
    finally:
        await second.stop()
