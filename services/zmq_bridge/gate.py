"""The connection gate: which 0MQ connections the bridge takes, and who each one is.

Two things libzmq offers are combined:
- its socket monitor reports each accepted TCP connection with its descriptor before the
  0MQ handshake starts; a loopback peer's OS user is looked up (`peers.socket_owner`) and a
  connection of another user is cut at the TCP level at once;
- its authentication hook (ZAP, RFC 27) holds every handshake until it answers. The handler
  first takes every pending monitor event, so no connection passes before its peer was
  checked; while a cut connection is not yet gone, loopback handshakes are answered
  "try again" (the client reconnects by itself). It names each connection it lets in
  (`local`, `key:<n>`, `info`): 0MQ hands that name out with every message as `User-Id`.

A monitor's events are never dropped: libzmq blocks its I/O thread when the monitor's queue
is full, so a flood of connections cannot push an event out of sight of the gate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import zmq
import zmq.asyncio
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

from services.zmq_bridge.access import KEY_PREFIX, LOCAL
from services.zmq_bridge.keys import ClientKey
from services.zmq_bridge.peers import Address, connection_of, cut, is_loopback_host, socket_owner

logger = logging.getLogger(__name__)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
CONTROL_DOMAIN = b"qserver-control"
INFO_DOMAIN = b"qserver-info"
INFO = "info"
# A cut connection normally reports its end within milliseconds; past this it is forgotten
# (with a warning) so that a lost event cannot hold every loopback client off for good.
CUT_PENDING_S = 10.0
DRAIN_PERIOD_S = 0.05
LOG_EVERY_S = 60.0
_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED

LocalUsers = Literal["owner", "any"]
OwnerLookup = Callable[[Address, Address], int | None]


@dataclass(frozen=True)
class Policy:
    """Who may connect: local users (`owner`: this process's uid and root; `any`: everyone on
    this machine, the reference's way), the keyed clients, and whether the console feed is
    served beyond loopback."""

    local_users: LocalUsers = "owner"
    clients: tuple[ClientKey, ...] = ()
    info_public: bool = False
    uids: frozenset[int] = field(default_factory=lambda: frozenset({os.getuid(), 0}))


@dataclass
class _Watched:
    sock: zmq.asyncio.Socket
    monitor: zmq.Socket[bytes]
    what: str

    @property
    def port(self) -> int:
        """The port it is bound to (`tcp://host:port`), -1 before it is bound."""
        endpoint: bytes = self.sock.getsockopt(zmq.LAST_ENDPOINT)  # type: ignore[assignment]
        host, _, port = endpoint.rpartition(b":")
        return int(port) if host.startswith(b"tcp://") and port.isdigit() else -1


class Gate:
    """The ZAP handler and the monitors of the sockets it guards, on one context."""

    def __init__(
        self, ctx: zmq.asyncio.Context, policy: Policy, owner_of: OwnerLookup = socket_owner
    ) -> None:
        self.ctx = ctx
        self.policy = policy
        self.owner_of = owner_of
        self.keys = {c.public_key: n for n, c in enumerate(policy.clients)}
        self.watched: list[_Watched] = []
        self.cut_pending: dict[int, float] = {}  # fd -> when it was cut
        self.refused = 0  # connections cut, for the log and tests
        self.said: dict[int | None, float] = {}  # uid -> when its refusal was last logged
        self.zap: zmq.asyncio.Socket = ctx.socket(zmq.REP)
        self.zap.linger = 0
        self.zap.bind(ZAP_ENDPOINT)

    def guard(self, sock: zmq.asyncio.Socket, domain: bytes, what: str) -> None:
        """Check every connection `sock` accepts; call before it binds."""
        sock.setsockopt(zmq.ZAP_DOMAIN, domain)  # NULL-mechanism handshakes ask ZAP only then
        endpoint = f"inproc://qserver-monitor-{id(sock)}"
        sock.monitor(endpoint, _EVENTS)
        # Not an asyncio socket: the gate takes its events without waiting (`drain`).
        monitor: zmq.Socket[bytes] = zmq.Socket(self.ctx, zmq.PAIR)
        monitor.linger = 0
        monitor.connect(endpoint)
        self.watched.append(_Watched(sock, monitor, what))

    def close(self) -> None:
        for w in self.watched:
            w.monitor.close()
        self.zap.close()

    # ----- the monitors -----

    def drain(self) -> None:
        """Take every pending monitor event, in order."""
        for w in self.watched:
            while True:
                try:
                    frames = w.monitor.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                event = parse_monitor_message(frames)
                fd = int(event["value"])
                if event["event"] == zmq.EVENT_ACCEPTED:
                    self._check(fd, w)
                else:
                    self.cut_pending.pop(fd, None)

    def _check(self, fd: int, w: _Watched) -> None:
        conn = connection_of(fd)
        # The descriptor may be closed, or reused by another socket of this process, by now:
        # only an accepted connection on the guarded port is looked at.
        if conn is None or conn.local[1] != w.port or not conn.loopback:
            return
        if self.policy.local_users == "any":
            return
        uid = self.owner_of(conn.peer, conn.local)
        if uid is not None and uid in self.policy.uids:
            return
        who = "an unknown user" if uid is None else f"uid {uid}"
        # A refused REQ client reconnects every 0.1 s: said once a minute per user.
        now = time.monotonic()
        loud = now - self.said.get(uid, -LOG_EVERY_S) >= LOG_EVERY_S
        if loud:
            self.said[uid] = now
        logger.log(
            logging.WARNING if loud else logging.DEBUG,
            "refused a 0MQ connection to the %s socket from %s (%s): only uid %s and root may "
            "connect over loopback (zmq.local_users: any lets every local user in)",
            w.what,
            conn,
            who,
            os.getuid(),
        )
        cut(fd)
        self.refused += 1
        self.cut_pending[fd] = time.monotonic()

    async def watch(self) -> None:
        """Take monitor events as they come, so that their queue never fills."""
        while True:
            self.drain()
            await asyncio.sleep(DRAIN_PERIOD_S)

    # ----- ZAP -----

    def _cut_still_pending(self) -> bool:
        now = time.monotonic()
        for fd, since in list(self.cut_pending.items()):
            if now - since > CUT_PENDING_S:
                logger.warning("a refused 0MQ connection (fd %d) never reported its end", fd)
                del self.cut_pending[fd]
        return bool(self.cut_pending)

    def decide(
        self, domain: bytes, address: str, mechanism: bytes, credentials: Sequence[bytes]
    ) -> tuple[bytes, str, str]:
        """(status code, text, user id) for one handshake; call after `drain()`."""
        loopback = is_loopback_host(address)
        if mechanism == b"CURVE" and credentials and domain == CONTROL_DOMAIN:
            n = self.keys.get(z85.encode(credentials[0]).decode())
            if n is not None:
                return b"200", "OK", f"{KEY_PREFIX}{n}"
        if not loopback:
            if domain == INFO_DOMAIN and self.policy.info_public:
                return b"200", "OK", INFO
            return b"400", "not an allowed client of this queue server", ""
        if self._cut_still_pending():
            return b"300", "a connection of another user is being refused: try again", ""
        return b"200", "OK", INFO if domain == INFO_DOMAIN else LOCAL

    async def serve(self) -> None:
        """Answer ZAP requests until cancelled."""
        while True:
            frames = await self.zap.recv_multipart()
            if len(frames) < 6:
                logger.error("malformed ZAP request (%d frames)", len(frames))
                continue
            version, request_id, domain, address, _identity, mechanism, *creds = frames
            self.drain()
            status, text, user_id = self.decide(domain, address.decode(), mechanism, creds)
            if status != b"200":
                logger.info(
                    "0MQ handshake from %s refused (%s): %s",
                    address.decode(),
                    mechanism.decode(),
                    text,
                )
            reply = [version, request_id, status, text.encode(), user_id.encode(), b""]
            await self.zap.send_multipart(reply)

    async def run(self) -> None:
        tasks = [asyncio.create_task(self.watch()), asyncio.create_task(self.serve())]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*tasks, return_exceptions=True)
