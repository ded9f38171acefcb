"""The info socket: console output and status, published as the reference's manager does.

Each message is two frames, a topic and a payload: `QS_Console` with `{"time", "msg"}` for
every piece of console output, `QS_Info` with `{"time", "msg": {"status": {...}}}` for every
status the queue service publishes (on each change and at least once a second). The payload
is JSON or msgpack, as the control socket's. A PUB socket never waits for its subscribers: a
subscriber that falls behind loses messages (0MQ's high-water mark), as with the reference.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import msgspec
import zmq
import zmq.asyncio

from services.zmq_bridge.wire import Encoding, encode

logger = logging.getLogger(__name__)

CONSOLE_TOPIC = b"QS_Console"
INFO_TOPIC = b"QS_Info"


class InfoPublisher:
    def __init__(self, sock: zmq.asyncio.Socket, encoding: Encoding = "json") -> None:
        self.sock = sock
        self.encoding: Encoding = encoding
        self.published = 0

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
        """One status event, as a `QS_Info` message."""
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
