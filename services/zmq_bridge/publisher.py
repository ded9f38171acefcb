"""The info socket: console output and status, published as the reference's manager does.

Each message is two frames, a topic and a payload: `QS_Console` with `{"time", "msg"}` for
every piece of console output, `QS_Info` with `{"time", "msg": {"status": {...}}}` for every
status the queue service publishes (on each change and at least once a second). The payload
is JSON or msgpack, as the control socket's. The socket never waits for its subscribers: a
subscriber that falls behind loses messages (0MQ's high-water mark), as with the reference.

Nothing is relayed while no one listens: the socket is an XPUB, which tells which topic
prefixes its subscribers want (once for the first subscriber of a prefix, once when the
last one leaves or disconnects). The bridge follows the console on NATS only while someone
wants `QS_Console`, and turns status events into `QS_Info` only while someone wants that:
on a stack where no reference console monitor is attached, a queue change costs the
bridge one status event (its copy for `status`, ADR 29) instead of every console line too.
A subscriber that has just connected may miss what is published before its subscription
reaches the bridge, as it may with the reference's PUB socket.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import zmq
import zmq.asyncio

from services.zmq_bridge.wire import Encoding, encode

logger = logging.getLogger(__name__)

CONSOLE_TOPIC = b"QS_Console"
INFO_TOPIC = b"QS_Info"


class InfoPublisher:
    """Publishes on an XPUB socket, and tracks which topics its subscribers want."""

    def __init__(
        self,
        sock: zmq.asyncio.Socket,
        encoding: Encoding = "json",
        on_console_wanted: Callable[[bool], Awaitable[None]] | None = None,
    ) -> None:
        self.sock = sock
        self.encoding: Encoding = encoding
        self.published = 0
        self.prefixes: set[bytes] = set()  # what the subscribers want (a topic's beginning)
        self.on_console_wanted = on_console_wanted

    def wants(self, topic: bytes) -> bool:
        return any(topic.startswith(p) for p in self.prefixes)

    async def watch(self) -> None:
        """Take the subscribers' (un)subscriptions until cancelled; tell when the console
        becomes wanted or unwanted."""
        while True:
            frame = await self.sock.recv()
            if not frame or frame[0] not in (0, 1):
                continue  # not a (un)subscription: subscribers send nothing else
            was = self.wants(CONSOLE_TOPIC)
            if frame[0] == 1:
                self.prefixes.add(frame[1:])
            else:
                self.prefixes.discard(frame[1:])
            now = self.wants(CONSOLE_TOPIC)
            logger.debug("info socket subscriptions: %s", sorted(self.prefixes))
            if now != was and self.on_console_wanted is not None:
                try:
                    await self.on_console_wanted(now)
                except asyncio.CancelledError:
                    raise
                except Exception:  # a failed (un)subscription must not end the watch
                    logger.exception("following the console on NATS failed")

    async def console(self, data: bytes) -> None:
        """One console event `{time, msg}` of the services, as a `QS_Console` message."""
        try:
            event = msgspec.json.decode(data)
        except msgspec.DecodeError:
            logger.warning("a console event is not JSON: %r", data[:100])
            return
        if not isinstance(event, dict) or not isinstance(event.get("msg"), str):
            return
        payload = {"time": event.get("time", time.time()), "msg": event["msg"]}
        await self._send(CONSOLE_TOPIC, payload)

    async def status(self, data: bytes) -> None:
        """One status event, as a `QS_Info` message (if anyone wants it)."""
        if not self.wants(INFO_TOPIC):
            return
        try:
            status = msgspec.json.decode(data)
        except msgspec.DecodeError:
            return
        await self._send(INFO_TOPIC, {"time": time.time(), "msg": {"status": status}})

    async def _send(self, topic: bytes, payload: dict[str, Any]) -> None:
        try:
            await self.sock.send_multipart([topic, encode(payload, self.encoding)])
        except zmq.ZMQError as e:
            logger.warning("publishing on the info socket failed: %s", e)
            return
        self.published += 1
