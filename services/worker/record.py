"""The worker's record of its environment: one key in the worker's KV bucket.

It names the environment (uid, pid, host), the worker that supervises it and the item it
runs. A new environment is recorded with a create, which fails while another is recorded:
so one prefix never has two environments started by two workers. A restarted worker reads
it to adopt the environment, or to settle the item of one that is gone.
"""

from __future__ import annotations

import logging
import socket

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from qserver.jsutil import ensure_key_value
from qserver.protocol.subjects import Subjects
from qserver.protocol.worker import EnvState
from services.runtime.service_base import encode
from services.worker.messages import RECORD_KEY, EnvRecord, worker_bucket

logger = logging.getLogger(__name__)

_decoder = msgspec.json.Decoder(EnvRecord)


def record_of(st: EnvState, worker: str, item_since: float | None) -> EnvRecord:
    """The record of an environment in state `st`, supervised by `worker` on this host."""
    return EnvRecord(
        env_uid=st.env_uid,
        pid=st.pid,
        host=socket.gethostname(),
        running_item_uid=st.running_item_uid,
        re_state=st.re_state,
        run_list=st.run_list,
        time_start=item_since or 0.0,
        worker=worker,
    )


class EnvRecords:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self._last: EnvRecord | None = None  # what we wrote last, to skip equal writes

    @classmethod
    async def open(cls, js: JetStreamContext, subjects: Subjects) -> EnvRecords:
        return cls(await ensure_key_value(js, worker_bucket(subjects)))  # waits for JetStream

    async def read(self) -> EnvRecord | None:
        try:
            entry = await self.kv.get(RECORD_KEY)
        except KeyNotFoundError:
            return None
        try:
            return _decoder.decode(entry.value or b"")
        except (msgspec.DecodeError, msgspec.ValidationError):
            logger.error("the environment record is unreadable: removing it")
            await self.clear()
            return None

    async def create(self, record: EnvRecord) -> bool:
        """Record a new environment; False if one is recorded already."""
        try:
            await self.kv.create(RECORD_KEY, encode(record))
        except KeyWrongLastSequenceError:
            return False
        self._last = record
        return True

    async def save(self, record: EnvRecord) -> None:
        if record == self._last:
            return
        self._last = record
        try:
            await self.kv.put(RECORD_KEY, encode(record))
        except Exception as e:
            logger.warning("environment record not saved: %r", e)

    async def clear(self) -> None:
        self._last = None
        try:
            await self.kv.delete(RECORD_KEY)
        except Exception as e:
            logger.warning("environment record not cleared: %r", e)
