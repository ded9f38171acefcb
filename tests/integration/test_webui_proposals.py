"""The web page's Proposals panel and dry runs (issue 15 point 5, ADRs 26, 30, 31), in Debian's
Chromium against a real stack whose permissions gate the group `agent`: a scientist's actions.

One stack, one gateway and one browser for the module; each test opens its own page. Waits
are on conditions with generous deadlines; nothing asserts on timing.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
import yaml
from playwright.async_api import expect

from qserver.client import Client
from tests.conftest import USER, Services, running_services
from tests.integration.gateway_support import gateway_for
from tests.integration.proposals_support import AGENT, eventually, queue_args
from tests.integration.test_execution import open_env
from tests.integration.webui_support import browser, chromium_path, key_script

pytestmark = [
    pytest.mark.skipif(
        chromium_path() is None and not os.environ.get("CI"),
        reason="needs Debian's chromium: apt-get install chromium (make test does)",
    ),
    pytest.mark.timeout(240),
]

REVIEWER_KEY = "webuiReviewerKey1"  # an expert of `primary`: has write:queue:approve
AGENT_KEY = "webuiAgentKey1"  # agent1 of the gated group `agent`, role `proposer`
OBSERVER_KEY = "webuiObserverKey1"  # reads everything, changes nothing
SLOW = 60_000  # ms


def scan(motor: str, start: float, stop: float, num: int) -> dict[str, Any]:
    args = [["det1"], motor, start, stop]
    return {"item_type": "plan", "name": "scan", "args": args, "kwargs": {"num": num}}


@pytest.fixture(scope="module")
async def stack(nats_server: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Any]:
    tmp = tmp_path_factory.mktemp("webui-proposals")
    config = tmp / "http.yaml"
    keys = [
        {"key": REVIEWER_KEY, "user": "rita", "roles": ["expert"]},
        {"key": AGENT_KEY, "user": "agent1", "user_group": "agent", "roles": ["proposer"]},
        {"key": OBSERVER_KEY, "user": "olga", "roles": ["observer"]},
    ]
    config.write_text(yaml.safe_dump({"api_keys": keys}))
    async with (
        running_services(nats_server, tmp, extra=queue_args(tmp)) as svc,
        gateway_for(svc, "--http-config", str(config)) as gw,
        browser() as b,
    ):
        yield svc, gw, b


def client_of(svc: Services) -> Client:
    assert svc.client is not None
    return svc.client


async def reset(c: Client) -> None:
    """No queue, no proposals: each test starts from an empty review list."""
    await c.request("queue_clear")
    for p in (await c.request("proposal_list"))["proposals"]:
        await c.request(
            "proposal_reject", {"uid": p["item"]["item_uid"], "reason": "cleanup", **USER}
        )


async def open_page(stack: Any, key: str) -> Any:
    svc, gw, b = stack
    await reset(client_of(svc))
    ctx = await b.new_context(base_url=gw.url, viewport={"width": 1400, "height": 1400})
    await ctx.add_init_script(key_script(key))
    ctx.set_default_timeout(SLOW)
    p = await ctx.new_page()
    await p.goto("/ui")
    await p.get_by_test_id("manager-state").wait_for()
    return p


@pytest.fixture
async def page(stack: Any) -> AsyncIterator[Any]:
    p = await open_page(stack, REVIEWER_KEY)
    yield p
    await p.context.close()


async def propose(c: Client, item: dict[str, Any], note: str = "", **who: Any) -> str:
    r = await c.request("proposal_add", {"item": item, "note": note, **(who or AGENT)})
    assert r["success"] and r["proposed"] and not r.get("auto_approved"), r
    return str(r["item"]["item_uid"])


def panel(page: Any) -> Any:
    return page.get_by_role("region", name="Proposals", exact=True)


async def inspect(page: Any, name: str) -> Any:
    """Open the proposal `name` of agent1; its review region."""
    entry = panel(page).get_by_role("listitem", name=f"{name} by agent1")
    await entry.get_by_role("button", name="Inspect").click()
    return panel(page).get_by_role("region", name=f"Proposal {name} by agent1")


async def queue_names(c: Client) -> list[str]:
    return [i["name"] for i in (await c.request("queue_get"))["items"]]


async def test_a_proposal_appears_and_is_approved_to_the_front_from_the_page(
    page: Any, stack: Any
) -> None:
    c = client_of(stack[0])
    r = await c.request(
        "queue_item_add",
        {"item": {"item_type": "plan", "name": "count", "args": [["det1"]]}, **USER},
    )
    assert r["success"], r
    await panel(page).get_by_text("No proposal waits for review.").wait_for()
    # Proposed after the page opened: the pushed status brings it (proposals_uid).
    uid = await propose(c, scan("motor", -1, 1, 5), note="finer scan near the peak")
    entry = panel(page).get_by_role("listitem", name="scan by agent1")
    await entry.get_by_text("finer scan near the peak").wait_for()
    await expect(entry).to_contain_text("agent1 (agent)")
    review = await inspect(page, "scan")
    await review.get_by_label("Approve to").select_option("front")
    await review.get_by_role("button", name="Approve", exact=True).click()
    await eventually(lambda: _equals(queue_names(c), ["scan", "count"]))
    queue = page.get_by_role("grid", name="Queue items")
    await queue.locator('[data-index="0"]').get_by_text("scan").wait_for()
    assert (await c.request("queue_get"))["items"][0]["item_uid"] == uid
    await panel(page).get_by_text("No proposal waits for review.").wait_for()
    assert (await c.request("proposal_list"))["proposals"] == []


async def _equals(got: Any, want: Any) -> bool:
    return bool(await got == want)


async def test_a_rejected_proposal_shows_in_the_history_as_rejected_with_the_reason(
    page: Any, stack: Any
) -> None:
    c = client_of(stack[0])
    uid = await propose(
        c, {"item_type": "plan", "name": "count", "args": [["det1"]], "kwargs": {"num": 500}}
    )
    review = await inspect(page, "count")
    # Without a reason the page asks for one and sends nothing.
    await review.get_by_role("button", name="Reject", exact=True).click()
    await review.get_by_role("alert").filter(has_text="Give a reason").wait_for()
    await review.get_by_label("Reason").fill("too many points for now")
    await review.get_by_role("button", name="Reject", exact=True).click()
    dialog = page.get_by_role("dialog", name="Confirm")
    await expect(dialog).to_contain_text("too many points for now")
    await dialog.get_by_role("button", name="Confirm").click()

    async def rejected() -> dict[str, Any] | None:
        items = (await c.request("history_get"))["items"]
        return next((i for i in items if i["item_uid"] == uid), None)

    record = await eventually(rejected)
    assert record["result"]["exit_status"] == "rejected"
    assert record["result"]["reason"] == "too many points for now"
    assert record["result"]["reviewer"] == "rita"
    history = page.get_by_role("region", name="History")
    await (
        history.get_by_role("row")
        .filter(has_text="too many points for now")
        .filter(has_text="rejected")
        .wait_for()
    )
    assert await queue_names(c) == []


async def test_a_reviewer_edits_a_proposal_before_approving_it(page: Any, stack: Any) -> None:
    c = client_of(stack[0])
    uid = await propose(c, scan("motor", -1, 1, 21), note="first guess")
    review = await inspect(page, "scan")
    await review.get_by_role("button", name="Edit").click()
    await review.get_by_label("Proposed item").fill(
        '{"name": "scan", "args": [["det1"], "motor", -1, 1, 11]}'
    )
    await review.get_by_label("Note", exact=True).fill("11 points are enough")
    await review.get_by_role("button", name="Save proposal").click()

    async def edited() -> dict[str, Any] | None:
        p = (await c.request("proposal_get", {"uid": uid}))["proposal"]
        return p if p["item"]["args"][-1] == 11 and p["note"] != "first guess" else None

    p = await eventually(edited)
    assert p["note"] == "11 points are enough" and p["edited_by"] == "rita"
    entry = panel(page).get_by_role("listitem", name="scan by agent1")
    await entry.get_by_text("edited by rita").wait_for()


async def test_a_proposer_proposes_with_a_note_and_sees_only_its_own(stack: Any) -> None:
    c = client_of(stack[0])
    p = await open_page(stack, AGENT_KEY)
    try:
        await p.get_by_test_id("who").filter(has_text="proposer").wait_for()
        await propose(c, scan("motor", 0, 1, 3), user="agent2", user_group="agent")
        form = p.get_by_role("form", name="Plan form")
        assert await form.get_by_role("button", name="Add to queue").is_disabled()
        await form.get_by_label("Plan").select_option("count")
        await form.get_by_label("detectors").select_option(["det1"])
        await form.get_by_label("num").fill("50")  # beyond the auto-approve rule's 10
        await form.get_by_label("Note for the reviewer").fill("a longer count, please")
        await form.get_by_role("button", name="Propose for review").click()

        async def mine() -> list[dict[str, Any]]:
            ps = (await c.request("proposal_list"))["proposals"]
            return [x for x in ps if x["proposed_by"] == "agent1"]

        (mine_,) = await eventually(mine)
        assert mine_["note"] == "a longer count, please"
        assert mine_["item"]["kwargs"] == {"detectors": ["det1"], "num": 50}
        assert await queue_names(c) == []
        own = panel(p)
        await expect(own.get_by_role("heading")).to_contain_text("Your proposals (1)")
        await own.get_by_role("listitem", name="count by agent1").wait_for()
        assert await own.get_by_role("listitem", name="scan by agent2").count() == 0
        review = await inspect(p, "count")
        for name in ("Approve", "Reject", "Edit"):
            assert await review.get_by_role("button", name=name, exact=True).is_disabled(), name
    finally:
        await p.context.close()


@pytest.mark.timeout(300)
async def test_the_dry_run_report_shows_a_limit_violation(page: Any, stack: Any) -> None:
    c = client_of(stack[0])
    await open_env(c)
    # A proposal's review shows its dry run: motor_limited's limits are (-5, 5).
    await propose(c, scan("motor_limited", -7, 0, 8))
    review = await inspect(page, "scan")
    report = review.get_by_role("region", name="Dry run report")
    violation = report.get_by_role("list", name="Limit violations").get_by_role("listitem")
    await expect(violation).to_contain_text("motor_limited", timeout=SLOW)
    await expect(report.get_by_test_id("dry-run-points")).to_have_text("8")
    motor = report.get_by_role("row").filter(has_text="motor_limited")
    await expect(motor).to_have_class("violation")
    await expect(motor).to_contain_text("-7 .. 0")
    await expect(report).to_contain_text("det1")
    # The same report for a queued item, from the queue editor's Dry run button.
    r = await c.request("queue_item_add", {"item": scan("motor_limited", 0, 9, 4), **USER})
    assert r["success"], r
    row = page.get_by_role("grid", name="Queue items").locator('[data-index="0"]')
    await row.get_by_text("scan").click()
    await (
        page.get_by_role("toolbar", name="Queue actions")
        .get_by_role("button", name="Dry run")
        .click()
    )
    queued = page.get_by_role("region", name="Dry run of scan")
    await expect(queued.get_by_role("list", name="Limit violations")).to_contain_text(
        "motor_limited: 2 of 4 moves outside its limits"
    )
    await expect(queued.get_by_test_id("dry-run-points")).to_have_text("4")


async def test_an_observer_sees_every_proposal_with_the_review_disabled(stack: Any) -> None:
    c = client_of(stack[0])
    p = await open_page(stack, OBSERVER_KEY)
    try:
        await p.get_by_test_id("who").filter(has_text="observer").wait_for()
        await propose(c, scan("motor", 0, 1, 3), note="for olga to see")
        await panel(p).get_by_text("for olga to see").wait_for()
        review = await inspect(p, "scan")
        for name in ("Approve", "Reject", "Edit"):
            await expect(review.get_by_role("button", name=name, exact=True)).to_be_disabled()
        # A dry run runs plan code in the environment: not asked for by an observer.
        await expect(review.get_by_role("region", name="Dry run report")).to_contain_text(
            "your scopes do not include dry runs"
        )
        assert (
            await p.get_by_role("form", name="Plan form")
            .get_by_role("button", name="Propose for review")
            .count()
            == 0
        )
    finally:
        await p.context.close()
