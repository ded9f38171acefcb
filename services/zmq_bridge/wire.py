"""The reference's 0MQ framing: `{"method": ..., "params": {...}}` in, `{success, msg, ...}` out.

Requests are one JSON (or msgpack) object per message. A request that cannot be read gets the
reply the reference's manager gives (`success: false` and its message), never silence. The
first release's names (`queue_plan_add`, `""` for ping; bluesky-queueserver 0.0.1's
`qserver -c`) are mapped onto today's methods here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from qserver.legacy import CLI_USER_GROUP, LegacyError, parse_pos, pos_or_uid
from qserver.protocol.api import MAX_REQUEST_BYTES

Encoding = Literal["json", "msgpack"]
ENCODINGS: tuple[Encoding, ...] = ("json", "msgpack")
ALLOWED_KEYS = ("method", "params")

_json = msgspec.json.Encoder()
_msgpack = msgspec.msgpack.Encoder()


class WireError(Exception):
    """The request cannot be read; `msg` is the reply's text."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.msg = msg


@dataclass(frozen=True)
class Call:
    """One decoded request."""

    method: str
    params: dict[str, Any]


def _decode(body: bytes, encoding: Encoding) -> Any:
    if encoding == "json":
        return msgspec.json.decode(body)
    return msgspec.msgpack.decode(body)


def decode_call(body: bytes, encoding: Encoding) -> Call:
    """The request in `body`, checked as the reference's manager checks it; WireError if bad."""
    if len(body) > MAX_REQUEST_BYTES:
        raise WireError(
            f"Request is too large: {len(body)} bytes (the limit is {MAX_REQUEST_BYTES} bytes)"
        )
    try:
        msg = _decode(body, encoding)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as e:
        raise WireError(
            f"Failed to decode the request: {encoding.upper()} decode error: {e}"
        ) from None
    if not isinstance(msg, dict):
        raise WireError(f"Incorrect request type: {type(msg)}. Dictionary is expected")
    if "method" not in msg:
        raise WireError(f"Invalid request format: method is not specified: {_short(msg)}")
    extra = [k for k in msg if k not in ALLOWED_KEYS]
    if extra:
        raise WireError(f"Request contains unexpected keys {extra}. Allowed keys: {ALLOWED_KEYS}")
    method, params = msg["method"], msg.get("params")
    if not isinstance(method, str):
        raise WireError(f"Invalid request format: method must be a string, not {_short(method)}")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise WireError(
            f"Invalid request format: params must be a dictionary, not {type(params).__name__}"
        )
    return today(Call(method, params))


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def today(call: Call) -> Call:
    """A request of the first release (bluesky-queueserver 0.0.1) as today's method.

    0.0.1's CLI sent `""` for ping, `queue_plan_add` with `plan`, `queue_plan_get|remove`
    with `pos`, and the group `root`, which today is only the base of the other groups.
    """
    method, params = call.method, dict(call.params)
    try:
        match method:
            case "":
                return Call("ping", params)
            case "queue_plan_add":
                return Call("queue_item_add", _plan_add(params))
            case "queue_plan_get" | "queue_plan_remove":
                where = pos_or_uid(params.pop("pos")) if "pos" in params else {"pos": "back"}
                new = method.replace("_plan_", "_item_")
                return Call(new, {**params, **where})
            case "plans_allowed" | "devices_allowed" if params.get("user_group") == "root":
                return Call(method, {**params, "user_group": CLI_USER_GROUP})
    except LegacyError as e:
        raise WireError(f"Invalid request to '{method}': {e}") from None
    return call


def _plan_add(params: dict[str, Any]) -> dict[str, Any]:
    plan = params.pop("plan", None)
    if not isinstance(plan, dict):
        raise LegacyError("'plan' must be a dictionary")
    if "pos" in params:
        params["pos"] = parse_pos(params["pos"])
    if params.get("user_group") == "root":
        params["user_group"] = CLI_USER_GROUP
    return {**params, "item": {**plan, "item_type": "plan"}}


def failure(msg: str) -> dict[str, Any]:
    return {"success": False, "msg": msg}


def encode(reply: dict[str, Any], encoding: Encoding) -> bytes:
    return _json.encode(reply) if encoding == "json" else _msgpack.encode(reply)


def encode_raw(reply_json: bytes, encoding: Encoding) -> bytes:
    """A service's JSON reply as it goes out: unchanged in JSON, converted for msgpack."""
    if encoding == "json":
        return reply_json
    return _msgpack.encode(msgspec.json.decode(reply_json))
