"""The results of finished tasks: a KV bucket, written by the environment, read by the queue.

One entry per task, under its uid: the `TaskOutcome`. The bucket is file-backed and
replicated like every other (so results survive a restart of any service, and of
nats-server), and bounded as the reference's are: an entry is kept
`$QSERVER_TASK_RESULTS_KEEP_S` seconds (600; the reference keeps them at least 120 s), and
the whole bucket holds at most 64 MiB, the oldest entries going first (ADR 16).
"""

from __future__ import annotations

import asyncio
import logging
import os

import msgspec
from nats.js import JetStreamContext, api
from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from nats.js.kv import KeyValue

from qserver.jsutil import default_replicas, ensure_stream, patiently
from qserver.protocol.subjects import Subjects
from qserver.protocol.tasks import TaskOutcome
from qserver.result_texts import size_refused

logger = logging.getLogger(__name__)

KEEP_ENV = "QSERVER_TASK_RESULTS_KEEP_S"
DEFAULT_KEEP_S = 600.0
MAX_BYTES = 64 * 1024 * 1024
PUT_TIMEOUT_S = 2.0
_decoder = msgspec.json.Decoder(TaskOutcome)


def keep_seconds() -> float:
    value = os.environ.get(KEEP_ENV) or ""
    try:
        keep = float(value) if value else DEFAULT_KEEP_S
    except ValueError:
        raise ValueError(f"{KEEP_ENV} must be a number of seconds, not {value!r}") from None
    if keep <= 0:
        raise ValueError(f"{KEEP_ENV} must be more than 0, not {keep}")
    return keep


async def open_bucket(js: JetStreamContext, subjects: Subjects) -> KeyValue:
    """The bucket, created (or its limits updated) first; the same from every service.

    Made as a stream of the KV layout rather than with `create_key_value`, whose buckets
    refuse new entries when full: here the oldest results make room.
    """
    bucket = subjects.task_results_bucket
    await ensure_stream(
        js,
        f"KV_{bucket}",
        [f"$KV.{bucket}.>"],
        replicas=default_replicas(),
        max_msgs_per_subject=1,
        max_age=keep_seconds(),
        max_bytes=MAX_BYTES,
        discard=api.DiscardPolicy.OLD,
        allow_rollup_hdrs=True,
        deny_delete=True,
        allow_direct=True,
    )

    async def opened() -> KeyValue:
        try:
            return await js.key_value(bucket)
        except BucketNotFoundError:  # deleted just now: made again on the next try
            raise TimeoutError(f"bucket {bucket} not found") from None

    return await patiently(f"opening the bucket {bucket}", opened)


class TaskResults:
    """The bucket, opened once per process (and again if it went away)."""

    def __init__(self, js: JetStreamContext, subjects: Subjects) -> None:
        self._js = js
        self._subjects = subjects
        self._kv: KeyValue | None = None

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            self._kv = await open_bucket(self._js, self._subjects)
        return self._kv

    async def put(self, outcome: TaskOutcome, retry_every: float = 0.5) -> None:
        """Store a task's outcome, retrying until it is stored (a result is never dropped).

        An outcome too large for one message is stored failed, without its return value,
        with a message saying so.
        """
        data = msgspec.json.encode(outcome)
        while True:
            try:
                kv = await self._bucket()
                await asyncio.wait_for(kv.put(outcome.task_uid, data), PUT_TIMEOUT_S)
                return
            except Exception as e:
                if size_refused(e):
                    logger.error(
                        "task %s: result too large (%d bytes)", outcome.task_uid, len(data)
                    )
                    outcome = msgspec.structs.replace(
                        outcome,
                        success=False,
                        return_value=None,
                        msg=f"The task's result is too large to store ({len(data):,} bytes)",
                        traceback="",
                    )
                    data = msgspec.json.encode(outcome)
                    continue
                logger.warning("task %s: result not stored yet (%r); retrying", outcome.task_uid, e)
                self._kv = None  # opened again: the bucket may have been deleted
                await asyncio.sleep(retry_every)

    async def get(self, task_uid: str) -> TaskOutcome | None:
        """The outcome of a finished task; None if there is none (running, unknown, expired)."""
        kv = await self._bucket()
        try:
            entry = await kv.get(task_uid)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        try:
            return _decoder.decode(entry.value)
        except msgspec.DecodeError:
            logger.warning("ignoring a malformed result of task %s", task_uid)
            return None
