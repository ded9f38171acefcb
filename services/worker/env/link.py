"""The environment's NATS connection, on a thread of its own (the main thread runs plans)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from qserver.connect import connect_options, servers
from services.runtime.replies import reply_to_inboxes_only

logger = logging.getLogger(__name__)

T = TypeVar("T")


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class NatsLink:
    """An asyncio loop on a daemon thread that owns the NATS client; other threads call in."""

    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.name = name
        self.loop = _new_loop()
        self._thread = threading.Thread(target=self._run, name="nats", daemon=True)
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self.on_disconnect: list[Callable[[], None]] = []  # called on the NATS loop

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    @property
    def nc(self) -> NATS:
        assert self._nc is not None, "not connected"
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        assert self._js is not None, "not connected"
        return self._js

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        self.call(self._connect(timeout), timeout + 1.0)

    async def _connect(self, timeout: float) -> None:
        self._nc = await nats.connect(
            servers(self.url),
            name=self.name,
            no_echo=True,  # `env.state` carries both requests and our own events
            connect_timeout=min(timeout, 2.0),
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.2,
            disconnected_cb=self._disconnected,
            **connect_options(),  # the worker's credentials, from the environment
        )
        reply_to_inboxes_only(self._nc)  # before any subscription (ADR 11)
        self._js = self._nc.jetstream()

    async def _disconnected(self) -> None:
        for callback in self.on_disconnect:
            callback()

    def on_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run a coroutine on the NATS loop from another thread and wait for its result."""
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Start a coroutine on the NATS loop without waiting for it (from any thread)."""
        asyncio.run_coroutine_threadsafe(coro, self.loop)

    def soon(self, fn: Callable[..., Any], *args: Any) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    def close(self, timeout: float = 2.0) -> None:
        """Flush what was published, close the connection and stop the loop."""
        if self._nc is not None and not self._nc.is_closed:
            try:
                self.call(self._close(), timeout)
            except Exception as e:  # exiting anyway: say so, do not raise
                logger.warning("NATS connection did not close cleanly: %r", e)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)

    async def _close(self) -> None:
        assert self._nc is not None
        try:
            await self._nc.flush(timeout=1)
        finally:
            await self._nc.close()
