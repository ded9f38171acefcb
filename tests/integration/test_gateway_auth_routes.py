"""The rest of `/api/auth/*`: what the reference client's key and session calls get here."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import yaml
from bluesky_queueserver_api.http import REManagerAPI

from tests.conftest import Services
from tests.integration.gateway_support import Gateway, gateway_for

KEY = "AuthRoutesKey123"


@pytest.fixture(scope="module")
async def gateway(
    module_services: Services, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Gateway]:
    config = tmp_path_factory.mktemp("gateway") / "gateway.yml"
    keys = [{"key": KEY, "user": "alice", "roles": ["observer"]}]
    config.write_text(yaml.safe_dump({"api_keys": keys, "allow_anonymous_access": True}))
    async with gateway_for(module_services, "--http-config", str(config)) as gw:
        yield gw


def test_the_reference_clients_key_and_session_calls_get_clear_answers(gateway: Gateway) -> None:
    RM = REManagerAPI(http_server_uri=gateway.url)
    RM.set_authorization_key(api_key=KEY)
    try:
        info = RM.apikey_info()
        assert info["first_eight"] == KEY[:8]
        assert "read:status" in info["scopes"] and "write:queue:edit" not in info["scopes"]
        with pytest.raises(RM.HTTPClientError, match="configured for this gateway"):
            RM.apikey_new(expires_in=600)
        with pytest.raises(RM.HTTPClientError, match="removing it from the key file"):
            RM.apikey_delete(first_eight=KEY[:8])
        with pytest.raises(RM.HTTPClientError, match="no logins, sessions or tokens"):
            RM.send_request(method=("POST", "/api/auth/session/refresh"), params={})
        RM.logout()  # nothing to end, and no error
    finally:
        RM.close()


async def test_other_auth_paths_say_why_they_are_not_here(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        key = {"Authorization": f"ApiKey {KEY}"}
        r = await http.post("/api/auth/provider/toy/token", data={"username": "a", "password": "b"})
        assert r.status_code == 401 and "no logins" in r.json()["detail"]
        r = await http.get("/api/auth/principal", headers=key)
        assert r.status_code == 404 and "ADR 6" in r.json()["detail"]
        r = await http.delete("/api/auth/session/revoke/abc", headers=key)
        assert r.status_code == 404
        # Anonymous callers have no key to describe; a wrong key is still refused.
        r = await http.get("/api/auth/apikey")
        assert r.status_code == 401 and "No API key" in r.json()["detail"]
        r = await http.get("/api/auth/apikey", headers={"Authorization": "ApiKey wrong"})
        assert r.status_code == 401 and r.json()["detail"] == "Invalid API key"
        # The routes that exist still answer as before.
        r = await http.get("/api/auth/whoami", headers=key)
        assert r.status_code == 200 and r.json()["identities"][0]["id"] == "alice"
