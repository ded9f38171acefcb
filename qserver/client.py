"""Async Python client over NATS, plus a thin synchronous wrapper for scripts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from qserver.connect import NatsAuth, servers
from qserver.errors import BadRequest
from qserver.localstack import is_stack_nats, running_stack, stack_credentials
from qserver.protocol.api import service_of, unknown_method_reply
from qserver.protocol.console import UID_HEADER as CONSOLE_UID
from qserver.protocol.dry_run import REPLY_TIMEOUT_S as DRY_RUN_TIMEOUT_S
from qserver.protocol.reply_parts import PART_HEADER, PARTS_HEADER, SIZE_HEADER, TOKEN_HEADER
from qserver.protocol.subjects import (
    DEFAULT_PREFIX,
    IDENTITY_METHODS,
    NO_GROUP,
    TRUSTED_ROLES,
    Subjects,
    identity_token,
)
from qserver.status_mirror import StatusMirror

logger = logging.getLogger(__name__)

DEFAULT_NATS_URL = "nats://localhost:4222"
DEFAULT_TIMEOUT = 10.0
DEFAULT_USER_GROUP = "primary"
AUTO = "\0auto"  # `Client.connect(act_as=AUTO)`: act as the connection's own NATS user
# Methods that take longer than most by design: the client waits at least this long for them.
SLOW_METHODS = {"item_dry_run": DRY_RUN_TIMEOUT_S}


def acting_user(inbox: str) -> str | None:
    """The user a client with this inbox prefix acts as: `_INBOX.<user>`, unless trusted."""
    head, _, user = inbox.partition(".")
    if head != "_INBOX" or not user or "." in user:
        return None
    if user.split("-")[0] in TRUSTED_ROLES:
        return None
    return user


# NATS says at once when nothing is subscribed to a method (the request was delivered to
# no one, so sending it again is safe): the request is sent again for this long, which
# rides through a leader failover (~0.6 s) and a quick restart (ADR 13).
UNAVAILABLE_WAIT = 1.5
# A plain `status` asked of nats-server first (ADR 35): how long to wait for it (then the
# queue service is asked), and how long to ask the service only after nats-server had no
# copy to give (no stream, its node away).
DIRECT_TIMEOUT_S = 1.0
DIRECT_RETRY_S = 5.0
# Part requests of one large reply in flight at once: enough to hide the round trips,
# few enough that the client never holds more than a few messages it has not read.
PARTS_IN_FLIGHT = 4

_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


class ClientError(Exception):
    """Base of the client's own errors (the server's refusals come back as replies)."""


class NoAnswer(ClientError):
    """The request got no reply: the server or the service for the method is not there."""


class EmptyReply(NoAnswer):
    """The service answered with no body: it failed before it could reply."""


class IncompleteReply(NoAnswer):
    """A large reply could not be fetched whole (a part was refused, lost or malformed)."""


class AccessDenied(ClientError):
    """NATS refused the credentials, or this user's permissions do not allow the request."""


# What nats-py hands to the error callback (lower-cased) when the server refuses a subject.
_DENIED_RE = re.compile(r'permissions violation for (publish|subscription) to "([^"]+)"')


