"""What the services print on the console (their log has it at DEBUG) for each request they get.

The reference's RE Manager logs a line when a request arrives ("Adding new item to the
queue ...") and, for item edits, one with the outcome ("Item added: success=True ...");
its users and their tools read the console for them. Requests that only read (status,
queue_get, the lists, ...) are left out here: GUIs send them on every change, and a line
each would bury the lines that matter.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol

import msgspec

from qserver.errors import QServerError
from services.runtime.service_base import Handler

# The reference's words, method by method.
REQUEST_LINES = {
    "queue_mode_set": "Setting queue mode ...",
    "queue_item_add": "Adding new item to the queue ...",
    "queue_item_add_batch": "Adding a batch of items to the queue ...",
    "queue_item_remove": "Removing item from the queue ...",
    "queue_item_remove_batch": "Removing a batch of items from the queue ...",
    "queue_item_move": "Moving a queue item ...",
    "queue_item_move_batch": "Moving a batch of queue items ...",
    "queue_item_execute": "Starting immediate executing a queue item ...",
    "queue_clear": "Clearing the queue ...",
    "history_clear": "Clearing the plan execution history ...",
    "environment_open": "Opening the new RE environment ...",
    "environment_close": "Closing existing RE environment ...",
    "environment_destroy": "Destroying current RE environment ...",
    "environment_update": "Updating RE environment ...",
    "script_upload": "Uploading script to RE environment ...",
    "queue_start": "Starting queue processing ...",
    "queue_stop": "Activating 'stop queue' sequence ...",
    "queue_stop_cancel": "Deactivating 'stop queue' sequence ...",
    "queue_autostart": "Enabling/disabling autostart mode ...",
    "kernel_interrupt": "Processing request to interrupt IPython kernel ...",
    "re_pause": "Pausing the queue (currently running plan) ...",
    "re_resume": "Resuming paused plan ...",
    "re_stop": "Stopping paused plan ...",
    "re_abort": "Aborting paused plan ...",
    "re_halt": "Halting paused plan ...",
    "permissions_reload": "Reloading lists of allowed plans and devices ...",
    "permissions_set": "Request to set user group permission ...",
    "lock": "Processing request to lock RE Manager ...",
    "unlock": "Processing request to unlock RE Manager ...",
}
# The outcome line of item edits, as the reference words it (an update has only this one).
OUTCOME_LINES = {
    "queue_item_add": "Item added",
    "queue_item_add_batch": "Batch of items added",
    "queue_item_update": "Item updated",
    "queue_item_execute": "Item execution started",
}


def outcome_line(
    prefix: str, success: bool, item_type: Any, name: Any, uid: Any, qsize: Any
) -> str:
    """`Item added: success=True item_type='plan' name='count' item_uid='...' qsize=1.`"""
    line = f"{prefix}: success={success} item_type='{item_type}'"
    if name is not None:
        line += f" name='{name}'"
    if uid is not None:
        line += f" item_uid='{uid}'"
    return line + f" qsize={qsize}."


def _get(obj: Any, key: str) -> Any:
    value = obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)
    return None if value is msgspec.UNSET else value


class Lines(Protocol):
    """Where the lines go: `ServiceConsole` (`line`, `flush`)."""

    def line(self, text: str) -> None: ...

    def flush(self) -> Awaitable[None]: ...


def _logged(method: str, handler: Handler, lines: Lines) -> Handler:
    request_line = REQUEST_LINES.get(method)
    outcome = OUTCOME_LINES.get(method)

    async def handle(req: Any) -> msgspec.Struct | None:
        if request_line is not None:
            lines.line(request_line)
            # Out before the requests the handler sends on: the lines those cause elsewhere
            # (the worker's, the environment's) then come after it on the console.
            await lines.flush()
        if outcome is None:
            return await handler(req)
        asked = _get(req, "item")
        try:
            reply = await handler(req)
        except QServerError:
            lines.line(outcome_line(outcome, False, _get(asked, "item_type"), None, None, None))
            raise
        item = None if method == "queue_item_add_batch" else _get(reply, "item")
        success = _get(reply, "success")
        line = outcome_line(
            outcome,
            True if success is None else success,
            _get(item if item is not None else asked, "item_type"),
            _get(item, "name"),
            _get(item, "item_uid"),
            _get(reply, "qsize"),
        )
        lines.line(line)
        # Out with the reply (one write to the socket for both), not after it.
        await lines.flush()
        return reply

    return handle


def logged(handlers: dict[str, Handler], lines: Lines) -> dict[str, Handler]:
    """The handlers, each printing the reference's lines for the requests it gets.

    `lines` is the service's console (`ServiceConsole`): `line` buffers a line, `flush`
    publishes what is buffered.
    """
    return {
        m: _logged(m, h, lines) if m in REQUEST_LINES or m in OUTCOME_LINES else h
        for m, h in handlers.items()
    }
