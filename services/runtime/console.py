"""Console output of the services and the environment: collected, published, kept (ADR 18).

Writers (a plan's thread, the RunEngine's thread, logging anywhere) only append to a
bounded buffer; the NATS connection's loop publishes. A slow or absent NATS server never
blocks a writer: when the buffer is full the oldest text goes, and the console says how
much. Every message lands in the console stream, which keeps the recent ones for readers
that come later (the history service answers `console_output*` from it).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext, api

from qserver.jsutil import ensure_stream
from qserver.protocol import console
from qserver.protocol.subjects import Subjects

MAX_BUFFERED = 10_000  # messages waiting to be published


def _positive(var: str, default: float) -> float:
    raw = os.environ.get(var) or ""
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise ValueError(f"{var} must be a number, not {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{var} must be positive, not {raw!r}")
    return value


def stream_limits() -> tuple[int, int, float]:
    """The console stream's bounds: messages, bytes and seconds (`$QSERVER_CONSOLE_MAX_MSGS`,
    `$QSERVER_CONSOLE_MAX_MIB`, `$QSERVER_CONSOLE_MAX_AGE_DAYS`)."""
    return (
        int(_positive("QSERVER_CONSOLE_MAX_MSGS", console.DEFAULT_MAX_MSGS)),
        int(_positive("QSERVER_CONSOLE_MAX_MIB", console.DEFAULT_MAX_MIB) * 2**20),
        _positive("QSERVER_CONSOLE_MAX_AGE_DAYS", console.DEFAULT_MAX_AGE_DAYS) * 86400.0,
    )


async def ensure_console_stream(js: JetStreamContext, subjects: Subjects) -> api.StreamInfo:
    """Create (or update to these bounds) the stream that keeps the recent console output.

    Every service that publishes or reads the console calls it at start, so the stream is
    there before the first line, whichever starts first. Beyond a bound the oldest go.
    """
    max_msgs, max_bytes, max_age = stream_limits()
    return await ensure_stream(
        js,
        subjects.console_stream,
        [subjects.console_event],
        discard=api.DiscardPolicy.OLD,
        max_msgs=max_msgs,
        max_bytes=max_bytes,
        max_age=max_age,
    )


class ConsoleSink:
    """Text waiting to be published, and a wake-up of the publisher when text arrives.

    Writes that continue a line (`print` writes its text, then "\\n") join the message
    before them while it waits, so a printed line is usually one message.
    """

    def __init__(self, wake: Callable[[], object], max_buffered: int = MAX_BUFFERED) -> None:
        self._wake = wake
        self._max = max_buffered
        self._lock = threading.Lock()
        self._texts: collections.deque[tuple[float, str]] = collections.deque()
        self._scheduled = False
        self.dropped = 0  # messages dropped since the last `take`

    def add(self, text: str) -> None:
        if not text:
            return
        with self._lock:
            last = self._texts[-1] if self._texts else None
            if (
                last is not None
                and not last[1].endswith("\n")
                and len(last[1]) + len(text) <= console.MAX_MSG_CHARS
            ):
                self._texts[-1] = (last[0], last[1] + text)
            else:
                if len(self._texts) >= self._max:
                    self._texts.popleft()
                    self.dropped += 1
                self._texts.append((time.time(), text))
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self._wake()
        except Exception:  # the NATS loop is closed: the text stays buffered
            with self._lock:
                self._scheduled = False

    def take(self) -> list[tuple[float, str]]:
        """All buffered text (and a note of what was dropped); the next `add` wakes again."""
        with self._lock:
            texts = list(self._texts)
            self._texts.clear()
            self._scheduled = False
            dropped, self.dropped = self.dropped, 0
        if dropped:
            note = (
                f"[console: {dropped} messages were dropped: written faster than NATS took them]\n"
            )
            texts.insert(0, (time.time(), note))
        return texts


class ConsolePublisher:
    """Publishes what its sink collects, on the loop of the NATS connection.

    `call_soon` runs a callback on that loop from any thread (`loop.call_soon_threadsafe`).
    """

    def __init__(
        self,
        subject: str,
        call_soon: Callable[[Callable[[], None]], object],
        loop_thread: int | None = None,
    ) -> None:
        self.subject = subject
        self._wake = asyncio.Event()
        self._loop_thread = loop_thread  # the loop's thread, if known
        self._call_soon = call_soon
        self.sink = ConsoleSink(self._wake_up)
        self._sending = asyncio.Lock()  # one sender at a time: the messages keep their order

    def _wake_up(self) -> None:
        # On the loop's own thread (a service logging in a handler) the event is set at
        # once: `call_soon_threadsafe` would write to the loop's wake-up pipe (ADR 29).
        if self._loop_thread is not None and threading.get_ident() == self._loop_thread:
            self._wake.set()
        else:
            self._call_soon(self._wake.set)

    async def run(self, nc: NATS) -> None:
        """Publish until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.send(nc)

    async def send(self, nc: NATS) -> None:
        """Publish everything buffered now (also called to flush, beside `run`)."""
        async with self._sending:
            texts = self.sink.take()
            # All that was buffered is taken: the wake-up it set (for `run`) has nothing left
            # to send. A flush would otherwise wake `run` for nothing, twice per request.
            self._wake.clear()
            for at, text in texts:
                for part in console.split_text(text):
                    data, headers = console.encode(part, at)
                    # Never log a failure here: the log line would come back as console output.
                    with contextlib.suppress(Exception):
                        await nc.publish(self.subject, data, headers=headers)


