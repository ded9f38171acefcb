"""The queue service's leader lease: one instance leads, the others wait as hot standbys.

The lease is a key in a JetStream KV bucket, written only when it changes hands and when the
leader is about to write after a quiet spell (ADR 28; it was rewritten every 0.1 s before).
The leader trusts its lease only until `stale_after * SAFETY` after the start of its last
successful write of the key, by its own clock, and rewrites it (a compare-and-set on its
revision) before a write outside that window. A standby follows the key with a KV watch
and asks the holder "alive?" on a core-NATS subject of the holder's own every `PING_S`; when
the holder has not answered for `stale_after` seconds *and* the key's revision has not
changed for `stale_after` seconds, both by the standby's own clock, it replaces the key
with a compare-and-set on that revision: of several standbys, one wins, and the leader's
trust in that revision ended `stale_after * (1 - SAFETY)` earlier. Every new leader first
appends a `LeaderChanged` event to the queue log, after which a stale leader's append is
refused by the log's expected-sequence check anyway. The leader also watches the key and
exits as soon as another instance's token is in it.

Renewals are serialized, and a failed compare-and-set is checked against the key's holder
before the lease is given up: a leader that was paused (SIGSTOP, a VM stall) and finds the
key as it left it, or rewritten by itself, renews and goes on (ADR 9).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from qserver.jsutil import ensure_key_value
from qserver.protocol.subjects import Subjects

logger = logging.getLogger(__name__)

KEY = "queue"
STALE_S = 0.45
PING_S = 0.1  # a standby asks the holder this often whether it is alive
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
        nc: NATS,
        subjects: Subjects,
        instance: str,
        *,
        stale_after: float = STALE_S,
        replicas: int = 1,
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._subjects = subjects
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
        # A standby's view of the key: the holder's token, and since when (by our clock)
        # the key has had its revision; the holder's last answer to a ping.
        self._holder_token: str | None = None
        self._seen_revision: int | None = None
        self._seen_at = 0.0
        self._answered_at = 0.0
        self.pings_answered = 0

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
            held = json.loads(entry.value or b"{}")
            self.holder, self._holder_token = held.get("instance"), held.get("token")
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
                    "the leader %s has not answered for %.2f s, its lease unchanged for %.2f s: "
                    "taking over",
                    self.holder,
                    started - self._answered_at,
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
        """Wait for the lease; False if `stopping` is set first.

        The key is followed with a watch (no reads at all while it stays as it is), and the
        holder is pinged every `PING_S`; an attempt is made when the key is empty, or when
        the holder has not answered for `stale_after` and the key has not changed for as
        long (`try_acquire` then compares-and-sets on the revision it saw).
        """
        inbox = self._nc.new_inbox()
        vacant = asyncio.Event()

        async def on_answer(msg: Msg) -> None:
            try:
                token = json.loads(msg.data).get("token")
            except (ValueError, AttributeError):
                return
            if token is not None and token == self._holder_token:
                self._answered_at = time.monotonic()
                self.pings_answered += 1

        sub = await self._nc.subscribe(inbox, cb=on_answer)
        watcher = await self.kv.watch(KEY)
        following = asyncio.create_task(self._follow(watcher, vacant))
        self._answered_at = time.monotonic()
        announced = False
        try:
            while not stopping.is_set():
                due_in = self._takeover_due_in(time.monotonic())
                if due_in <= 0 or vacant.is_set():
                    vacant.clear()
                    try:
                        if await self.try_acquire():
                            return True
                    except Exception as e:
                        logger.warning("leader lease: %r", e)
                    due_in = PING_S
                if not announced:
                    logger.info("standby: %s leads; waiting for its lease to lapse", self.holder)
                    announced = True
                await self._ping(inbox)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(vacant.wait(), min(PING_S, max(due_in, 0.005)))
            return False
        finally:
            following.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await following
            with contextlib.suppress(Exception):
                await watcher.stop()
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def _takeover_due_in(self, now: float) -> float:
        """Seconds until both the holder's silence and the key's age reach `stale_after`."""
        if self._holder_token is None:
            return 0.0
        return max(self._answered_at, self._seen_at) + self.stale_after - now

    async def _ping(self, inbox: str) -> None:
        if self._holder_token is None:
            return
        with contextlib.suppress(Exception):  # reconnecting: the silence counts
            await self._nc.publish(self._subjects.leader_ping(self._holder_token), b"", reply=inbox)

    async def _follow(self, watcher: KeyValue.KeyWatcher, vacant: asyncio.Event) -> None:
        """A standby's view of the key, from the watch: its holder and revision."""
        async for entry in watcher:
            if entry is None:
                continue
            if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
                self._holder_token = None
                vacant.set()
                continue
            try:
                held = json.loads(entry.value)
            except ValueError:
                held = {}
            if entry.revision != self._seen_revision:
                self._seen_revision, self._seen_at = entry.revision, time.monotonic()
            self.holder, self._holder_token = held.get("instance"), held.get("token")

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
        """Answer the standbys' pings and hear every write of the key until cancelled; call
        `on_lost` once another instance holds the lease.

        Nothing is written at idle: the lease is rewritten only before a write (`confirm`).
        Writes of the key are heard with a plain subscription to its subject (no consumer,
        no heartbeats); one that is not ours (another's compare-and-set, which may have
        failed, or a delete) is checked with a renewal, which tells a takeover from a failed
        attempt and retakes a deleted key. A leader that was frozen or cut off from NATS
        hears the takeover as soon as it runs again.
        """
        changed = asyncio.Event()

        async def on_ping(msg: Msg) -> None:
            if msg.reply:
                with contextlib.suppress(Exception):
                    await msg.respond(self._value())

        async def on_write(msg: Msg) -> None:
            try:
                token = json.loads(msg.data).get("token") if msg.data else None
            except (ValueError, AttributeError):
                token = None
            if token != self._token:
                changed.set()

        subs = [  # the key first: an answered ping shows both are heard
            await self._nc.subscribe(self.key_subject, cb=on_write),
            await self._nc.subscribe(self._subjects.leader_ping(self._token), cb=on_ping),
        ]
        try:
            # Written before we listened (we started late, or were frozen since): read once.
            try:
                entry = await self.kv.get(KEY)
                if json.loads(entry.value or b"{}").get("token") != self._token:
                    changed.set()
            except KeyNotFoundError:
                changed.set()
            except Exception as e:  # NATS away: the next write renews and tells
                logger.debug("reading the leader lease: %r", e)
            while True:
                await changed.wait()
                changed.clear()
                if await self.renew() is Renewal.LOST:
                    on_lost()
                    return
        finally:
            for sub in subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    @property
    def key_subject(self) -> str:
        """The subject every write of the lease key is published on."""
        return f"$KV.{self._bucket}.{KEY}"

    async def release(self) -> None:
        """Give the lease up at a clean stop, so that a standby takes over at once."""
        self._valid_until = 0.0
        try:
            await self.kv.delete(KEY, last=self.revision)
        except Exception as e:
            logger.debug("releasing the leader lease: %r", e)
