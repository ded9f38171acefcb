"""Every document of every run on NATS too, `<prefix>.docs.<name>`, for live plots without Kafka.

A RunEngine callback: it encodes the document as JSON (numpy arrays as lists) on the
RunEngine's thread and hands the publish to the NATS thread, so it never blocks a plan,
and it never raises (an exception in a callback on the stop document aborts the run).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any

import msgspec

from qserver.config import env_flag
from qserver.protocol.subjects import Subjects
from services.worker.env.link import NatsLink

logger = logging.getLogger(__name__)


def _enc_hook(obj: Any) -> Any:
    # numpy arrays and scalars, without importing numpy here.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


_encoder = msgspec.json.Encoder(enc_hook=_enc_hook)


def enabled() -> bool:
    return env_flag("QSERVER_NATS_DOCS")


class NatsDocuments:
    """RunEngine callback publishing `{"name": ..., "doc": ...}` per document.

    Documents are queued and the NATS thread is woken once per burst, not once per
    document: waking another thread costs more than encoding a document.
    """

    def __init__(self, link: NatsLink, subjects: Subjects) -> None:
        self._link = link
        self._subjects = subjects
        self._pending: deque[tuple[str, bytes]] = deque()
        self._scheduled = False
        self._lock = threading.Lock()
        self.failed = 0

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        try:
            data = _encoder.encode({"name": name, "doc": doc})
            with self._lock:
                self._pending.append((self._subjects.docs(name), data))
                if self._scheduled:
                    return
                self._scheduled = True
            self._link.spawn(self._drain())
        except Exception as e:
            self._count_failure(e)

    async def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    self._scheduled = False
                    return
                batch = list(self._pending)
                self._pending.clear()
            for subject, data in batch:
                try:
                    await self._link.nc.publish(subject, data)
                except Exception as e:
                    self._count_failure(e)

    def _count_failure(self, e: Exception) -> None:
        self.failed += 1
        if self.failed == 1 or self.failed % 1000 == 0:
            logger.warning("documents not published on NATS (%d so far): %r", self.failed, e)
