"""What every service's NATS boundary shares: decoding requests, mapping errors to replies."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import io
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.micro.request import Request as MicroRequest
from nats.micro.service import Service

from qserver import config, connect
from qserver.errors import BadRequest, QServerError, decoded
from qserver.jsonlog import LOG_FORMATS, make_formatter, quiet_nats_errors
from qserver.protocol.api import MAX_REQUEST_BYTES, REQUEST_TYPES, Reply, Request
from qserver.protocol.reply_parts import (
    PART_HEADER,
    PARTS_HEADER,
    SIZE_HEADER,
    TOKEN_HEADER,
    announcement,
    part_size,
)
from qserver.protocol.subjects import DEFAULT_PREFIX, IDENTITY_METHODS
from services.runtime.held_replies import HeldReplies
from services.runtime.identity import identity_subject, vouched_params
from services.runtime.reference_checks import precheck
from services.runtime.refusals import failure_reply, refusal_text

logger = logging.getLogger(__name__)

Handler = Callable[[Any], Awaitable[msgspec.Struct | None]]

_encoder = msgspec.json.Encoder()
_decoders = {method: msgspec.json.Decoder(rtype) for method, rtype in REQUEST_TYPES.items()}
_supported = {
    method: [f.encode_name for f in msgspec.structs.fields(rtype)]
    for method, rtype in REQUEST_TYPES.items()
}


def encode(obj: Any) -> bytes:
    return _encoder.encode(obj)


def failure(msg: str) -> bytes:
    return _encoder.encode(Reply(success=False, msg=msg))


def decode_request(method: str, data: bytes) -> Request:
    """Decode a request body into the method's type; any problem is a BadRequest naming it."""
    if len(data) > MAX_REQUEST_BYTES:
        raise BadRequest(
            f"Request is too large: {len(data)} bytes (the limit is {MAX_REQUEST_BYTES} bytes)"
        )
    body = data.strip() or b"{}"
    # The reference's checks first, so that what they refuse reads as it does there.
    precheck(method, body, _supported[method])
    return decoded(_decoders[method].decode, body, method)  # type: ignore[no-any-return]


async def serve_method(
    method: str,
    handler: Handler,
    msg: MicroRequest,
    replies: HeldReplies,
    max_payload: int,
    prepare: Callable[[str, bytes], bytes] | None = None,
    extra_headers: Callable[[], dict[str, str]] | None = None,
) -> None:
    """Decode, call the handler, reply: the one place where errors become replies.

    A reply larger than one NATS message (`max_payload`) is held and announced, and its
    parts are answered from `replies` (ADR 8); a smaller one goes out exactly as before.
    `extra_headers()`, if given, is called when the reply goes out and its headers go with
    it (the queue service's status number, ADR 29).
    """
    headers = msg.headers
    if headers and TOKEN_HEADER in headers:
        await _serve_part(method, msg, headers, replies)
        return
    reply_headers = None
    try:
        # `prepare`: the identity a request's subject carries replaces the body's (ADR 24).
        data = msg.data if prepare is None else prepare(msg.subject, msg.data)
        req = decode_request(method, data)
        reply = await handler(req)
        if reply is None:
            return
        out = encode(reply)
        if len(out) > max_payload:
            out, reply_headers = _announce(method, out, replies, max_payload)
    except QServerError as e:
        out = failure_reply(method, refusal_text(method, e), msg.data)
    except Exception as e:
        logger.exception("request '%s' failed", method)
        out = failure(f"Internal error while handling '{method}': {e!r}")
    if extra_headers is not None:
        reply_headers = {**extra_headers(), **(reply_headers or {})}
    # A publish without a reply subject expects no answer.
    with contextlib.suppress(ValueError):
        await msg.respond(out, headers=reply_headers)


def _announce(
    method: str, out: bytes, replies: HeldReplies, max_payload: int
) -> tuple[bytes, dict[str, str]]:
    """Hold a large reply; return the announcement and its headers."""
    token, parts = replies.hold(method, out, part_size(max_payload))
    # Dropped when fetched; this drops it too if the client went away meanwhile.
    asyncio.get_running_loop().call_later(replies.hold_s + 1.0, replies.expire)
    logger.info("reply to '%s' is %d bytes: held in %d parts", method, len(out), parts)
    headers = {TOKEN_HEADER: token, SIZE_HEADER: str(len(out)), PARTS_HEADER: str(parts)}
    return failure(announcement(method, len(out), parts, max_payload)), headers


async def _serve_part(
    method: str, msg: MicroRequest, headers: dict[str, str], replies: HeldReplies
) -> None:
    token = headers[TOKEN_HEADER]
    if not replies.owns(token):
        return  # held by another process answering this subject
    try:
        index = int(headers.get(PART_HEADER, ""))
        data = replies.part(method, token, index)
    except ValueError:
        out, part_headers = failure(f"'{PART_HEADER}' must be a part number"), None
    except QServerError as e:
        out, part_headers = failure(e.msg), None
    else:
        out, part_headers = data, {PART_HEADER: str(index)}
    with contextlib.suppress(ValueError):
        await msg.respond(out, headers=part_headers)


