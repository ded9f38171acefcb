"""Start-up order does not matter: services started before NATS or JetStream wait, then work.

Each service waits (with back-off and a log line) for NATS to answer and for JetStream to
create and read its streams, never exiting because it came first (ADR 9).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest

from qserver.client import Client
from services.runtime.procs import ServiceProcess
from services.stack.natscluster import NatsCluster
from services.stack.natsserver import NatsServer, free_port
from tests.conftest import USER, Services, unique_prefix

T = 60.0


async def logged(procs: Iterable[ServiceProcess], text: str) -> None:
    """Wait until each process has logged `text`, failing if one exits meanwhile."""
    deadline = time.monotonic() + T
    for p in procs:
        while text not in p.log_tail(200):
            assert p.alive(), f"{p.name} exited:\n{p.log_tail()}"
            assert time.monotonic() < deadline, f"{p.name} did not log {text!r}:\n{p.log_tail()}"
            await asyncio.sleep(0.1)


async def runs_an_item(nats_url: str, services: Services) -> None:
    """The services answer, open the environment and run a plan to completion."""
    await services.wait_ready(T)
    async with await Client.connect(nats_url, services.prefix, timeout=10.0) as c:
        r = await c.request("environment_open", timeout=30)
        assert r["success"], r
        await c.wait_for(lambda st: st["worker_environment_exists"], T)
        item: dict[str, Any] = {"item_type": "plan", "name": "count", "args": [["det1"]]}
        r = await c.request("queue_item_add", {"item": item, **USER})
        assert r["success"], r
        assert (await c.request("queue_start"))["success"]
        deadline = time.monotonic() + T
        while not (hist := (await c.request("history_get"))["items"]):
            assert time.monotonic() < deadline, services.logs()
            await asyncio.sleep(0.1)
        assert hist[0]["result"]["exit_status"] == "completed", hist
        await c.request("environment_close")


@pytest.mark.timeout(180)
async def test_services_started_before_nats_wait_for_it_then_work(tmp_path: Path) -> None:
    nats = NatsServer(tmp_path / "nats")  # its port is chosen, nothing listens yet
    services = Services(nats, tmp_path)
    services.start()
    port = free_port()
    gateway = ServiceProcess(
        "gateway",
        nats.url,
        services.prefix,
        tmp_path / "gateway.log",
        "--port",
        str(port),
        "--no-auth",
    ).start()
    try:
        await logged(services.procs.values(), "waiting for NATS")
        nats.start()
        await runs_an_item(nats.url, services)
        # The gateway waited too: it answers with the queue's status.
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            deadline = time.monotonic() + T
            while True:
                try:
                    r = await http.get("/api/status", timeout=5.0)
                    if r.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert gateway.alive(), gateway.log_tail()
                assert time.monotonic() < deadline, gateway.log_tail()
                await asyncio.sleep(0.1)
        assert "manager_state" in r.json(), r.text
    finally:
        gateway.stop()
        services.stop_all()
        nats.stop()


@pytest.mark.timeout(180)
async def test_services_started_while_a_fresh_cluster_has_no_quorum_wait_then_work(
    tmp_path: Path,
) -> None:
    """One node of three up: NATS answers, JetStream cannot (no meta leader, then stream
    leaders being elected); the services wait for it rather than exit."""
    cluster = NatsCluster(tmp_path / "cluster")
    cluster.nodes[0].start()
    services = Services(
        cluster.nodes[0],  # type: ignore[arg-type]  # a node has the `url` Services needs
        tmp_path,
        prefix=unique_prefix(),
        env={"QSERVER_JS_REPLICAS": "3"},
    )
    services.start()
    try:
        await logged(services.procs.values(), "waiting for JetStream")
        for node in cluster.nodes[1:]:
            node.start()
        await runs_an_item(cluster.nodes[0].url, services)
        assert all(p.alive() for p in services.procs.values()), services.logs()
    finally:
        services.stop_all()
        cluster.stop()