class ConsoleLogHandler(logging.Handler):
    """Log records as console lines, in the reference's format; never blocks, never raises."""

    def __init__(self, sink: ConsoleSink, level: int = logging.INFO, names: tuple[str, ...] = ()):
        super().__init__(level)
        self.sink = sink
        self.names = names  # logger name prefixes to take; all if empty
        self.setFormatter(logging.Formatter(console.LOG_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        if self.names and not record.name.startswith(self.names):
            return
        try:
            self.sink.add(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


# The loggers whose records a service prints on the console: its own, not its libraries'
# (nats.py's connection errors would come back through the connection they are about).
SERVICE_LOGGERS = ("services.", "qserver.")


# The logger the reference's request lines are printed as (`console_lines`).
MANAGER_LOGGER = "services.manager"
_manager_log = logging.getLogger(MANAGER_LOGGER)


def info_line(name: str, text: str, at: float | None = None) -> str:
    """`text` as an INFO record of logger `name` prints in `console.LOG_FORMAT`, newline
    included (the time as `logging.Formatter` writes it: local, with milliseconds)."""
    now = time.time() if at is None else at
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
    return f"[I {stamp},{int((now - int(now)) * 1000):03d} {name}] {text}\n"


class ServiceConsole:
    """A service's log records on the console, from `start` to `stop`."""

    def __init__(self, nc: NATS, subjects: Subjects) -> None:
        self.nc = nc
        self.subjects = subjects
        self.publisher: ConsolePublisher | None = None
        self.handler: ConsoleLogHandler | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await ensure_console_stream(self.nc.jetstream(), self.subjects)
        loop = asyncio.get_running_loop()
        self.publisher = ConsolePublisher(
            self.subjects.console_event, loop.call_soon_threadsafe, threading.get_ident()
        )
        self.handler = ConsoleLogHandler(self.publisher.sink, names=SERVICE_LOGGERS)
        logging.getLogger().addHandler(self.handler)
        self._task = loop.create_task(self.publisher.run(self.nc))

    def line(self, text: str) -> None:
        """One of the reference's request lines (`console_lines`) on the console.

        Printed as an INFO record of `services.manager` would be, but not through `logging`,
        and in the service's own log only at DEBUG: two of these per `queue_item_add` through
        the logging machinery (a record, two handlers, a write to the log) were a fifth of
        the queue service's CPU per add (ADR 18, amendment).
        """
        if self.publisher is not None:
            self.publisher.sink.add(info_line(MANAGER_LOGGER, text))
        _manager_log.debug("%s", text)

    async def flush(self) -> None:
        """Publish what is buffered now, ahead of whatever this service sends next."""
        if self.publisher is not None:
            await self.publisher.send(self.nc)

    async def stop(self) -> None:
        """Publish what is left (before the connection drains) and stop taking records."""
        if self.handler is not None:
            logging.getLogger().removeHandler(self.handler)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.publisher is not None and self.nc.is_connected:
            await self.publisher.send(self.nc)
