"""uvicorn's server without its 10 Hz poll (ADR 28).

uvicorn's main loop wakes every 0.1 s to look at `should_exit` and, every tenth time, to
renew the `Date` header. Here it wakes once a second for the header (and for a
`should_exit` that uvicorn sets itself), and at once when the server is told to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import FrameType

import uvicorn

TICK_S = 1.0


class QuietServer(uvicorn.Server):
    _stopping: asyncio.Event | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    def stop(self) -> None:
        """Stop serving (on the server's event loop)."""
        self.should_exit = True
        if self._stopping is not None:
            self._stopping.set()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)  # a signal: called between two steps of the loop
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)

    async def main_loop(self) -> None:
        self._stopping = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 10) % 864000  # `on_tick` renews the Date header at multiples of 10
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), TICK_S)
