"""Console output of the environment: every line also goes out as a NATS event.

Writers (the plan's thread, the RunEngine's thread, logging) only append to a bounded
buffer; the NATS thread publishes. A slow or absent NATS server therefore never blocks a
plan: when the buffer is full, the oldest lines are dropped and counted.
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

MAX_BUFFERED_LINES = 10_000
# A line this long is sent even without its newline (progress bars without '\n').
MAX_PARTIAL_CHARS = 8192


class ConsoleSink:
    """Lines waiting to be published, and a wake-up of the publisher when lines arrive."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self._lock = threading.Lock()
        self._lines: collections.deque[tuple[float, str]] = collections.deque()
        self._scheduled = False
        self.dropped = 0

    def add(self, line: str) -> None:
        with self._lock:
            if len(self._lines) >= MAX_BUFFERED_LINES:
                self._lines.popleft()
                self.dropped += 1
            self._lines.append((time.time(), line))
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self._wake()
        except Exception:  # the NATS loop is closed: the lines stay buffered
            with self._lock:
                self._scheduled = False

    def take(self) -> list[tuple[float, str]]:
        """All buffered lines; the next `add` wakes the publisher again."""
        with self._lock:
            lines = list(self._lines)
            self._lines.clear()
            self._scheduled = False
        return lines


class ConsoleTee(io.TextIOBase):
    """A text stream that writes to the original stream and sends complete lines to a sink."""

    def __init__(self, original: TextIO, sink: ConsoleSink) -> None:
        super().__init__()
        self.original = original
        self.sink = sink
        self._partial = ""
        self._lock = threading.Lock()

    def write(self, s: str) -> int:
        with contextlib.suppress(Exception):  # a closed terminal must not fail the plan
            self.original.write(s)
        with self._lock:
            text = self._partial + s
            lines = text.splitlines(keepends=True)
            self._partial = ""
            if lines and not lines[-1].endswith(("\n", "\r")):
                self._partial = lines.pop()
                if len(self._partial) > MAX_PARTIAL_CHARS:
                    lines.append(self._partial)
                    self._partial = ""
        for line in lines:
            self.sink.add(line if line.endswith("\n") else line.rstrip("\r") + "\n")
        return len(s)

    def flush(self) -> None:
        with contextlib.suppress(Exception):
            self.original.flush()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.original.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.original, "encoding", "utf-8")

    @property
    def buffer(self) -> Any:
        return getattr(self.original, "buffer", None)


class ConsoleLogHandler(logging.Handler):
    """Sends log records to the sink only: the handler of `setup_logging` prints them."""

    def __init__(self, sink: ConsoleSink, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.sink = sink
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sink.add(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


def capture_console(sink: ConsoleSink) -> None:
    """Route stdout, stderr and the root logger through the sink (for the process's life)."""
    sys.stdout = ConsoleTee(sys.__stdout__ or sys.stdout, sink)
    sys.stderr = ConsoleTee(sys.__stderr__ or sys.stderr, sink)
    logging.getLogger().addHandler(ConsoleLogHandler(sink))
