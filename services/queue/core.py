"""What the queue's parts (execution, its handlers) may use of the service that owns them.

The service passes itself down as this narrow interface, so that its parts never import it.
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from nats.aio.client import Client as NATS

from qserver.protocol.queue_log import AnyEvent
from qserver.protocol.subjects import Subjects
from services.queue.catalog import PlanCatalog
from services.queue.model import QueueModel


class QueueCore(Protocol):
    nc: NATS
    subjects: Subjects
    instance: str  # this instance's name in the leader lease
    model: QueueModel
    catalog: PlanCatalog
    write_lock: asyncio.Lock  # held by every change of the queue state

    def kick(self) -> None:
        """Ask for the next step of execution soon (without waiting for it)."""

    async def advance(self) -> None:
        """Take the next step of execution now."""

    async def publish_status(self) -> None: ...

    def status_held(self) -> AbstractAsyncContextManager[None]:
        """No status goes out inside; the one after shows every change made inside."""

    async def sync_history(self, seq: int) -> None:
        """Take the history's info once it holds the record at stream sequence `seq`."""

    async def publish_console(self, text: str) -> None:
        """Add a line of this service's to the console output (the leader only)."""

    async def commit(self, event: AnyEvent | None) -> None:
        """Append `event` to the log and apply it, or refuse it whole."""

    async def prepare_edit(self, lock_key: str | None) -> None:
        """Before a queue change (lock held): catch up with the log, check the queue lock."""

    async def confirm_lead(self) -> None:
        """Return if this instance still leads (renewing its lease if due); else raise Refused."""

    async def set_permissions(self, permissions: dict[str, Any]) -> None: ...

    def run_list_uid(self) -> str: ...
