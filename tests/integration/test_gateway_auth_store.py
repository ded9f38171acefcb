"""`--auth-store NAME`: separate sets of logins on one queue server (what tests isolate by)."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.conftest import Services
from tests.integration.gateway_support import gateway_for
from tests.integration.login_support import TOY, write_config


async def test_gateways_of_different_auth_stores_do_not_share_logins(
    module_services: Services, tmp_path: Path
) -> None:
    config = str(write_config(tmp_path, TOY))
    async with (
        gateway_for(module_services, "--http-config", config, "--auth-store", "one") as one,
        gateway_for(module_services, "--http-config", config, "--auth-store", "two") as two,
        httpx.AsyncClient(base_url=one.url) as h1,
        httpx.AsyncClient(base_url=two.url) as h2,
    ):
        form = {"username": "bob", "password": "bob_password"}
        tokens = (await h1.post("/api/auth/provider/toy/token", data=form)).json()
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        key = (await h1.post("/api/auth/apikey", json={"expires_in": 60}, headers=headers)).json()
        assert (await h1.get("/api/auth/whoami", headers=headers)).status_code == 200
        # Another store: another signing key and other keys, so neither is valid there.
        assert (await h2.get("/api/status", headers=headers)).status_code == 401
        r = await h2.get("/api/status", headers={"Authorization": f"ApiKey {key['secret']}"})
        assert (r.status_code, r.json()["detail"]) == (401, "Invalid API key")
