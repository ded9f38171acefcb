"""The leader's plan results: a consumer of its own per leader term, pulled one at a time.

A result handed out by JetStream but never acknowledged (its puller was frozen, died, or
lost the message with its connection) is held until the consumer's ack wait runs out, and
with `max_ack_pending=1` it holds every later result with it: that was the queue's stall
of up to 30 s after a failover or a restart (ADR 9). So each leader, when it takes charge
and again after each reconnection to NATS, makes a fresh consumer that starts after the
last acknowledged result of the ones before it and deletes them: whatever they had handed
out is delivered again at once, and a former leader that wakes up cannot pull from the new
one. Results are recorded idempotently, so delivering one again is safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as jsapi
from nats.js.errors import NotFoundError

from qserver.jsutil import ensure_stream, transient
from qserver.protocol.subjects import Subjects

logger = logging.getLogger(__name__)

CONSUMER_PREFIX = "queue-results"  # every term's consumer name starts with it
DUPLICATE_WINDOW_S = 3600.0
# Only a delivery that never reached the leader waits this long, and a new term (takeover,
# reconnection) does not wait for it at all; recording a result takes milliseconds.
ACK_WAIT_S = 2.0
# A pull request's life. A long one costs little at idle (ADR 28); a reconnection to NATS, or a
# caller of `drained`, cuts it short, and `drained` is served by short pulls.
FETCH_S = 5.0
QUICK_FETCH_S = 0.5
RETRY_MAX_S = 2.0
# Pulls that find nothing this long while the consumer says it holds results mean a stuck
# consumer (seen when a NATS node returned while a result was being redelivered): a new term.
STALL_CHECK_S = 5.0


class ResultFeed:
    """Pull plan results for the leader and hand each to `handle` (which acks or naks it)."""

    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        *,
        confirm: Callable[[], Awaitable[None]],
        handle: Callable[[Msg], Awaitable[None]],
        on_term: Callable[[], Awaitable[None]] | None = None,
        owner: str = "",
    ) -> None:
        self.nc = nc
        self.subjects = subjects
        self._confirm = confirm  # raises unless this instance still leads
        self._handle = handle
        self._on_term = on_term  # catch up with events missed while away, before pulling
        self._owner = owner
        self._psub: Any = None
        self._reconnects = -1
        self._empty_since = 0.0  # when the last fetch that found nothing was sent
        self._wake = asyncio.Event()  # cut the current pull short
        self._hurried = 0  # callers of `drained` waiting

    async def run(self) -> None:
        """Pull results until cancelled; a new term after each reconnection."""
        js = self.nc.jetstream()
        s = self.subjects
        await ensure_stream(js, s.results_stream, [s.results], duplicate_window=DUPLICATE_WINDOW_S)
        delay = 0.1
        fresh_term_needed = True
        quiet_since = time.monotonic()  # since when every pull found nothing
        while True:
            try:
                if fresh_term_needed or self.nc.stats["reconnects"] != self._reconnects:
                    self._reconnects = self.nc.stats["reconnects"]
                    await self._new_term(js)
                    fresh_term_needed, delay = False, 0.1
                    quiet_since = time.monotonic()
                sent = time.monotonic()
                try:
                    msgs = await self._fetch()
                    if msgs is None:
                        continue  # cut short: a reconnection, or `drained` hurries
                except TimeoutError:
                    self._empty_since = sent
                    if sent - quiet_since > STALL_CHECK_S:
                        quiet_since = sent
                        fresh_term_needed = await self._stuck()
                    continue
            except nats.errors.ConnectionClosedError:
                return  # shutting down
            except Exception as e:  # NATS away, a leader election, our consumer deleted
                log = logger.info if transient(e) and delay < RETRY_MAX_S else logger.warning
                log("pulling plan results: %r; starting again", e)
                fresh_term_needed = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            quiet_since = time.monotonic()
            for msg in msgs:
                await self._handle(msg)

    async def _fetch(self) -> list[Msg] | None:
        """One pull; None if it was cut short (`reconnected`, `drained`)."""
        self._wake.clear()
        fetching = asyncio.ensure_future(
            self._psub.fetch(1, timeout=QUICK_FETCH_S if self._hurried else FETCH_S)
        )
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({fetching, woken}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            # Cancelled (the service stops): the pull goes too, and its end is collected
            # here, or the loop's shutdown reports a pull left behind (a 5 s pull is nearly
            # always under way, ADR 28).
            fetching.cancel()
            with contextlib.suppress(BaseException):
                await fetching
            raise
        finally:
            woken.cancel()
        if fetching.done():
            return fetching.result()  # type: ignore[no-any-return]
        fetching.cancel()
        with contextlib.suppress(BaseException):
            await fetching
        return None

    def reconnected(self) -> None:
        """The connection to NATS came back: start a new term now (the pull may be lost)."""
        self._wake.set()

    async def _stuck(self) -> bool:
        """True if our consumer holds results that pulls have not been getting."""
        info = await self._psub.consumer_info()
        held = info.num_pending + info.num_ack_pending
        if held:
            logger.warning(
                "pulling plan results: %d held by %s but none delivered for %g s; a new term",
                held,
                info.name,
                STALL_CHECK_S,
            )
        return bool(held)

    async def drained(self, since: float, timeout: float) -> bool:
        """Wait until a pull sent after `since` found nothing left; False after `timeout`."""
        deadline = time.monotonic() + timeout
        self._hurried += 1
        self._wake.set()  # a short pull now, not at the end of a long one
        try:
            while self._empty_since < since:
                if time.monotonic() > deadline:
                    return False
                await asyncio.sleep(0.05)
        finally:
            self._hurried -= 1
        return True

    async def _new_term(self, js: JetStreamContext) -> None:
        """Replace the results consumers with one of our own, from the first unacknowledged."""
        await self._confirm()  # a former leader must not replace the live one's consumer
        s = self.subjects
        if self._psub is not None:
            with contextlib.suppress(Exception):
                await self._psub.unsubscribe()
            self._psub = None
        olds = [
            c
            for c in await js.consumers_info(s.results_stream)
            if c.name.startswith(CONSUMER_PREFIX)
        ]
        floors = [c.ack_floor.stream_seq for c in olds if c.ack_floor is not None]
        name = f"{CONSUMER_PREFIX}-{uuid.uuid4().hex[:12]}"
        config = jsapi.ConsumerConfig(
            durable_name=name,
            description=f"plan results for the leading queue service {self._owner}".strip(),
            filter_subject=s.results,
            ack_policy=jsapi.AckPolicy.EXPLICIT,
            ack_wait=ACK_WAIT_S,
            max_ack_pending=1,  # one result at a time, in order
            max_deliver=-1,  # a result is never dropped
        )
        if floors:
            config.deliver_policy = jsapi.DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = max(floors) + 1
        else:  # the first leader ever (or the consumers were removed): every result
            config.deliver_policy = jsapi.DeliverPolicy.ALL
        await js.add_consumer(s.results_stream, config)
        self._psub = await js.pull_subscribe_bind(durable=name, stream=s.results_stream)
        for old in olds:
            with contextlib.suppress(NotFoundError):
                await js.delete_consumer(s.results_stream, old.name)
        logger.info(
            "pulling plan results with %s from seq %s%s",
            name,
            config.opt_start_seq or 1,
            f" (replaces {', '.join(c.name for c in olds)})" if olds else "",
        )
        if self._on_term is not None:
            await self._on_term()

    async def close(self) -> None:
        if self._psub is not None:
            with contextlib.suppress(Exception):
                await self._psub.unsubscribe()
