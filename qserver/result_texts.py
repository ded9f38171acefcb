"""Failure reports cut to a size every stored record can hold; the whole text kept apart.

A plan's `msg` and `traceback` can be any size (an exception message of megabytes), but a
result, the queue's `ItemFinished` event and the history record each travel as one
JetStream message (at most the server's `max_payload`, 1 MiB by default). So texts are cut
where a result is made: the head and the tail of each are kept with a marker between
them, and the whole texts go to the object store under the record uid, where
`history_result_get` reads them (ADR 8).
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError
from nats.js.object_store import ObjectStore

from qserver.jsutil import default_replicas
from qserver.protocol.items import HistoryResult, ResultTexts
from qserver.protocol.subjects import Subjects

logger = logging.getLogger(__name__)

# Characters kept at the head and at the tail of each text: the outer frames and the
# innermost ones with the exception, about 12 KB per result at most.
MSG_KEPT = (2048, 2048)
TRACEBACK_KEPT = (2048, 6144)
MARKER_ROOM = 256
KEEP_TIMEOUT_S = 30.0
# What JetStream answers when a message exceeds a stream's `max_msg_size`.
MESSAGE_TOO_LARGE = 10054

_texts_decoder = msgspec.json.Decoder(ResultTexts)


def cut(text: str, kept: tuple[int, int], whole_at: str) -> str:
    """`text` with its middle replaced by a marker saying where the whole text is, if it is
    longer than `kept` (head, tail) allows."""
    head, tail = kept
    # A text cut once is not cut again (the marker makes it a little longer than kept).
    if len(text) <= head + tail + MARKER_ROOM:
        return text
    omitted = len(text) - head - tail
    marker = f"\n\n... {omitted:,} characters cut here; the whole text: {whole_at} ...\n\n"
    return text[:head] + marker + text[len(text) - tail :]


def bound(result: HistoryResult, item_uid: str) -> tuple[HistoryResult, ResultTexts | None]:
    """The result with `msg` and `traceback` cut to their bounds, and the whole texts if cut."""
    whole_at = f"`qserver history result {item_uid}` (method 'history_result_get')"
    msg = cut(result.msg, MSG_KEPT, whole_at)
    tb = cut(result.traceback, TRACEBACK_KEPT, whole_at)
    if msg is result.msg and tb is result.traceback:
        return result, None
    truncated = {
        name: len(whole)
        for name, whole, kept in (("msg", result.msg, msg), ("traceback", result.traceback, tb))
        if kept is not whole
    }
    cut_result = msgspec.structs.replace(result, msg=msg, traceback=tb, truncated=truncated)
    return cut_result, ResultTexts(msg=result.msg, traceback=result.traceback)


def bare(result: HistoryResult, why: str) -> HistoryResult:
    """The last resort when even a cut result cannot be stored: the outcome, and why."""
    return HistoryResult(
        exit_status=result.exit_status,
        time_start=result.time_start,
        time_stop=result.time_stop,
        msg=why,
    )


def size_refused(e: BaseException) -> bool:
    """Whether a publish failed because the message is too large (never worth a retry)."""
    if isinstance(e, nats.errors.MaxPayloadError):
        return True
    return isinstance(e, APIError) and getattr(e, "err_code", None) == MESSAGE_TOO_LARGE


async def _bucket(js: JetStreamContext, subjects: Subjects) -> ObjectStore:
    try:
        return await js.object_store(subjects.result_texts_bucket)
    except NotFoundError:
        return await js.create_object_store(
            subjects.result_texts_bucket, replicas=default_replicas()
        )


async def keep(
    js: JetStreamContext, subjects: Subjects, record_uid: str, texts: ResultTexts
) -> bool:
    """Store the whole texts of a cut result; False (and a warning) if that failed."""
    try:
        store = await _bucket(js, subjects)
        await asyncio.wait_for(store.put(record_uid, msgspec.json.encode(texts)), KEEP_TIMEOUT_S)
        return True
    except Exception as e:  # the cut result is stored all the same: a report, not a halt
        logger.warning("the whole text of result %s was not kept: %r", record_uid, e)
        return False


async def storable(
    js: JetStreamContext, subjects: Subjects, record_uid: str, item_uid: str, result: HistoryResult
) -> HistoryResult:
    """The result cut to its bounds, its whole texts kept if it was cut."""
    cut_result, texts = bound(result, item_uid)
    if texts is not None:
        await keep(js, subjects, record_uid, texts)
    return cut_result


async def load(js: JetStreamContext, subjects: Subjects, record_uid: str) -> ResultTexts | None:
    """The whole texts kept for `record_uid`, or None if there are none."""
    try:
        store = await js.object_store(subjects.result_texts_bucket)
        got = await store.get(record_uid)
    except NotFoundError:
        return None
    return _texts_decoder.decode(got.data or b"{}")


async def drop(js: JetStreamContext, subjects: Subjects, record_uids: list[str]) -> None:
    """Delete the kept texts of these records (after they left the history)."""
    if not record_uids:
        return
    try:
        store = await js.object_store(subjects.result_texts_bucket)
    except NotFoundError:
        return
    for uid in record_uids:
        try:
            await store.delete(uid)
        except NotFoundError:
            pass
        except Exception as e:
            logger.warning("the whole text of result %s was not deleted: %r", uid, e)
