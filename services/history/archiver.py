"""Save runs from the document topic into the Tiled catalog: the history service's Kafka side.

An aiokafka consumer in a consumer group reads `[name, doc]` messages (key = start uid) and
hands each batch to one worker thread that writes through Tiled's client. Offsets are
committed only up to the oldest run not yet stored (see `runs.RunLedger`). Any failure (the
catalog or the broker gone) closes the consumer, forgets half-written runs and starts again
from the committed offsets after a pause: those runs are read again from their start and
written from scratch, and runs already complete are skipped, so nothing is saved twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from qserver.documents import decode
from services.history.runs import Action, RunLedger
from services.history.tiled_catalog import TiledCatalog

logger = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_S = 1.0
RETRY_MAX_S = 10.0
POLL_MS = 200
MAX_RECORDS = 500
FETCH_WAIT_MS = 20


class OncePer(logging.Filter):
    """Let each message template through at most once per `seconds`.

    aiokafka logs an error every 100 ms per connection attempt while a broker is down.
    """

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        key = str(record.msg)
        if now - self._last.get(key, -self.seconds) < self.seconds:
            return False
        self._last[key] = now
        return True


def quiet_aiokafka(seconds: float = 30.0) -> None:
    """Rate-limit every aiokafka logger (a logger's filters do not apply to its children)."""
    import aiokafka  # noqa: F401  (creates its loggers)

    once = OncePer(seconds)
    names = [n for n in logging.root.manager.loggerDict if n.split(".")[0] == "aiokafka"]
    for name in names:
        log = logging.getLogger(name)
        if not any(isinstance(f, OncePer) for f in log.filters):
            log.addFilter(once)


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap: str
    topic: str
    group: str
    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int = 1000


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
        kafka: KafkaSettings,
        catalog: TiledCatalog,
        on_saved: Callable[[SavedRun], Awaitable[None]] | None = None,
    ) -> None:
        self.kafka = kafka
        self.catalog = catalog
        self.on_saved = on_saved
        self._last_error = ""  # logged once, not at every retry
        quiet_aiokafka()
        # Tiled's client logs every HTTP request at INFO: a run is a dozen lines.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        self._ledgers: dict[Any, RunLedger] = {}
        self._committed: dict[Any, int] = {}
        # One thread: Tiled's writer keeps per-run state and is not meant to be shared.
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="tiled-writer")

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def run(self) -> None:
        """Consume until cancelled; failures are logged and retried with back-off."""
        delay = RETRY_S
        while True:
            try:
                await self._call(self.catalog.connect)
                await self._consume()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                message = f"{type(e).__name__}: {e}"
                if message != self._last_error:
                    logger.warning("saving runs paused (%s); retrying", message)
                self._last_error = message
                self.catalog.forget()
                self._ledgers.clear()
                self._committed.clear()
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
            else:
                delay = RETRY_S

    async def _consume(self) -> None:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(
            self.kafka.topic,
            bootstrap_servers=self.kafka.bootstrap,
            group_id=self.kafka.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=self.kafka.session_timeout_ms,
            heartbeat_interval_ms=self.kafka.heartbeat_interval_ms,
            request_timeout_ms=max(3 * self.kafka.session_timeout_ms, 10_000),
            # How long the broker may hold a fetch when there is no new document: short,
            # since a run's stop document should reach the catalog at once.
            fetch_max_wait_ms=FETCH_WAIT_MS,
        )
        await consumer.start()
        logger.info(
            "saving runs from Kafka %s topic %s (group %s) to %s",
            self.kafka.bootstrap,
            self.kafka.topic,
            self.kafka.group,
            self.catalog.settings.catalog_url,
        )
        self._last_error = ""
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=POLL_MS, max_records=MAX_RECORDS)
                for tp, messages in batch.items():
                    saved = await self._call(self._handle_batch, tp, messages)
                    await self._commit(consumer, tp)
                    for run in saved:
                        if self.on_saved is not None:
                            await self.on_saved(run)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.stop(), 5.0)

    async def _commit(self, consumer: Any, tp: Any) -> None:
        from aiokafka.structs import OffsetAndMetadata

        point = self._ledgers[tp].commit_point()
        if point is None or self._committed.get(tp) == point:
            return
        await consumer.commit({tp: OffsetAndMetadata(point, "")})
        self._committed[tp] = point

    # ----- on the writer thread -----

    def _handle_batch(self, tp: Any, messages: list[Any]) -> list[SavedRun]:
        ledger = self._ledgers.setdefault(tp, RunLedger())
        saved: list[SavedRun] = []
        for msg in messages:
            run = self._handle(ledger, msg)
            if run is not None:
                saved.append(run)
        return saved

    def _handle(self, ledger: RunLedger, msg: Any) -> SavedRun | None:
        try:
            name, doc = decode(msg.value)
        except ValueError as e:
            ledger.next_offset = msg.offset + 1
            logger.warning("offset %d: skipping a message that is %s", msg.offset, e)
            return None
        if name == "start":
            uid = doc["uid"]
            stored = self.catalog.stored(uid)
            if ledger.start(uid, msg.offset, stored, doc) is Action.WRITE:
                self.catalog.start(uid, doc, stored)
            return None
        run_uid = (msg.key or b"").decode() or doc.get("run_start", "")
        action = ledger.document(run_uid, name, doc, msg.offset)
        if action is Action.ORPHAN:
            if name == "stop":
                logger.warning("offset %d: stop document of an unknown run %s", msg.offset, run_uid)
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
