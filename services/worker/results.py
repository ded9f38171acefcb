"""Plan results into the results stream: written by the environment, or by the worker
service when the environment died mid-plan."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from qserver import result_texts
from qserver.jsutil import ensure_stream
from qserver.protocol.items import HistoryResult
from qserver.protocol.subjects import Subjects
from qserver.protocol.worker import EnvState, PlanResult
from services.runtime.service_base import encode

logger = logging.getLogger(__name__)

# The same stream config as the queue service creates (both may create it first).
DUPLICATE_WINDOW_S = 3600.0
_decoder = msgspec.json.Decoder(PlanResult)


async def ensure_results_stream(js: JetStreamContext, subjects: Subjects) -> None:
    await ensure_stream(
        js, subjects.results_stream, [subjects.results], duplicate_window=DUPLICATE_WINDOW_S
    )


# A publish lost with a dying connection is only noticed when its ack times out: kept short,
# since the queue waits for this result to go on (ADR 9).
PUBLISH_TIMEOUT_S = 2.0


async def publish_result(
    js: JetStreamContext, subjects: Subjects, result: PlanResult, retry_every: float = 0.5
) -> None:
    """Publish and wait for the ack, retrying until it is stored: an outcome is never dropped.

    A long `msg` or `traceback` is cut first, its whole text kept in the object store, so
    the result fits in one message (ADR 8); should the result still be refused as too
    large, it is stored without its texts rather than retried forever. The record uid is
    the message id, so a retry after a lost ack is not stored twice.
    """
    result = msgspec.structs.replace(
        result,
        result=await result_texts.storable(
            js, subjects, result.record_uid, result.item_uid, result.result
        ),
    )
    data = encode(result)
    headers = {"Nats-Msg-Id": result.record_uid}
    while True:
        try:
            await js.publish(
                subjects.results,
                data,
                stream=subjects.results_stream,
                headers=headers,
                timeout=PUBLISH_TIMEOUT_S,
            )
            return
        except Exception as e:
            if result_texts.size_refused(e):
                logger.error(
                    "result of %s too large to store (%d bytes)", result.item_uid, len(data)
                )
                why = f"The outcome report was too large to store ({len(data):,} bytes)"
                bare = result_texts.bare(result.result, why)
                result = msgspec.structs.replace(result, result=bare)
                data = encode(result)
                continue
            logger.warning("result of %s not stored yet (%r); retrying", result.item_uid, e)
            await asyncio.sleep(retry_every)


async def last_result(js: JetStreamContext, subjects: Subjects) -> PlanResult | None:
    """The most recent result in the stream, if any."""
    try:
        msg = await js.get_last_msg(subjects.results_stream, subjects.results)
    except NotFoundError:
        return None
    if not msg.data:
        return None
    try:
        return _decoder.decode(msg.data)
    except msgspec.DecodeError:
        return None


async def report_death(
    js: JetStreamContext,
    subjects: Subjects,
    env_uid: str,
    last: EnvState,
    why: str,
    since: float | None = None,
) -> None:
    """Write the `failed` result of the item a dead environment ran, unless it did.

    `last` is the environment's last known state; `since` when its item was first seen.
    """
    item_uid = last.running_item_uid
    assert item_uid is not None
    try:
        prev = await last_result(js, subjects)
    except Exception as e:  # a duplicate result is ignored by the queue; a lost one is not
        logger.warning("could not read the last result: %r", e)
        prev = None
    if prev is not None and prev.item_uid == item_uid and prev.env_uid == env_uid:
        return  # it stored the result, then died before saying it was idle
    doing = "paused" if last.re_state == "paused" else "running"
    now = time.time()
    result = PlanResult(
        record_uid=str(uuid.uuid4()),
        item_uid=item_uid,
        env_uid=env_uid,
        result=HistoryResult(
            exit_status="failed",
            run_uids=[r.uid for r in last.run_list],
            scan_ids=[r.scan_id for r in last.run_list if r.scan_id is not None],
            time_start=since or now,
            time_stop=now,
            msg=f"{why} while the plan was {doing}",
        ),
    )
    await publish_result(js, subjects, result)
    logger.warning("item %s failed: %s", item_uid, result.result.msg)
