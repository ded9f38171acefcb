"""`qserver stack up --http-config FILE`: the stack's gateway takes logins as the file says."""

from __future__ import annotations

import httpx
import yaml

from tests.integration.login_support import TOY, write_config
from tests.integration.test_stack import Stacks


async def test_the_stack_gateway_takes_logins_from_a_bluesky_httpserver_config(
    stacks: Stacks,
) -> None:
    config = write_config(stacks.tmp_path, TOY)
    stack = stacks.start("--no-kafka", "--http-config", str(config))
    info = await stack.wait_info()
    assert info["http_api_key"] is None and info["http_config"] == str(config.resolve())
    assert not (stacks.data_dir / "http_api_key").exists()
    async with httpx.AsyncClient(base_url=info["http_url"], timeout=30) as http:
        assert (await http.get("/api/status")).status_code == 401
        r = await http.post(
            "/api/auth/provider/toy/token", data={"username": "tom", "password": "tom_password"}
        )
        assert r.status_code == 200, r.text
        headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
        assert (await http.get("/api/status", headers=headers)).json()["manager_state"] == "idle"
        item = {"item_type": "plan", "name": "count", "args": [["det1"]]}
        r = await http.post("/api/queue/item/add", json={"item": item}, headers=headers)
        assert (r.json()["item"]["user"], r.json()["item"]["user_group"]) == ("tom", "primary")
        await http.post("/api/queue/clear", headers=headers)
        # Listing and deleting keys scan the login bucket: within the gateway's NATS rights.
        r = await http.post("/api/auth/apikey", json={"expires_in": 60}, headers=headers)
        assert r.status_code == 200, r.text
        first_eight = r.json()["first_eight"]
        r = await http.get("/api/auth/whoami", headers=headers)
        assert [k["first_eight"] for k in r.json()["api_keys"]] == [first_eight], r.text
        r = await http.delete(
            "/api/auth/apikey", params={"first_eight": first_eight}, headers=headers
        )
        assert r.status_code == 200, r.text
        assert (await http.get("/api/auth/whoami", headers=headers)).json()["api_keys"] == []
    assert "logins as configured in" in stack.output()


async def test_a_config_with_unsupported_settings_stops_the_stack_naming_them(
    stacks: Stacks,
) -> None:
    bad = {
        **TOY,
        "uvicorn": {"host": "0.0.0.0", "port": 60610},
        "database": {"uri": "sqlite:///x.sqlite"},
    }
    path = stacks.tmp_path / "bad.yml"
    path.write_text(yaml.safe_dump(bad))
    stack = stacks.start("--no-kafka", "--http-config", str(path))
    assert await stack.wait_exit(60) == 1
    out = stack.output()
    assert "'uvicorn': give the gateway's --host and --port" in out, out
    assert "'database': logins are kept in JetStream" in out, out