class Denials:
    """Permission errors from the server, matched to the requests that wait on them.

    NATS answers a forbidden publish with an asynchronous `-ERR`, not with a reply: without
    this, the request would only time out.
    """

    def __init__(self, inbox_prefix: str = "_INBOX") -> None:
        self._waiting: dict[str, set[asyncio.Future[str]]] = {}
        self._own_inboxes = inbox_prefix.lower() + "."

    async def on_error(self, e: Exception) -> None:
        m = _DENIED_RE.search(str(e))
        if m is None:
            return
        kind, subject = m.groups()
        if kind == "subscription" and subject.startswith(self._own_inboxes):
            # No replies can reach this user at all: every waiting request is lost.
            waiters = [f for fs in self._waiting.values() for f in fs]
            reason = f"this NATS user may not subscribe to {subject!r}, so it gets no replies"
        else:
            waiters = list(self._waiting.get(subject.lower(), ()))
            reason = f"this NATS user may not {kind_verb(kind)} {subject!r}"
        for fut in waiters:
            if not fut.done():
                fut.set_result(reason)

    @contextlib.contextmanager
    def watch(self, subject: str) -> Iterator[asyncio.Future[str]]:
        """A future that gets the reason if the server refuses `subject` meanwhile."""
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        waiters = self._waiting.setdefault(subject.lower(), set())
        waiters.add(fut)
        try:
            yield fut
        finally:
            waiters.discard(fut)
            if not waiters:
                self._waiting.pop(subject.lower(), None)
            fut.cancel()


