"""`qserver stack up` runs the gateway: its URL and key are in stack.json, and the key works."""

from __future__ import annotations

import signal
import stat

import httpx

from tests.integration.test_stack import Stacks


async def test_stack_json_gives_the_gateway_url_and_a_working_key(stacks: Stacks) -> None:
    stack = stacks.start("--no-kafka")
    info = await stack.wait_info()
    key_file = stacks.data_dir / "http_api_key"
    assert info["http_api_key"] == key_file.read_text().strip()
    for path in (key_file, stacks.data_dir / "stack.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    async with httpx.AsyncClient(base_url=info["http_url"]) as http:
        assert (await http.get("/api/status")).status_code == 401
        r = await http.get(
            "/api/status", headers={"Authorization": f"ApiKey {info['http_api_key']}"}
        )
        assert r.status_code == 200 and r.json()["manager_state"] == "idle"
    stack.proc.send_signal(signal.SIGTERM)
    assert await stack.wait_exit(10) == 0, stack.output()

    # The key survives a restart: scripts that read it once keep working.
    again = stacks.start("--no-kafka")
    assert (await again.wait_info())["http_api_key"] == info["http_api_key"]


async def test_no_auth_opens_the_gateway_on_loopback(stacks: Stacks) -> None:
    stack = stacks.start("--no-kafka", "--no-auth")
    info = await stack.wait_info()
    assert info["http_api_key"] is None and info["http_url"].startswith("http://127.0.0.1:")
    async with httpx.AsyncClient(base_url=info["http_url"]) as http:
        r = await http.post("/queue/plan/add", json={"plan": {"name": "count", "args": [["det1"]]}})
        assert r.json()["success"] and r.json()["item"]["user"] == "UNAUTHENTICATED_SINGLE_USER"
