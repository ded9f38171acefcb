"""The bridge's side of NATS: one connection, bounded requests, and the events it relays."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from qserver.client import AccessDenied, Client, NoAnswer
from qserver.connect import servers

logger = logging.getLogger(__name__)

EventCallback = Callable[[bytes], Awaitable[None]]


class Unavailable(Exception):
    """NATS, or the service behind a method, does not answer; `msg` says which."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.msg = msg


class NatsLink:
    """Connects in the background, so that the bridge answers "not connected" until it is."""

    def __init__(
        self,
        url: str,
        prefix: str,
        timeout: float,
        connect_options: dict[str, Any] | None = None,
        *,
        on_console: EventCallback | None = None,
        on_status: EventCallback | None = None,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.timeout = timeout
        self.connect_options = connect_options or {}
        self.on_console = on_console
        self.on_status = on_status
        self.client: Client | None = None
        self._task: asyncio.Task[None] | None = None
        # The console is followed only while wanted (someone listens on the info socket).
        self._console_wanted = False
        self._console_sub: Any = None
        self._console_lock = asyncio.Lock()

    async def start(self, wait: float = 3.0) -> None:
        """Start connecting; return once connected, or after `wait` seconds."""
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
                    name="qserver-zmq-bridge",
                    **self.connect_options,
                )
                break
            except Exception as e:
                logger.warning("cannot connect to NATS at %s: %s; retrying", self.url, e)
                await asyncio.sleep(1.0)
        client = Client(nc, self.prefix, self.timeout)
        # `status` and `ping` are answered from the pushed status while it is fresh and
        # current, as the gateway does (ADR 29): a 0MQ client's `status` is one 0MQ round
        # trip, as with the reference's manager. The same events feed the info socket.
        await client.follow_status(on_event=self.on_status)
        self.client = client
        await self._apply_console()
        logger.info("connected to NATS at %s (prefix %s)", self.url, self.prefix)

    async def follow_console(self, wanted: bool) -> None:
        """Follow the console events on NATS (for `on_console`) or stop following them."""
        self._console_wanted = wanted
        await self._apply_console()

    async def _apply_console(self) -> None:
        async with self._console_lock:
            client = self.client
            if client is None or self.on_console is None:
                return  # applied once connected
            wanted = self._console_wanted
            if wanted and self._console_sub is None:
                self._console_sub = await client.nc.subscribe(
                    client.subjects.console_event, cb=_relay(self.on_console)
                )
                logger.info("following the console: a subscriber on the info socket wants it")
            elif not wanted and self._console_sub is not None:
                sub, self._console_sub = self._console_sub, None
                await sub.unsubscribe()
                logger.info("not following the console: no subscriber on the info socket wants it")

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.client.nc.drain(), 2.0)

    def connected(self) -> Client:
        c = self.client
        if c is None or not c.nc.is_connected:
            raise Unavailable(
                f"The 0MQ bridge is not connected to NATS at {self.url}: is nats-server "
                "running? (retrying in the background)"
            )
        return c

    def pushed(self, method: str, body: bytes) -> bytes | None:
        """`status` or `ping` answered from the last pushed status, if it is fresh and
        current (`Client.request_raw` would answer the same without waiting); else None."""
        client = self.client
        if client is None or client.mirror is None or not client.nc.is_connected:
            return None
        if method not in ("status", "ping") or body not in (b"", b"{}"):
            return None
        return client.mirror.current()

    async def request(self, method: str, body: bytes) -> bytes:
        """The whole JSON reply of `<prefix>.api.<method>` (fetched in parts when large)."""
        client = self.connected()
        try:
            return await client.request_raw(method, body)
        except (NoAnswer, AccessDenied) as e:
            raise Unavailable(str(e)) from None
        except NatsError as e:
            raise Unavailable(f"NATS request '{method}' failed: {e or type(e).__name__}") from None

    async def publish(self, method: str, body: bytes) -> None:
        """A request that gets no reply (`manager_kill`)."""
        client = self.connected()
        try:
            await client.nc.publish(client.subjects.api(method), body)
        except NatsError as e:
            raise Unavailable(f"NATS publish '{method}' failed: {e or type(e).__name__}") from None


def _relay(cb: EventCallback) -> Callable[[Msg], Awaitable[None]]:
    async def handler(msg: Msg) -> None:
        try:
            await cb(msg.data)
        except Exception:  # one bad event must not end the subscription
            logger.exception("relaying an event from %s failed", msg.subject)

    return handler
