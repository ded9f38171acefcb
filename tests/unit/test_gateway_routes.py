"""The route table against bluesky-queueserver-api's own map of methods to HTTP routes."""

from __future__ import annotations

from bluesky_queueserver_api.comm_base import rest_api_method_map

from qserver.protocol.api import REQUEST_TYPES
from services.gateway.auth import ALL_SCOPES
from services.gateway.openapi import LOCAL_ROUTES
from services.gateway.routes import API_ROUTES, ROUTES

LOCAL = {(http.upper(), path) for path, http, _, _, _ in LOCAL_ROUTES}


def test_every_implemented_method_has_the_route_the_http_client_calls() -> None:
    ours = {(r.http, r.path): r.method for r in API_ROUTES}
    implemented = [m for m in rest_api_method_map if m in REQUEST_TYPES]
    assert len(implemented) >= 40
    missing = [
        (method, http, path)
        for method, (http, path) in rest_api_method_map.items()
        if (method in REQUEST_TYPES or method == "config_get")
        and ours.get((http, path)) != method
        and (http, path) not in LOCAL
    ]
    assert missing == []


def test_the_auth_routes_the_client_knows_are_served() -> None:
    for method in ("whoami", "api_scopes"):
        assert rest_api_method_map[method] in LOCAL


def test_every_route_names_a_known_scope_and_method() -> None:
    for r in ROUTES:
        assert r.scope in ALL_SCOPES, r
        assert r.method in REQUEST_TYPES, r
    paths = [(r.http, r.path) for r in ROUTES] + sorted(LOCAL)
    assert len(paths) == len(set(paths))
