"""One log line for every HTTP answer that is not a success: who asked what, and why not."""

from __future__ import annotations

import logging
from typing import cast

import msgspec
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

DETAIL_BYTES = 2048  # of the answer's body, for its `detail`
PATH_CHARS = 200  # of the path, in the log line


def shown(path: str) -> str:
    """The path as logged: escaped by `%r`, and cut if long."""
    return path if len(path) <= PATH_CHARS else f"{path[:PATH_CHARS]}...({len(path)} chars)"


def detail_of(body: bytes) -> str:
    """The `detail` of an error body (`{"detail": ...}`), or '' if it has none."""
    try:
        value = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return ""
    return str(value.get("detail", ""))[:300] if isinstance(value, dict) else ""


def log_refusals(app: ASGIApp) -> ASGIApp:
    """Litestar middleware: log answers of 400 and more (4xx at INFO, 5xx at WARNING).

    The path is logged with its odd bytes escaped (`%r`), so a request cannot forge lines.
    """

    async def logged(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        status, body = 500, b""  # an exception that escapes is answered with 500

        async def note(message: Message) -> None:
            nonlocal status, body
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and status >= 400:
                body = (body + message.get("body", b""))[:DETAIL_BYTES]
            await send(message)

        try:
            await app(scope, receive, note)
        finally:
            if status >= 400:
                http = cast("HTTPScope", scope)
                client = http.get("client")
                logger.log(
                    logging.WARNING if status >= 500 else logging.INFO,
                    "%s %r from %s: %d %s",
                    http["method"],
                    shown(http["path"]),
                    f"{client[0]}:{client[1]}" if client else "?",
                    status,
                    detail_of(body),
                )

    return logged
