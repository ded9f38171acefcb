"""`re_metadata`: the environment's RE.md over NATS, HTTP (`GET /api/re/metadata`), the CLI
and the reference's client, filtered by the permitted keys."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
from bluesky_queueserver_api.http.aio import REManagerAPI as AsyncREManagerAPI

from qserver.client import Client
from services.stack.natsserver import NatsServer
from tests.conftest import USER, Services, plan, running_services
from tests.integration.gateway_support import gateway_for

KEY = "MetadataKey123"
NO_ENV = "Environment does not exist. Cannot retrieve RE metadata."


async def open_environment(client: Client) -> None:
    assert (await client.request("environment_open"))["success"]
    await client.wait_for(
        lambda s: s["worker_environment_exists"] and s["manager_state"] == "idle", timeout=90
    )


async def close_environment(client: Client) -> None:
    assert (await client.request("environment_close"))["success"]
    await client.wait_for(lambda s: not s["worker_environment_exists"], timeout=60)


async def cli(services: Services, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "qserver.cli", "-a", services.nats.url, "--prefix", services.prefix,
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def run_count(client: Client) -> None:
    reply = await client.request("queue_item_add", {"item": plan("count", ["det1"]), **USER})
    assert reply["success"], reply
    assert (await client.request("queue_start"))["success"]
    await client.wait_for(
        lambda s: s["items_in_queue"] == 0 and s["manager_state"] == "idle", timeout=60
    )


@pytest.mark.timeout(240)
async def test_re_metadata_reads_the_environments_run_engine_metadata(
    services: Services, client: Client
) -> None:
    # Without an environment: the reference's reply, in every client.
    reply = await client.request("re_metadata")
    assert reply == {"success": False, "msg": NO_ENV, "re_metadata": {}}
    rc, out = await cli(services, "re", "metadata")
    assert rc == 2 and NO_ENV in out, out
    env = {"QSERVER_HTTP_SERVER_SINGLE_USER_API_KEY": KEY}
    async with gateway_for(services, env=env) as gw:
        RM = AsyncREManagerAPI(http_server_uri=gw.url, request_fail_exceptions=False)
        RM.set_authorization_key(api_key=KEY)

        async def re_metadata() -> dict[str, Any]:
            # What `RM.re_metadata()` of the newer client sends (0.0.13 has no such method).
            reply: dict[str, Any] = await RM.send_request(method=("GET", "/api/re/metadata"))
            return reply

        try:
            assert await re_metadata() == {"success": False, "msg": NO_ENV, "re_metadata": {}}

            await open_environment(client)
            md = (await re_metadata())["re_metadata"]
            # What the profile gave its RunEngine, and what bluesky adds.
            assert md["metadata_key"] == "metadata_value"
            assert "bluesky" in md["versions"]
            before = md.get("scan_id", 0)

            await run_count(client)
            after: dict[str, Any] = await client.request("re_metadata")
            assert after["success"] and after["msg"] == ""
            assert after["re_metadata"]["scan_id"] == before + 1
            history = (await client.request("history_get"))["items"]
            assert history[-1]["result"]["scan_ids"] == [before + 1]
            # The same over HTTP and the CLI.
            assert (await re_metadata())["re_metadata"] == after["re_metadata"]
            rc, out = await cli(services, "re", "metadata")
            assert rc == 0 and '"metadata_key": "metadata_value"' in out, out
        finally:
            await RM.close()
    await close_environment(client)
    assert (await client.request("re_metadata"))["msg"] == NO_ENV


@pytest.mark.timeout(240)
async def test_only_the_permitted_keys_are_shown(nats_server: NatsServer, tmp_path: Path) -> None:
    env = {"QSERVER_PERMITTED_RE_METADATA_KEYS": "/metadata_key:/versions/bluesky"}
    async with running_services(nats_server, tmp_path, env=env) as svc:
        assert svc.client is not None
        await open_environment(svc.client)
        reply = await svc.client.request("re_metadata")
        assert reply["success"], reply
        md = reply["re_metadata"]
        assert md["metadata_key"] == "metadata_value"
        assert set(md) == {"metadata_key", "versions"}
        assert set(md["versions"]) == {"bluesky"}
        await close_environment(svc.client)
