"""The compose set-up on loopback: a 3-node NATS cluster with the accounts config, services
connecting as their own users, streams replicated on all three nodes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from qserver.client import AccessDenied, Client
from qserver.doctor import DoctorConfig, run_checks
from services.stack.natscluster import NatsCluster
from tests.conftest import USER, plan, unique_prefix
from tests.integration.nats_roles_support import RoleServices, new_passwords, write_accounts

PREFIX = unique_prefix()
PASSWORDS = new_passwords(PREFIX)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    d = tmp_path_factory.mktemp("secure-cluster")
    accounts = write_accounts(d / "accounts.conf", PREFIX, PASSWORDS)
    c = NatsCluster(d, include=accounts).start()
    yield c
    c.stop()


async def jetstream_ready(services: RoleServices, timeout: float = 60.0) -> None:
    """The cluster's JetStream has a meta leader: streams can be created (a service that
    starts before exits, as it should, and a container's restart policy starts it again)."""
    c = await services.connect_as("queue")
    try:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    await c.nc.jetstream().account_info()
                    return
                except Exception:
                    await asyncio.sleep(0.1)
    finally:
        await c.close()


@pytest.fixture(scope="module")
async def svc(
    cluster: NatsCluster, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RoleServices]:
    services = RoleServices(
        cluster,  # type: ignore[arg-type]  # what the services need of it: .url
        tmp_path_factory.mktemp("logs"),
        prefix=PREFIX,
        env={"QSERVER_JS_REPLICAS": "3"},
    )
    services.passwords = PASSWORDS
    await jetstream_ready(services)
    services.start()
    try:
        await services.wait_ready(timeout=30)
        yield services
    finally:
        services.stop_all()


@pytest.fixture
async def as_role(svc: RoleServices) -> AsyncIterator[dict[str, Client]]:
    clients = {r: await svc.connect_as(r) for r in ("operator", "observer", "queue")}
    yield clients
    for c in clients.values():
        await c.close()


async def test_streams_are_replicated_on_the_three_nodes(
    svc: RoleServices, as_role: dict[str, Client]
) -> None:
    js = as_role["queue"].nc.jetstream()  # the queue service's user may read the JS API
    s = as_role["queue"].subjects
    for stream in (s.queue_stream, s.history_stream, s.results_stream):
        info = await js.stream_info(stream)
        assert info.config.num_replicas == 3, stream
        assert info.cluster is not None and len(info.cluster.replicas or []) == 2, stream


async def test_roles_hold_on_the_cluster(as_role: dict[str, Client]) -> None:
    item = {"item": plan("count", ["det1"]), **USER}
    with pytest.raises(AccessDenied, match="queue_item_add"):
        await as_role["observer"].request("queue_item_add", item)
    r = await as_role["operator"].request("queue_item_add", item)
    assert r["success"], r
    uids = [it["item_uid"] for it in (await as_role["observer"].request("queue_get"))["items"]]
    assert r["item"]["item_uid"] in uids
    with pytest.raises(AccessDenied, match="may not publish"):
        await as_role["queue"].request("queue_clear")  # services do not call the API


def test_the_cluster_nodes_read_the_accounts_file(cluster: NatsCluster) -> None:
    for node in cluster.nodes:
        assert 'include "accounts.conf"' in node.config()
        copied = node.directory / "accounts.conf"
        assert copied.read_text().count("user:") == len(PASSWORDS)


async def test_doctor_as_observer_sees_the_cluster_and_every_service(svc: RoleServices) -> None:
    cfg = DoctorConfig(nats_url=svc.nats.url, prefix=PREFIX, auth=svc.auth("observer"))
    checks = {c.name: c for c in await run_checks(cfg)}
    assert checks["NATS"].status == "ok"
    assert "3 servers known" in checks["NATS"].detail
    for name in ("queue service", "history service", "worker service"):
        assert checks[name].status == "ok", checks[name]
    # Client users have no JetStream API (its replies could be aimed at a stream; ADR 11).
    assert checks["JetStream"].status == "skip", checks["JetStream"]
    assert "no JetStream API" in checks["JetStream"].detail
    assert checks["worker environment"].status == "ok"
