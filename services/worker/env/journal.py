"""Every RunEngine document into the document stream (ADR 10), in order, never blocking a plan.

A RunEngine callback: on the RunEngine's thread it encodes the document as the Kafka value
(msgpack `[name, doc]`, msgpack-numpy arrays) and queues it; the NATS thread publishes it
on `<prefix>.docs.run.<start uid>` and follows the stream's acknowledgements (`Outbox`).
It never raises (an exception in a callback on a stop document aborts the run). What cannot
be kept is counted and said on the console: a document over `max_document_bytes()`, or one
that finds `MAX_BACKLOG_BYTES` already waiting (JetStream unreachable for long). A document
larger than a NATS message goes in consecutive parts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from nats.aio.msg import Msg

from qserver.documents import PART_HEADER, RUN_HEADER, encode, run_token, split
from qserver.protocol.subjects import Subjects
from services.runtime.doc_stream import (
    DEFAULT_MAX_DOC_MIB,
    describe_error,
    ensure_docs_stream,
    max_document_bytes,
)
from services.worker.env.link import NatsLink
from services.worker.env.outbox import Outbox

logger = logging.getLogger(__name__)

MAX_BACKLOG_BYTES = 256 * 2**20
# Room for the headers within the server's max_payload.
HEADROOM = 4096
TICK_S = 0.1
REPORT_EVERY_S = 5.0
STALL_REPORT_S = 10.0


class RunKeys:
    """The start uid of the run each document belongs to (called on one thread only)."""

    def __init__(self) -> None:
        self._parent: dict[str, str] = {}  # descriptor or resource uid -> start uid
        self._children: dict[str, list[str]] = {}  # start uid -> its descriptors, resources
        self._last_start = ""

    def key(self, name: str, doc: dict[str, Any]) -> str:
        if name == "start":
            self._last_start = uid = str(doc["uid"])
            self._children.setdefault(uid, [])
            return uid
        if name == "stop":
            uid = str(doc.get("run_start") or self._last_start)
            for child in self._children.pop(uid, []):
                self._parent.pop(child, None)
            return uid
        if name in ("descriptor", "resource", "stream_resource"):
            start = str(doc.get("run_start") or self._last_start)
            self._parent[doc["uid"]] = start
            self._children.setdefault(start, []).append(doc["uid"])
            return start
        parent = doc.get("descriptor") or doc.get("resource")
        if isinstance(parent, list):  # a page's fields are lists in some versions
            parent = parent[0] if parent else None
        if isinstance(parent, str) and parent in self._parent:
            return self._parent[parent]
        return self._last_start


class DocumentJournal:
    """The RunEngine callback, and its publisher on the NATS thread."""

    def __init__(
        self,
        link: NatsLink,
        subjects: Subjects,
        publisher: str,
        report: Callable[[str], None] | None = None,
        max_backlog: int = MAX_BACKLOG_BYTES,
    ) -> None:
        self.link = link
        self.subjects = subjects
        self.outbox = Outbox(publisher)
        self.max_backlog = max_backlog
        try:
            self.max_doc = max_document_bytes()
        except ValueError as e:  # a bad setting: say so, keep the default
            logger.error("%s", e)
            self.max_doc = int(DEFAULT_MAX_DOC_MIB * 2**20)
        self._report = report or (lambda line: print(line, flush=True))
        self._keys = RunKeys()
        self._lock = threading.Lock()
        self._new: deque[tuple[int, str, str, bytes]] = deque()  # doc, subject, run, value
        self._new_bytes = 0
        self._scheduled = False
        self.added = 0  # documents accepted (numbered from 1)
        self.failed = 0  # documents refused: too large, no room, not encodable
        self._reported_failed = 0
        self._last_report = 0.0
        self._last_problem = ""
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._inbox = ""
        self._connected = True
        self._last_ack = 0.0  # when the stream last stored a document of ours
        self._calm_since = 0.0  # when NATS was last seen disconnected
        self._last_stall_report = 0.0
        self._task: asyncio.Task[None] | None = None

    # ----- counters (any thread) -----

    @property
    def pending(self) -> int:
        """Documents accepted and not yet stored in the stream."""
        return max(0, self.added - self.outbox.stored_docs)

    # ----- the RunEngine callback -----

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        try:
            run = self._keys.key(name, doc)
            value = encode(name, doc)
            size = len(value)
            if size > self.max_doc:
                self._refuse(f"a {name} document of {size} bytes (over {self.max_doc})")
                return
            with self._lock:
                if self._new_bytes + self.outbox.bytes + size > self.max_backlog:
                    backlog = self._new_bytes + self.outbox.bytes
                    refused = f"{backlog} bytes wait already (the stream is not answering)"
                else:
                    refused = ""
                    self.added += 1
                    self._new.append((self.added, run, name, value))
                    self._new_bytes += size
                    if self._scheduled:
                        return
                    self._scheduled = True
            if refused:
                self._refuse(f"a {name} document: {refused}")
                return
            self.link.soon(self._wake.set)
        except Exception as e:
            self._refuse(f"a {name} document: {type(e).__name__}: {e}")

    def _refuse(self, what: str) -> None:
        self.failed += 1
        self._last_problem = what
        self._maybe_report()

    # ----- on the NATS thread -----

    async def start(self) -> None:
        """Make sure the stream exists and start publishing (on the NATS loop)."""
        nc = self.link.nc
        try:
            await ensure_docs_stream(self.link.js, self.subjects)
        except Exception as e:  # publishing retries, and says so
            logger.warning("the document stream is not ready: %s", describe_error(e))
        self._inbox = nc.new_inbox()
        await nc.subscribe(f"{self._inbox}.*.*", cb=self._on_reply)
        self._task = asyncio.get_running_loop().create_task(self._publish())

    async def _publish(self) -> None:
        nc = self.link.nc
        box = self.outbox
        while True:
            self._wake.clear()
            self._take_new()
            now = time.monotonic()
            try:
                if not nc.is_connected:
                    if self._connected:
                        box.disconnected(now)
                    self._connected = False
                else:
                    self._connected = True
                    box.check(now)
                    for part in box.to_send(now):
                        headers = {"Nats-Msg-Id": box.msg_id(part.n)}
                        if part.expect:
                            headers["Nats-Expected-Last-Msg-Id"] = part.expect
                        if part.part:
                            headers[PART_HEADER] = part.part
                        if part.run:
                            headers[RUN_HEADER] = part.run
                        reply = f"{self._inbox}.{box.epoch}.{part.n}"
                        await nc.publish(part.subject, part.data, reply=reply, headers=headers)
            except Exception as e:
                logger.debug("publishing documents paused: %r", e)
                box.disconnected(time.monotonic())
            self._maybe_report()
            self._report_stall(nc.is_connected)
            with self._lock:
                # Nothing to send, to resend or to report: sleep until documents come (ADR 28).
                idle = not box.parts and not self._new and self.failed == self._reported_failed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), None if idle else TICK_S)

    def _take_new(self) -> None:
        """Documents from the RunEngine's thread into the outbox, split to fit a message."""
        with self._lock:
            new, self._new = self._new, deque()
            self._new_bytes = 0
            self._scheduled = False
        if not new:
            return
        part_size = max(self.link.nc.max_payload - HEADROOM, 1024)
        for doc, run, _name, value in new:
            token = run_token(run)
            subject = self.subjects.run_docs(token)
            parts = split(value, part_size)
            self.outbox.add(doc, subject, parts, "" if token == run else run, time.monotonic())

    async def _on_reply(self, msg: Msg) -> None:
        try:
            _, epoch, n = msg.subject.rsplit(".", 2)
            if msg.data:
                reply = json.loads(msg.data)
            else:  # a status: 503 when nothing takes the subject (the stream is missing)
                status = (msg.headers or {}).get("Status", "")
                reply = {"error": {"description": f"status {status}: no stream answered"}}
                if status == "503":
                    self.link.spawn(self._ensure_stream())
            stored = self.outbox.stored_docs
            self.outbox.on_reply(int(epoch), int(n), reply, time.monotonic())
            if self.outbox.stored_docs != stored:
                self._last_ack = time.monotonic()
        except Exception as e:
            logger.debug("reply %s not understood: %r", msg.subject, e)
        self._progress.set()
        self._wake.set()

    async def _ensure_stream(self) -> None:
        try:
            await ensure_docs_stream(self.link.js, self.subjects)
        except Exception as e:
            self.outbox.last_error = f"the document stream cannot be made: {describe_error(e)}"

    async def wait_stored(self, stall_s: float) -> int:
        """Wait until every document accepted so far is stored; the number that is not.

        It gives up only when the stream stops acknowledging for `stall_s` while NATS is
        connected; while disconnected it waits (nothing else could be stored either).
        """
        target = self.added
        while True:
            self._take_new()
            if self.outbox.stored_through(target):
                return 0
            now = time.monotonic()
            if not self.link.nc.is_connected:
                self._calm_since = now
            # Stalled: nothing acknowledged since the oldest waiting document came (or since
            # the last ack, or NATS came back) - a stream broken for long fails at once.
            oldest = self.outbox.parts[0].added_at if self.outbox.parts else now
            if now - max(oldest, self._last_ack, self._calm_since) > stall_s:
                return target - self.outbox.stored_docs
            self._progress.clear()
            self._wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), TICK_S)

    # ----- reporting -----

    def _maybe_report(self) -> None:
        """A console line when documents were refused since the last one, rate-limited."""
        try:
            now = time.monotonic()
            with self._lock:
                failed = self.failed
                if failed == self._reported_failed or now - self._last_report < REPORT_EVERY_S:
                    return
                new = failed - self._reported_failed
                self._reported_failed, self._last_report = failed, now
            self._report(
                f"Documents: {new} not kept for the catalog and Kafka, the last "
                f"{self._last_problem} ({failed} in all, {self.pending} waiting for the stream)"
            )
        except Exception:  # never raise into the RunEngine
            logger.debug("report failed", exc_info=True)

    def _report_stall(self, connected: bool) -> None:
        """A console line while documents wait and the stream acknowledges nothing."""
        now = time.monotonic()
        box = self.outbox
        if not connected or not box.parts or now - self._last_stall_report < STALL_REPORT_S:
            return
        if now - max(box.parts[0].added_at, self._last_ack) < STALL_REPORT_S:
            return
        self._last_stall_report = now
        self._report(
            f"Documents: {self.pending} wait for the document stream, which acknowledged "
            f"none for {STALL_REPORT_S:g} s ({box.last_error or 'no answer'}); the plan goes on"
        )

    def close_report(self, left: int) -> None:
        if left or self.failed:
            self._report(
                f"Documents: closing with {left} not stored in the document stream "
                f"and {self.failed} refused ({self.outbox.stored_docs} stored)"
            )
