"""The runs of the current item, from the RunEngine's start and stop documents."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

import msgspec

from qserver.protocol.worker import RunInfo

logger = logging.getLogger(__name__)


class RunTracker:
    """A RunEngine subscription: the list of runs, with a uid that changes with it.

    It is called on the RunEngine's thread; it never raises, because an exception in a
    callback on a stop document would abort the run.
    """

    def __init__(self, on_change: Callable[[], None]) -> None:
        self._on_change = on_change
        self._lock = threading.Lock()
        self._runs: dict[str, RunInfo] = {}
        self.list_uid = str(uuid.uuid4())

    def subscribe(self, run_engine: Any) -> None:
        run_engine.subscribe(self, "start")
        run_engine.subscribe(self, "stop")

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        try:
            with self._lock:
                if name == "start":
                    scan_id = doc.get("scan_id")
                    self._runs[doc["uid"]] = RunInfo(
                        uid=doc["uid"], scan_id=scan_id if isinstance(scan_id, int) else None
                    )
                elif name == "stop" and doc.get("run_start") in self._runs:
                    uid = doc["run_start"]
                    self._runs[uid] = msgspec.structs.replace(
                        self._runs[uid], is_open=False, exit_status=doc.get("exit_status")
                    )
                else:
                    return
                self.list_uid = str(uuid.uuid4())
            self._on_change()
        except Exception:
            logger.exception("run tracking failed on a %r document", name)

    def runs(self) -> list[RunInfo]:
        with self._lock:
            return list(self._runs.values())

    def reset(self, notify: bool = True) -> None:
        with self._lock:
            if not self._runs:
                return
            self._runs.clear()
            self.list_uid = str(uuid.uuid4())
        if notify:
            self._on_change()
