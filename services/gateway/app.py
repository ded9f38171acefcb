"""The Litestar application: the route table turned into handlers, plus streams and docs."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, WebSocket, get, post, websocket
from litestar.connection import ASGIConnection
from litestar.exceptions import InternalServerException
from litestar.handlers import BaseRouteHandler
from litestar.response import File, Stream

from qserver.errors import BadRequest, NotFound, QServerError
from qserver.protocol.api import MAX_REQUEST_BYTES
from qserver.protocol.http import NoParams
from qserver.protocol.methods import GATED_METHODS
from services.gateway.accesslog import log_refusals
from services.gateway.auth import Authenticates, Principal
from services.gateway.authroutes import auth_handlers, credentials_of
from services.gateway.bodies import decode_body, request_params
from services.gateway.bridge import Bridge
from services.gateway.errors import (
    ClientGone,
    Forbidden,
    Unauthorized,
    Unavailable,
    http_status,
)
from services.gateway.extra_routes import custom_modules, upload_handlers
from services.gateway.logins import LoginAuthenticator
from services.gateway.metrics import Metrics, metrics_handler
from services.gateway.openapi import DOCS_PAGE, openapi_document, swagger_assets
from services.gateway.routes import ROUTES, Route
from services.gateway.runs import runs_handlers
from services.gateway.ui import ui_handlers

logger = logging.getLogger(__name__)

JSON = "application/json"
_encoder = msgspec.json.Encoder()


def _array_hook(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy arrays and scalars of run documents, as lists
        return obj.tolist()
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


_doc_encoder = msgspec.json.Encoder(enc_hook=_array_hook)
# WebSocket close codes: 4001 as bluesky-httpserver for a bad key, 4003 for a missing scope.
WS_UNAUTHORIZED, WS_FORBIDDEN, WS_UNAVAILABLE, WS_BAD_REQUEST = 4001, 4003, 1011, 1008
# The most console messages a WebSocket may ask for first (`?backlog=N`): what is kept.
MAX_BACKLOG = 2000


def json_response(obj: Any, status: int = 200) -> Response[bytes]:
    return Response(_encoder.encode(obj), status_code=status, media_type=JSON)


def on_error(request: Request[Any, Any, Any], exc: QServerError) -> Response[bytes]:
    """The one place where the gateway's errors become HTTP answers: `{"detail": ...}`."""
    return json_response({"detail": exc.msg}, http_status(exc))


def on_internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """A bug: logged with its traceback (Litestar logs none without debug mode), then 500."""
    logger.error("%s %r failed", request.method, request.url.path, exc_info=exc)
    detail = f"Internal error in the gateway ({type(exc).__name__}); see its log"
    return json_response({"detail": detail}, 500)


async def body_of(request: Request[Any, Any, Any]) -> bytes:
    """The request's body; ClientGone (not a 500) if the client leaves before sending it all."""
    try:
        return await request.body()
    except InternalServerException:  # Litestar's way of saying "http.disconnect"
        raise ClientGone("The client went away before its request was complete") from None


async def no_params(request: Request[Any, Any, Any]) -> None:
    """Routes without parameters still refuse a malformed or non-empty body."""
    decode_body(await body_of(request), NoParams, request.url.path)


