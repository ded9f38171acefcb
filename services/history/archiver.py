"""Save runs from the document stream into the Tiled catalog (ADR 10).

The archiver follows the document stream (JetStream, `<prefix>.docs.run.<start uid>`) from
its position in the positions bucket and hands each batch to one worker thread that writes
through Tiled's client. The position is committed only up to the oldest run not yet stored
(see `runs.RunLedger`). Any failure (the catalog gone, NATS gone) forgets half-written runs
and starts again from the committed position after a pause: those runs are read again from
their start and written from scratch, and runs already complete are skipped, so nothing is
saved twice. Kafka plays no part: a broker that is down or restarted changes nothing here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from nats.aio.client import Client as NATS

from qserver.documents import Reassembler, StreamDoc, decode
from qserver.protocol.subjects import Subjects
from services.history.runs import Action, RunLedger, Stored
from services.history.tiled_catalog import TiledCatalog
from services.runtime.doc_stream import (
    Positions,
    Reconnects,
    StreamFollower,
    describe_error,
    ensure_docs_stream,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

READER = "catalog"
RETRY_S = 1.0
RETRY_MAX_S = 10.0


@dataclass
class SavedRun:
    """A run whose stop document is in the catalog: what the `run_saved` event says."""

    run_uid: str
    scan_id: int | None
    item_uid: str | None
    user: str | None
    stop_time: float | None
    saved_at: float
    url: str
    already_saved: bool = False


class Archiver:
    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        catalog: TiledCatalog,
        on_saved: Callable[[SavedRun], Awaitable[None]] | None = None,
        reconnects: Reconnects | None = None,
    ) -> None:
        self.reconnects = reconnects
        self.nc = nc
        self.subjects = subjects
        self.catalog = catalog
        self.on_saved = on_saved
        self.positions = Positions(nc.jetstream(), subjects)
        self._last_error = ""  # logged once, not at every retry
        # Tiled's client logs every HTTP request at INFO: a run is a dozen lines.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        self._ledger = RunLedger()
        self._joiner = Reassembler()
        self._committed: int | None = None
        self._new_after = 0  # the stream's last sequence when this reading began
        # One thread: Tiled's writer keeps per-run state and is not meant to be shared.
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="tiled-writer")

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def run(self) -> None:
        """Archive until cancelled; failures are logged and retried with back-off."""
        delay = RETRY_S
        while True:
            try:
                await self._call(self.catalog.connect)
                await self._archive()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                message = describe_error(e)
                if message != self._last_error:
                    logger.warning("saving runs paused (%s); retrying", message)
                self._last_error = message
                self.catalog.forget()
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
            else:
                delay = RETRY_S

    async def _archive(self) -> None:
        info = await ensure_docs_stream(self.nc.jetstream(), self.subjects)
        # A run that starts after this point was never read by an earlier reading (this
        # one's before a failure, or a writer process before this one, which is gone: ADR
        # 32): the catalog cannot hold any of it, so it is not asked.
        self._new_after = info.state.last_seq if info.state is not None else 0
        start = await self.positions.get(READER)
        self._ledger, self._joiner, self._committed = RunLedger(), Reassembler(), start
        follower = StreamFollower(self.nc, self.subjects.docs_stream, start, self.reconnects)
        logger.info(
            "saving runs from stream %s (from %s) to %s",
            self.subjects.docs_stream,
            start or "its start",
            self.catalog.settings.catalog_url,
        )
        self._last_error = ""
        try:
            async for batch in follower.batches():
                saved = await self._call(self._handle_batch, batch)
                await self._commit()
                for run in saved:
                    if self.on_saved is not None:
                        await self.on_saved(run)
        finally:
            await follower.close()

    async def _commit(self) -> None:
        point = self._ledger.commit_point()
        partial = self._joiner.first_seq
        if partial is not None:
            point = partial if point is None else min(point, partial)
        if point is None or point == self._committed:
            return
        await self.positions.put(READER, point)
        self._committed = point

    # ----- on the writer thread -----

    def _handle_batch(self, batch: list[Any]) -> list[SavedRun]:
        saved: list[SavedRun] = []
        for m in batch:
            doc = self._joiner.add(m.seq, m.subject, m.headers, m.data)
            if doc is None:
                continue
            run = self._handle(self._ledger, doc)
            if run is not None:
                saved.append(run)
        return saved

    def _handle(self, ledger: RunLedger, msg: StreamDoc) -> SavedRun | None:
        first, last = msg.first_seq, msg.last_seq
        try:
            name, doc = decode(msg.value)
        except ValueError as e:
            ledger.next_offset = last + 1
            logger.warning("stream message %d: skipping a message that is %s", first, e)
            return None
        for run in ledger.abandon_others(msg.publisher):
            self.catalog.drop(run.uid)
            logger.warning(
                "run %s has no stop document and its environment ended: it stays as it is "
                "in the catalog",
                run.uid,
            )
        if name == "start":
            uid = doc["uid"]
            stored = Stored.ABSENT if first > self._new_after else self.catalog.stored(uid)
            action = ledger.start(uid, first, stored, doc, end=last, publisher=msg.publisher)
            if action is Action.WRITE:
                self.catalog.start(uid, doc, stored)
            return None
        run_uid = msg.run_uid or doc.get("run_start", "")
        action = ledger.document(run_uid, name, doc, first, end=last)
        if action is Action.ORPHAN:
            if name == "stop":
                logger.warning(
                    "stream message %d: stop document of an unknown run %s", first, run_uid
                )
            return None
        if action is Action.WRITE:
            self.catalog.write(run_uid, name, doc)
        if name != "stop":
            return None
        run = ledger.finish(run_uid)  # open, or the document would be an orphan
        start = run.start
        return SavedRun(
            run_uid=run_uid,
            scan_id=start.get("scan_id"),
            item_uid=start.get("qserver_item_uid"),
            user=start.get("qserver_user"),
            stop_time=doc.get("time"),
            saved_at=time.time(),
            url=f"{self.catalog.settings.catalog_url}/{run_uid}",
            already_saved=run.already_saved,
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