async def fetch_parts(
    method: str, announced: dict[str, str], ask: Callable[[dict[str, str]], Awaitable[Any]]
) -> bytes:
    """The whole of an announced large reply, its parts asked for with `ask(headers)`."""
    try:
        token, size, parts = (
            announced[TOKEN_HEADER],
            int(announced[SIZE_HEADER]),
            int(announced[PARTS_HEADER]),
        )
    except (KeyError, ValueError):
        raise IncompleteReply(f"The reply to '{method}' announced its parts wrongly") from None

    async def one(index: int) -> bytes:
        msg = await ask({TOKEN_HEADER: token, PART_HEADER: str(index)})
        if (msg.headers or {}).get(PART_HEADER) != str(index):
            try:
                why = str(_decoder.decode(msg.data).get("msg", ""))
            except (msgspec.DecodeError, AttributeError):
                why = f"unexpected reply {msg.data[:100]!r}"
            raise IncompleteReply(f"Part {index} of the reply to '{method}' failed: {why}")
        return msg.data  # type: ignore[no-any-return]

    got: list[bytes] = []
    for start in range(0, parts, PARTS_IN_FLIGHT):
        batch = range(start, min(start + PARTS_IN_FLIGHT, parts))
        results = await asyncio.gather(*(one(i) for i in batch), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
            got.append(r)
    data = b"".join(got)
    if len(data) != size:
        raise IncompleteReply(
            f"The reply to '{method}' came to {len(data):,} bytes instead of {size:,}"
        )
    return data


def kind_verb(kind: str) -> str:
    return "publish to" if kind == "publish" else "subscribe to"


def default_url() -> str:
    """$QSERVER_NATS_URL, else the NATS of the stack running on this machine, else localhost."""
    return os.environ.get("QSERVER_NATS_URL") or _stack_setting("nats_url", DEFAULT_NATS_URL)


def default_prefix(url: str | None = None) -> str:
    """$QSERVER_PREFIX, else the prefix of the stack running on this machine (if `url`, when
    given, is its NATS), else qs.default."""
    if given := os.environ.get("QSERVER_PREFIX"):
        return given
    stack = running_stack(url=url)
    if stack is None or (url is not None and not is_stack_nats(url, stack)):
        return DEFAULT_PREFIX
    return _setting(stack, "prefix", DEFAULT_PREFIX)


def _stack_setting(key: str, default: str) -> str:
    return _setting(running_stack() or {}, key, default)


def _setting(stack: dict[str, Any], key: str, default: str) -> str:
    value = stack.get(key)
    return value if isinstance(value, str) and value else default


async def _unless_denied(
    messages: AsyncIterator[Any], denied: asyncio.Future[str]
) -> AsyncIterator[Any]:
    """The messages of a subscription; AccessDenied as soon as NATS refuses it."""
    it = messages.__aiter__()
    nxt: asyncio.Future[Any] | None = None
    try:
        while True:
            nxt = asyncio.ensure_future(anext(it))
            either: set[asyncio.Future[Any]] = {nxt, denied}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if not nxt.done():
                raise AccessDenied(
                    f"Permission denied: {denied.result()} (ask for credentials of a "
                    "role that may read it)"
                )
            yield nxt.result()
    finally:
        if nxt is not None and not nxt.done():
            nxt.cancel()


class Client:
    """Talks to a queue server over NATS: `await Client.connect(url)`, then `request(...)`."""

    def __init__(
        self,
        nc: NATS,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = DEFAULT_TIMEOUT,
        denials: Denials | None = None,
        unavailable_wait: float = UNAVAILABLE_WAIT,
        auth: NatsAuth | None = None,
        act_as: str | None = None,
        direct_status: bool = True,
    ) -> None:
        self.nc = nc
        self.auth = auth or NatsAuth()  # how it connected (for messages)
        # The NATS user this client acts as: identity methods go to `as.<user>.<group>.api.`
        # (ADR 24). None: the body's identity, on `api.` (the gateway, services, open servers).
        self.act_as = act_as
        self.subjects = Subjects(prefix)
        self.timeout = timeout
        self.unavailable_wait = unavailable_wait
        # Set when this client's connection reports permission errors to it (`connect`).
        self.denials = denials
        # The numbers of the statuses this client was told about, on every reply; when it
        # follows the status events (`follow_status`, ADR 29) also the last event, and then
        # `mirror` is this object.
        self._seen = StatusMirror()
        self.mirror: StatusMirror | None = None
        self._mirror_sub: Any = None
        # A plain `status` is first asked of nats-server, which keeps the last status event
        # (ADR 35), unless NATS refused this user that (it is then never tried again) or
        # it had none a moment ago. Only with `denials`: else a refusal would cost a timeout.
        # Off: every `status` is asked of the queue service (a check that it answers).
        self.direct_status = direct_status and denials is not None
        self._direct_retry_at = 0.0
        self.direct_hits = 0  # `status` requests nats-server answered (tests, benchmarks)

    @classmethod
    async def connect(
        cls,
        url: str | None = None,
        prefix: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = 2.0,
        auth: NatsAuth | None = None,
        act_as: str | None = AUTO,
        direct_status: bool = True,
    ) -> Client:
        """Connect with the credentials of `auth` (default: the QSERVER_NATS_* variables);
        without any, to a local stack's NATS with the stack's client key (`qserver.localstack`).

        `direct_status=False`: `status` is always asked of the queue service, never answered
        by nats-server from the last status event (ADR 35); for checks that the service is up.

        A client with a NATS user of its own acts as that user (`act_as`, by default the user
        its inbox is named after), unless the user is a service's or the gateway's.
        """
        url = url or default_url()
        auth = stack_credentials(url, auth or NatsAuth.from_env())
        # Permission errors go to the requests that wait on them; others are reported once,
        # below, not as tracebacks.
        denials = Denials(auth.inbox)
        options: dict[str, Any] = {
            "connect_timeout": connect_timeout,
            "max_reconnect_attempts": 1,
            "reconnect_time_wait": 0.05,
            "allow_reconnect": False,
            "error_cb": denials.on_error,
            "name": "qserver-client",
            **auth.connect_options(),
        }
        nc = NATS()
        try:
            # nats-py retries the first connection on its own; bound the whole attempt.
            await asyncio.wait_for(nc.connect(servers(url), **options), connect_timeout + 0.5)
        except Exception as e:  # includes the TimeoutError of wait_for
            with contextlib.suppress(Exception):
                # A refused connection would leave its socket open; after a failed TLS
                # handshake nats-py's close never returns, hence the bound.
                await asyncio.wait_for(nc.close(), 0.5)
            if isinstance(e, ssl.SSLError):
                raise NoAnswer(
                    f"Cannot connect to NATS at {url}: TLS failed ({e}); check "
                    "QSERVER_NATS_TLS_CA (and QSERVER_NATS_TLS_CERT/KEY if the server "
                    "verifies clients)"
                ) from None
            if "authorization violation" in str(e).lower():
                raise AccessDenied(
                    f"NATS at {url} refused the connection with {auth.method}: authorization "
                    "violation (check QSERVER_NATS_USER and QSERVER_NATS_PASSWORD, or the "
                    "token, nkey or credentials file)"
                ) from None
            raise NoAnswer(f"Cannot connect to NATS at {url}: {e or type(e).__name__}") from e
        if act_as == AUTO:
            act_as = acting_user(auth.inbox)
        return cls(
            nc,
            prefix or default_prefix(url),
            timeout,
            denials,
            auth=auth,
            act_as=act_as,
            direct_status=direct_status,
        )

    def subject_of(self, method: str, body: bytes) -> str:
        """Where a request goes: `api.<method>`, or the identity subject when acting as a user."""
        if self.act_as is None or method not in IDENTITY_METHODS:
            return self.subjects.api(method)
        group = NO_GROUP
        if IDENTITY_METHODS[method][1]:
            group = DEFAULT_USER_GROUP
            with contextlib.suppress(msgspec.DecodeError, AttributeError):
                group = msgspec.json.decode(body or b"{}").get("user_group") or group
            if not isinstance(group, str):
                raise BadRequest(f"Invalid request to '{method}': user_group must be a string")
            try:
                identity_token(group, "user group")
            except ValueError as e:
                raise BadRequest(str(e)) from None
        return self.subjects.api_as(self.act_as, group, method)

    async def close(self) -> None:
        await self.nc.close()

    async def follow_status(
        self, on_event: Callable[[bytes], Awaitable[None]] | None = None
    ) -> StatusMirror:
        """Keep the last status event, and answer `status` and `ping` from it while it is
        fresh and shows every change this client was told about (ADR 29).

        `on_event` is also given each status event (its raw JSON), after the copy took it:
        a process that relays the events needs no second subscription. It is kept from the
        first call on; an exception in it is logged and does not end the subscription.
        """
        if self.mirror is None:
            mirror = self._seen
            mirror.forget()  # a status kept while not following may have missed changes

            async def on_status(msg: Any) -> None:
                mirror.on_event(msg.data, msg.headers)
                if on_event is not None:
                    try:
                        await on_event(msg.data)
                    except Exception:  # one bad relay must not end the subscription
                        logger.exception("relaying a status event failed")

            self._mirror_sub = await self.nc.subscribe(self.subjects.status_event, cb=on_status)
            await self.nc.flush()  # subscribed at the server before the next request
            self.mirror = mirror
        return self.mirror

    async def unfollow_status(self) -> None:
        """Ask the queue service for every `status` again."""
        sub, self._mirror_sub, self.mirror = self._mirror_sub, None, None
        if sub is not None:
            await sub.unsubscribe()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def request_raw(self, method: str, body: bytes, timeout: float | None = None) -> bytes:
        """Send one request with a JSON body; return the raw JSON reply, however large.

        A method no service subscribes to is answered here: `Unknown method` if the protocol
        does not know it, NoAnswer ("the queue service is not running") if it does. A reply
        larger than one NATS message arrives announced and is fetched in parts (ADR 8); a
        part that cannot be had is IncompleteReply or NoAnswer, an empty reply EmptyReply.
        """
        mirror = self.mirror
        timeout = timeout or max(self.timeout, SLOW_METHODS.get(method, 0.0))
        if method in ("status", "ping") and body in (b"", b"{}"):
            if mirror is not None:
                pushed = mirror.current() if self.nc.is_connected else None
                if pushed is not None:
                    return pushed
            elif method == "status" and self.direct_status:
                stored = await self._stored_status(timeout)
                if stored is not None:
                    return stored
        subject = self.subject_of(method, body)
        loop = asyncio.get_running_loop()
        started, pause = loop.time(), 0.05
        while True:
            waited = loop.time() - started
            try:
                msg = await self._request_watched(subject, body, max(timeout - waited, 0.01))
                break
            except NoRespondersError:
                service = service_of(method)
                if service is None:
                    return unknown_method_reply(method)
                if waited + pause > min(self.unavailable_wait, timeout):
                    raise NoAnswer(
                        f"The {service} service is not running: no service answers "
                        f"'{method}' with prefix '{self.subjects.prefix}'"
                    ) from None
                await asyncio.sleep(pause)
                pause = min(2 * pause, 0.25)
            except NatsTimeout:
                service = service_of(method)
                why = f": the {service} service got it but did not answer (hung, overloaded?)"
                raise NoAnswer(
                    f"No answer to '{method}' within {timeout:g} s{why if service else ''}"
                ) from None
        headers = msg.headers or {}
        self._seen.on_reply(method, msg.data, headers)
        if TOKEN_HEADER in headers:
            return await fetch_parts(
                method, headers, lambda h: self._ask_part(method, subject, timeout, h)
            )
        if not msg.data:
            # nats.micro answers a handler that raised with headers and no body.
            why = headers.get("Nats-Service-Error") or "no reason given"
            raise EmptyReply(f"The service answered '{method}' with an empty reply ({why})")
        return msg.data  # type: ignore[no-any-return]

    async def _stored_status(self, timeout: float) -> bytes | None:
        """The last status event as nats-server keeps it (ADR 35), if it may answer `status`:
        there is one, stored less than its period + a margin ago, and it shows every change
        this client was told about. None: ask the queue service.
        """
        loop = asyncio.get_running_loop()
        if loop.time() < self._direct_retry_at or not self.nc.is_connected:
            return None
        subject = self.subjects.status_direct_get
        try:
            msg = await self._request_watched(subject, b"", min(timeout, DIRECT_TIMEOUT_S))
        except AccessDenied:
            self.direct_status = False  # this user may not: ask the service from now on
            return None
        except (NoRespondersError, NatsTimeout):
            # No stream (a queue service before ADR 35, a restarted nats-server before the
            # leader made it again) or its node is away: ask the service for a while.
            self._direct_retry_at = loop.time() + DIRECT_RETRY_S
            return None
        # No message (404: a clean stop, or none yet) or one this client may not trust:
        # older than its period + the margin (the leader is gone or hung), or not current.
        if not msg.data or not self._seen.on_stored(msg.headers):
            return None
        self.direct_hits += 1
        return msg.data  # type: ignore[no-any-return]

    async def _ask_part(
        self, method: str, subject: str, timeout: float, headers: dict[str, str]
    ) -> Any:
        """One part request of a large reply (ADR 8); NoAnswer if its holder is gone."""
        try:
            return await self._request_watched(subject, b"", timeout, headers)
        except (NoRespondersError, NatsTimeout):
            raise NoAnswer(
                f"No part {headers.get(PART_HEADER)} of the reply to '{method}' within "
                f"{timeout:g} s (the service that holds it stopped?)"
            ) from None

    async def _request_watched(
        self, subject: str, body: bytes, timeout: float, headers: dict[str, str] | None = None
    ) -> Any:
        """`nc.request`, ended at once with AccessDenied if the server refuses the subject.

        The request runs in the caller's task, which a refusal cancels: no task of its own
        and no `asyncio.wait` per request (ADR 29: they were a tenth of a status round trip).
        """
        if self.denials is None:
            return await self.nc.request(subject, body, timeout=timeout, headers=headers)
        task = asyncio.current_task()
        assert task is not None
        waiting = True

        def refused(f: asyncio.Future[str]) -> None:
            if waiting and not f.cancelled():
                task.cancel()

        with self.denials.watch(subject) as denied:
            denied.add_done_callback(refused)
            try:
                return await self.nc.request(subject, body, timeout=timeout, headers=headers)
            except asyncio.CancelledError:
                if not denied.done() or denied.cancelled() or task.uncancel() > 0:
                    raise  # cancelled by someone else
                raise AccessDenied(
                    f"Permission denied: {denied.result()} (the request '{subject}' was "
                    "refused by NATS; ask for credentials of a role that may send it)"
                ) from None
            finally:
                waiting = False

    async def request(
        self, method: str, params: dict[str, Any] | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        """Send `params` to `<prefix>.api.<method>` and return the decoded reply."""
        data = await self.request_raw(method, _encoder.encode(params or {}), timeout)
        return _decoder.decode(data)  # type: ignore[no-any-return]

    async def events(self, subject: str) -> AsyncIterator[dict[str, Any]]:
        """Yield each JSON message published on `subject`, decoded, until the caller stops.

        AccessDenied if NATS refuses this user the subscription (instead of silence).
        """
        async for msg in self.messages(subject):
            yield _decoder.decode(msg.data)

    async def messages(self, subject: str) -> AsyncIterator[Any]:
        """Yield each message (`nats.aio.msg.Msg`) published on `subject`, as `events`."""
        async with self.subscription(subject) as messages:
            async for msg in messages:
                yield msg

    @contextlib.asynccontextmanager
    async def subscription(self, subject: str) -> AsyncIterator[AsyncIterator[Any]]:
        """Subscribed on entry (what is published from then on is kept); yields its messages."""
        if self.denials is None:
            sub = await self.nc.subscribe(subject)
            try:
                yield sub.messages
            finally:
                await sub.unsubscribe()
            return
        with self.denials.watch(subject) as denied:
            sub = await self.nc.subscribe(subject)
            try:
                yield _unless_denied(sub.messages, denied)
            finally:
                await sub.unsubscribe()

    def status_events(self) -> AsyncIterator[dict[str, Any]]:
        """Each status event as it is published (on change and once a second)."""
        return self.events(self.subjects.status_event)

    def proposal_events(self) -> AsyncIterator[dict[str, Any]]:
        """Each change of a proposal (`ProposalEvent`, ADR 30): a proposer learns its fate."""
        return self.events(self.subjects.proposals_event)

    def console_events(self) -> AsyncIterator[dict[str, Any]]:
        """Each console message (`{time, msg}`) as it is published, live."""
        return self.events(self.subjects.console_event)

    def progress_feed(self) -> AsyncIterator[dict[str, Any]]:
        """The open run's last progress event first (if a run is open), then each new one
        (`<prefix>.events.progress`, ADR 25)."""
        from qserver.feeds import progress_feed

        return progress_feed(self)

    def documents_feed(self, current: bool = True) -> AsyncIterator[dict[str, Any]]:
        """`{"name", "doc"}` of each run document; with `current`, the open run's documents
        from its start first (from the document stream), then every new one (ADR 25)."""
        from qserver.feeds import documents_feed

        return documents_feed(self, current)

    async def console_feed(self, backlog: int = 0) -> AsyncIterator[dict[str, Any]]:
        """The last `backlog` console messages kept, then each new one: none twice, none missed.

        The backlog comes from the history service (`console_output_update`, ADR 18); the
        live messages from a subscription made before it is asked, each matched by its uid
        (`Qs-Console-Uid`) against the backlog. Without a history service: live only.
        """
        async with self.subscription(self.subjects.console_event) as live:
            seen: set[Any] = set()
            if backlog > 0:
                params = {"last_msg_uid": "ALL", "with_uids": True}
                try:
                    reply = await self.request("console_output_update", params)
                except (NoAnswer, AccessDenied):
                    reply = {}
                kept = reply.get("console_output_msgs") or []
                seen = {m.get("uid") for m in kept}
                for m in kept[-backlog:]:
                    yield {"time": m.get("time"), "msg": m.get("msg", "")}
            async for msg in live:
                uid = (msg.headers or {}).get(CONSOLE_UID)
                if uid in seen:
                    seen.discard(uid)  # printed before it started, and already in the backlog
                    continue
                yield _decoder.decode(msg.data)

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