class Gateway:
    """What the handlers share: the NATS bridge and the authenticator."""

    def __init__(self, bridge: Bridge, auth: Authenticates) -> None:
        self.bridge = bridge
        self.auth = auth

    async def principal(self, conn: ASGIConnection[Any, Any, Any, Any], scope: str) -> Principal:
        principal = await self.auth.principal(credentials_of(conn))
        principal.require(scope)
        return principal

    async def forward(self, route: Route, request: Request[Any, Any, Any]) -> Response[bytes]:
        principal = await self.principal(request, route.scope)
        if route.method not in GATED_METHODS:
            await self.refuse_gated(principal, route.method)
        params = request_params(route, await body_of(request), principal)
        if route.method == "manager_kill":
            await self.bridge.publish(route.method, params)  # the service never replies
            return json_response({"success": True, "msg": "manager_kill sent"})
        reply = await self.bridge.request(route.method, params)
        return Response(reply, media_type=JSON)

    async def refuse_gated(self, principal: Principal, method: str) -> None:
        """Forbidden if the caller's group is gated: its members only read and propose
        (ADR 30). Asked of the queue service, which holds the permissions, every time."""
        body = msgspec.json.encode({"user_group": principal.user_group})
        reply = msgspec.json.decode(await self.bridge.request("proposal_gate", body))
        if not isinstance(reply, dict) or not reply.get("success"):
            why = reply.get("msg") if isinstance(reply, dict) else reply
            raise Unavailable(f"Cannot tell whether group '{principal.user_group}' is gated: {why}")
        if reply.get("gated"):
            raise Forbidden(
                f"User group '{principal.user_group}' may only propose items for review: "
                f"'{method}' is not allowed to its members"
            )

    async def stream_ws(self, socket: WebSocket[Any, Any, Any], kind: str, scope: str) -> None:
        """Push each NATS event of `kind` to the socket until the client goes away.

        The console's socket takes `?backlog=N`: the last N messages kept come first.
        """
        # The credentials are checked before the handshake completes, as the reference does:
        # its client deletes the short-lived key it connected with as soon as the socket is
        # open, so a check after the accept could find the key gone (and the client would
        # loop, making a new key each time). A refusal still completes the handshake, to
        # close with a code and a reason the client can show.
        refusal: tuple[int, str] | None = None
        try:
            backlog = int(socket.query_params.get("backlog") or 0)
        except ValueError:
            backlog = -1
        if not 0 <= backlog <= MAX_BACKLOG:
            refusal = (WS_BAD_REQUEST, f"backlog must be 0 to {MAX_BACKLOG} messages")
        else:
            try:
                principal = await self.auth.principal(credentials_of(socket))
                if scope not in principal.scopes:
                    # The reference's text, closed with 4003 (the key is valid, its scope not).
                    refusal = (WS_FORBIDDEN, f"Not enough permissions: needs {scope}")
                else:
                    self.bridge.connected()
            except Unauthorized as e:
                refusal = (WS_UNAUTHORIZED, e.msg)
            except (Forbidden, BadRequest) as e:
                refusal = (WS_FORBIDDEN, e.msg)
            except Unavailable as e:
                refusal = (WS_UNAVAILABLE, e.msg)
        await socket.accept()
        if refusal is not None:
            await socket.close(refusal[0], refusal[1][:120])
            return

        if kind == "documents":
            run = socket.query_params.get("run")
            if run not in (None, "", "current"):
                await socket.close(WS_BAD_REQUEST, "run may only be 'current'")
                return
            kind = "documents:current" if run == "current" else kind

        async def feed() -> None:
            async for ev in self.bridge.events(kind, backlog):
                if kind == "console":
                    msg = ev
                elif kind == "status":
                    msg = {"time": time.time(), "msg": {"status": ev}}
                else:  # progress events and `{name, doc}` of documents
                    msg = {"time": time.time(), "msg": ev}
                await socket.send_text(_doc_encoder.encode(msg).decode())

        async def until_closed() -> None:
            while (await socket.receive())["type"] != "websocket.disconnect":
                pass

        tasks = [asyncio.create_task(feed()), asyncio.create_task(until_closed())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            # A lost client or a lost NATS connection both end the stream; neither is news.
            await asyncio.gather(*tasks, return_exceptions=True)


# Attaching to the kernel runs any code in the environment, as `script_upload` does: the
# connection info's HMAC key goes only to those who may upload scripts (ADR 20).
KERNEL_KEY_SCOPE = "write:scripts"


def without_kernel_key(reply: bytes, who: Principal) -> bytes:
    """`config_get`'s reply, without the kernel's key unless `who` may run code there."""
    if KERNEL_KEY_SCOPE in who.scopes:
        return reply
    body = msgspec.json.decode(reply)
    info = body.get("config", {}).get("ip_connect_info") if isinstance(body, dict) else None
    if not isinstance(info, dict) or "key" not in info:
        return reply
    info["key"] = ""
    return _encoder.encode(body)


def route_handler(gw: Gateway, route: Route) -> BaseRouteHandler:
    async def handle(request: Request[Any, Any, Any]) -> Response[bytes]:
        return await gw.forward(route, request)

    decorator = get if route.http == "GET" else post
    name = f"{route.http.lower()}:{route.path}"
    return decorator(route.path, status_code=200, name=name)(handle)  # type: ignore[no-any-return]


def console_handlers(gw: Gateway) -> list[BaseRouteHandler]:
    """The live console stream, from a subscription of its own (the backlog routes are rows
    of the route table: the history service keeps it, ADR 18)."""

    @get("/api/stream_console_output", status_code=200)
    async def stream_console_output(request: Request[Any, Any, Any]) -> Stream:
        await gw.principal(request, "read:console")
        await no_params(request)
        gw.bridge.connected()

        async def lines() -> AsyncIterator[bytes]:
            async for ev in gw.bridge.events("console"):
                yield _encoder.encode(ev) + b"\n"

        return Stream(lines(), media_type="text/plain")

    return [stream_console_output]


def stream_handlers(gw: Gateway) -> list[BaseRouteHandler]:
    @websocket("/api/status/ws")
    async def status_ws(socket: WebSocket[Any, Any, Any]) -> None:
        await gw.stream_ws(socket, "status", "read:monitor")

    @websocket("/api/info/ws")
    async def info_ws(socket: WebSocket[Any, Any, Any]) -> None:
        await gw.stream_ws(socket, "status", "read:monitor")

    @websocket("/api/console_output/ws")
    async def console_ws(socket: WebSocket[Any, Any, Any]) -> None:
        await gw.stream_ws(socket, "console", "read:console")

    @websocket("/api/progress/ws")
    async def progress_ws(socket: WebSocket[Any, Any, Any]) -> None:
        await gw.stream_ws(socket, "progress", "read:monitor")

    @websocket("/api/documents/ws")
    async def documents_ws(socket: WebSocket[Any, Any, Any]) -> None:
        await gw.stream_ws(socket, "documents", "read:monitor")

    return [status_ws, info_ws, console_ws, progress_ws, documents_ws]


def docs_handlers(gw: Gateway) -> list[Any]:
    logins = None
    if isinstance(gw.auth, LoginAuthenticator):
        logins = {name: p.mode for name, p in gw.auth.settings.providers.items()}
    schema = _encoder.encode(openapi_document(logins))

    @get("/openapi.json", status_code=200, include_in_schema=False)
    async def openapi_json() -> Response[bytes]:
        return Response(schema, media_type=JSON)

    @get("/docs", status_code=200, include_in_schema=False)
    async def docs() -> Response[str]:
        return Response(DOCS_PAGE, media_type="text/html")

    @get("/api/config/get", status_code=200)
    async def config_get(request: Request[Any, Any, Any]) -> Response[bytes]:
        who = await gw.principal(request, "read:config")
        await gw.refuse_gated(who, "config_get")  # the kernel's key runs code (ADR 30)
        await no_params(request)
        reply = await gw.bridge.request("config_get", b"{}")
        return Response(without_kernel_key(reply, who), media_type=JSON)

    # A fixed set of files, looked up by name: no path from the client reaches the disk.
    files = {p.name: p for p in swagger_assets().iterdir() if p.is_file()}

    @get("/docs/assets/{name:str}", status_code=200, include_in_schema=False)
    async def asset(name: str) -> File:
        if name not in files:
            raise NotFound(f"No such file in the docs' assets: {name[:100]!r}")
        return File(files[name])

    return [openapi_json, docs, config_get, asset, *ui_handlers()]


def build_app(bridge: Bridge, auth: Authenticates) -> Litestar:
    gw = Gateway(bridge, auth)
    handlers: list[Any] = [route_handler(gw, r) for r in ROUTES]
    handlers += console_handlers(gw) + stream_handlers(gw) + docs_handlers(gw)
    handlers += upload_handlers(gw, custom_modules(), body_of) + auth_handlers(gw)
    handlers += runs_handlers(gw)
    metrics = Metrics()
    handlers.append(metrics_handler(metrics, lambda r: gw.principal(r, "read:status")))

    async def startup() -> None:
        await bridge.start()
        metrics.start(bridge)

    async def shutdown() -> None:
        await metrics.stop()
        await bridge.stop()

    return Litestar(
        route_handlers=handlers,
        exception_handlers={QServerError: on_error, 500: on_internal_error},
        on_startup=[startup],
        on_shutdown=[shutdown],
        middleware=[metrics.middleware, log_refusals],
        # The service's own logging (text or JSON lines); Litestar's would replace it, and it
        # logs exceptions only in debug mode anyway.
        logging_config=None,
        openapi_config=None,
        request_max_body_size=MAX_REQUEST_BYTES,
    )
