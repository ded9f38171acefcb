"""Bounds on the gateway's HTTP connections: idle time, request arrival, header size, stalls.

uvicorn closes a keep-alive connection only after it answered a request on it, and it puts
no bound on how long a request may take to arrive or how large its headers may grow (with
httptools): a client that connects and sends nothing, or sends its headers a byte at a
time, holds a connection forever. This protocol adds the bounds (ADR 13).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger(__name__)

Phase = Literal["idle", "head", "body", "busy"]


@dataclass(frozen=True, kw_only=True)
class ConnectionLimits:
    """How long a connection may wait on its client, and how much head it may send."""

    idle_s: float = 5.0  # no request in progress: before the first one, between two
    request_s: float = 10.0  # from a request's first byte to its last (head and body)
    stalled_write_s: float = 30.0  # the client does not take the next part of an answer
    max_head_bytes: int = 64 * 1024  # request line and headers
    ws_ping_s: float = 20.0  # WebSocket ping period; no pong within as long closes it
    ws_max_message_bytes: int = 64 * 1024  # the gateway's sockets push; clients say little


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with one deadline per connection, by phase.

    idle (no request in progress) -> `idle_s`; head and body of a request -> `request_s`
    from its first byte; busy (the app answers) -> none, the app bounds its own work; a
    write the client does not drain -> `stalled_write_s`.
    """

    limits = ConnectionLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase: Phase = "idle"
        self._head_bytes = 0
        self._deadline: asyncio.TimerHandle | None = None
        self._write_deadline: asyncio.TimerHandle | None = None

    # ----- deadlines -----

    def _arm(self, seconds: float, why: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expire, why)

    def _arm_request(self) -> None:
        self._arm(self.limits.request_s, f"request not received within {self.limits.request_s:g} s")

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self, why: str) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._phase == "idle":
            logger.debug("closing an idle connection from %s", self._peer())
            self.transport.close()
            return
        logger.info("closing the connection from %s: %s", self._peer(), why)
        answering = self.cycle is not None and not self.cycle.response_complete
        if self._phase == "head" and not answering:
            self._refuse(408, "The request did not arrive in time")
        else:  # the app waits for the rest of the body: it sees the client disconnect
            self.transport.abort()

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "?"

    def _refuse(self, status: int, text: str) -> None:
        """Answer before the app saw the request, then close."""
        reason = {408: "Request Timeout", 431: "Request Header Fields Too Large"}[status]
        body = msgspec.json.encode({"detail": text})
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, reason.encode(), len(body), body)
        )
        self.transport.close()

    # ----- the connection -----

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.limits.idle_s, "idle")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._stop_write_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Bytes of a chunk that left the head incomplete all belong to it: httptools would
        # keep them all (it has no limit of its own).
        if self._phase == "head" and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_head_bytes:
                logger.info(
                    "refusing a request from %s: head over %d bytes",
                    self._peer(),
                    self.limits.max_head_bytes,
                )
                self._disarm()
                self._refuse(431, "Request line and headers are too large")

    def handle_websocket_upgrade(self) -> None:
        # The WebSocket protocol takes over the transport; it pings the client itself.
        self._disarm()
        self._phase = "busy"
        super().handle_websocket_upgrade()

    # ----- parser callbacks: the phases of a request -----

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase, self._head_bytes = "head", 0
        self._arm_request()

    def on_headers_complete(self) -> None:
        self._phase = "body"
        super().on_headers_complete()
        if self.pipeline:
            # Queued behind an answer in progress, with reading paused: the wait is the
            # server's, not the client's. Its deadline starts again when its turn comes.
            self._disarm()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._phase = "busy"
        self._disarm()

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if self._phase == "busy" and not pipelined:
            self._phase = "idle"
            self._arm(self.limits.idle_s, "idle")
        elif self._phase == "body" and pipelined:  # its turn came before its body did
            self._arm_request()

    # ----- a client that does not read its answer -----

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_deadline is None:
            self._write_deadline = self.loop.call_later(
                self.limits.stalled_write_s, self._write_stalled
            )

    def resume_writing(self) -> None:
        self._stop_write_deadline()
        super().resume_writing()

    def _stop_write_deadline(self) -> None:
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None

    def _write_stalled(self) -> None:
        self._write_deadline = None
        logger.info(
            "closing the connection from %s: it took nothing of its answer for %g s",
            self._peer(),
            self.limits.stalled_write_s,
        )
        self.transport.abort()  # close() would wait for the buffer to drain


def bounded_protocol(limits: ConnectionLimits) -> type[BoundedHttpProtocol]:
    """The protocol class for uvicorn's `http=` option, with these limits."""
    return type("BoundedHttpProtocol", (BoundedHttpProtocol,), {"limits": limits})


def uvicorn_options(limits: ConnectionLimits) -> dict[str, Any]:
    """uvicorn settings that go with the limits."""
    return {
        "http": bounded_protocol(limits),
        "timeout_keep_alive": max(1, round(limits.idle_s)),
        "ws_ping_interval": limits.ws_ping_s,
        "ws_ping_timeout": limits.ws_ping_s,
        "ws_max_size": limits.ws_max_message_bytes,
    }
