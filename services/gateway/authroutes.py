"""The `/api/auth/` routes of bluesky-httpserver: logins, sessions, API keys, principals.

Shapes, status codes and messages are the reference's (`authentication.py`); where the
reference answers with a 500 (an unknown principal, a malformed uuid) these answer 404 or
422 with a message. Without login providers (keys from the gateway's own file, or the
single-user key) only `whoami` and `scopes` exist; the others say there are no logins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Request, Response, delete, get, post, route
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler

from qserver.errors import NotFound, QServerError
from qserver.protocol.auth import ApiKeyParams, RefreshToken
from qserver.protocol.http import NoParams
from services.gateway.auth import API_KEY_COOKIE, Credentials, Principal
from services.gateway.bodies import decode_body
from services.gateway.errors import Forbidden, Unauthorized
from services.gateway.logins import (
    ANONYMOUS_PROVIDER,
    LoginAuthenticator,
    apikey_info,
    hex_uuid,
    secret_of,
)
from services.gateway.throttle import LoginThrottle

if TYPE_CHECKING:
    from services.gateway.app import Gateway

JSON = "application/json"
OK = {"success": True, "msg": ""}
NO_SESSION_OF_YOURS = "Sessions does not exist or requester has insufficient permissions"
# Without login providers: keys are configured, not made over HTTP (ADR 6).
CONFIGURED = (
    "API keys are configured for this gateway (its key file, `http.config`, or the "
    "single-user key), not made or revoked over HTTP"
)
NO_SESSIONS = (
    "This gateway has no logins, sessions or tokens: send 'Authorization: ApiKey <key>' "
    "with each request (logins: a bluesky-httpserver configuration, docs/http.md)"
)
_encoder = msgspec.json.Encoder()


class Unprocessable(QServerError):
    """A request that lacks fields the route needs (FastAPI's 422)."""

    code = "unprocessable"


def json_response(obj: Any, status: int = 200) -> Response[bytes]:
    return Response(_encoder.encode(obj), status_code=status, media_type=JSON)


def logins(gw: Gateway, without: QServerError | None = None) -> LoginAuthenticator:
    """The login authenticator; `without` (or a 404 saying why) on a gateway without logins."""
    if not isinstance(gw.auth, LoginAuthenticator):
        raise without or NotFound(
            f"{CONFIGURED}, and there are no sessions or principals to manage (ADR 6; logins: "
            "bluesky-httpserver's 'authentication: providers:', docs/http.md)"
        )
    return gw.auth


def credentials_of(conn: ASGIConnection[Any, Any, Any, Any]) -> Credentials:
    """The API key or token a request (or a WebSocket) presents."""
    authorization = conn.headers.get("authorization")
    # Browsers' WebSockets carry no headers: a login's token comes as `?access_token=`.
    token = conn.query_params.get("access_token")
    if token and not authorization:
        authorization = f"Bearer {token}"
    return Credentials.of(
        authorization,
        conn.query_params.get("api_key"),
        conn.cookies.get(API_KEY_COOKIE),
    )


def client_address(request: Request[Any, Any, Any]) -> str:
    return request.client.host if request.client else "?"


def special_whoami(who: Principal) -> dict[str, Any]:
    """A principal that is not stored (single user, keys of the gateway's own file)."""
    return {
        "uuid": None,
        "type": "user",
        "identities": [{"id": who.name, "provider": ANONYMOUS_PROVIDER, "latest_login": None}],
        "api_keys": [],
        "sessions": [],
        "latest_activity": None,
        "roles": list(who.roles),
        "scopes": sorted(who.scopes),
        "api_key_scopes": None,
        "user_group": who.user_group,
    }


async def new_apikey(
    auth: LoginAuthenticator,
    principal: str,
    params: ApiKeyParams,
    allowed: set[str],
    source: set[str] | None,
) -> dict[str, Any]:
    """An API key for `principal`, its scopes within `allowed` (or the key used, `source`)."""
    allowed_set = source if source is not None and "inherit" not in source else allowed
    if "inherit" in allowed_set:
        allowed_set = allowed
    if params.scopes is None or "inherit" in params.scopes:
        scopes = ["inherit"] if source is None or "inherit" in source else sorted(source)
    else:
        scopes = list(params.scopes)
    if not set(scopes) <= allowed_set | {"inherit"}:
        raise QServerError(
            f"Requested scopes {sorted(scopes)} must be a subset of the "
            f"allowed principal's scopes {sorted(allowed_set)}."
        )
    if params.expires_in is not None and params.expires_in <= 0:
        raise QServerError(
            f"expires_in must be a positive number of seconds, not {params.expires_in}"
        )
    secret, record = await auth.store.new_apikey(principal, scopes, params.expires_in, params.note)
    return {**apikey_info(record), "secret": secret}


def auth_handlers(gw: Gateway) -> list[BaseRouteHandler]:
    throttle = LoginThrottle()

    @post("/api/auth/provider/{provider:str}/token", status_code=200)
    async def token(request: Request[Any, Any, Any], provider: str) -> Response[bytes]:
        no_login = f"{NO_SESSIONS} (no login with provider {provider[:60]!r})"
        auth = logins(gw, Unauthorized(no_login))
        p = auth.settings.providers.get(provider)
        if p is None or p.mode != "password":
            raise NotFound(f"No password provider '{provider[:100]}' (see /api/auth/providers)")
        form = await request.form()
        username, password = form.get("username"), form.get("password")
        if not isinstance(username, str) or not isinstance(password, str):
            raise Unprocessable(
                "A login is a form (application/x-www-form-urlencoded) with the fields "
                "'username' and 'password'"
            )
        address = client_address(request)
        await throttle.wait_turn(username, address)
        name = await p.authenticate(username, password)
        if not name:
            throttle.failed(provider, username, address)
            raise Unauthorized("Incorrect username or password")
        if not auth.access.is_known(name):
            raise Unauthorized("User is not authorized to access the server")
        throttle.succeeded(username)
        return json_response(await auth.open_session(provider, name))

    async def code_route(request: Request[Any, Any, Any], provider: str) -> Response[bytes]:
        auth = logins(gw)
        p = auth.settings.providers.get(provider)
        if p is None or p.mode != "external":
            raise NotFound(f"No external provider '{provider[:100]}'")
        code = request.query_params.get("code")
        name = await p.authenticate_code(code) if code else None
        if not name or not auth.access.is_known(name):
            raise Unauthorized("Authentication failure")
        tokens = await auth.open_session(provider, name)
        # The refresh token only, to be pasted into a terminal client (as the reference).
        return json_response(tokens["refresh_token"])

    @get("/api/auth/provider/{provider:str}/code", status_code=200)
    async def code_get(request: Request[Any, Any, Any], provider: str) -> Response[bytes]:
        return await code_route(request, provider)

    @post("/api/auth/provider/{provider:str}/code", status_code=200)
    async def code_post(request: Request[Any, Any, Any], provider: str) -> Response[bytes]:
        return await code_route(request, provider)

    @get("/api/auth/providers", status_code=200)
    async def providers() -> Response[bytes]:
        """Which providers there are and where to log in (the reference's `/api` lists them)."""
        auth = gw.auth
        out = []
        if isinstance(auth, LoginAuthenticator):
            for name, p in auth.settings.providers.items():
                link = "token" if p.mode == "password" else "code"
                entry = {
                    "provider": name,
                    "mode": p.mode,
                    "links": {"auth_endpoint": f"/api/auth/provider/{name}/{link}"},
                }
                if p.mode == "external":
                    entry["links"]["auth_endpoint"] = p.authorization_endpoint
                    entry["confirmation_message"] = p.confirmation_message
                out.append(entry)
        return json_response(
            {"required": not getattr(auth, "allows_anonymous", False), "providers": out}
        )

    @post("/api/auth/session/refresh", status_code=200)
    async def refresh(request: Request[Any, Any, Any]) -> Response[bytes]:
        auth = logins(gw, Unauthorized(NO_SESSIONS))
        body = decode_body(await request.body(), RefreshToken, "/api/auth/session/refresh")
        return json_response(await auth.refresh(body.refresh_token))

    @delete("/api/auth/session/revoke/{session_id:str}", status_code=200)
    async def revoke(request: Request[Any, Any, Any], session_id: str) -> Response[bytes]:
        auth = logins(gw)
        who = await gw.principal(request, "")
        sid = hex_uuid(session_id)
        session = await auth.store.session(sid) if sid else None
        if session is None:
            raise NotFound(f"No session {session_id[:100]}")
        if session.principal != who.uuid:
            raise NotFound(NO_SESSION_OF_YOURS)
        await auth.store.revoke_session(session.uuid)
        return json_response(OK)

    @post("/api/auth/logout", status_code=200)
    async def logout(request: Request[Any, Any, Any]) -> Response[bytes]:
        who = await gw.principal(request, "")
        if who.session and isinstance(gw.auth, LoginAuthenticator):
            # Stricter than the reference, which leaves the session to its expiry.
            await gw.auth.store.revoke_session(who.session)
        response = json_response({})
        response.delete_cookie(API_KEY_COOKIE)
        response.delete_cookie("bluesky_httpserver_csrf")
        return response

    @post("/api/auth/apikey", status_code=200)
    async def apikey_new(request: Request[Any, Any, Any]) -> Response[bytes]:
        if not isinstance(gw.auth, LoginAuthenticator):
            await gw.principal(request, "")
        configured = Forbidden(f"{CONFIGURED}: ask the gateway's administrator for a key (ADR 6)")
        auth = logins(gw, configured)
        who = await gw.principal(request, "user:apikeys")
        params = decode_body(await request.body(), ApiKeyParams, "/api/auth/apikey")
        source = None if who.api_key_scopes is None else set(who.api_key_scopes)
        return json_response(await new_apikey(auth, who.uuid, params, set(who.scopes), source))

    @get("/api/auth/apikey", status_code=200)
    async def apikey_get(request: Request[Any, Any, Any]) -> Response[bytes]:
        key = credentials_of(request).api_key
        if key is None:
            raise Unauthorized("No API key was provided with this request.")
        if not isinstance(gw.auth, LoginAuthenticator):
            # A configured key: what there is to say about it.
            who = await gw.principal(request, "")
            return json_response(
                {
                    "first_eight": key[:8],
                    "expiration_time": None,
                    "note": None,
                    "scopes": sorted(who.scopes),
                    "latest_activity": None,
                }
            )
        auth = logins(gw)
        record = await auth.store.apikey(secret_of(key))
        if record is None:
            raise Unauthorized("Invalid API key")
        return json_response(apikey_info(record))

    @delete("/api/auth/apikey", status_code=200)
    async def apikey_delete(request: Request[Any, Any, Any]) -> Response[bytes]:
        if not isinstance(gw.auth, LoginAuthenticator):
            await gw.principal(request, "")
        revoke = Forbidden(f"{CONFIGURED}: a key is revoked by removing it from the key file")
        auth = logins(gw, revoke)
        who = await gw.principal(request, "user:apikeys")
        first_eight = request.query_params.get("first_eight")
        if not first_eight:
            raise Unprocessable("DELETE /api/auth/apikey needs the query parameter first_eight")
        if not who.uuid or not await auth.store.delete_apikey(who.uuid, first_eight):
            raise NotFound("The currently-authenticated user has no such API key.")
        return json_response(OK)

    @get("/api/auth/whoami", status_code=200)
    async def whoami(request: Request[Any, Any, Any]) -> Response[bytes]:
        who = await gw.principal(request, "")
        decode_body(await request.body(), NoParams, "/api/auth/whoami")
        if not isinstance(gw.auth, LoginAuthenticator) or not who.uuid:
            if who.anonymous and not who.scopes:
                raise Unauthorized("Not authenticated: no token or API key came with the request")
            return json_response(special_whoami(who))
        p = await gw.auth.store.principal(who.uuid)
        if p is None:
            raise Unauthorized("Invalid API key or token: its principal is gone")
        return json_response(await gw.auth.describe(p))

    @get("/api/auth/scopes", status_code=200)
    async def scopes(request: Request[Any, Any, Any]) -> Response[bytes]:
        who = await gw.principal(request, "")
        decode_body(await request.body(), NoParams, "/api/auth/scopes")
        if who.anonymous and not who.scopes:
            raise Unauthorized("Not authenticated: no token or API key came with the request")
        return json_response({"roles": sorted(who.roles), "scopes": sorted(who.scopes)})

    @get("/api/auth/principal", status_code=200)
    async def principal_list(request: Request[Any, Any, Any]) -> Response[bytes]:
        auth = logins(gw)
        await gw.principal(request, "admin:read:principals")
        return json_response([await auth.describe(p) for p in await auth.store.principals()])

    async def stored_principal(auth: LoginAuthenticator, uuid: str) -> Any:
        h = hex_uuid(uuid)
        p = await auth.store.principal(h) if h else None
        if p is None:
            raise NotFound(f"Principal {uuid[:100]} does not exist or insufficient permissions.")
        return p

    @get("/api/auth/principal/{uuid:str}", status_code=200)
    async def principal_one(request: Request[Any, Any, Any], uuid: str) -> Response[bytes]:
        auth = logins(gw)
        await gw.principal(request, "admin:read:principals")
        return json_response(await auth.describe(await stored_principal(auth, uuid)))

    @post("/api/auth/principal/{uuid:str}/apikey", status_code=200)
    async def principal_apikey(request: Request[Any, Any, Any], uuid: str) -> Response[bytes]:
        auth = logins(gw)
        await gw.principal(request, "admin:apikeys")
        p = await stored_principal(auth, uuid)
        params = decode_body(
            await request.body(), ApiKeyParams, f"/api/auth/principal/{uuid}/apikey"
        )
        users = auth.usernames([(i.id, i.provider) for i in p.identities])
        allowed = set().union(*(auth.access.scopes_of(u) for u in users)) if users else set()
        return json_response(await new_apikey(auth, p.uuid, params, allowed, None))

    @route(
        "/api/auth/{rest:path}",
        http_method=["GET", "POST", "PUT", "PATCH", "DELETE"],
        status_code=200,
    )
    async def other(rest: str) -> None:
        raise NotFound(f"No route /api/auth{rest[:100]} (the routes: docs/http.md#logins)")

    return [
        other,
        token,
        code_get,
        code_post,
        providers,
        refresh,
        revoke,
        logout,
        apikey_new,
        apikey_get,
        apikey_delete,
        whoami,
        scopes,
        principal_list,
        principal_one,
        principal_apikey,
    ]
