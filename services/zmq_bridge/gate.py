"""The connection gate: which 0MQ connections the bridge takes, and who each one is.

Two things libzmq offers are combined:
- its socket monitor reports each accepted TCP connection with its descriptor before the
  0MQ handshake starts; a loopback peer's OS user is looked up (`peers.socket_owner`) and a
  connection of another user is cut at the TCP level at once;
- its authentication hook (ZAP, RFC 27) holds every handshake until it answers. The handler
  first takes every pending monitor event, so no connection passes before its peer was
  checked. It cannot tell which connection a request is for (it learns the peer's address,
  not its port), so while a cut connection has not yet reported its end, loopback requests
  are held, not answered: once it is gone, the rest are let in and the cut one's answer
  goes nowhere. (Refusing them would not do: a REQ client that is refused once does not
  try again.) It names each connection it lets in (`local`, `key:<n>`, `info`): 0MQ hands
  that name out with every message of the connection as `User-Id`.

A monitor's events are never dropped: libzmq blocks its I/O thread when the monitor's queue
is full, so a flood of connections cannot push an event out of sight of the gate. A cut
connection whose end is not reported is given up after `CUT_PENDING_S`, beyond the
handshake time limit (`HANDSHAKE_S`) by which libzmq has dropped it anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

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
# A handshake not done within this is dropped by libzmq (the reference's clients finish
# theirs in milliseconds).
HANDSHAKE_S = 5.0
# A cut connection reports its end within milliseconds; one that does not is given up after
# this (longer than HANDSHAKE_S, so it is gone by then), so the held cannot wait for good.
CUT_PENDING_S = 2 * HANDSHAKE_S
DRAIN_PERIOD_S = 0.05
LOG_EVERY_S = 60.0
_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED

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


@dataclass(frozen=True)
class _ZapRequest:
    envelope: list[bytes]  # the ZAP client's routing id and delimiter
    version: bytes
    request_id: bytes
    domain: bytes
    address: str
    mechanism: bytes
    credentials: tuple[bytes, ...]


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
        # Cut connections not yet reported gone: fd -> (times cut, when first cut). A
        # descriptor can be cut twice when a late event names it after it was reused.
        self.cut_pending: dict[int, tuple[int, float]] = {}
        self.held: list[_ZapRequest] = []
        self._held_more = asyncio.Event()
        self.refused = 0  # connections cut, for the log and tests
        self.said: dict[int | None, float] = {}  # uid -> when its refusal was last logged
        # ROUTER, not REP: requests are held while a cut connection is pending.
        self.zap: zmq.asyncio.Socket = ctx.socket(zmq.ROUTER)
        self.zap.linger = 0
        self.zap.bind(ZAP_ENDPOINT)

    def guard(self, sock: zmq.asyncio.Socket, domain: bytes, what: str) -> None:
        """Check every connection `sock` accepts; call before it binds."""
        sock.setsockopt(zmq.ZAP_DOMAIN, domain)  # NULL-mechanism handshakes ask ZAP only then
        sock.setsockopt(zmq.HANDSHAKE_IVL, int(HANDSHAKE_S * 1000))
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
                    self._gone(fd)

    def _gone(self, fd: int) -> None:
        if fd in self.cut_pending:
            times, since = self.cut_pending.pop(fd)
            if times > 1:
                self.cut_pending[fd] = (times - 1, since)

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
        # A refused client may come back again and again: said once a minute per user.
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
        times, since = self.cut_pending.get(fd, (0, now))
        self.cut_pending[fd] = (times + 1, since)

    def _cut_still_pending(self) -> bool:
        now = time.monotonic()
        for fd, (_, since) in list(self.cut_pending.items()):
            if now - since > CUT_PENDING_S:
                logger.warning("a refused 0MQ connection (fd %d) never reported its end", fd)
                del self.cut_pending[fd]
        return bool(self.cut_pending)

    # ----- ZAP -----

    def decide(self, req: _ZapRequest) -> tuple[bytes, str, str] | None:
        """(status code, text, user id) for one handshake, or None: hold it for now.

        Call after `drain()`.
        """
        loopback = is_loopback_host(req.address)
        if req.mechanism == b"CURVE" and req.credentials and req.domain == CONTROL_DOMAIN:
            n = self.keys.get(z85.encode(req.credentials[0]).decode())
            if n is not None:
                return b"200", "OK", f"{KEY_PREFIX}{n}"
        if not loopback:
            if req.domain == INFO_DOMAIN and self.policy.info_public:
                return b"200", "OK", INFO
            return b"400", "not an allowed client of this queue server", ""
        if self._cut_still_pending():
            return None
        return b"200", "OK", INFO if req.domain == INFO_DOMAIN else LOCAL

    async def _answer(self, req: _ZapRequest) -> bool:
        """Answer `req` unless it must be held; whether it was answered."""
        verdict = self.decide(req)
        if verdict is None:
            return False
        status, text, user_id = verdict
        if status != b"200":
            logger.info(
                "0MQ handshake from %s refused (%s): %s", req.address, req.mechanism.decode(), text
            )
        reply = [req.version, req.request_id, status, text.encode(), user_id.encode(), b""]
        await self.zap.send_multipart([*req.envelope, *reply])
        return True

    async def _settle(self) -> None:
        """Take the monitors' news, then answer what was held if it no longer must wait."""
        self.drain()
        if self.held and not self._cut_still_pending():
            held, self.held = self.held, []
            for req in held:
                if not await self._answer(req):
                    self.held.append(req)

    async def watch(self) -> None:
        """Take monitor events as they come (so that their queue never fills), and let the
        held in when the connections they waited for are gone.

        Woken by the monitors themselves, not by a timer (ADR 28); only while requests are
        held also every `DRAIN_PERIOD_S`, for a cut connection given up after
        `CUT_PENDING_S`.
        """
        poller = zmq.asyncio.Poller()
        for w in self.watched:
            poller.register(w.monitor, zmq.POLLIN)
        while True:
            self._held_more.clear()
            await self._settle()
            timeout = DRAIN_PERIOD_S * 1000 if self.held else -1
            waits: set[asyncio.Future[Any]] = {
                asyncio.ensure_future(poller.poll(timeout)),
                asyncio.ensure_future(self._held_more.wait()),
            }
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for f in waits:
                    f.cancel()

    async def serve(self) -> None:
        """Answer ZAP requests until cancelled."""
        while True:
            frames = await self.zap.recv_multipart()
            try:
                split = frames.index(b"") + 1
            except ValueError:
                logger.error("malformed ZAP request (no delimiter)")
                continue
            envelope, body = frames[:split], frames[split:]
            if len(body) < 6:
                logger.error("malformed ZAP request (%d frames)", len(body))
                continue
            version, request_id, domain, address, _identity, mechanism, *creds = body
            req = _ZapRequest(
                envelope, version, request_id, domain, address.decode(), mechanism, tuple(creds)
            )
            await self._settle()
            if not await self._answer(req):
                self.held.append(req)
                self._held_more.set()  # `watch` looks at the held again every DRAIN_PERIOD_S

    async def run(self) -> None:
        tasks = [asyncio.create_task(self.watch()), asyncio.create_task(self.serve())]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*tasks, return_exceptions=True)
