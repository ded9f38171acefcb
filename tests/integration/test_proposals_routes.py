"""A member of a gated group reaches the queue by no route (issue 15, ADR 30): over HTTP, the
0MQ bridge and NATS it may read and propose, and everything else is refused, however broad
its key; a reviewer's approval is what puts its item in the queue."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import yaml
import zmq

from qserver.client import AccessDenied, Client
from qserver.connect import NatsAuth
from qserver.protocol.api import REQUEST_TYPES
from qserver.protocol.methods import GATED_METHODS
from qserver.protocol.subjects import IDENTITY_METHODS
from services.gateway.auth import ALL_SCOPES
from services.gateway.routes import ROUTES
from services.stack.nats_permissions import render_accounts, roles
from services.stack.natsserver import NatsServer
from tests.conftest import Services, plan, report, running_services, unique_prefix
from tests.integration.gateway_support import gateway_for
from tests.integration.nats_roles_support import RoleServices
from tests.integration.proposals_support import AGENT, REVIEWER, queue_args
from tests.integration.zmq_support import running_bridge, zmq_client

SCAN = plan("scan", ["det1"], "motor", -1, 1, 3)
AGENT_KEY, REVIEWER_KEY, PROPOSER_KEY = "AgentKey1", "ReviewerKey1", "ProposerKey1"


@pytest.fixture(scope="module")
async def gated(
    nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Services]:
    tmp = tmp_path_factory.mktemp("proposals-routes")
    async with running_services(nats_server, tmp, extra=queue_args(tmp)) as svc:
        yield svc


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"ApiKey {key}"}


async def test_over_http_a_gated_key_with_every_scope_only_reads_and_proposes(
    gated: Services, tmp_path: Path
) -> None:
    keys = [
        # Every scope there is: the group, not the key, keeps it from the queue.
        {"key": AGENT_KEY, "user": "agent1", "user_group": "agent", "scopes": sorted(ALL_SCOPES)},
        {"key": PROPOSER_KEY, "user": "agent2", "user_group": "agent", "roles": ["proposer"]},
        {"key": REVIEWER_KEY, "user": "reviewer", "roles": ["advanced"]},
    ]
    config = tmp_path / "gateway.yml"
    config.write_text(yaml.safe_dump({"api_keys": keys}))
    async with (
        gateway_for(gated, "--http-config", str(config)) as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=30) as http,
    ):
        # Every route that is not a read or a proposal: 403, before anything is sent on.
        let_through = []
        for route in ROUTES:
            if route.method in GATED_METHODS:
                continue
            r = await http.request(route.http, route.path, content=b"{}", headers=auth(AGENT_KEY))
            if r.status_code != 403 or "may only propose" not in r.text:
                let_through.append((route.path, r.status_code, r.text[:200]))
        assert let_through == []
        # Nor the kernel's connection info (its key runs any code, in kernel mode).
        r = await http.get("/api/config/get", headers=auth(AGENT_KEY))
        assert r.status_code == 403, r.text
        # Its add is a proposal; reads work.
        r = await http.post("/api/queue/item/add", json={"item": SCAN}, headers=auth(AGENT_KEY))
        assert r.status_code == 200 and r.json()["proposed"] is True, r.text
        uid = r.json()["item"]["item_uid"]
        assert r.json()["item"]["user"] == "agent1"
        assert (await http.get("/api/queue/get", headers=auth(AGENT_KEY))).json()["items"] == []
        listed = (await http.get("/api/proposals/list", headers=auth(AGENT_KEY))).json()
        assert [p["item"]["item_uid"] for p in listed["proposals"]] == [uid]
        # Even with the review scope, a gated member may not review.
        r = await http.post("/api/proposals/approve", json={"uid": uid}, headers=auth(AGENT_KEY))
        assert r.status_code == 403 and "may only propose" in r.text, r.text
        # The `proposer` role: reads and proposes; no queue edit scope at all.
        r = await http.post(
            "/api/proposals/add", json={"item": SCAN, "note": "n"}, headers=auth(PROPOSER_KEY)
        )
        assert r.status_code == 200 and r.json()["proposed"], r.text
        other = r.json()["item"]["item_uid"]
        r = await http.post("/api/queue/item/add", json={"item": SCAN}, headers=auth(PROPOSER_KEY))
        assert r.status_code == 401, r.text
        # The reviewer looks (with the dry run, or why there is none) and approves.
        r = await http.post(
            "/api/proposals/get", json={"uid": uid, "dry_run": True}, headers=auth(REVIEWER_KEY)
        )
        assert r.status_code == 200 and "success" in r.json()["dry_run"], r.text
        r = await http.post(
            "/api/proposals/approve", json={"uid": uid, "pos": "front"}, headers=auth(REVIEWER_KEY)
        )
        assert r.status_code == 200 and r.json()["success"], r.text
        r = await http.post(
            "/api/proposals/reject",
            json={"uid": other, "reason": "duplicate"},
            headers=auth(REVIEWER_KEY),
        )
        assert r.status_code == 200 and r.json()["success"], r.text
        queue = (await http.get("/api/queue/get", headers=auth(REVIEWER_KEY))).json()["items"]
        assert [i["item_uid"] for i in queue] == [uid]
        r = await http.post("/api/queue/clear", headers=auth(REVIEWER_KEY))
        assert r.status_code == 200, r.text
    # What the gate adds to a write that is not an add: one request, answered from memory.
    assert gated.client is not None
    took = []
    for _ in range(200):
        t0 = time.perf_counter()
        r = await gated.client.request("proposal_gate", {"user_group": "primary"})
        took.append(time.perf_counter() - t0)
        assert r["gated"] is False
    took.sort()
    report(
        f"proposal_gate over NATS (the gate check of the gateway and bridge): "
        f"median {took[100] * 1e3:.2f} ms"
    )


async def test_over_the_0mq_bridge_a_gated_key_only_reads_and_proposes(
    gated: Services, tmp_path: Path
) -> None:
    public, secret = zmq.curve_keypair()
    agent, agent_secret = zmq.curve_keypair()
    keys = tmp_path / "clients.yaml"
    keys.write_text(
        "clients:\n"
        f"  - {{public_key: '{agent.decode()}', user: agent1, user_group: agent, access: admin}}\n"
    )
    env = {"QSERVER_ZMQ_PRIVATE_KEY_FOR_SERVER": secret.decode()}
    async with (
        running_bridge(gated, "--client-keys", str(keys), env=env) as b,
        zmq_client(b.control, server_key=public.decode(), client_keys=(agent, agent_secret)) as z,
    ):
        let_through = []
        for method in sorted(REQUEST_TYPES):
            if method in GATED_METHODS:
                continue
            r = await z.request(method, {})
            if r.get("success") is not False or "may only propose" not in r.get("msg", ""):
                let_through.append((method, r))
        assert let_through == []
        r = await z.request("queue_item_add", {"item": SCAN, **REVIEWER})  # claims are ignored
        assert r["success"] and r["proposed"], r
        assert (r["item"]["user"], r["item"]["user_group"]) == ("agent1", "agent")
        assert (await z.request("queue_get"))["items"] == []
        assert gated.client is not None
        await gated.client.request(
            "proposal_reject", {"uid": r["item"]["item_uid"], "reason": "test", **REVIEWER}
        )


# ----- NATS: the agent's own NATS user is a proposer -----

PREFIX = unique_prefix()
PROPOSERS = {"agent1": ["agent"]}
PASSWORDS = {n: secrets.token_urlsafe(16) for n in [*(r.name for r in roles(PREFIX)), *PROPOSERS]}


@pytest.fixture(scope="module")
def secure_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    d = tmp_path_factory.mktemp("proposer-nats")
    literal = {name: json.dumps(pw) for name, pw in PASSWORDS.items()}
    conf = d / "accounts.conf"
    conf.write_text(render_accounts(literal, prefix=PREFIX, proposers=PROPOSERS))
    server = NatsServer(d, config_file=conf).start()
    yield server
    server.stop()


async def test_over_nats_a_proposer_only_reads_and_proposes(
    secure_nats: NatsServer, tmp_path: Path
) -> None:
    svc = RoleServices(secure_nats, tmp_path, prefix=PREFIX, extra=queue_args(tmp_path))  # type: ignore[arg-type]
    svc.passwords = PASSWORDS
    svc.start("queue", "history")
    try:
        await svc.wait_ready()
        agent_auth = NatsAuth(user="agent1", password=PASSWORDS["agent1"])
        async with (
            await Client.connect(secure_nats.url, PREFIX, timeout=30, auth=agent_auth) as agent,
            await svc.connect_as("operator") as operator,
        ):
            assert agent.act_as == "agent1"
            s = agent.subjects
            # Every other method, on its plain subject or as itself: NATS refuses.
            let_through = []
            for method in sorted(REQUEST_TYPES):
                if method in GATED_METHODS and method not in IDENTITY_METHODS:
                    continue
                subjects = [s.api(method)]
                if method in IDENTITY_METHODS and method not in GATED_METHODS:
                    subjects.append(s.api_as("agent1", "agent", method))
                for subject in subjects:
                    try:
                        await agent._request_watched(subject, b"{}", 5.0)
                        let_through.append(subject)
                    except AccessDenied:
                        pass
            assert let_through == []
            # Its add, as itself in its group, is a proposal; reads work.
            r = await agent.request("queue_item_add", {"item": SCAN, **AGENT})
            assert r["success"] and r["proposed"], r
            uid = r["item"]["item_uid"]
            assert (await agent.request("queue_get"))["items"] == []
            assert (await agent.request("proposal_get", {"uid": uid}))["success"]
            # The operator (not gated) approves it into the queue.
            r = await operator.request("proposal_approve", {"uid": uid, **REVIEWER})
            assert r["success"], r
            items = (await agent.request("queue_get"))["items"]
            assert [i["item_uid"] for i in items] == [uid]
    finally:
        svc.stop_all()
