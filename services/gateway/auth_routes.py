"""The rest of bluesky-httpserver's `/api/auth/*`, for a gateway whose keys are configured.

Keys here are configured, not made over HTTP, and there are no logins, sessions or tokens
(ADR 6). So `GET /api/auth/apikey` describes the key of the request and `POST
/api/auth/logout` has nothing to end; the routes that would make, revoke or refresh
credentials answer with what to do instead (`whoami` and `scopes` are in `app.py`).
"""

from __future__ import annotations

from typing import Any

from litestar import Request, delete, get, post, route
from litestar.handlers import BaseRouteHandler

from qserver.errors import NotFound
from services.gateway.auth import _key_from_header
from services.gateway.errors import Forbidden, Unauthorized

CONFIGURED = (
    "API keys are configured for this gateway (its key file, `http.config`, or the "
    "single-user key), not made or revoked over HTTP"
)
NO_SESSIONS = (
    "This gateway has no logins, sessions or tokens: send 'Authorization: ApiKey <key>' "
    "with each request"
)


def auth_handlers(gw: Any) -> list[BaseRouteHandler]:
    """`gw` is the app's `Gateway` (its `principal`)."""

    @get("/api/auth/apikey", status_code=200)
    async def apikey_info(request: Request[Any, Any, Any]) -> dict[str, Any]:
        principal = gw.principal(request, "")
        key = request.query_params.get("api_key") or _key_from_header(
            request.headers.get("authorization")
        )
        if key is None:  # anonymous, or a gateway without keys
            raise Unauthorized("No API key was provided with this request.")
        return {
            "first_eight": key[:8],
            "expiration_time": None,
            "note": None,
            "scopes": sorted(principal.scopes),
            "latest_activity": None,
        }

    @post("/api/auth/logout", status_code=200)
    async def logout(request: Request[Any, Any, Any]) -> dict[str, Any]:
        gw.principal(request, "")
        return {}  # an API key opens no session: nothing to end

    @post("/api/auth/apikey", status_code=200)
    async def apikey_new(request: Request[Any, Any, Any]) -> None:
        gw.principal(request, "")
        raise Forbidden(f"{CONFIGURED}: ask the gateway's administrator for a key (ADR 6)")

    @delete("/api/auth/apikey", status_code=200)
    async def apikey_delete(request: Request[Any, Any, Any]) -> None:
        gw.principal(request, "")
        raise Forbidden(f"{CONFIGURED}: a key is revoked by removing it from the key file")

    @post("/api/auth/session/refresh", status_code=200)
    async def session_refresh() -> None:
        raise Unauthorized(NO_SESSIONS)

    @post("/api/auth/provider/{provider:str}/token", status_code=200)
    async def login(provider: str) -> None:
        raise Unauthorized(f"{NO_SESSIONS} (no login with provider {provider[:60]!r})")

    @route(
        "/api/auth/{rest:path}",
        http_method=["GET", "POST", "PUT", "PATCH", "DELETE"],
        status_code=200,
    )
    async def other(rest: str) -> None:
        raise NotFound(
            f"No route /api/auth{rest[:100]}: {CONFIGURED}, and there are no sessions or "
            "principals to manage (ADR 6); /api/auth/whoami and /api/auth/scopes describe a key"
        )

    return [apikey_info, logout, apikey_new, apikey_delete, session_refresh, login, other]
