"""From an HTTP body to the params of a NATS request: parse, adapt, set identity, validate."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from qserver.errors import BadRequest, decoded
from qserver.protocol.api import MAX_REQUEST_BYTES, REQUEST_TYPES
from services.gateway.auth import Principal
from services.gateway.routes import Route

_S = TypeVar("_S", bound=msgspec.Struct)
_encoder = msgspec.json.Encoder()
_decoders = {method: msgspec.json.Decoder(rtype) for method, rtype in REQUEST_TYPES.items()}


def nonempty(body: bytes) -> bytes:
    """The body, or `{}` when there is none (whitespace alone is malformed JSON)."""
    return body or b"{}"


def validate(method: str, body: bytes) -> None:
    """Decode the params with the method's request type; BadRequest names any problem."""
    decoded(_decoders[method].decode, body, method)


def parse_object(body: bytes, where: str) -> dict[str, Any]:
    """The body as a JSON object; an empty body is `{}`."""
    if len(body) > MAX_REQUEST_BYTES:
        raise BadRequest(f"Request is too large: {len(body)} bytes (limit {MAX_REQUEST_BYTES})")
    value = decoded(msgspec.json.decode, nonempty(body), where)
    if not isinstance(value, dict):
        raise BadRequest(
            f"Invalid request to '{where}': the body must be a JSON object, "
            f"not {type(value).__name__}"
        )
    return value


def decode_body(body: bytes, rtype: type[_S], where: str) -> _S:
    """A body of one of the gateway's own types; an empty body takes the defaults."""
    return decoded(lambda b: msgspec.json.decode(b, type=rtype), nonempty(body), where)


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
    validate(route.method, body)
    return body
