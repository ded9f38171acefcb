"""The v0.0.1 request names (`qserver -c queue_plan_add -p front '{...}'`) mapped onto today's API.

Kept apart from the CLI so that the HTTP gateway's v0.0.1 routes can share the mapping.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Sequence
from typing import Any

# Requests are made on behalf of the CLI user; v0.0.1 sent group `root`, today's default is
# `primary` (the group the gateway assigns too).
CLI_USER = "qserver-cli"
CLI_USER_GROUP = "primary"

MONITOR = "monitor"

# v0.0.1 command names that differ from today's method names.
_RENAMED = {
    "queue-clear": "queue_clear",  # as spelled in the v0.0.1 README
    "test_manager_kill": "manager_kill",
}

_POS_WORDS = ("front", "back")


class LegacyError(ValueError):
    """The v0.0.1 command or its parameters cannot be turned into a request."""


def parse_legacy_value(text: str) -> Any:
    """Parse one `-p` value as v0.0.1 did (`ast.literal_eval`); JSON and plain strings also pass.

    JSON is tried second because `true`/`false`/`null` are not Python literals.
    """
    for parse in (ast.literal_eval, json.loads):
        try:
            return parse(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    return text


def legacy_request(command: str, params: Sequence[Any] = ()) -> tuple[str, dict[str, Any]]:
    """Map a v0.0.1 command and its already-parsed parameters to `(method, params_dict)`."""
    method = _RENAMED.get(command, command.replace("-", "_"))
    params = list(params)
    match method:
        case "queue_plan_add":
            return "queue_item_add", _plan_add(params)
        case "queue_plan_get":
            return "queue_item_get", _location(method, params)
        case "queue_plan_remove":
            return "queue_item_remove", _location(method, params)
        case "plans_allowed" | "devices_allowed":
            _no_params(method, params)
            return method, {"user_group": CLI_USER_GROUP}
        case "re_pause":
            return method, _option(method, params, ("deferred", "immediate"))
        case "manager_stop":
            return method, _option(method, params, ("safe_on", "safe_off"))
        case _:
            return method, _passthrough(method, params)


def _plan_add(params: list[Any]) -> dict[str, Any]:
    if len(params) == 1:
        pos, plan = None, params[0]
    elif len(params) == 2:
        pos, plan = parse_pos(params[0]), params[1]
    else:
        raise LegacyError(f"queue_plan_add takes [<pos>] <plan>, got {len(params)} parameters")
    if not isinstance(plan, dict):
        raise LegacyError(f"queue_plan_add: the plan must be a dict, got {plan!r}")
    out: dict[str, Any] = {
        "item": {**plan, "item_type": "plan"},
        "user": CLI_USER,
        "user_group": CLI_USER_GROUP,
    }
    if pos is not None:
        out["pos"] = pos
    return out


def _location(method: str, params: list[Any]) -> dict[str, Any]:
    if not params:
        return {"pos": "back"}
    if len(params) > 1:
        raise LegacyError(f"{method} takes at most one parameter (a position or uid)")
    return pos_or_uid(params[0])


def _option(method: str, params: list[Any], allowed: tuple[str, ...]) -> dict[str, Any]:
    if not params:
        return {}
    if len(params) > 1 or params[0] not in allowed:
        raise LegacyError(f"{method} takes one of {', '.join(allowed)}, got {params!r}")
    return {"option": params[0]}


def _no_params(method: str, params: list[Any]) -> None:
    if params:
        raise LegacyError(f"{method} takes no parameters, got {params!r}")


def _passthrough(method: str, params: list[Any]) -> dict[str, Any]:
    """Any other method: no parameters, or one dict sent as the request's params."""
    if not params:
        return {}
    if len(params) == 1 and isinstance(params[0], dict):
        return params[0]
    raise LegacyError(f"{method} takes no parameters or one dict of parameters, got {params!r}")


def parse_pos(value: Any) -> int | str:
    """A queue position: an int (negative counts from the back), `front` or `back`."""
    if isinstance(value, bool):
        raise LegacyError(f"invalid position {value!r}: use an integer, 'front' or 'back'")
    if isinstance(value, int) or value in _POS_WORDS:
        return value  # type: ignore[no-any-return]
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise LegacyError(f"invalid position {value!r}: use an integer, 'front' or 'back'")


def pos_or_uid(value: Any) -> dict[str, Any]:
    """An item reference: ints and front/back are positions, any other string is a uid."""
    try:
        return {"pos": parse_pos(value)}
    except LegacyError:
        if isinstance(value, str) and value:
            return {"uid": value}
        raise
