"""Live progress from the run documents, published at most ten times a second per run (ADR 25).

A RunEngine callback, like the document publishers beside it: on the RunEngine's thread it
only updates a few numbers and, when no publication is due already, wakes the NATS thread
once; it never raises (an exception in a callback on the stop document aborts the run).
There is no timer while nothing runs: a delayed publication is armed only when a document
arrives less than `MIN_INTERVAL_S` after the last publication.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from math import prod
from typing import Any

import msgspec

from qserver.protocol.progress import MIN_INTERVAL_S, Progress
from qserver.protocol.subjects import Subjects
from services.worker.env.link import NatsLink

logger = logging.getLogger(__name__)


def _enc_hook(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, without importing numpy here
        return obj.tolist()
    return repr(obj)  # a position of a type JSON has no word for: its text


_encoder = msgspec.json.Encoder(enc_hook=_enc_hook)


def _names(value: Any) -> list[str]:
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return []


def _num_points(start: dict[str, Any]) -> int | None:
    n = start.get("num_points")
    if isinstance(n, int) and not isinstance(n, bool) and n >= 0:
        return n
    shape = start.get("shape")
    if isinstance(shape, list | tuple) and shape and all(isinstance(d, int) for d in shape):
        return int(prod(shape))
    return None


@dataclass
class _Run:
    start: dict[str, Any]
    t0: float
    motors: list[str]
    primary: set[str] = field(default_factory=set)  # uids of the primary stream's descriptors
    point: int = 0
    positions: dict[str, Any] = field(default_factory=dict)
    done: bool = False
    exit_status: str | None = None


class ProgressTracker:
    """The progress of each open run, from its documents (pure: no NATS, no clock)."""

    def __init__(self) -> None:
        self._runs: dict[str, _Run] = {}
        self._descriptors: dict[str, str] = {}  # primary descriptor uid -> run uid

    def update(self, name: str, doc: dict[str, Any], now: float) -> str | None:
        """Take one document; the uid of the run whose progress it changed, if any."""
        if name == "start":
            t0 = doc.get("time")
            self._runs[doc["uid"]] = _Run(
                start=doc,
                t0=t0 if isinstance(t0, int | float) else now,
                motors=_names(doc.get("motors")),
            )
            return str(doc["uid"])
        if name == "descriptor":
            run = self._runs.get(doc.get("run_start", ""))
            if run is not None and doc.get("name") == "primary":
                run.primary.add(doc["uid"])
                self._descriptors[doc["uid"]] = doc["run_start"]
            return None
        if name in ("event", "event_page"):
            uid = self._descriptors.get(doc.get("descriptor", ""))
            run = self._runs.get(uid) if uid else None
            if run is None:
                return None
            data = doc.get("data") or {}
            if name == "event":
                run.point += 1
                for m in run.motors:
                    if m in data:
                        run.positions[m] = data[m]
            else:
                seq = doc.get("seq_num") or []
                run.point += len(seq)
                for m in run.motors:
                    values = data.get(m)
                    if values is not None and len(values):
                        run.positions[m] = values[-1]
            return uid
        if name == "stop":
            run = self._runs.get(doc.get("run_start", ""))
            if run is None:
                return None
            run.done = True
            run.exit_status = doc.get("exit_status")
            return str(doc["run_start"])
        return None

    def progress(self, run_uid: str, now: float) -> Progress | None:
        """The run's progress now; a finished run's is the last one and forgets the run."""
        run = self._runs.get(run_uid)
        if run is None:
            return None
        start = run.start
        elapsed = max(0.0, now - run.t0)
        num = _num_points(start)
        eta = None
        if run.done:
            eta = 0.0
        elif num is not None and run.point > 0:
            eta = max(0.0, elapsed / run.point * (num - run.point))
        scan_id = start.get("scan_id")
        item_uid = start.get("qserver_item_uid")
        plan_name = start.get("plan_name")
        p = Progress(
            time=now,
            item_uid=item_uid if isinstance(item_uid, str) else None,
            run_uid=run_uid,
            scan_id=scan_id if isinstance(scan_id, int) else None,
            plan_name=plan_name if isinstance(plan_name, str) else None,
            point=run.point,
            num_points=num,
            elapsed=elapsed,
            eta=eta,
            motors=list(run.motors),
            detectors=_names(start.get("detectors")),
            positions=dict(run.positions),
            done=run.done,
            exit_status=run.exit_status,
        )
        if run.done:
            del self._runs[run_uid]
            for d in run.primary:
                self._descriptors.pop(d, None)
        return p


class ProgressPublisher:
    """RunEngine callback: progress events on `<prefix>.events.progress`, rate-bounded.

    Documents only mark their run as changed; the NATS thread publishes the changed runs'
    progress at once when the last publication is at least `MIN_INTERVAL_S` old, else once
    that interval is over. So each run gets at most ten events a second, and its last state
    (the stop document's `done`) always goes out, at most `MIN_INTERVAL_S` late.
    """

    def __init__(
        self,
        link: NatsLink,
        subjects: Subjects,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._link = link
        self._subject = subjects.progress_event
        self._clock = clock
        self._tracker = ProgressTracker()
        self._lock = threading.Lock()
        self._changed: dict[str, None] = {}  # run uids, in order
        self._armed = False
        self._last = 0.0  # time.monotonic() of the last publication
        self._sending: set[asyncio.Future[None]] = set()
        self.failed = 0

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        if name not in ("start", "descriptor", "event", "event_page", "stop"):
            return
        try:
            with self._lock:
                run_uid = self._tracker.update(name, doc, self._clock())
                if run_uid is None:
                    return
                self._changed[run_uid] = None
                if self._armed:
                    return
                self._armed = True
            self._link.soon(self._arm)
        except Exception:
            logger.exception("progress tracking failed on a %r document", name)

    def _arm(self) -> None:  # on the NATS thread
        delay = self._last + MIN_INTERVAL_S - time.monotonic()
        if delay > 0:
            self._link.loop.call_later(delay, self._fire)
        else:
            self._fire()

    def _fire(self) -> None:  # on the NATS thread
        now = self._clock()
        with self._lock:
            self._armed = False
            runs, self._changed = list(self._changed), {}
            events = [p for uid in runs if (p := self._tracker.progress(uid, now)) is not None]
        self._last = time.monotonic()
        data = []
        for p in events:
            try:
                data.append(_encoder.encode(p))
            except Exception as e:
                self._count_failure(e)
        task = asyncio.ensure_future(self._publish(data))
        self._sending.add(task)  # a reference, until it is done
        task.add_done_callback(self._sending.discard)

    async def _publish(self, data: list[bytes]) -> None:
        for d in data:
            try:
                await self._link.nc.publish(self._subject, d)
            except Exception as e:
                self._count_failure(e)

    def _count_failure(self, e: Exception) -> None:
        self.failed += 1
        if self.failed == 1 or self.failed % 1000 == 0:
            logger.warning("progress not published on NATS (%d so far): %r", self.failed, e)
