"""Proposals (issue 15, ADR 30): a gated group's adds wait for review; reviewers approve them
to a position (they then run) or reject them (history says why); rules let trivial ones
through; nothing is lost or doubled when the queue service is SIGKILLed in between."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from qserver.client import Client
from tests.conftest import NatsServer, Services, plan, running_services
from tests.integration.proposals_support import (
    AGENT,
    REVIEWER,
    eventually,
    proposal_events,
    queue_args,
)

SCAN = plan("scan", ["det1"], "motor", -1, 1, 3)
SMALL_COUNT = {**plan("count", ["det1"]), "kwargs": {"num": 3}}
LARGE_COUNT = {**plan("count", ["det1"]), "kwargs": {"num": 1000}}


@pytest.fixture(scope="module")
async def gated(
    nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Services]:
    """Queue, history and worker services whose permissions gate the group `agent`."""
    tmp = tmp_path_factory.mktemp("proposals")
    async with running_services(nats_server, tmp, extra=queue_args(tmp)) as svc:
        yield svc


@pytest.fixture
async def client(gated: Services) -> AsyncIterator[Client]:
    assert gated.client is not None
    c = gated.client
    yield c
    # Leave the module's state as found: no queue, no proposals.
    await c.request("queue_clear", {})
    for p in (await c.request("proposal_list"))["proposals"]:
        await c.request(
            "proposal_reject", {"uid": p["item"]["item_uid"], "reason": "cleanup", **REVIEWER}
        )


async def queue_uids(c: Client) -> list[str]:
    return [i["item_uid"] for i in (await c.request("queue_get"))["items"]]


async def proposal_uids(c: Client) -> list[str]:
    return [p["item"]["item_uid"] for p in (await c.request("proposal_list"))["proposals"]]


async def propose(c: Client, item: dict[str, Any], **kw: Any) -> dict[str, Any]:
    r = await c.request("queue_item_add", {"item": item, **AGENT, **kw})
    assert r["success"], r
    return r


@pytest.mark.timeout(300)
async def test_a_gated_add_waits_in_proposals_and_an_approved_one_runs_at_its_position(
    client: Client,
) -> None:
    c = client
    async with proposal_events(c) as events:
        t0 = time.time()
        r = await propose(c, SCAN)
        assert r["proposed"] is True and "waits for a reviewer" in r["msg"]
        uid = r["item"]["item_uid"]
        assert (r["item"]["user"], r["item"]["user_group"]) == ("agent1", "agent")
        # Not in the queue; in the proposals, with who, when and the note.
        assert await queue_uids(c) == []
        noted = await c.request("proposal_add", {"item": SCAN, "note": "finer steps next", **AGENT})
        assert noted["success"] and noted["proposed"], noted
        listed = (await c.request("proposal_list"))["proposals"]
        assert [p["item"]["item_uid"] for p in listed] == [uid, noted["item"]["item_uid"]]
        assert listed[0]["proposed_by"] == "agent1" and listed[0]["user_group"] == "agent"
        assert t0 - 1 <= listed[0]["time"] <= time.time() + 1
        assert listed[1]["note"] == "finer steps next"
        st = await c.request("status")
        assert st["items_in_proposals"] == 2 and st["items_in_queue"] == 0

        # The reviewer's own items, then the proposal approved between them.
        first = await c.request("queue_item_add", {"item": plan("count", ["det1"]), **REVIEWER})
        last = await c.request("queue_item_add", {"item": plan("count", ["det2"]), **REVIEWER})
        a, b = first["item"]["item_uid"], last["item"]["item_uid"]
        approved = await c.request("proposal_approve", {"uid": uid, "before_uid": b, **REVIEWER})
        assert approved["success"], approved
        assert await queue_uids(c) == [a, uid, b]
        assert await proposal_uids(c) == [noted["item"]["item_uid"]]
        # Approving it again adds nothing.
        again = await c.request("proposal_approve", {"uid": uid, **REVIEWER})
        assert not again["success"] and "no proposal" in again["msg"]
        assert await queue_uids(c) == [a, uid, b]

        # The proposer hears of both steps.
        mine = await eventually(
            lambda: _async([e for e in events if e["uid"] == uid and e["kind"] == "approved"])
        )
        assert mine[0]["reviewer"] == REVIEWER["user"] and mine[0]["index"] == 1
        assert mine[0]["proposed_by"] == "agent1"
        assert any(e["uid"] == uid and e["kind"] == "proposed" for e in events)

    # It runs, in its place.
    assert (await c.request("environment_open", {}, timeout=60))["success"]
    await c.wait_for(lambda st: st["worker_environment_exists"], timeout=120)
    await c.wait_for(lambda st: st["manager_state"] == "idle", timeout=120)
    assert (await c.request("queue_start", {}))["success"]

    async def done() -> list[dict[str, Any]]:
        items = (await c.request("history_get"))["items"]
        return [i for i in items if i["item_uid"] in (a, uid, b)] if len(items) >= 3 else []

    ran = await eventually(lambda: _at_least(done, 3), timeout=180)
    assert [i["item_uid"] for i in ran] == [a, uid, b]
    assert all(i["result"]["exit_status"] == "completed" for i in ran), ran
    await c.wait_for(lambda st: st["manager_state"] == "idle", timeout=60)
    await c.request("environment_close", {})
    await c.wait_for(lambda st: not st["worker_environment_exists"], timeout=120)


async def _async(value: Any) -> Any:
    return value


async def _at_least(fetch: Any, n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = await fetch()
    return out if len(out) >= n else []


async def test_a_rejected_proposal_is_in_the_history_as_rejected_with_the_reason(
    client: Client,
) -> None:
    c = client
    async with proposal_events(c) as events:
        uid = (await propose(c, SCAN))["item"]["item_uid"]
        r = await c.request(
            "proposal_reject", {"uid": uid, "reason": "motor is being serviced", **REVIEWER}
        )
        assert r["success"], r
        assert uid not in await proposal_uids(c) and uid not in await queue_uids(c)
        # The reply came after the history holds the record (read-your-writes).
        items = (await c.request("history_get"))["items"]
        (rec,) = [i for i in items if i["item_uid"] == uid]
        assert rec["result"]["exit_status"] == "rejected"
        assert rec["result"]["reason"] == "motor is being serviced"
        assert rec["result"]["reviewer"] == REVIEWER["user"]
        assert "motor is being serviced" in rec["result"]["msg"]
        assert (rec["user"], rec["name"]) == ("agent1", "scan")
        told = await eventually(
            lambda: _async([e for e in events if e["uid"] == uid and e["kind"] == "rejected"])
        )
        assert told[0]["reason"] == "motor is being serviced"
        assert told[0]["reviewer"] == REVIEWER["user"]


async def test_an_auto_approve_rule_lets_a_small_count_through_and_keeps_a_large_scan_waiting(
    client: Client,
) -> None:
    c = client
    small = await propose(c, SMALL_COUNT)
    assert small["auto_approved"] is True and "auto-approve rule 1" in small["msg"], small
    scan = await propose(c, SCAN)
    large = await propose(c, LARGE_COUNT)
    other_det = await propose(c, {**plan("count", ["noisy_det"]), "kwargs": {"num": 2}})
    assert await queue_uids(c) == [small["item"]["item_uid"]]
    assert await proposal_uids(c) == [
        scan["item"]["item_uid"],
        large["item"]["item_uid"],
        other_det["item"]["item_uid"],
    ]
    # A batch: each item by itself, in one write.
    batch = await c.request("queue_item_add_batch", {"items": [SMALL_COUNT, SCAN], **AGENT})
    assert batch["success"], batch
    assert len(await queue_uids(c)) == 2 and len(await proposal_uids(c)) == 4


async def test_bad_proposals_and_reviews_are_refused_and_change_nothing(client: Client) -> None:
    c = client
    # Validated as an add would be: a plan the group may not run.
    r = await c.request(
        "queue_item_add", {"item": plan("rel_scan", ["det1"], "motor", -1, 1, 3), **AGENT}
    )
    assert not r["success"] and "Plan validation failed" in r["msg"], r
    r = await c.request("proposal_add", {"item": plan("count", ["no_such_det"]), **AGENT})
    assert not r["success"], r
    assert await proposal_uids(c) == []
    uid = (await propose(c, SCAN))["item"]["item_uid"]
    # A gated member may not review, edit the queue directly or run an item.
    for method, params in (
        ("proposal_approve", {"uid": uid}),
        ("proposal_reject", {"uid": uid, "reason": "mine"}),
        ("queue_item_update", {"item": {**SCAN, "item_uid": uid}}),
        ("queue_item_execute", {"item": SCAN}),
        ("function_execute", {"item": {"name": "function_sleep", "item_type": "function"}}),
    ):
        r = await c.request(method, {**params, **AGENT})
        assert not r["success"] and "may only propose" in r["msg"], (method, r)
    # Reviews of what is not there, or without a reason.
    r = await c.request("proposal_approve", {"uid": "nope", **REVIEWER})
    assert not r["success"] and "no proposal with UID 'nope'" in r["msg"]
    r = await c.request("proposal_reject", {"uid": uid, "reason": "  ", **REVIEWER})
    assert not r["success"] and "needs a reason" in r["msg"]
    r = await c.request("proposal_approve", {"uid": uid, "before_uid": "nope", **REVIEWER})
    assert not r["success"] and "not in the queue" in r["msg"]
    # An edit is checked as the proposer's: the group may not run `rel_scan`.
    r = await c.request(
        "proposal_update",
        {"uid": uid, "item": plan("rel_scan", ["det1"], "motor", -1, 1, 3), **REVIEWER},
    )
    assert not r["success"] and "Plan validation failed" in r["msg"]
    r = await c.request("proposal_update", {"uid": uid, **REVIEWER})
    assert not r["success"] and "Nothing to change" in r["msg"]
    assert await proposal_uids(c) == [uid] and await queue_uids(c) == []
    # A good edit keeps the uid and says who edited it.
    finer = plan("scan", ["det1"], "motor", -1, 1, 5)
    r = await c.request(
        "proposal_update", {"uid": uid, "item": finer, "note": "5 points", **REVIEWER}
    )
    assert r["success"], r
    p = (await c.request("proposal_get", {"uid": uid}))["proposal"]
    assert p["item"]["args"][-1] == 5 and p["edited_by"] == REVIEWER["user"]
    assert p["proposed_by"] == "agent1" and p["note"] == "5 points"
    # A rule that cannot be read is refused with where it is wrong; the old ones stay.
    perms = (await c.request("permissions_get"))["user_group_permissions"]
    bad = {
        **perms,
        "user_groups": {
            **perms["user_groups"],
            "agent": {"proposals": {"auto_approve": [{"plan": ["count"]}]}},
        },
    }
    r = await c.request("permissions_set", {"user_group_permissions": bad})
    assert not r["success"] and "user_groups.agent.proposals.auto_approve[0]" in r["msg"], r
    assert (await propose(c, SMALL_COUNT))["auto_approved"] is True


async def test_a_dry_run_is_asked_for_the_review_and_its_absence_is_said(client: Client) -> None:
    c = client
    uid = (await propose(c, SCAN))["item"]["item_uid"]
    r = await c.request("proposal_get", {"uid": uid, "dry_run": True}, timeout=60)
    assert r["success"], r
    assert r["proposal"]["item"]["item_uid"] == uid
    dry = r["dry_run"]
    assert isinstance(dry, dict) and "success" in dry, dry
    if not dry["success"]:  # no `item_dry_run` service here: said, not hidden
        assert dry["msg"], dry


# ----- the queue service SIGKILLed between propose and approve -----


@pytest.mark.timeout(300)
async def test_the_queue_service_sigkilled_between_propose_and_approve_loses_and_doubles_nothing(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    extra = queue_args(tmp_path)
    extra["queue"] += ["--snapshot-every", "7"]  # the proposals go through snapshots too
    async with running_services(nats_server, tmp_path, extra=extra) as svc:
        c = svc.client
        assert c is not None
        proposed = [(await propose(c, SCAN))["item"]["item_uid"] for _ in range(20)]
        rejected = proposed[:3]
        for uid in rejected:
            r = await c.request("proposal_reject", {"uid": uid, "reason": "no", **REVIEWER})
            assert r["success"], r
        await _restart_queue(svc)
        c = svc.client
        assert c is not None
        assert await proposal_uids(c) == proposed[3:]
        # Approve some, each acknowledged, then kill at once.
        approved = proposed[3:13]
        for uid in approved:
            r = await c.request("proposal_approve", {"uid": uid, "pos": "front", **REVIEWER})
            assert r["success"], r
        await _restart_queue(svc)
        c = svc.client
        assert c is not None
        assert await queue_uids(c) == list(reversed(approved))
        assert await proposal_uids(c) == proposed[13:]
        # Retried approvals (a client that did not see the reply) add nothing.
        for uid in approved[:3]:
            assert not (await c.request("proposal_approve", {"uid": uid, **REVIEWER}))["success"]
        assert len(await queue_uids(c)) == len(approved)
        history = (await c.request("history_get"))["items"]
        assert sorted(i["item_uid"] for i in history) == sorted(rejected)


async def _restart_queue(svc: Services) -> None:
    svc.kill("queue")
    svc.start("queue")
    await svc.wait_ready()
    if svc.client is not None:
        await svc.client.close()
    await svc.connect()


async def test_the_cli_proposes_and_reviews(gated: Services, client: Client) -> None:
    from tests.integration.test_cli import ok, qs

    scan = '{"name":"scan", "args":[["det1"], "motor", -1, 1, 3]}'
    added = await ok(gated, "proposal", "add", "-g", "agent", "-n", "please", "plan", scan)
    assert added["proposed"] is True, added
    uid = added["item"]["item_uid"]
    listed = await ok(gated, "proposal", "list")
    assert [(p["item"]["item_uid"], p["note"]) for p in listed["proposals"]] == [(uid, "please")]
    got = await ok(gated, "proposal", "get", uid, "--dry-run")
    assert got["proposal"]["item"]["name"] == "scan" and "success" in got["dry_run"]
    edited = await ok(
        gated, "proposal", "edit", uid, '{"name":"scan", "args":[["det1"], "motor", -1, 1, 4]}'
    )
    assert edited["proposal"]["item"]["args"][-1] == 4
    # A gated member cannot approve, even its own.
    refused = await qs(gated, "proposal", "approve", uid, "-g", "agent")
    assert refused.rc != 0 and "may only propose" in refused.out + refused.err
    assert (await ok(gated, "proposal", "approve", uid, "front"))["success"]
    assert await queue_uids(client) == [uid]
    other = (await ok(gated, "proposal", "add", "-g", "agent", "plan", scan))["item"]["item_uid"]
    assert (await ok(gated, "proposal", "reject", other, "too slow"))["success"]
    items = (await client.request("history_get"))["items"]
    assert [i["result"]["reason"] for i in items if i["item_uid"] == other] == ["too slow"]


@pytest.mark.timeout(300)
async def test_a_standby_that_takes_over_has_every_proposal_and_approves_each_once(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """Leader and hot standby: the leader SIGKILLed after proposals and approvals."""
    from services.runtime.procs import ServiceProcess

    args = queue_args(tmp_path)["queue"]
    svc = Services(nats_server, tmp_path)
    queues = {
        name: ServiceProcess(
            "queue",
            nats_server.url,
            svc.prefix,
            tmp_path / f"{name}.log",
            *args,
            "--instance",
            name,
        )
        for name in ("queue-a", "queue-b")
    }
    queues["queue-a"].start()
    try:
        c = await svc.connect()
        await eventually(lambda: _answers(c))  # queue-a leads
        queues["queue-b"].start()
        proposed = [(await propose(c, SCAN))["item"]["item_uid"] for _ in range(8)]
        for uid in proposed[:3]:
            r = await c.request("proposal_approve", {"uid": uid, **REVIEWER})
            assert r["success"], r
        queues["queue-a"].kill()
        # The standby takes over: the same proposals and queue, and the rest approves once.
        assert await eventually(lambda: _listed(c)) == proposed[3:]
        assert await queue_uids(c) == proposed[:3]
        for uid in proposed[3:]:
            # "no proposal": an earlier try was applied but its reply lost; the queue says.
            await eventually(lambda uid=uid: _approved(c, uid))
        assert await queue_uids(c) == proposed
        assert await proposal_uids(c) == []
    finally:
        for q in queues.values():
            q.stop()
        if svc.client is not None:
            await svc.client.close()


async def _answers(c: Client) -> bool:
    try:
        return bool(await c.request("status", timeout=1.0))
    except Exception:
        return False


async def _listed(c: Client) -> list[str] | None:
    try:
        r = await c.request("proposal_list", timeout=1.0)
    except Exception:
        return None
    return [p["item"]["item_uid"] for p in r["proposals"]] if r.get("success") else None


async def _approved(c: Client, uid: str) -> dict[str, Any] | None:
    """An approval, tried again while the new leader settles (refused whole, or unanswered)."""
    try:
        r: dict[str, Any] = await c.request(
            "proposal_approve", {"uid": uid, **REVIEWER}, timeout=2.0
        )
    except Exception:
        return None
    if not r["success"] and "no proposal" not in r["msg"]:
        return None
    return r


async def test_the_proposer_watches_its_proposal_approved_from_the_cli(
    gated: Services, client: Client
) -> None:
    import asyncio
    import json
    import sys

    import httpx

    from tests.integration.test_cli import argv

    watch = await asyncio.create_subprocess_exec(
        *argv(gated, "proposal", "watch", "--user", "agent1", "--count", "2"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    subject = client.subjects.proposals_event
    monitor = f"http://127.0.0.1:{gated.nats.monitor_port}/subsz"

    async def subscribed() -> bool:
        async with httpx.AsyncClient() as http:
            r = await http.get(monitor, params={"subs": 1, "limit": 100_000, "test": subject})
        return int(r.json().get("total", 0)) >= 1  # subscriptions on `subject`

    try:
        await eventually(subscribed)
        await propose(c := client, {**plan("count", ["noisy_det"]), "kwargs": {"num": 2}})
        uid = (await c.request("proposal_list"))["proposals"][-1]["item"]["item_uid"]
        assert (await c.request("proposal_approve", {"uid": uid, **REVIEWER}))["success"]
        out, err = await asyncio.wait_for(watch.communicate(), 60)
    finally:
        if watch.returncode is None:
            watch.kill()
            await watch.wait()
    events = [json.loads(line) for line in out.decode().splitlines()]
    assert [(e["kind"], e["uid"]) for e in events] == [("proposed", uid), ("approved", uid)], (
        err.decode(),
        sys.executable,
    )
