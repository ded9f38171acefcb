"""scan_id goes on across environment opens, a crash mid-run and a restart of everything:
`RE.md` lives in the state store (issue 10, point 9; ADR 12)."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import msgspec
import pytest

from qserver.client import Client
from services.stack.natsserver import NatsServer
from services.worker.env.metadata import MD_KEY
from tests.conftest import Services, report
from tests.integration.test_execution import add, history, idle, open_env, quick, until


async def run_items(client: Client, n: int) -> None:
    """Run `n` quick counts through the queue and wait until history has them."""
    before = (await client.request("status"))["items_in_history"]
    for _ in range(n):
        await add(client, quick())
    assert (await client.request("queue_start"))["success"]
    await until(client, lambda st: idle(st) and st["items_in_history"] == before + n, timeout=60)


async def close_env(client: Client) -> None:
    assert (await client.request("environment_close"))["success"]
    await until(client, lambda st: not st["worker_environment_exists"] and idle(st), timeout=30)


def scan_ids(records: list[dict[str, Any]]) -> list[int]:
    """Every run's scan_id, oldest item first (history lists the newest last)."""
    return [s for rec in records for s in rec["result"]["scan_ids"]]


@pytest.mark.timeout(300)
async def test_scan_ids_increase_across_opens_a_crash_and_a_restart(
    own_nats: NatsServer, tmp_path: Path
) -> None:
    svc = Services(own_nats, tmp_path / "logs")
    svc.start()
    try:
        await svc.wait_ready()
        c = await svc.connect()
        await open_env(c)
        await run_items(c, 2)
        await close_env(c)
        await open_env(c)  # a second environment process
        await run_items(c, 1)

        # The environment dies mid-run: the scan_id of that run is never handed out again.
        await add(c, quick(num=100, delay=0.1))
        assert (await c.request("queue_start"))["success"]
        await until(c, lambda st: st["re_state"] == "running")
        async with asyncio.timeout(30):
            while not (await c.request("re_runs"))["run_list"]:
                await asyncio.sleep(0.05)
        assert (await c.request("environment_destroy"))["success"]
        await until(c, lambda st: not st["worker_environment_exists"] and idle(st), timeout=30)
        assert (await c.request("queue_clear"))["success"]  # the failed item was put back
        await open_env(c)
        await run_items(c, 1)

        # Everything stops; nats-server and the services start again on the same store.
        await c.close()
        svc.client = None
        svc.stop_all()
        own_nats.restart()
        svc.start()
        await svc.wait_ready(timeout=60)
        c = await svc.connect()
        await open_env(c)
        await run_items(c, 1)

        records = await history(c)
        ids = scan_ids(records)
        report(f"scan_ids across 3 opens, a crash and a restart: {ids}")
        statuses = [r["result"]["exit_status"] for r in records]
        assert statuses == ["completed"] * 3 + ["failed"] + ["completed"] * 2, statuses
        assert len(ids) == 6
        assert all(a < b for a, b in itertools.pairwise(ids)), ids
        kv = await c.nc.jetstream().key_value(c.subjects.re_md_bucket)
        stored = msgspec.json.decode((await kv.get(MD_KEY)).value or b"{}")
        assert stored["scan_id"] == ids[-1]
    finally:
        if svc.client is not None:
            await svc.client.close()
        svc.stop_all()
