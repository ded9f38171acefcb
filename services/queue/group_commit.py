"""Group commit of concurrent adds: the ones that wait while a write is stored go as one event.

Every change is stored in JetStream before its reply (ADR 1), one change at a time (the
write lock). Adds to the back that arrive while another write is being stored wait for the
lock anyway; the first of them to get it takes all that are waiting and stores them as one
`ItemsAdded` event (one JetStream round trip), then answers each as if they had been added
one after another in the order they arrived. Nothing is answered before the event is
acknowledged; if it is refused, none of them is applied and each gets the refusal (ADR 29).
A lone add is stored exactly as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from msgspec import UNSET

from qserver.protocol import api
from qserver.protocol.queue_log import ItemsAdded
from services.queue.model import QueueModel

Commit = Callable[[ItemsAdded], Awaitable[None]]


def groupable(req: api.QueueItemAdd) -> bool:
    """An add to the back (where others' adds do not change its meaning)."""
    return req.pos in (UNSET, "back") and req.before_uid is UNSET and req.after_uid is UNSET


class AddGroups:
    """Adds waiting for the write lock, stored together by whoever gets it first."""

    def __init__(self, lock: asyncio.Lock) -> None:
        self._lock = lock
        self._waiting: list[tuple[api.QueueItemAdd, asyncio.Future[api.ItemReply]]] = []
        self.largest = 0  # the most adds stored in one event (for tests and benchmarks)

    async def add(
        self,
        req: api.QueueItemAdd,
        model: Callable[[], QueueModel],
        prepare: Callable[[str | None], Awaitable[None]],
        commit: Commit,
    ) -> api.ItemReply:
        """Add `req` (a `groupable` one), alone or with the adds waiting beside it.

        `prepare(lock_key)` runs under the lock before each add is built (catching up with
        the log, checking the lock); `commit(event)` stores and applies the event.
        """
        fut: asyncio.Future[api.ItemReply] = asyncio.get_running_loop().create_future()
        self._waiting.append((req, fut))
        async with self._lock:
            if not fut.done():
                group, self._waiting = self._waiting, []
                await self._store(group, model, prepare, commit)
        return await fut

    async def _store(
        self,
        group: list[tuple[api.QueueItemAdd, asyncio.Future[api.ItemReply]]],
        model: Callable[[], QueueModel],
        prepare: Callable[[str | None], Awaitable[None]],
        commit: Commit,
    ) -> None:
        built: list[tuple[ItemsAdded, asyncio.Future[api.ItemReply]]] = []
        for req, fut in group:
            try:
                await prepare(req.lock_key)
                built.append((model().plan_add(req), fut))
            except Exception as e:  # this add's own refusal: the others go on
                fut.set_exception(e)
        if not built:
            return
        first = built[0][0]
        event = ItemsAdded(
            items=[it for ev, _ in built for it in ev.items],
            index=first.index,
            queue_uid=first.queue_uid,
        )
        before = len(model().items)
        try:
            await commit(event)
        except Exception as e:  # not stored: none of them is applied, each is refused
            for _, fut in built:
                fut.set_exception(e)
            return
        except BaseException:
            for _, fut in built:
                fut.cancel()
            raise
        self.largest = max(self.largest, len(built))
        for i, (ev, fut) in enumerate(built):
            fut.set_result(api.ItemReply(item=ev.items[0], qsize=before + i + 1))
