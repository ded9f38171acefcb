"""Subscriptions that begin with what was published before them: progress and run documents.

`progress_feed`: the last progress event of a run still open, then each new one (ADR 25).
`documents_feed`: the open run's documents from its start (read back from the document
stream `QS_<PREFIX>_DOCS`), then every later document, live, in the stream's order, with
no gap and none twice between the two: one ordered consumer reads both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
from nats.js import api
from nats.js.errors import NotFoundError

from qserver.protocol.progress import progress_decoder

if TYPE_CHECKING:
    from qserver.client import Client

logger = logging.getLogger(__name__)
T = TypeVar("T")

# How long to wait for the stream's answer about what it kept (an old server, or no right
# to read it: then the feed goes live only).
LOOKUP_TIMEOUT_S = 5.0
_decoder = msgspec.json.Decoder()


def _cancelled_meanwhile() -> None:
    """Raise CancelledError if this task was cancelled while a request was answered.

    Python 3.11's `asyncio.wait_for` (nats-py's requests use it) returns the answer and
    drops a cancellation that comes as the answer does; the feed would then wait on its
    subscription for ever, and a closed WebSocket would keep it (found by
    `test_closed_streams_release_their_subscriptions`).
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class _Denied(Exception):
    """NATS refused this user the JetStream request."""


async def _unless_denied(client: Client, api_subject: str, call: Awaitable[T]) -> T:
    """`await call`, or _Denied as soon as NATS refuses `api_subject` to this user (a request
    it may not publish gets no reply, only an asynchronous permission error)."""
    task = asyncio.ensure_future(call)
    if client.denials is None:
        return await task
    try:
        with client.denials.watch(api_subject) as denied:
            either: set[asyncio.Future[Any]] = {task, denied}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            raise _Denied(api_subject)
        return task.result()
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def last_progress(client: Client) -> dict[str, Any] | None:
    """The last progress event kept (the open run's, or the last run's last), if any.

    A user without the right to read the stream (people and observers, ADR 25) gets the
    status's compact `progress` instead: the same numbers, without positions and names.
    """
    s = client.subjects
    js = client.nc.jetstream(timeout=LOOKUP_TIMEOUT_S)
    try:
        msg = await _unless_denied(
            client,
            f"$JS.API.STREAM.MSG.GET.{s.progress_stream}",
            js.get_last_msg(s.progress_stream, s.progress_event),
        )
    except NotFoundError:
        return None
    except Exception as e:  # the live events still come
        logger.debug("the last progress event could not be read: %r", e)
        return await _from_status(client)
    if not msg.data:
        return None
    try:
        return msgspec.to_builtins(progress_decoder.decode(msg.data))  # type: ignore[no-any-return]
    except msgspec.ValidationError:
        return None


async def _from_status(client: Client) -> dict[str, Any] | None:
    """The status's `progress` as a (partial) progress event: `time` 0, so that no live
    event of the same run is taken for one already given."""
    try:
        summary = (await client.request("status")).get("progress")
    except Exception:
        return None
    if not isinstance(summary, dict):
        return None
    return {"time": 0.0, "done": False, "exit_status": None, **summary}


async def open_run_progress(client: Client) -> dict[str, Any] | None:
    """`last_progress`, marked `done` when its run cannot be open any more: no item runs (the
    environment was killed before the run's stop document, so no `done` event came)."""
    last = await last_progress(client)
    if last is None or last.get("done") or not last.get("time"):
        return last  # (no time: it came from the status)
    try:
        status = await client.request("status")
    except Exception:
        return last  # no queue service to ask: the stream's word
    if status.get("running_item_uid") is None:
        return {**last, "done": True}
    return last


async def progress_feed(client: Client) -> AsyncIterator[dict[str, Any]]:
    """The open run's last progress event (if a run is open), then each new one, live."""
    async with client.subscription(client.subjects.progress_event) as live:
        first = await open_run_progress(client)
        _cancelled_meanwhile()
        if first is not None and not first.get("done"):
            yield first
        async for msg in live:
            ev = _decoder.decode(msg.data)
            if first is not None:
                same = ev.get("run_uid") == first.get("run_uid")
                if same and (ev.get("time") or 0) <= (first.get("time") or 0):
                    continue  # published before it was read back: already given
                first = None
            yield ev


async def _first_seq(client: Client) -> int | None:
    """Where the open run begins in the document stream: after the last finished run, or at
    the open one's first document; None when no run was ever followed (live from now)."""
    from qserver.documents import run_token

    s = client.subjects
    js = client.nc.jetstream(timeout=LOOKUP_TIMEOUT_S)
    last = await open_run_progress(client)
    if last is None:
        return None
    subject = s.run_docs(run_token(str(last.get("run_uid"))))
    get = f"$JS.API.STREAM.MSG.GET.{s.docs_stream}"
    try:
        if last.get("done"):
            # Everything after the last finished run's stop: a run that began since
            # (its first progress event is not out yet) comes whole.
            msg = await _unless_denied(client, get, js.get_last_msg(s.docs_stream, subject))
            return (msg.seq or 0) + 1
        first = js.get_msg(s.docs_stream, seq=1, next=True, subject=subject)
        return (await _unless_denied(client, get, first)).seq
    except NotFoundError:
        return None  # the run's documents are gone from the stream (its limits)


async def documents_feed(client: Client, current: bool = True) -> AsyncIterator[dict[str, Any]]:
    """`{"name", "doc"}` of each run document: with `current`, the open run's from its start
    first; then every new one. Without the document stream, live documents only."""
    from qserver.documents import Reassembler, decode

    s = client.subjects
    js = client.nc.jetstream(timeout=LOOKUP_TIMEOUT_S)
    try:
        start = await _first_seq(client) if current else None
    except _Denied:
        start = None
    _cancelled_meanwhile()
    config = api.ConsumerConfig(
        deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE if start else api.DeliverPolicy.NEW,
        opt_start_seq=start,
    )
    try:
        sub = await _unless_denied(
            client,
            f"$JS.API.CONSUMER.CREATE.{s.docs_stream}",
            js.subscribe(
                s.run_docs_wildcard, stream=s.docs_stream, ordered_consumer=True, config=config
            ),
        )
    except (NotFoundError, _Denied):
        # No document stream (QSERVER_DOCS_STREAM=0), or no right to read it: live only.
        _cancelled_meanwhile()
        async for ev in client.events(s.docs("*")):
            yield ev
        return
    parts = Reassembler()
    try:
        _cancelled_meanwhile()
        async for msg in sub.messages:
            whole = parts.add(msg.metadata.sequence.stream, msg.subject, msg.headers, msg.data)
            if whole is None:
                continue
            try:
                name, doc = decode(whole.value)
            except ValueError as e:
                logger.warning("a message of the document stream is no document: %s", e)
                continue
            yield {"name": name, "doc": doc}
    finally:
        await sub.unsubscribe()
