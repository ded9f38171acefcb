"""The gateway's side of NATS: one connection, bounded requests, the last status event."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from qserver.client import Client, NoAnswer
from qserver.connect import servers
from services.gateway.errors import Unavailable

logger = logging.getLogger(__name__)

# The queue service publishes its status on every change (before it answers the request
# that made the change) and at least once a second; a status event younger than this is
# the current status, and `status` is answered from it without a round trip.
STATUS_FRESH_S = 1.5
# Without a fresh event, `status` is asked of the queue service with this bound, which
# answers it from memory in a millisecond: a hung one is a 503 within 2 s of its last event.
STATUS_TIMEOUT_S = 0.5
# Methods that change nothing. After any other reply, the next `status` is asked of the queue
# service (which publishes before it answers) rather than taken from the last event, which
# may have been sent before the change (history_clear's news reaches the queue service from
# the history service): what a reply says is done shows in the status read next.
READ_METHODS = frozenset(
    {
        "status",
        "ping",
        "queue_get",
        "queue_item_get",
        "history_get",
        "history_runs",
        "history_run_item",
        "history_result_get",
        "re_runs",
        "plans_allowed",
        "devices_allowed",
        "plans_existing",
        "devices_existing",
        "permissions_get",
        "lock_info",
        "config_get",
        "task_status",
        "task_result",
        "re_metadata",
        "proposal_list",
        "proposal_get",
        "proposal_gate",
        "item_dry_run",
    }
)


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
        self._status: bytes | None = None
        self._status_at = 0.0

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
        await nc.subscribe(client.subjects.status_event, cb=self._on_status)
        self.client = client
        logger.info("gateway connected to NATS at %s (prefix %s)", self.url, self.prefix)
        await self._prime_status(client)

    async def _prime_status(self, client: Client) -> None:
        """Ask for the status once at start, so that the first requests need no round trip."""
        try:
            reply = await client.request_raw("status", b"{}", timeout=1.0)
        except Exception as e:  # the queue service is not there yet: events will come
            logger.info("no status from the queue service yet: %s", e)
            return
        if self._status is None:
            self._status, self._status_at = reply, time.monotonic()

    async def _on_status(self, msg: Msg) -> None:
        self._status, self._status_at = msg.data, time.monotonic()

    def current_status(self) -> bytes | None:
        """The last status event, if it is fresh (else the queue service is asked)."""
        if self._status is not None and time.monotonic() - self._status_at < STATUS_FRESH_S:
            return self._status
        return None

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
            pushed = self.current_status()
            if pushed is not None:
                return pushed
            timeout = STATUS_TIMEOUT_S
        try:
            reply = await client.request_raw(method, body, timeout)
        except NoAnswer as e:
            raise Unavailable(str(e)) from None
        except NatsError as e:
            raise Unavailable(f"NATS request '{method}' failed: {e or type(e).__name__}") from None
        finally:
            if method not in READ_METHODS:
                self._status_at = -STATUS_FRESH_S  # a write may have been answered
        if method in ("status", "ping") and timeout is not None:
            self._status, self._status_at = reply, time.monotonic()
        return reply

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
