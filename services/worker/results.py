"""Plan results into the results stream: written by the environment, or by the worker
service when the environment died mid-plan."""

from __future__ import annotations

import asyncio
import logging

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from qserver.jsutil import ensure_stream
from qserver.protocol.subjects import Subjects
from qserver.protocol.worker import PlanResult
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

    The record uid is the message id, so a retry after a lost ack is not stored twice.
    """
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
