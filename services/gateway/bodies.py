"""From an HTTP body to the params of a NATS request: parse, adapt, set identity, validate."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from qserver.errors import BadRequest
from qserver.protocol.api import MAX_REQUEST_BYTES
from qserver.service_base import decode_request
from services.gateway.auth import Principal
from services.gateway.routes import Route

_S = TypeVar("_S", bound=msgspec.Struct)
_encoder = msgspec.json.Encoder()
JSON_SPACE = b" \t\r\n"  # the only whitespace JSON allows around a value


def nonempty(body: bytes) -> bytes:
    """The body, or `{}` when it is empty (or only JSON whitespace)."""
    return body.strip(JSON_SPACE) or b"{}"


def parse_object(body: bytes, where: str) -> dict[str, Any]:
    """The body as a JSON object; an empty body is `{}`."""
    if len(body) > MAX_REQUEST_BYTES:
        raise BadRequest(f"Request is too large: {len(body)} bytes (limit {MAX_REQUEST_BYTES})")
    try:
        value = msgspec.json.decode(nonempty(body))
    except msgspec.DecodeError as e:
        raise BadRequest(f"Invalid request to '{where}': malformed JSON ({e})") from None
    except RecursionError:
        raise BadRequest(f"Invalid request to '{where}': JSON nesting is too deep") from None
    if not isinstance(value, dict):
        raise BadRequest(
            f"Invalid request to '{where}': the body must be a JSON object, "
            f"not {type(value).__name__}"
        )
    return value


def decode_body(body: bytes, rtype: type[_S], where: str) -> _S:
    """A body of one of the gateway's own types; an empty body takes the defaults."""
    try:
        return msgspec.json.decode(nonempty(body), type=rtype)
    except msgspec.ValidationError as e:
        raise BadRequest(f"Invalid request to '{where}': {e}") from None
    except msgspec.DecodeError as e:
        raise BadRequest(f"Invalid request to '{where}': malformed JSON ({e})") from None


def set_identity(route: Route, params: dict[str, Any], principal: Principal) -> None:
    """Replace whatever the client sent as `user`/`user_group` with the principal's."""
    fields = {"user": ("user", "lock"), "user_group": ("user", "group")}
    for name, kinds in fields.items():
        if route.identity not in kinds:
            continue
        if not isinstance(params.get(name, ""), str):
            raise BadRequest(f"Invalid request to '{route.path}': `{name}` must be a string")
        params[name] = principal.name if name == "user" else principal.user_group


def request_params(route: Route, body: bytes, principal: Principal) -> bytes:
    """The JSON params to send for this route, validated against the method's request type."""
    if route.adapt or route.identity or route.fixed:
        params = parse_object(body, route.path)
        if route.adapt is not None:
            params = route.adapt(params)
        if route.fixed and params:
            raise BadRequest(f"'{route.path}' takes no parameters: {', '.join(params)}")
        params.update(route.fixed)
        set_identity(route, params, principal)
        body = _encoder.encode(params)
    body = nonempty(body)
    decode_request(route.method, body)  # raises BadRequest naming the problem
    return body
