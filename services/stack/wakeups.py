"""Sleep until a child process exits or a signal comes, at most `timeout` (ADR 28).

The stack's supervisor looked at its children every 0.15 s. Here a SIGCHLD (a child ended)
or any other handled signal (a stop) wakes it through Python's signal wake-up descriptor,
so it looks at once and otherwise only once per `timeout` (for restarts that are due).
Handlers already installed run as before; children get default handlers at exec.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from collections.abc import Callable, Iterator
from types import FrameType


def _on_child(signum: int, frame: FrameType | None) -> None:
    """Nothing to do: the wake-up descriptor is what wakes the sleeper."""


@contextlib.contextmanager
def child_or_signal() -> Iterator[Callable[[float], None]]:
    """A `wait(timeout)` that returns early on SIGCHLD or another handled signal (main thread)."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    previous_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    previous_handler = signal.signal(signal.SIGCHLD, _on_child)

    def wait(timeout: float) -> None:
        select.select([r], [], [], timeout)
        with contextlib.suppress(BlockingIOError):
            while os.read(r, 512):
                pass

    try:
        yield wait
    finally:
        signal.signal(signal.SIGCHLD, previous_handler)
        signal.set_wakeup_fd(previous_fd)
        os.close(r)
        os.close(w)
