"""The reference's words around a refusal: each method's prefix (ADR 17).

The reference's manager wraps what a handler raises in a prefix of its method
(`Failed to add an item: `, `Error: `, ...), and returns its state refusals (`RE Manager is
busy.`, `RE Worker environment already exists.`) without one. Clients match these texts
(bluesky-queueserver-api's tests match `Invalid lock key`, `RE Manager must be in idle
state`, ...), so the boundary adds the same prefix here, in one place; a refusal raised
with `bare=True` is the reference's returned kind and goes out as it is. Methods the
reference does not have, and methods whose errors it returns unprefixed (`plans_allowed`,
...), get none.
"""

from __future__ import annotations

import contextlib
from typing import Any

import msgspec

from qserver.errors import QServerError

# Every error of these methods carries the prefix (the reference raises all of them).
ALWAYS = {
    "queue_mode_set": "Failed to set queue mode: ",
    "queue_item_add": "Failed to add an item: ",
    "queue_item_add_batch": "Failed to add an item: ",
    "queue_item_update": "Failed to add an item: ",
    "queue_item_get": "Failed to get an item: ",
    "queue_item_remove": "Failed to remove an item: ",
    "queue_item_remove_batch": "Failed to remove a batch of items: ",
    "queue_item_move": "Failed to move the item: ",
    "queue_item_move_batch": "Failed to move the batch of items: ",
    "queue_item_execute": "Failed to start execution of the item: ",
    "function_execute": "Error: ",
}
# `Error: ` for what the reference raises (lock keys, parameters); its state refusals
# (raised here with `bare=True`) go without.
ERROR_PREFIXED = frozenset(
    {
        "permissions_reload",
        "permissions_set",
        "permissions_get",
        "queue_get",
        "queue_clear",
        "history_get",
        "history_clear",
        "environment_open",
        "environment_close",
        "environment_destroy",
        "environment_update",
        "queue_start",
        "queue_stop",
        "queue_stop_cancel",
        "queue_autostart",
        "re_pause",
        "re_resume",
        "re_stop",
        "re_abort",
        "re_halt",
        "re_runs",
        "lock",
        "lock_info",
        "unlock",
        "manager_stop",
        "re_metadata",
        "script_upload",
        "task_status",
        "task_result",
    }
)


def refusal_text(method: str, e: QServerError) -> str:
    """The `msg` of the failure reply to `method` for the error `e`."""
    prefix = ALWAYS.get(method)
    if prefix is None:
        prefix = "Error: " if method in ERROR_PREFIXED and not e.bare else ""
    if e.msg.startswith(prefix):
        return e.msg  # said already (`queue_item_add` without an item)
    return prefix + e.msg


# The keys the reference's failure replies carry besides `success` and `msg` (empty values),
# so that a client reading the reply as it reads a success finds them.
FAILURE_FIELDS: dict[str, dict[str, Any]] = {
    "queue_get": {"items": [], "running_item": {}, "plan_queue_uid": ""},
    "queue_item_add": {"qsize": None, "item": None},
    "queue_item_update": {"qsize": None, "item": None},
    "queue_item_execute": {"qsize": None, "item": None},
    "queue_item_add_batch": {"qsize": None, "items": [], "results": []},
    "queue_item_get": {"item": {}},
    "queue_item_remove": {"item": {}, "qsize": None},
    "queue_item_move": {"item": {}, "qsize": None},
    "queue_item_remove_batch": {"items": [], "qsize": None},
    "queue_item_move_batch": {"qsize": None, "items": []},
    "history_get": {"items": [], "plan_history_uid": ""},
    "plans_allowed": {"plans_allowed": {}, "plans_allowed_uid": None},
    "devices_allowed": {"devices_allowed": {}, "devices_allowed_uid": None},
    "plans_existing": {"plans_existing": {}, "plans_existing_uid": None},
    "devices_existing": {"devices_existing": {}, "devices_existing_uid": None},
    "permissions_get": {"user_group_permissions": {}},
    "environment_update": {"task_uid": None},
    "function_execute": {"item": None, "task_uid": None},
    "script_upload": {"task_uid": None},
    "task_status": {"task_uid": None, "status": None},
    "task_result": {"task_uid": None, "status": None, "result": None},
    "re_runs": {"run_list": [], "run_list_uid": ""},
    "re_metadata": {"re_metadata": {}},
    "lock": {"lock_info": {}, "lock_info_uid": None},
    "lock_info": {"lock_info": {}, "lock_info_uid": None},
    "unlock": {"lock_info": {}, "lock_info_uid": None},
}
# Methods whose failure reply carries the submitted item (the reference's does).
_ECHO_ITEM = ("queue_item_add", "queue_item_update", "queue_item_execute")
_request = msgspec.json.Decoder(dict[str, Any])
_encoder = msgspec.json.Encoder()


def failure_reply(method: str, msg: str, request: bytes = b"") -> bytes:
    """The failure reply to `method`: `success`, `msg`, and the reference's other keys."""
    body: dict[str, Any] = {"success": False, "msg": msg, **FAILURE_FIELDS.get(method, {})}
    if method in _ECHO_ITEM and request:
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            body["item"] = _request.decode(request).get("item")
    return _encoder.encode(body)
