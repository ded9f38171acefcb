"""Async Python client over NATS, plus a thin synchronous wrapper for scripts."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from qserver.protocol.subjects import DEFAULT_PREFIX, Subjects

DEFAULT_NATS_URL = "nats://localhost:4222"
DEFAULT_TIMEOUT = 10.0

_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


class ClientError(Exception):
    """Base of the client's own errors (the server's refusals come back as replies)."""


class NoAnswer(ClientError):
    """The request got no reply: the server or the service for the method is not there."""


def default_url() -> str:
    return os.environ.get("QSERVER_NATS_URL", DEFAULT_NATS_URL)


def default_prefix() -> str:
    return os.environ.get("QSERVER_PREFIX", DEFAULT_PREFIX)


class Client:
    """Talks to a queue server over NATS: `await Client.connect(url)`, then `request(...)`."""

    def __init__(
        self, nc: NATS, prefix: str = DEFAULT_PREFIX, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.nc = nc
        self.subjects = Subjects(prefix)
        self.timeout = timeout

    @classmethod
    async def connect(
        cls,
        url: str | None = None,
        prefix: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = 2.0,
    ) -> Client:
        url = url or default_url()

        async def quiet(e: Exception) -> None:
            pass  # connection errors are reported once, below, not as tracebacks

        try:
            # nats-py retries the first connection on its own; bound the whole attempt.
            nc = await asyncio.wait_for(
                nats.connect(
                    url,
                    connect_timeout=connect_timeout,
                    max_reconnect_attempts=1,
                    reconnect_time_wait=0.05,
                    allow_reconnect=False,
                    error_cb=quiet,
                    name="qserver-client",
                ),
                connect_timeout + 0.5,
            )
        except Exception as e:  # includes the TimeoutError of wait_for
            raise NoAnswer(f"Cannot connect to NATS at {url}: {e or type(e).__name__}") from e
        return cls(nc, prefix or default_prefix(), timeout)

    async def close(self) -> None:
        await self.nc.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def request_raw(self, method: str, body: bytes, timeout: float | None = None) -> bytes:
        """Send one request with a JSON body; return the raw JSON reply."""
        try:
            msg = await self.nc.request(
                self.subjects.api(method), body, timeout=timeout or self.timeout
            )
        except NoRespondersError:
            raise NoAnswer(
                f"No service answers '{method}' (is the queue server running with prefix "
                f"'{self.subjects.prefix}'?)"
            ) from None
        except NatsTimeout:
            raise NoAnswer(
                f"No answer to '{method}' within {timeout or self.timeout:g} s"
            ) from None
        return msg.data  # type: ignore[no-any-return]

    async def request(
        self, method: str, params: dict[str, Any] | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        """Send `params` to `<prefix>.api.<method>` and return the decoded reply."""
        data = await self.request_raw(method, _encoder.encode(params or {}), timeout)
        return _decoder.decode(data)  # type: ignore[no-any-return]

    async def events(self, subject: str) -> AsyncIterator[dict[str, Any]]:
        """Yield each JSON message published on `subject`, decoded, until the caller stops."""
        sub = await self.nc.subscribe(subject)
        try:
            async for msg in sub.messages:
                yield _decoder.decode(msg.data)
        finally:
            await sub.unsubscribe()

    def status_events(self) -> AsyncIterator[dict[str, Any]]:
        """Each status event as it is published (on change and once a second)."""
        return self.events(self.subjects.status_event)

    def console_events(self) -> AsyncIterator[dict[str, Any]]:
        """Each console line of the environment as `{time, msg}`, live."""
        return self.events(self.subjects.console_event)

    async def wait_for(self, predicate: Any, timeout: float = 10.0) -> dict[str, Any]:
        """Wait until a status event satisfies `predicate`; the current status counts too."""

        async def run() -> dict[str, Any]:
            sub = await self.nc.subscribe(self.subjects.status_event)
            try:
                current = await self.request("status")
                if predicate(current):
                    return current
                async for msg in sub.messages:
                    st = _decoder.decode(msg.data)
                    if predicate(st):
                        return st  # type: ignore[no-any-return]
            finally:
                await sub.unsubscribe()
            raise NoAnswer("status subscription ended")

        return await asyncio.wait_for(run(), timeout)


class SyncClient:
    """Blocking wrapper around `Client` for scripts and notebooks without an event loop."""

    def __init__(
        self, url: str | None = None, prefix: str | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._client = self._loop.run_until_complete(Client.connect(url, prefix, timeout))

    def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._loop.run_until_complete(self._client.request(method, params))

    def close(self) -> None:
        self._loop.run_until_complete(self._client.close())
        self._loop.close()
