"""The reference's checks of a request's parameters, in its order and words (ADR 17).

Run on the raw JSON object before it is decoded into the method's type, so that a missing
or mistyped parameter is reported as the reference reports it (its clients show, and
sometimes match, these texts). What these checks let through is still decoded strictly;
anything they do not cover keeps our own text. The method's prefix (`Error: `, `Failed to
add an item: `, ...) is added where every refusal gets it (`refusals.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from qserver.errors import BadRequest

Params = dict[str, Any]
ITEM_TYPES = ("plan", "instruction")


def _lock_key(p: Params) -> None:
    key = p.get("lock_key")
    if key is not None and not isinstance(key, str):
        raise BadRequest(f"Lock key must be a non-empty string or None: lock_key = {key!r}")


def _item(p: Params, *, required: bool = True) -> None:
    if "item" not in p:
        if required:
            raise BadRequest("Incorrect request format: request contains no item info")
        return
    _one_item(p["item"])


def _one_item(item: Any) -> None:
    prefix = "Incorrect request format: "
    if not isinstance(item, dict):
        raise BadRequest(
            f"{prefix}incorrect type ('{type(item)}') of item parameter: "
            "item parameter must have type 'dict'"
        )
    item_type = item.get("item_type")
    if item_type is None:
        raise BadRequest(f"{prefix}'item_type' key is not found")
    if item_type not in ITEM_TYPES:
        raise BadRequest(
            f"{prefix}unsupported 'item_type' value: '{item_type}', "
            f"supported item types {ITEM_TYPES}"
        )


def _user(p: Params) -> None:
    if "user_group" not in p:
        raise BadRequest("Incorrect request format: user group is not specified")
    if "user" not in p:
        raise BadRequest("Incorrect request format: user name is not specified")


def _pos(p: Params, quote: bool, word: str = "value") -> None:
    pos = p.get("pos")
    if (
        pos is None
        or pos in ("front", "back")
        or (isinstance(pos, int) and not isinstance(pos, bool))
    ):
        return
    shown = f"'{pos}'" if quote else f"{pos}"
    raise BadRequest(f"Parameter 'pos' has incorrect {word}: pos={shown} (type={type(pos)})")


def _uids(p: Params) -> None:
    if p.get("uids") is None:
        raise BadRequest("Request does not contain the list of UIDs")
    if not isinstance(p["uids"], list):
        raise BadRequest(f"Parameter 'uids' must be a list: type(uids) = {type(p['uids'])}")


def _item_add(p: Params) -> None:
    _lock_key(p)
    _item(p)
    _user(p)
    _pos(p, quote=True)


def _item_update(p: Params) -> None:
    _lock_key(p)
    _item(p)
    _user(p)


def _item_add_batch(p: Params) -> None:
    _lock_key(p)
    if "items" not in p:
        raise BadRequest("Invalid request format: the list of items is not found")
    _user(p)


def _item_get(p: Params) -> None:
    _pos(p, quote=False, word="type")


def _item_remove(p: Params) -> None:
    _lock_key(p)
    _pos(p, quote=False)


def _uids_batch(p: Params) -> None:
    _lock_key(p)
    _uids(p)


def _mode_set(p: Params) -> None:
    _lock_key(p)
    if "mode" not in p:
        raise BadRequest(f"Parameter 'mode' is not found in request {p}")
    mode = p["mode"]
    if not isinstance(mode, dict) and mode != "default":
        raise BadRequest(
            f"Queue mode is passed using object of unsupported type '{type(mode)}': "
            f"({mode}). Supported types: ('dict', 'str'), supported string value: 'default'"
        )
    expected = {"loop": bool, "ignore_failures": bool}
    for key, value in mode.items() if isinstance(mode, dict) else ():
        if key not in expected:
            raise BadRequest(
                f"Unsupported plan queue mode parameter '{key}': "
                f"supported parameters {list(expected)}"
            )
        if not isinstance(value, bool):
            raise BadRequest(
                f"Unsupported type '{type(value)}' of the parameter '{key}': expected type '{bool}'"
            )


def _lock(p: Params) -> None:
    if "user" not in p:
        raise BadRequest("User name is not specified: 'user' is a required parameter")
    user = p["user"]
    if not isinstance(user, str) or not user:
        raise BadRequest(f"User name must be a non-empty string: user = {user!r}")
    if "lock_key" not in p:
        raise BadRequest("Lock key is not specified: 'lock_key' is a required parameter")
    key = p["lock_key"]
    if not isinstance(key, str) or not key:
        raise BadRequest(f"Lock key must be a non-empty string: lock_key = {key!r}")
    note = p.get("note")
    if not isinstance(note, str | None):
        raise BadRequest("Note must be a string or None: note = {note!r}")  # sic


def _unlock(p: Params) -> None:
    if "lock_key" not in p:
        raise BadRequest("Request contains no lock key: 'lock_key' parameter is required")
    key = p["lock_key"]
    if not isinstance(key, str) or not key:
        raise BadRequest(f"Lock key must be a non-empty string: lock_key = {key!r}")


def _user_group(p: Params) -> None:
    if "user_group" not in p:
        raise BadRequest("Incorrect request format: user group is not specified")


def _autostart(p: Params) -> None:
    _lock_key(p)
    if "enable" not in p:
        raise BadRequest("Required 'enable' parameter is missing in 'queue_autostart' API call.")
    if not isinstance(p["enable"], bool):
        raise BadRequest(
            f"Required 'enable' parameter must be boolean: type(enable)={type(p['enable'])}."
        )


def _history_clear(p: Params) -> None:
    _lock_key(p)
    size, item_uid = p.get("size"), p.get("item_uid")
    if size is not None and item_uid is not None:
        raise BadRequest("Parameters 'size' and 'item_uid' are mutually exclusive.")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool)):
        raise BadRequest(f"The 'size' parameter must be an integer: size={size!r}")
    if item_uid is not None and not isinstance(item_uid, str):
        raise BadRequest(f"The 'item_uid' parameter must be a string: item_uid={item_uid!r}")


CHECKS: dict[str, Callable[[Params], None]] = {
    "queue_item_add": _item_add,
    "queue_item_update": _item_update,
    "queue_item_execute": _item_update,
    "queue_item_add_batch": _item_add_batch,
    "queue_item_get": _item_get,
    "queue_item_remove": _item_remove,
    "queue_item_remove_batch": _uids_batch,
    "queue_item_move_batch": _uids_batch,
    "queue_mode_set": _mode_set,
    "lock": _lock,
    "unlock": _unlock,
    "plans_allowed": _user_group,
    "devices_allowed": _user_group,
    "queue_autostart": _autostart,
    "history_clear": _history_clear,
}
for _method in (
    "queue_clear",
    "queue_item_move",
    "queue_start",
    "queue_stop",
    "queue_stop_cancel",
    "environment_open",
    "environment_close",
    "environment_destroy",
    "environment_update",
    "re_pause",
    "re_resume",
    "re_stop",
    "re_abort",
    "re_halt",
    "permissions_set",
    "permissions_reload",
):
    CHECKS.setdefault(_method, _lock_key)

_object = msgspec.json.Decoder(dict[str, Any])


def precheck(method: str, body: bytes, supported: list[str]) -> None:
    """Raise the reference's BadRequest for what its checks refuse in this request.

    `supported`: the method's parameters; any other is refused first, as the reference does.
    """
    try:
        params = _object.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return  # the typed decode reports it
    unknown = [name for name in params if name not in supported]
    if unknown:
        names = f"{unknown[0]!r}" if len(unknown) == 1 else f"{unknown}"
        raise BadRequest(
            f"API request contains unsupported parameters: {names}. "
            f"Supported parameters: {supported}"
        )
    check = CHECKS.get(method)
    if check is not None:
        check(params)
