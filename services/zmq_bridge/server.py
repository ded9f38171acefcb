"""The control socket: 0MQ requests in, NATS requests out, the whole reply back.

A ROUTER socket stands where the reference's REP socket stands: the reference's REQ clients
cannot tell them apart, and requests of different clients are handled side by side (a slow
`environment_open` of one does not hold up the `status` of another), up to `max_in_flight`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
import zmq
import zmq.asyncio

from qserver.protocol.methods import GATED_METHODS
from services.zmq_bridge.access import Denied, authorize, principal_of
from services.zmq_bridge.keys import ClientKey
from services.zmq_bridge.link import NatsLink, Unavailable
from services.zmq_bridge.wire import Encoding, WireError, decode_call, encode, encode_raw, failure

logger = logging.getLogger(__name__)

MAX_IN_FLIGHT = 64
# Sent without waiting for a reply, as the reference's manager never answers it.
NO_REPLY_METHODS = frozenset({"manager_kill"})

_json = msgspec.json.Encoder()


@dataclass(frozen=True)
class Pending:
    """A request read and allowed, still to be sent: its method, the caller's group, the
    JSON body."""

    method: str
    group: str | None
    data: bytes


@dataclass
class Counters:
    requests: int = 0
    refused: int = 0  # bad requests and denials
    failed: int = 0  # NATS or a service did not answer


class ControlServer:
    """Serves the reference's control protocol on a ROUTER socket."""

    def __init__(
        self,
        sock: zmq.asyncio.Socket,
        link: NatsLink,
        *,
        encoding: Encoding = "json",
        clients: Sequence[ClientKey] = (),
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self.sock = sock
        self.link = link
        self.encoding: Encoding = encoding
        self.clients = tuple(clients)
        self.slots = asyncio.Semaphore(max_in_flight)
        self.tasks: set[asyncio.Task[None]] = set()
        self.counters = Counters()

    async def run(self) -> None:
        """Take requests until cancelled; each is answered by a task of its own, except
        those answered at once (refusals, and `status` from the pushed status, ADR 29)."""
        try:
            while True:
                frames: list[zmq.Frame] = await self.sock.recv_multipart(copy=False)
                envelope, body = split(frames)
                step = self.first_step(body)
                if isinstance(step, bytes):
                    await self.sock.send_multipart([*envelope, step])
                    continue
                await self.slots.acquire()
                task = asyncio.create_task(self._serve(envelope, step))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        finally:
            for task in list(self.tasks):
                task.cancel()

    async def _serve(self, envelope: list[bytes], step: Pending) -> None:
        try:
            reply = await self.rest(step)
            if reply is not None:
                await self.sock.send_multipart([*envelope, reply])
        except Exception:
            logger.exception("answering a 0MQ request failed")
        finally:
            self.slots.release()

    def first_step(self, body: zmq.Frame | None) -> bytes | Pending:
        """What can be done without waiting: read and check the request, and answer it if
        that needs nothing from NATS (a refusal, `status` from a fresh pushed status);
        else what the rest needs."""
        self.counters.requests += 1
        try:
            if body is None:
                raise WireError("Invalid request format: the message has no body")
            user_id = body.get("User-Id")  # the name the gate gave the connection
            principal = principal_of(user_id if isinstance(user_id, str) else None, self.clients)
            call = decode_call(body.bytes, self.encoding)
            params = authorize(principal, call.method, call.params)
        except (WireError, Denied) as e:
            self.counters.refused += 1
            logger.info("0MQ request refused: %s", e.msg)
            return encode(failure(e.msg), self.encoding)
        data = _json.encode(params)
        if call.method in GATED_METHODS:  # a read: no gate to ask
            pushed = self.link.pushed(call.method, data)
            if pushed is not None:
                return encode_raw(pushed, self.encoding)
        return Pending(call.method, principal.user_group, data)

    async def rest(self, step: Pending) -> bytes | None:
        """The reply once the gate and the service have answered (None: never answered)."""
        try:
            refusal = await self.gated(step.group, step.method)
            if refusal:
                self.counters.refused += 1
                logger.info("0MQ request refused: %s", refusal)
                return encode(failure(refusal), self.encoding)
            if step.method in NO_REPLY_METHODS:
                await self.link.publish(step.method, step.data)
                return None
            return encode_raw(await self.link.request(step.method, step.data), self.encoding)
        except Unavailable as e:
            self.counters.failed += 1
            logger.warning("0MQ request '%s' failed: %s", step.method, e.msg)
            return encode(failure(e.msg), self.encoding)

    async def gated(self, group: str | None, method: str) -> str:
        """Why a keyed client of a gated group may not call `method` ("" if it may): its
        members only read and propose (ADR 30). The queue service, which holds the
        permissions, is asked every time. A local owner's process is not checked: it can
        act as anyone over NATS with the stack's own key anyway."""
        if group is None or method in GATED_METHODS:
            return ""
        reply = msgspec.json.decode(
            await self.link.request("proposal_gate", _json.encode({"user_group": group}))
        )
        if not isinstance(reply, dict) or not reply.get("success"):
            why = reply.get("msg") if isinstance(reply, dict) else reply
            return f"Cannot tell whether user group '{group}' is gated: {why}"
        if reply.get("gated"):
            return (
                f"User group '{group}' may only propose items for review: "
                f"'{method}' is not allowed to its members"
            )
        return ""


def split(frames: list[zmq.Frame]) -> tuple[list[bytes], zmq.Frame | None]:
    """(the routing envelope, the body) of a message a ROUTER received.

    A REQ client's message is `[id, b"", body]`; a DEALER may send `[id, body]`. The reply
    goes back with the same envelope.
    """
    raw = [f.bytes for f in frames[:-1]]
    if b"" in raw[1:]:
        end = raw.index(b"", 1) + 1
        envelope = raw[:end]
        rest = frames[end:]
    else:
        envelope, rest = raw[:1], frames[1:]
    return envelope, rest[0] if len(rest) == 1 else None
