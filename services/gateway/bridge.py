"""The gateway's side of NATS: one connection, bounded requests, the last status event."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError

from qserver.client import Client, NoAnswer
from qserver.connect import servers
from services.gateway.errors import Unavailable

logger = logging.getLogger(__name__)

# `status` and `ping` are answered from the client's copy of the last status event while it
# is fresh and shows every change this gateway was told about (qserver.status_mirror,
# ADR 29); otherwise they are asked of the queue service with this bound, which answers
# from memory in a millisecond: a hung one is a 503 within 2 s of its last event.
STATUS_TIMEOUT_S = 0.5


class Bridge:
    """Connects in the background, so that the gateway answers 503 until NATS is there."""

    def __init__(
        self, url: str, prefix: str, timeout: float, connect_options: dict[str, Any] | None = None
    ) -> None:
        self.url = url
        self.connect_options = connect_options or {}  # credentials and TLS (qserver.connect)
        self.prefix = prefix
        self.timeout = timeout
        self.client: Client | None = None
        self._task: asyncio.Task[None] | None = None
        # Given each status event (raw JSON) after the copy took it, in order (metrics).
        self.status_listeners: list[Callable[[bytes], Awaitable[None]]] = []

    async def start(self, wait: float = 3.0) -> None:
        """Start connecting; serve once connected, or after `wait` seconds (503 until then)."""
        self._task = asyncio.create_task(self._connect())
        await asyncio.wait({self._task}, timeout=wait)

    async def _connect(self) -> None:
        async def on_error(e: Exception) -> None:
            logger.warning("NATS: %s", e or type(e).__name__)

        while True:
            try:
                nc: NATS = await nats.connect(
                    servers(self.url),
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.2,
                    connect_timeout=2,
                    error_cb=on_error,
                    name="qserver-gateway",
                    **self.connect_options,
                )
                break
            except Exception as e:
                logger.warning("cannot connect to NATS at %s: %s; retrying", self.url, e)
                await asyncio.sleep(1.0)
        client = Client(nc, self.prefix, self.timeout)
        await client.follow_status(on_event=self._on_status)
        self.client = client
        logger.info("gateway connected to NATS at %s (prefix %s)", self.url, self.prefix)
        await self._prime_status(client)

    async def _on_status(self, data: bytes) -> None:
        for listener in self.status_listeners:
            try:
                await listener(data)
            except Exception:  # one listener's bug must not starve the others
                logger.exception("a status listener failed")

    async def _prime_status(self, client: Client) -> None:
        """Ask for the status once at start, so that the first requests need no round trip."""
        try:
            await client.request_raw("status", b"{}", timeout=1.0)  # kept by the mirror
        except Exception as e:  # the queue service is not there yet: events will come
            logger.info("no status from the queue service yet: %s", e)

    def current_status(self) -> bytes | None:
        """The last status event, if fresh and current (else the queue service is asked)."""
        mirror = self.client.mirror if self.client is not None else None
        return mirror.current() if mirror is not None else None

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.client.nc.drain(), 2.0)

    def connected(self) -> Client:
        """The client, if the connection is up; Unavailable (503) otherwise."""
        c = self.client
        if c is None or not c.nc.is_connected:
            raise Unavailable(
                f"The gateway is not connected to NATS at {self.url}: "
                "is nats-server running? (retrying in the background)"
            )
        return c

    async def request(self, method: str, body: bytes) -> bytes:
        """The raw JSON reply of `<prefix>.api.<method>`, within the timeout, or Unavailable."""
        client = self.connected()
        timeout = None  # the gateway's --timeout
        if method in ("status", "ping") and body.strip() in (b"", b"{}"):
            body = b"{}"
            # Answered from the pushed status if it is current (Client.request_raw), else
            # asked within a short bound.
            timeout = STATUS_TIMEOUT_S
        try:
            return await client.request_raw(method, body, timeout)
        except NoAnswer as e:
            raise Unavailable(str(e)) from None
        except NatsError as e:
            raise Unavailable(f"NATS request '{method}' failed: {e or type(e).__name__}") from None

    async def publish(self, method: str, body: bytes) -> None:
        """A request that gets no reply (the manager_kill test hook)."""
        client = self.connected()
        try:
            await client.nc.publish(client.subjects.api(method), body)
        except NatsError as e:
            raise Unavailable(f"NATS publish '{method}' failed: {e or type(e).__name__}") from None

    async def events(self, kind: str, backlog: int = 0) -> AsyncIterator[dict[str, Any]]:
        """Status, console, progress events or run documents, live, from a subscription of
        this caller's own; for the console, the last `backlog` messages kept first (ADR 18)."""
        client = self.connected()
        if kind == "progress":  # the open run's last event first (ADR 25)
            stream = client.progress_feed()
        elif kind in ("documents", "documents:current"):  # the open run's from its start first
            stream = client.documents_feed(current=kind == "documents:current")
        elif kind == "status":
            stream = client.status_events()
        else:
            stream = client.console_feed(backlog)
        async for ev in stream:
            yield ev
