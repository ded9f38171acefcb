"""The queue service's leader lease: one instance leads, the others wait as hot standbys.

The lease is a key in a JetStream KV bucket; the leader rewrites it every `RENEW_S`. A
standby reads it every `POLL_S` and, when its revision has not changed for `stale_after`
seconds by the standby's own clock (the leader died, hung or lost NATS), replaces it with
a compare-and-set on that revision: of several standbys, one wins. (JetStream's own
expiry of KV entries is too coarse here: it lapses ~0.6-0.9 s late.) The leader trusts its
lease only until `stale_after * SAFETY` after the start of its last successful renewal, by
its own clock, so it stops writing before a standby can take over; and every new leader
first appends a `LeaderChanged` event to the queue log, after which a stale leader's append
is refused by the log's expected-sequence check anyway.

Renewals are serialized, and a failed compare-and-set is checked against the key's holder
before the lease is given up: a leader that was paused (SIGSTOP, a VM stall) and finds the
key as it left it, or rewritten by itself, renews and goes on (ADR 9).
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from qserver.jsutil import ensure_key_value
from qserver.protocol.subjects import Subjects

logger = logging.getLogger(__name__)

KEY = "queue"
STALE_S = 0.45
RENEW_S = 0.1
POLL_S = 0.05
SAFETY = 0.6  # the leader trusts its lease for this share of `stale_after`


class Renewal(enum.Enum):
    RENEWED = "renewed"
    LOST = "lost"  # another instance holds the lease now
    UNKNOWN = "unknown"  # NATS did not answer: nothing is known, nothing may be written


def default_instance() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Lease:
    def __init__(
        self,
        js: JetStreamContext,
        subjects: Subjects,
        instance: str,
        *,
        stale_after: float = STALE_S,
        replicas: int = 1,
    ) -> None:
        self._js = js
        self._bucket = subjects.leader_bucket
        self.instance = instance
        self.stale_after = stale_after
        self._replicas = replicas
        self._kv: KeyValue | None = None
        self.revision = 0
        self._valid_until = 0.0
        # This process's mark in the key: tells our own writes from anyone else's, even from a
        # later process of the same instance name.
        self._token = uuid.uuid4().hex
        self._renewing = asyncio.Lock()
        self._renewed_at = 0.0  # when the last successful renewal started
        self.holder: str | None = None  # who held it at the last failed attempt
        self._seen_revision: int | None = None
        self._seen_at = 0.0

    async def open(self) -> None:
        self._kv = await ensure_key_value(self._js, self._bucket, replicas=self._replicas)

    @property
    def kv(self) -> KeyValue:
        assert self._kv is not None, "Lease.open() first"
        return self._kv

    def _value(self) -> bytes:
        return json.dumps(
            {"instance": self.instance, "pid": os.getpid(), "token": self._token}
        ).encode()

    def valid(self) -> bool:
        return time.monotonic() < self._valid_until

    async def try_acquire(self) -> bool:
        """Take the lease if nobody holds it, its holder stopped renewing it, or it is ours."""
        started = time.monotonic()
        try:
            self.revision = await self.kv.create(KEY, self._value())
        except KeyWrongLastSequenceError:
            try:
                entry = await self.kv.get(KEY)
            except KeyNotFoundError:
                return False  # released just now: the next attempt creates it
            self.holder = json.loads(entry.value or b"{}").get("instance")
            if entry.revision is None:
                return False
            # Our own instance name means a restart after a crash: the old process is gone
            # (a supervisor restarts a service only after it exited).
            if self.holder != self.instance:
                if entry.revision != self._seen_revision:
                    self._seen_revision, self._seen_at = entry.revision, started
                    return False
                if started - self._seen_at < self.stale_after:
                    return False
                logger.warning(
                    "the leader %s has not renewed its lease for %.2f s: taking over",
                    self.holder,
                    started - self._seen_at,
                )
            try:
                self.revision = await self.kv.update(KEY, self._value(), last=entry.revision)
            except KeyWrongLastSequenceError:
                return False  # renewed after all, or another standby was faster
        self._trust(started)
        self.holder = self.instance
        return True

    def _trust(self, started: float) -> None:
        """A write of the lease that began at `started` succeeded."""
        self._renewed_at = started
        self._valid_until = started + self.stale_after * SAFETY

    async def acquire(self, stopping: asyncio.Event) -> bool:
        """Wait for the lease; False if `stopping` is set first."""
        announced = False
        while not stopping.is_set():
            try:
                if await self.try_acquire():
                    return True
            except Exception as e:
                logger.warning("leader lease: %r", e)
            if not announced:
                logger.info("standby: %s leads; waiting for its lease to lapse", self.holder)
                announced = True
            await asyncio.sleep(POLL_S)
        return False

    async def renew(self) -> Renewal:
        """Rewrite the lease if it is still ours (compare-and-set on our last revision).

        One renewal at a time: a caller that finds one started after it asked shares its
        outcome (two compare-and-sets on the same revision would fail one of them, and the
        loser would take its own renewal for a takeover).
        """
        asked = time.monotonic()
        async with self._renewing:
            if self._renewed_at >= asked:
                return Renewal.RENEWED
            return await self._renew()

    async def _renew(self) -> Renewal:
        started = time.monotonic()
        try:
            self.revision = await self.kv.update(KEY, self._value(), last=self.revision)
        except KeyWrongLastSequenceError:
            return await self._recheck(started)
        except Exception as e:
            if self.valid():
                logger.debug("renewing the leader lease failed: %r", e)
            else:
                logger.warning("renewing the leader lease failed: %r", e)
            return Renewal.UNKNOWN
        self._trust(started)
        return Renewal.RENEWED

    async def _recheck(self, started: float) -> Renewal:
        """The key moved on from our revision: see who wrote it before giving the lease up.

        Our own token there means the write of ours that moved it did succeed (its answer
        was lost); an empty key means nobody took it. In both cases the lease is retaken
        with a compare-and-set, so a standby racing for it still wins or loses cleanly.
        """
        try:
            try:
                entry = await self.kv.get(KEY)
            except KeyNotFoundError:
                self.revision = await self.kv.create(KEY, self._value())
            else:
                value = json.loads(entry.value or b"{}")
                if value.get("token") != self._token or entry.revision is None:
                    self.holder = value.get("instance")
                    logger.error(
                        "the leader lease was taken over by another instance (%s)", self.holder
                    )
                    return Renewal.LOST
                self.revision = await self.kv.update(KEY, self._value(), last=entry.revision)
        except KeyWrongLastSequenceError:
            logger.error("the leader lease was taken over by another instance")
            return Renewal.LOST
        except Exception as e:
            logger.warning("checking the leader lease failed: %r", e)
            return Renewal.UNKNOWN
        logger.info("the leader lease was still ours: renewed")
        self._trust(started)
        return Renewal.RENEWED

    async def confirm(self) -> Renewal:
        """Before a write: still ours by the clock, or renewed now."""
        return Renewal.RENEWED if self.valid() else await self.renew()

    async def keep(self, on_lost: Callable[[], None]) -> None:
        """Renew until cancelled; call `on_lost` once another instance holds the lease.

        While NATS does not answer the lease is not trusted (`valid()` turns false, so
        nothing is written) but kept trying: a standby can only take over through NATS,
        and the first renewal after NATS answers again tells which case it is.
        """
        while True:
            await asyncio.sleep(RENEW_S)
            if await self.renew() is Renewal.LOST:
                on_lost()
                return

    async def release(self) -> None:
        """Give the lease up at a clean stop, so that a standby takes over at once."""
        self._valid_until = 0.0
        try:
            await self.kv.delete(KEY, last=self.revision)
        except Exception as e:
            logger.debug("releasing the leader lease: %r", e)
