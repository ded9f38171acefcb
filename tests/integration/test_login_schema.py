"""The login routes in a login gateway's OpenAPI document, checked with schemathesis."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from tests.conftest import Services
from tests.integration.gateway_support import Gateway, gateway_for
from tests.integration.login_support import TOY, write_config

MAX_EXAMPLES = 6


@pytest.fixture(scope="module")
async def gateway(
    module_services: Services, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Gateway]:
    config = write_config(tmp_path_factory.mktemp("login-schema"), TOY)
    args = ("--http-config", str(config), "--auth-store", "schema")
    async with gateway_for(module_services, *args) as gw:
        yield gw


def token(url: str) -> str:
    form = {"username": "bob", "password": "bob_password"}
    r = httpx.post(f"{url}/api/auth/provider/toy/token", data=form, timeout=30)
    assert r.status_code == 200, r.text
    access: str = r.json()["access_token"]
    return access


def test_the_login_routes_are_documented_and_answer_without_server_errors(
    gateway: Gateway, tmp_path: Path
) -> None:
    schema = schemathesis.openapi.from_url(f"{gateway.url}/openapi.json")
    operations = [r.ok() for r in schema.include(path_regex=r"^/api/auth/").get_all_operations()]
    paths = {op.path for op in operations}
    assert {
        "/api/auth/provider/toy/token",
        "/api/auth/session/refresh",
        "/api/auth/session/revoke/{session_id}",
        "/api/auth/apikey",
        "/api/auth/principal/{uuid}/apikey",
    } <= paths
    headers = {"Authorization": f"Bearer {token(gateway.url)}"}
    modes = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
    for operation, mode in itertools.product(operations, modes):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: schemathesis.Case) -> None:
            # No 500 and the documented shapes; logins may well be refused (401/404/422).
            case.call_and_validate(base_url=gateway.url, headers=headers)

        try:
            check()
        except Unsatisfiable:
            # No invalid input exists for a route without parameters (GET /providers).
            assert mode is schemathesis.GenerationMode.NEGATIVE
