"""The `/api/auth/` routes in the OpenAPI document, for a gateway with logins (ADR 23)."""

from __future__ import annotations

from typing import Any

import msgspec

from qserver.protocol.auth import ApiKeyParams, RefreshToken

REF = "#/components/schemas/{name}"
ERROR = {"application/json": {"schema": {"$ref": REF.format(name="ErrorDetail")}}}
# Routes that answer without credentials too (as the reference's): authentication optional.
OPTIONAL_AUTH: list[dict[str, Any]] = [{}, {"ApiKey": []}, {"Bearer": []}]
# An object, or a token string (`code`).
JSON_OK: dict[str, Any] = {"application/json": {"schema": {}}}
COMMON = {
    "400": "Malformed body, unknown fields or wrong types (the detail names the problem)",
    "401": "No valid credentials, or not enough permissions",
    "404": "No such provider, session, key or principal",
    "413": "The body is larger than the limit",
    "422": "A field the route needs is missing",
    "429": "Too many failed logins: try later",
    "503": "NATS (the logins' store) does not answer",
}


def _op(summary: str, needs: str, codes: dict[str, str], **extra: Any) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": summary, "content": JSON_OK}}
    for code, text in {**COMMON, **codes}.items():
        responses[code] = {"description": text, "content": ERROR}
    op_id = "auth_" + "".join(c if c.isalnum() else "_" for c in summary.lower())[:50]
    return {
        "summary": summary,
        "description": needs,
        "operationId": op_id,
        "responses": responses,
        **extra,
    }


def _json(body: type[msgspec.Struct]) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": REF.format(name=body.__name__)}}},
    }


def _path_param(name: str) -> list[dict[str, Any]]:
    return [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}]


def auth_paths(providers: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(paths, schemas) of the auth routes; `providers` maps each name to its mode."""
    form = {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "required": ["username", "password"],
                    "properties": {"username": {"type": "string"}, "password": {"type": "string"}},
                }
            }
        },
    }
    paths: dict[str, Any] = {}
    for name, mode in providers.items():
        if mode == "password":
            paths[f"/api/auth/provider/{name}/token"] = {
                "post": _op(
                    f"Log in at {name}: access and refresh tokens",
                    "Needs a user name and password.",
                    {"401": "Wrong user name or password", "429": "Slowed down: too many failures"},
                    requestBody=form,
                    security=[],
                )
            }
        else:
            code = [{"name": "code", "in": "query", "required": True, "schema": {"type": "string"}}]
            op = _op(
                f"Log in at {name}: the refresh token",
                "The provider's code.",
                {"401": "Authentication failure"},
                parameters=code,
                security=[],
            )
            paths[f"/api/auth/provider/{name}/code"] = {"get": op}
    paths["/api/auth/providers"] = {
        "get": _op("The login providers", "Needs nothing.", {}, security=[])
    }
    paths["/api/auth/session/refresh"] = {
        "post": _op(
            "New tokens for a session",
            "Needs a refresh token.",
            {"401": "Session has expired"},
            requestBody=_json(RefreshToken),
            security=[],
        )
    }
    paths["/api/auth/session/revoke/{session_id}"] = {
        "delete": _op(
            "Revoke one of your sessions",
            "Needs credentials.",
            {"404": "No such session of yours"},
            parameters=_path_param("session_id"),
            security=OPTIONAL_AUTH,
        )
    }
    paths["/api/auth/logout"] = {
        "post": _op(
            "Log out (ends the token's session)",
            "Answers without credentials too (as the reference).",
            {},
            security=OPTIONAL_AUTH,
        )
    }
    paths["/api/auth/apikey"] = {
        "post": _op(
            "A new API key",
            "Needs scope `user:apikeys`.",
            {"400": "More scopes than yours", "401": "Not enough permissions"},
            requestBody=_json(ApiKeyParams),
        ),
        "get": _op(
            "The API key of this request", "Needs an API key.", {"401": "No or invalid API key"}
        ),
        "delete": _op(
            "Delete one of your API keys",
            "Needs scope `user:apikeys`.",
            {"404": "No such key of yours"},
            parameters=[
                {
                    "name": "first_eight",
                    "in": "query",
                    "required": True,
                    "schema": {"type": "string"},
                }
            ],
        ),
    }
    paths["/api/auth/principal"] = {
        "get": _op(
            "Every principal",
            "Needs scope `admin:read:principals`.",
            {"401": "Not enough permissions"},
        )
    }
    paths["/api/auth/principal/{uuid}"] = {
        "get": _op(
            "One principal",
            "Needs scope `admin:read:principals`.",
            {"404": "No such principal"},
            parameters=_path_param("uuid"),
        )
    }
    paths["/api/auth/principal/{uuid}/apikey"] = {
        "post": _op(
            "An API key for a principal",
            "Needs scope `admin:apikeys`.",
            {"404": "No such principal"},
            parameters=_path_param("uuid"),
            requestBody=_json(ApiKeyParams),
        )
    }
    _, schemas = msgspec.json.schema_components([RefreshToken, ApiKeyParams], ref_template=REF)
    return paths, schemas
