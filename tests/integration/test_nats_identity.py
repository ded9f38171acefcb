"""Identity decided by the server over NATS: a user acts only as itself, in its own groups.

On the embedded stack (its client key is the user `operator`, group `primary`) and on a
3-node cluster with the production accounts and a person `alice` (ADR 24).
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from qserver.client import AccessDenied, Client
from qserver.connect import NatsAuth
from qserver.localstack import stack_credentials
from services.stack.nats_permissions import render_accounts, roles
from services.stack.natscluster import NatsCluster
from tests.conftest import plan, unique_prefix
from tests.integration.nats_roles_support import RoleServices
from tests.integration.test_secure_cluster import jetstream_ready
from tests.integration.test_stack import Stacks

SPOOF = {"user": "mallory", "user_group": "primary"}


async def refused(client: Client, subject: str, params: dict[str, Any]) -> str:
    """The permission error of a raw request to `subject` (what a hand-made client sends)."""
    with pytest.raises(AccessDenied) as e:
        await client._request_watched(subject, json.dumps(params).encode(), 5.0)
    return str(e.value)


async def claims_are_refused(client: Client, me: str, not_my_group: str) -> None:
    """`me` can name neither another user nor a group it is not in, however it asks."""
    s = client.subjects
    add = {"item": plan("count", ["det1"]), **SPOOF}
    # The body's identity is overwritten with the subject's, which NATS checked.
    r = await client.request("queue_item_add", add)
    assert r["success"], r
    assert (r["item"]["user"], r["item"]["user_group"]) == (me, "primary")
    # Another name, or a group it is not in, on the identity subject: NATS refuses.
    assert "may not publish" in await refused(
        client, s.api_as("mallory", "primary", "queue_item_add"), add
    )
    assert "may not publish" in await refused(
        client, s.api_as(me, not_my_group, "queue_item_add"), add
    )
    # The identity methods on the plain subject (where a body's identity would count): refused.
    for method in ("queue_item_add", "queue_item_execute", "lock", "plans_allowed"):
        assert "may not publish" in await refused(client, s.api(method), add)
    # The group of a request is checked too, with the client's own name.
    with pytest.raises(AccessDenied):
        await client.request("plans_allowed", {"user_group": not_my_group})
    assert (await client.request("plans_allowed", {"user_group": "primary"}))["success"]
    # A lock carries the user NATS vouched for.
    r = await client.request("lock", {"lock_key": "k1", "queue": True, "user": "mallory"})
    assert r["lock_info"]["user"] == me, r
    assert (await client.request("unlock", {"lock_key": "k1"}))["success"]
    await client.request("queue_clear", {})


async def test_the_embedded_stacks_client_acts_only_as_itself(stacks: Stacks) -> None:
    stack = stacks.start("--no-kafka")
    info = await stack.wait_info()
    async with await Client.connect(info["nats_url"], info["prefix"], timeout=30) as client:
        assert client.act_as == "operator"
        await claims_are_refused(client, "operator", "test_user")
        # History records carry the identity too: run one plan as 'mallory' (claimed).
        assert (await client.request("environment_open", {}))["success"]
        async with asyncio.timeout(60):
            while not (await client.request("status"))["worker_environment_exists"]:
                await asyncio.sleep(0.2)
        r = await client.request("queue_item_execute", {"item": plan("count", ["det1"]), **SPOOF})
        assert r["success"], r
        uid = r["item"]["item_uid"]
        async with asyncio.timeout(60):
            while True:
                items = (await client.request("history_get", {}))["items"]
                done = [i for i in items if i["item_uid"] == uid]
                if done:
                    break
                await asyncio.sleep(0.2)
        assert (done[0]["user"], done[0]["user_group"]) == ("operator", "primary")
        await client.request("environment_close", {})


# ----- a 3-node cluster with the production accounts and a person of its own -----

PREFIX = unique_prefix()
PEOPLE = {"alice": ["primary"]}
PASSWORDS = {n: secrets.token_urlsafe(16) for n in [*(r.name for r in roles(PREFIX)), *PEOPLE]}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    d = tmp_path_factory.mktemp("identity-cluster")
    literal = {name: json.dumps(pw) for name, pw in PASSWORDS.items()}
    accounts = d / "accounts.conf"
    accounts.write_text(render_accounts(literal, prefix=PREFIX, people=PEOPLE))
    c = NatsCluster(d, include=accounts).start()
    yield c
    c.stop()


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
    services.start("queue", "history")
    try:
        await services.wait_ready(timeout=60)
        yield services
    finally:
        services.stop_all()


async def test_a_person_on_the_cluster_acts_only_as_itself(svc: RoleServices) -> None:
    auth = NatsAuth(user="alice", password=PASSWORDS["alice"])
    async with await Client.connect(svc.nats.url, PREFIX, timeout=30, auth=auth) as alice:
        assert alice.act_as == "alice"
        await claims_are_refused(alice, "alice", "test_user")
    # Stack credentials are not at play here: the person's own user name decides.
    assert stack_credentials(svc.nats.url, auth) == auth
