"""The OpenAPI document, built from the route table and the msgspec request types.

Written here rather than derived by Litestar because the handlers read raw bodies (GET
routes carry JSON bodies, which Litestar's `data` parameter does not allow), and because
the identity fields are the gateway's to set.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import msgspec

import qserver
from qserver.protocol.api import REQUEST_TYPES
from qserver.protocol.http import ErrorDetail, NoParams, ServerSleep
from services.gateway.extra_routes import UPLOAD_PATH, upload_operation
from services.gateway.openapi_auth import auth_paths
from services.gateway.routes import ROUTES, Route

REF = "#/components/schemas/{name}"
IDENTITY_FIELDS = {"user": ("user", "lock"), "user_group": ("user", "group")}

_ERRORS = {
    "400": "Malformed JSON, unknown fields or wrong types (the detail names the problem)",
    "401": "No API key, or a key that is not valid",
    "403": "The key lacks the scope the route needs",
    "413": "The body is larger than the limit",
    "503": "NATS or the service behind the route does not answer",
}

# Routes the gateway answers itself: (path, http method, scope, body type, summary).
LOCAL_ROUTES: tuple[tuple[str, str, str, type[msgspec.Struct] | None, str], ...] = (
    (
        "/api/stream_console_output",
        "get",
        "read:console",
        NoParams,
        "Console output as a stream of JSON lines",
    ),
    (
        "/api/config/get",
        "get",
        "read:config",
        NoParams,
        "The kernel's connection info in kernel mode ({} otherwise); its key only with "
        "write:scripts",
    ),
    ("/api/auth/whoami", "get", "", NoParams, "Who the key belongs to: name, roles, scopes"),
    ("/api/auth/scopes", "get", "", NoParams, "The roles and scopes of the key"),
    (
        "/api/test/server/sleep",
        "get",
        "read:testing",
        ServerSleep,
        "Answers after `time` seconds (at most 600): for testing clients' timeouts",
    ),
)


def body_type(route: Route) -> type[msgspec.Struct]:
    return route.body or REQUEST_TYPES[route.method]


def _schemas() -> dict[str, Any]:
    types = {body_type(r) for r in ROUTES} | {body for _, _, _, body, _ in LOCAL_ROUTES if body}
    types.add(ErrorDetail)
    _, components = msgspec.json.schema_components(
        sorted(types, key=lambda t: t.__name__), ref_template=REF
    )
    # The gateway sets the identity fields from the key: a client may leave them out, and
    # whatever it sends is replaced.
    for route in ROUTES:
        schema = components[body_type(route).__name__]
        for name, kinds in IDENTITY_FIELDS.items():
            if route.identity in kinds and name in schema.get("properties", {}):
                schema["required"] = [f for f in schema.get("required", []) if f != name]
                schema["properties"][name]["description"] = (
                    "Ignored: the gateway sets it from the caller's API key."
                )
    return components


def _operation(
    summary: str, scope: str, body: type[msgspec.Struct] | None, op_id: str, schemas: dict[str, Any]
) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": {
            "description": "The service's reply: `success` and `msg`, and more on success. "
            "A refused request is `success: false` with status 200.",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    }
    error = {"application/json": {"schema": {"$ref": REF.format(name="ErrorDetail")}}}
    for code, text in _ERRORS.items():
        responses[code] = {"description": text, "content": error}
    op: dict[str, Any] = {
        "summary": summary,
        "operationId": op_id,
        "description": f"Needs scope `{scope}`." if scope else "Needs a valid key.",
        "responses": responses,
    }
    if body is not None:
        # An empty body is `{}`: it may be left out unless the type has required fields.
        op["requestBody"] = {
            "required": bool(schemas[body.__name__].get("required")),
            "content": {"application/json": {"schema": {"$ref": REF.format(name=body.__name__)}}},
        }
    return op


def openapi_document(logins: dict[str, str] | None = None) -> dict[str, Any]:
    """The document; `logins` (provider name -> mode) adds the `/api/auth/` login routes."""
    schemas = _schemas()
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        op_id = f"{route.http.lower()}{route.path.replace('/', '_') or '_root'}"
        summary = f"`{route.method}`" + (" (first-release route)" if route.adapt else "")
        paths.setdefault(route.path, {})[route.http.lower()] = _operation(
            summary, route.scope, body_type(route), op_id, schemas
        )
    for path, http, scope, body, summary in LOCAL_ROUTES:
        op_id = f"{http}{path.replace('/', '_')}"
        paths.setdefault(path, {})[http] = _operation(summary, scope, body, op_id, schemas)
    errors = _operation("", "", None, "", schemas)["responses"]
    del errors["200"]
    paths[UPLOAD_PATH] = {"post": upload_operation(f"post{UPLOAD_PATH.replace('/', '_')}", errors)}
    security: dict[str, Any] = {
        "ApiKey": {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`ApiKey <key>`",
        }
    }
    if logins is not None:
        auth_paths_, auth_schemas = auth_paths(logins)
        paths.update(auth_paths_)
        schemas.update(auth_schemas)
        security["Bearer"] = {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "qserver HTTP gateway",
            "version": qserver.__version__,
            "description": "HTTP in front of the queue server's NATS API: the "
            "bluesky-httpserver routes under /api/ and the first release's routes. "
            "WebSockets (not listed): /api/status/ws, /api/info/ws, /api/console_output/ws, "
            "/api/progress/ws, /api/documents/ws.",
        },
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": security},
        "security": [{name: []} for name in security],
    }


def swagger_assets() -> Path:
    """The Swagger UI files of the installed `swagger-ui-bundle-v2` package (no CDN)."""
    root = resources.files("swagger_ui_bundle") / "vendor"
    dirs = sorted(p for p in Path(str(root)).iterdir() if p.name.startswith("swagger-ui"))
    return dirs[-1]


DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>qserver HTTP gateway</title>
  <link rel="stylesheet" href="/docs/assets/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/assets/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui"});
  </script>
</body>
</html>
"""
