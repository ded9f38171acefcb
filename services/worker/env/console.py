"""Console output of the environment: what it prints and logs also goes out on NATS.

Text goes out exactly as written, as in the reference (its `ConsoleOutputStream`): a
progress bar's carriage returns and cursor-up sequences reach the readers, whose text
view (`console_output`, the client's `console_monitor.text()`) redraws the lines.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
from typing import Any, TextIO

from services.runtime.console import ConsoleLogHandler, ConsoleSink


class ConsoleTee(io.TextIOBase):
    """A text stream that writes to the original stream and sends the same text to a sink."""

    def __init__(self, original: TextIO, sink: ConsoleSink) -> None:
        super().__init__()
        self.original = original
        self.sink = sink

    def write(self, s: str) -> int:
        s = str(s)
        with contextlib.suppress(Exception):  # a closed terminal must not fail the plan
            self.original.write(s)
        self.sink.add(s)
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


def capture_console(sink: ConsoleSink) -> None:
    """Route stdout, stderr and the root logger through the sink (for the process's life)."""
    sys.stdout = ConsoleTee(sys.__stdout__ or sys.stdout, sink)
    sys.stderr = ConsoleTee(sys.__stderr__ or sys.stderr, sink)
    # To the sink only: the handler of `setup_logging` prints them already.
    logging.getLogger().addHandler(ConsoleLogHandler(sink))