async def add_methods(
    service: Service,
    api_subject: Callable[[str], str],
    handlers: dict[str, Handler],
    queue_group: str | None = None,
    *,
    nc: NATS,
    extra_headers: Callable[[], dict[str, str]] | None = None,
    concurrent: frozenset[str] = frozenset(),
) -> Spawned:
    """One nats.micro endpoint per method, each dispatching to its handler.

    Instances in one queue group share the requests; in different groups each gets all.
    `nc` is the service's connection: its `max_payload` (from the server) decides which
    replies are sent in parts. `extra_headers`: see `serve_method`.

    A subscription hands its requests over one at a time; the requests of a method in
    `concurrent` are each served in a task of their own instead (at most MAX_CONCURRENT at
    once), so that the next one starts while one waits (the queue's group commit, ADR 29).
    The result's `wait()` waits for those still being served (at a stop, after the
    endpoints stopped).
    """
    replies = HeldReplies()
    spawn = Spawned()
    for method, handler in handlers.items():

        async def cb(msg: MicroRequest, method: str = method, handler: Handler = handler) -> None:
            await serve_method(
                method, handler, msg, replies, nc.max_payload, extra_headers=extra_headers
            )

        wrap = spawn.wrap if method in concurrent else _as_is
        await service.add_endpoint(
            name=method, subject=api_subject(method), handler=wrap(cb), queue_group=queue_group
        )
        if method not in IDENTITY_METHODS:
            continue

        async def cb_as(
            msg: MicroRequest, method: str = method, handler: Handler = handler
        ) -> None:
            prepare = functools.partial(vouched_params, method)
            await serve_method(
                method, handler, msg, replies, nc.max_payload, prepare, extra_headers
            )

        await service.add_endpoint(
            name=f"{method}-as",
            subject=identity_subject(api_subject(method)),
            handler=wrap(cb_as),
            queue_group=queue_group,
        )
    return spawn


MAX_CONCURRENT = 256
Served = Callable[[MicroRequest], Coroutine[Any, Any, None]]


def _as_is(cb: Served) -> Served:
    return cb


class Spawned:
    """Runs each call of a wrapped callback in its own task, a bounded number at once."""

    def __init__(self, limit: int = MAX_CONCURRENT) -> None:
        self._gate = asyncio.Semaphore(limit)
        self._tasks: set[asyncio.Task[None]] = set()

    def wrap(self, cb: Served) -> Served:
        async def spawned(msg: MicroRequest) -> None:
            await self._gate.acquire()  # full: the subscription waits (back-pressure)
            task = asyncio.get_running_loop().create_task(cb(msg))
            self._tasks.add(task)
            task.add_done_callback(self._done)

        return spawned

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._gate.release()

    async def wait(self) -> None:
        """Until every call started so far has ended."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


async def wait_for_signal(stop: asyncio.Event) -> None:
    """Return on SIGINT/SIGTERM, or when `stop` is set by the service itself."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, log_tasks)
    await stop.wait()


def log_tasks() -> None:
    """SIGUSR1: log where every asyncio task of the service waits (for a service that hangs)."""
    for task in asyncio.all_tasks():
        out = io.StringIO()
        task.print_stack(limit=12, file=out)
        logger.warning("task %s:\n%s", task.get_name(), out.getvalue())


def service_arguments(prog: str, description: str | None) -> argparse.ArgumentParser:
    """The options every service takes: NATS URL and credentials, subject prefix, logging.

    The configuration file (`--config`, `$QSERVER_CONFIG`) is loaded first, into the
    environment, so that the defaults below see it; flags still win.
    """
    config.bootstrap()
    p = argparse.ArgumentParser(prog=prog, description=description)
    config.add_argument(p)
    p.add_argument(
        "--nats-url",
        default=os.environ.get("QSERVER_NATS_URL", "nats://localhost:4222"),
        help="NATS server(s), comma-separated ($QSERVER_NATS_URL; nats://localhost:4222)",
    )
    connect.add_arguments(p)
    p.add_argument(
        "--prefix",
        default=os.environ.get("QSERVER_PREFIX", DEFAULT_PREFIX),
        help=f"subject prefix of this queue server ($QSERVER_PREFIX; {DEFAULT_PREFIX})",
    )
    p.add_argument(
        "--log-level",
        default=os.environ.get("QSERVER_LOG_LEVEL", "INFO"),
        help="DEBUG, INFO, WARNING or ERROR ($QSERVER_LOG_LEVEL; INFO)",
    )
    p.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=os.environ.get("QSERVER_LOG_FORMAT", "text"),
        help="text, or json: one object per line ($QSERVER_LOG_FORMAT; text)",
    )
    return p


def setup_logging(level: str, log_format: str | None = None) -> None:
    """Configure the root logger once; the format defaults to $QSERVER_LOG_FORMAT, else text."""
    handler = logging.StreamHandler()
    handler.setFormatter(make_formatter(log_format or os.environ.get("QSERVER_LOG_FORMAT", "text")))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    # No log format here shows where a record was logged from, or its thread or process:
    # not looking them up makes each record a good deal cheaper (the logging HOWTO's
    # "Optimization"; ADR 29: the reference's request lines are two records per add).
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    quiet_nats_errors()


def run_loop(coro: Any) -> int:
    """Run a service's main coroutine on uvloop when it is installed; exit 2 on bad settings."""
    run: Callable[[Any], Any]
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    try:
        return int(run(coro))
    except connect.NatsConfigError as e:
        logger.error("bad NATS settings: %s", e)
        return 2


async def shutdown(*steps: Awaitable[Any], timeout: float = 2.0) -> None:
    """Run the shutdown steps in order, each bounded; a lost NATS server must not hang exit."""
    for step in steps:
        try:
            await asyncio.wait_for(step, timeout)
        except Exception as e:  # the process is exiting: report, do not raise
            logger.warning("shutdown step did not complete: %r", e)
