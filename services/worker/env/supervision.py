"""Who supervises this environment, and what it does when no worker service does (ADR 12).

The worker service that started the environment supervises it; a restarted worker takes it
over with `env.attach`. The environment hears its supervisor's state events (once a second)
and, on this host, can see whether its process lives. It accepts a new supervisor only when
the old one is dead or has not been heard for `OWNER_STALE_S`: of two workers, one wins.

Left without a supervisor it goes on: it finishes its plan and stores the outcome in the
results stream as always (the queue service reads it from there). Once it is idle it waits
`orphan_timeout` seconds for a worker to adopt it, then closes itself and removes the
worker's record of it. Without a supervisor *and* without NATS (the whole stack was
killed) it can neither be adopted nor report anything, so it stops within `DISCONNECTED_S`,
as it did when it died with its worker: it does not wait for a stack that may come back
with another Kafka broker, where its documents would never arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from typing import TYPE_CHECKING

import msgspec
from nats.aio.msg import Msg

from qserver.protocol.worker import WorkerState
from services.runtime.service_base import encode
from services.worker.messages import (
    RECORD_KEY,
    AttachReply,
    AttachRequest,
    EnvRecord,
    worker_bucket,
)
from services.worker.pids import instance_process, is_worker_process, on_this_host

if TYPE_CHECKING:
    from services.worker.env.engine import Environment

logger = logging.getLogger(__name__)

OWNER_STALE_S = 3.0  # a supervisor not heard for this long may be replaced
CHECK_S = 0.25  # while NATS is away, or the environment is closing
QUIET_CHECK_S = 1.0  # while NATS is up: no deadline here is shorter than orphan_timeout
DISCONNECTED_S = 1.0
# Exit code of an environment that gave up a plan it could not report (see `abandon`).
ABANDONED = 3

_worker_decoder = msgspec.json.Decoder(WorkerState)
_attach_decoder = msgspec.json.Decoder(AttachRequest)
_record_decoder = msgspec.json.Decoder(EnvRecord)


class Supervision:
    """Tracks the supervising worker; adopts a new one; closes the orphaned environment."""

    def __init__(self, env: Environment, owner: str, orphan_timeout: float) -> None:
        self.env = env
        env.owner = owner
        self.orphan_timeout = orphan_timeout
        now = time.monotonic()
        self._heard = now  # the supervisor's last state event about this environment
        self._supervised = now  # the last moment a supervisor was known
        self._idle_since: float | None = None
        self._offline_since: float | None = None
        self._pending_since: float | None = None
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._poke = asyncio.Event()  # NATS went away: check at once

    async def start(self) -> None:
        nc = self.env.link.nc
        await nc.subscribe(self.env.subjects.worker_state, cb=self._on_worker_state)
        await nc.subscribe(self.env.subjects.env_cmd("attach"), cb=self._on_attach)
        self.env.link.on_disconnect.append(self._poke.set)
        self._task = asyncio.get_running_loop().create_task(self._watch())

    # ----- the supervisor -----

    async def _on_worker_state(self, msg: Msg) -> None:
        try:
            st = _worker_decoder.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return  # a `state` request: the command and the event share a subject
        if st.worker == self.env.owner and st.env_uid == self.env.env_uid:
            self._heard = time.monotonic()

    def _owner_lives(self) -> bool | None:
        """Whether the supervisor's process lives (None: it runs on another host)."""
        host, pid = instance_process(self.env.owner)
        return is_worker_process(pid) if on_this_host(host) else None

    def supervised(self) -> bool:
        """A supervisor looks after this environment now.

        Heard lately, or (on this host) its process lives while NATS is away: it cannot be
        heard then, and it will be again when NATS is back.
        """
        lives = self._owner_lives()
        if lives is False:
            return False
        if time.monotonic() - self._heard < OWNER_STALE_S:
            return True
        return bool(lives) and not self.env.link.nc.is_connected

    async def _on_attach(self, msg: Msg) -> None:
        try:
            req = _attach_decoder.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        if req.env_uid != self.env.env_uid or not msg.reply:
            return  # for another environment: that one answers
        reply = self.attach(req.worker, probe=req.probe)
        with contextlib.suppress(Exception):
            await msg.respond(encode(reply))

    def attach(self, worker: str, *, probe: bool = False) -> AttachReply:
        """Let `worker` supervise this environment, unless a living supervisor does."""
        owner = self.env.owner
        now = time.monotonic()
        if self.env.env_state in ("closing", "closed"):
            # It ends by itself in order: the worker waits and then finds it gone.
            return AttachReply(success=False, msg="The environment is closing", owner=owner)
        taken = self._owner_lives() is not False and now - self._heard < OWNER_STALE_S
        if probe or (worker != owner and taken):
            return AttachReply(
                success=False,
                msg=f"The environment is supervised by worker {owner}, which is alive"
                if taken
                else "",
                owner=owner,
                previous=owner,
                state=self.env.snapshot(),
            )
        if worker != owner:
            logger.warning("environment adopted by worker %s (was %s)", worker, owner or "none")
        self.env.owner = worker
        self._heard = self._supervised = now
        self.env.notify()
        return AttachReply(success=True, owner=worker, previous=owner, state=self.env.snapshot())

    # ----- without a supervisor -----

    async def _watch(self) -> None:
        """Check every `CHECK_S` while NATS is away (the environment stops `DISCONNECTED_S`
        after it is left alone without NATS), else every `QUIET_CHECK_S`; a disconnection
        wakes it at once (ADR 28)."""
        while True:
            quiet = self.env.link.nc.is_connected and not self._closing
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), QUIET_CHECK_S if quiet else CHECK_S)
            self._poke.clear()
            try:
                await self.check()
            except Exception:  # the watchdog must not die
                logger.exception("supervision check failed")

    async def check(self) -> None:
        now = time.monotonic()
        if self.supervised():
            self._supervised = now
        idle = self.env.idle()
        self._idle_since = (self._idle_since or now) if idle else None
        online = self.env.link.nc.is_connected
        self._offline_since = None if online else (self._offline_since or now)
        pending = self.env.result_pending
        self._pending_since = (self._pending_since or now) if pending else None
        alone = now - self._supervised
        if self._closing or alone < min(DISCONNECTED_S, self.orphan_timeout):
            return
        if (
            self._offline_since is not None
            and now - self._offline_since >= DISCONNECTED_S
            and alone >= DISCONNECTED_S
        ):
            if not idle:
                abandon("no worker service supervises it and NATS is out of reach")
            await self._close_orphaned("no worker service and no NATS")
        elif self._idle_since is not None:
            if now - max(self._idle_since, self._supervised) >= self.orphan_timeout:
                await self._close_orphaned(f"no worker service for {alone:.0f} s")
        elif (
            self._pending_since is not None
            and alone >= self.orphan_timeout
            and now - self._pending_since >= self.orphan_timeout
        ):
            abandon("its plan's result could not be stored and no worker service supervises it")

    async def _close_orphaned(self, why: str) -> None:
        if self.env.begin_close() is not None:
            return  # busy again: a plan was started meanwhile
        self._closing = True
        logger.warning("closing the environment: %s", why)
        self.env.notify()
        if self.env.link.nc.is_connected:  # else a worker started later finds it gone
            await self._forget_record()
        self.env.request_close()

    async def _forget_record(self) -> None:
        """Remove the worker's record of this environment, which ends by itself in order."""
        try:
            kv = await self.env.link.js.key_value(worker_bucket(self.env.subjects))
            entry = await kv.get(RECORD_KEY)
            rec = _record_decoder.decode(entry.value or b"")
            if rec.env_uid == self.env.env_uid:
                await kv.delete(RECORD_KEY, last=entry.revision)
        except Exception as e:  # a worker that finds it later sees the process gone
            logger.info("the worker's record of this environment stays: %r", e)


def abandon(why: str) -> None:
    """Exit at once: the plan cannot go on usefully nor be reported (ADR 12)."""
    logger.error("the environment stops now: %s", why)
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    os._exit(ABANDONED)
