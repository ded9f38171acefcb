"""The web page at /ui, in Debian's Chromium against a real stack: a scientist's actions.

One stack (queue, worker, history, gateway) and one browser for the module; each test opens
its own page. Waits are on conditions with generous deadlines (the suite runs on busy
machines); nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from playwright.async_api import expect

from tests.conftest import Services, running_services
from tests.integration.gateway_support import Gateway, gateway_for
from tests.integration.login_support import TOY, short_tokens, write_config
from tests.integration.webui_support import browser, chromium_path, key_script

pytestmark = [
    # CI installs chromium (the Makefile's apt step): there a missing browser is a failure.
    pytest.mark.skipif(
        chromium_path() is None and not os.environ.get("CI"),
        reason="needs Debian's chromium: apt-get install chromium (make test does)",
    ),
    pytest.mark.timeout(240),
]

EXPERT_KEY = "webuiexpertkey1"
OBSERVER_KEY = "webuiobserverkey1"
SLOW = 60_000  # ms: Playwright's deadline for each wait on this busy machine


@pytest.fixture(scope="module")
async def stack(nats_server: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Any]:
    tmp = tmp_path_factory.mktemp("webui")
    config = tmp / "http.yaml"
    config.write_text(
        "api_keys:\n"
        f"  - {{key: {EXPERT_KEY}, user: alice, roles: [expert]}}\n"
        f"  - {{key: {OBSERVER_KEY}, user: olga, roles: [observer]}}\n"
    )
    async with (
        running_services(nats_server, tmp) as svc,
        gateway_for(svc, "--http-config", str(config)) as gw,
        browser() as b,
    ):
        yield svc, gw, b


@pytest.fixture
async def page(stack: Any) -> AsyncIterator[Any]:
    svc, gw, b = stack
    await reset(svc)
    ctx = await b.new_context(base_url=gw.url, viewport={"width": 1400, "height": 1000})
    await ctx.add_init_script(key_script(EXPERT_KEY))
    ctx.set_default_timeout(SLOW)
    p = await ctx.new_page()
    await p.goto("/ui")
    await p.get_by_test_id("manager-state").wait_for()
    yield p
    await ctx.close()


async def reset(svc: Services) -> None:
    c = svc.client
    assert c is not None
    await c.request("queue_clear")


def plan(name: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    item = {"item_type": "plan", "name": name, "args": list(args), "kwargs": kwargs}
    return {"item": item, "user": "tester", "user_group": "primary"}


async def add(svc: Services, name: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    assert svc.client is not None
    reply = await svc.client.request("queue_item_add", plan(name, *args, **kwargs))
    assert reply["success"], reply
    return reply


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 60.0) -> Any:
    """The first truthy result of `check`, asked again until `timeout`."""
    async with asyncio.timeout(timeout):
        while True:
            got = await check()
            if got:
                return got
            await asyncio.sleep(0.1)


async def queue_items(svc: Services) -> list[dict[str, Any]]:
    assert svc.client is not None
    items: list[dict[str, Any]] = (await svc.client.request("queue_get"))["items"]
    return items


def row(page: Any, index: int) -> Any:
    return page.get_by_role("grid", name="Queue items").locator(f'[data-index="{index}"]')


async def test_add_a_count_from_the_form(page: Any, stack: Any) -> None:
    svc = stack[0]
    form = page.get_by_role("form", name="Plan form")
    await form.get_by_label("Plan").select_option("count")
    await form.get_by_label("detectors").select_option(["det1", "det2"])
    await form.get_by_label("num").fill("3")
    await form.get_by_role("button", name="Add to queue").click()
    await row(page, 0).get_by_text("count").wait_for()
    items = await queue_items(svc)
    assert [(i["name"], i["kwargs"]) for i in items] == [
        ("count", {"detectors": ["det1", "det2"], "num": 3})
    ]
    assert items[0]["user"] == "alice"


async def test_the_form_names_a_missing_parameter_at_its_field(page: Any) -> None:
    form = page.get_by_role("form", name="Plan form")
    await form.get_by_label("Plan").select_option("count")
    await form.get_by_role("button", name="Add to queue").click()
    field = form.locator(".field.invalid", has=page.locator("#param-detectors"))
    await field.get_by_role("alert").wait_for()
    assert "required" in await field.get_by_role("alert").inner_text()


async def test_the_server_refusal_is_shown_at_the_field(page: Any) -> None:
    form = page.get_by_role("form", name="Plan form")
    await form.get_by_label("Plan").select_option("count")
    await form.get_by_label("detectors").select_option(["det1"])
    await form.get_by_label("delay").fill('"soon"')  # valid JSON, which the server refuses
    await form.get_by_role("button", name="Add to queue").click()
    refusal = await page.get_by_test_id("form-error").inner_text()
    assert "delay" in refusal, refusal
    field = form.locator(".field.invalid", has=page.locator("#param-delay"))
    assert await field.get_by_role("alert").inner_text() == refusal


async def test_drag_the_scan_above_the_count(page: Any, stack: Any) -> None:
    svc = stack[0]
    assert svc.client is not None
    await add(svc, "count", ["det1"], num=1)
    await add(svc, "scan", ["det1"], "motor", -1, 1, 3)
    await row(page, 1).get_by_text("scan").wait_for()
    # Drop on the upper part of the first row: before it.
    await row(page, 1).drag_to(row(page, 0), target_position={"x": 40, "y": 4})
    names = await eventually(lambda: _names_if(svc, ["scan", "count"]))
    assert names == ["scan", "count"]
    await row(page, 0).get_by_text("scan").wait_for()


async def _names_if(svc: Services, want: list[str]) -> list[str] | None:
    names = [i["name"] for i in await queue_items(svc)]
    return names if names == want else None


def toolbar(page: Any, name: str) -> Any:
    return page.get_by_role("toolbar", name="Queue actions").get_by_role("button", name=name)


async def nums_become(svc: Services, want: list[int]) -> None:
    async def check() -> bool:
        return [i["kwargs"]["num"] for i in await queue_items(svc)] == want

    await eventually(check)


async def test_move_to_bottom_duplicate_and_delete_with_undo(page: Any, stack: Any) -> None:
    svc = stack[0]
    for n in (1, 2, 3):
        await add(svc, "count", ["det1"], num=n)
    await row(page, 2).wait_for()
    await row(page, 0).click()
    await toolbar(page, "Move to bottom").click()
    await nums_become(svc, [2, 3, 1])
    await toolbar(page, "Duplicate").click()
    await nums_become(svc, [2, 3, 1, 1])
    await row(page, 3).wait_for()
    await row(page, 0).click()
    await row(page, 1).click(modifiers=["Control"])
    await toolbar(page, "Delete").click()
    await nums_become(svc, [1, 1])
    await page.get_by_role("button", name="Undo").click()
    await nums_become(svc, [2, 3, 1, 1])


async def _items_where(svc: Services, pred: Callable[[list[dict[str, Any]]], bool]) -> Any:
    items = await queue_items(svc)
    return items if pred(items) else None


async def test_edit_an_item(page: Any, stack: Any) -> None:
    svc = stack[0]
    assert svc.client is not None
    added = await add(svc, "count", ["det1"], num=2)
    uid = added["item"]["item_uid"]
    await row(page, 0).click()
    await (
        page.get_by_role("toolbar", name="Queue actions").get_by_role("button", name="Edit").click()
    )
    form = page.get_by_role("form", name="Plan form")
    await expect(form.get_by_label("num")).to_have_value("2", timeout=SLOW)
    await form.get_by_label("num").fill("7")
    await form.get_by_role("button", name="Save").click()
    items = await eventually(
        lambda: _items_where(svc, lambda it: it and it[0]["kwargs"].get("num") == 7)
    )
    assert items[0]["item_uid"] != "" and len(items) == 1
    assert items[0]["kwargs"]["detectors"] == ["det1"]
    del uid  # the reference gives an updated item a new uid; the position is what is kept


async def progress_offered(gw: Gateway) -> bool:
    """Whether this gateway has the progress WebSocket (ADR 25)."""
    url = gw.url.replace("http://", "ws://") + f"/api/progress/ws?api_key={EXPERT_KEY}"
    try:
        async with websockets.connect(url, open_timeout=10):
            return True
    except websockets.InvalidStatus:
        return False


async def open_environment(page: Any) -> None:
    """Open the environment from the page unless the previous test left it open.

    Which of the two buttons is enabled is known only once the page has both the status
    and the key's scopes; until then both are disabled, so wait for one of them first.
    """
    close = page.get_by_role("button", name="Close environment")
    open_ = page.get_by_role("button", name="Open environment")

    async def either() -> bool:
        return bool(await close.is_enabled() or await open_.is_enabled())

    await eventually(either, 120)
    if not await close.is_enabled():
        await open_.click()
        await eventually(close.is_enabled, 120)


async def test_run_the_queue_pause_and_resume_from_the_page(page: Any, stack: Any) -> None:
    svc = stack[0]
    await open_environment(page)
    await add(svc, "count", ["det1", "det2"], num=10, delay=0.5)
    start = page.get_by_role("button", name="Start queue")
    await eventually(start.is_enabled)
    await start.click()
    await page.get_by_test_id("running-name").wait_for()
    pause = page.get_by_role("button", name="Pause now")
    await eventually(pause.is_enabled)
    await pause.click()
    await eventually(lambda: _status_is(svc, "re_state", "paused"))
    resume = page.get_by_role("button", name="Resume")
    await eventually(resume.is_enabled)
    await resume.click()
    await eventually(lambda: _status_is(svc, "re_state", "running"))
    history = page.get_by_role("region", name="History")
    await history.get_by_role("cell", name="completed").first.wait_for(timeout=120_000)
    await eventually(lambda: _status_is(svc, "manager_state", "idle"))
    # The run's link in its history row: its data plotted, from the document stream.
    await history.get_by_role("button", name=re.compile(r"^#\d+ [0-9a-f]{8}$")).first.click()
    plot = history.get_by_test_id("plot")
    await plot.wait_for()
    # 10 points, or one more: a pause rewinds to the last checkpoint and may read it again.
    assert int(await plot.get_attribute("data-points")) in (10, 11)


async def test_progress_advances_and_the_plot_gains_points(page: Any, stack: Any) -> None:
    svc, gw, _ = stack
    if not await progress_offered(gw):
        pytest.skip("this gateway has no /api/progress/ws yet (ADR 25)")
    await open_environment(page)
    await add(svc, "count", ["det1", "det2"], num=30, delay=0.3)
    start = page.get_by_role("button", name="Start queue")
    await eventually(start.is_enabled)
    await start.click()
    text = page.get_by_test_id("progress-text")
    await text.filter(has_text="of 30").wait_for()
    first = await _point(text)
    await eventually(lambda: _point_above(text, first))
    pts = page.get_by_test_id("plot-points")
    await pts.wait_for()
    before = int(await pts.inner_text())
    await eventually(lambda: _int_above(pts, before))
    assert int(await page.get_by_test_id("plot").get_attribute("data-points")) > 0
    await eventually(lambda: _status_is(svc, "manager_state", "idle"), 120)


async def _point(text: Any) -> int:
    m = re.search(r"point (\d+)", await text.inner_text())
    return int(m.group(1)) if m else -1


async def _point_above(text: Any, n: int) -> bool:
    return await _point(text) > n


async def _int_above(loc: Any, n: int) -> bool:
    return int(await loc.inner_text()) > n


async def _status_is(svc: Services, key: str, value: Any) -> bool:
    assert svc.client is not None
    return bool((await svc.client.request("status"))[key] == value)


async def test_copy_a_history_item_back(page: Any, stack: Any) -> None:
    svc = stack[0]
    assert svc.client is not None
    hist = (await svc.client.request("history_get"))["items"]
    if not hist:
        pytest.skip("needs the run of test_run_the_queue_pause_resume_and_watch_progress")
    history = page.get_by_role("region", name="History")
    await history.get_by_role("button", name=re.compile("Copy .* to the queue")).first.click()
    items = await eventually(lambda: _items_where(svc, lambda it: len(it) == 1))
    assert items[0]["name"] == hist[-1]["name"]
    assert items[0]["kwargs"] == hist[-1]["kwargs"]
    assert items[0]["item_uid"] != hist[-1]["item_uid"]


async def test_an_observer_finds_the_controls_disabled(page: Any, stack: Any) -> None:
    svc, gw, b = stack
    await add(svc, "count", ["det1"], num=1)
    # The same state, seen by an expert first: these are enabled for someone who may use them.
    may_edit = ("Add to queue", "Clear queue")
    await row(page, 0).get_by_text("count").wait_for()
    for name in may_edit:
        await expect(page.get_by_role("button", name=name, exact=True)).to_be_enabled(timeout=SLOW)
    await expect(page.get_by_label("Loop")).to_be_enabled(timeout=SLOW)
    ctx = await b.new_context(base_url=gw.url)
    ctx.set_default_timeout(SLOW)
    try:
        p = await ctx.new_page()
        await p.goto("/ui")
        await p.get_by_label("API key").fill(OBSERVER_KEY)
        await p.get_by_role("button", name="Use key").click()
        await p.get_by_test_id("who").filter(has_text="observer").wait_for()
        await p.get_by_test_id("manager-state").wait_for()  # the status is in: not "loading"
        await row(p, 0).get_by_text("count").wait_for()  # reading works
        others = ("Clear history", "Open environment", "Start queue", "Pause", "Lock")
        for name in (*may_edit, *others):
            button = p.get_by_role("button", name=name, exact=True)
            assert await button.is_disabled(), name
        assert await p.get_by_label("Loop").is_disabled()
        assert await row(p, 0).get_attribute("draggable") == "false"
    finally:
        await ctx.close()


async def test_move_an_item_with_the_keyboard(page: Any, stack: Any) -> None:
    svc = stack[0]
    for n in (1, 2):
        await add(svc, "count", ["det1"], num=n)
    await row(page, 1).wait_for()
    await row(page, 0).focus()
    await page.keyboard.press("Alt+ArrowDown")
    await nums_become(svc, [2, 1])


async def test_lock_the_queue_and_still_edit_it_with_the_key(page: Any, stack: Any) -> None:
    svc = stack[0]
    await page.get_by_label("Lock key").fill("beamtime-42")
    await page.get_by_role("button", name="Lock", exact=True).click()
    await page.get_by_test_id("lock-state").filter(has_text="Locked").wait_for()
    try:
        form = page.get_by_role("form", name="Plan form")
        await form.get_by_label("Plan").select_option("count")
        await form.get_by_label("detectors").select_option(["det2"])
        await form.get_by_role("button", name="Add to queue").click()
        items = await eventually(lambda: _items_where(svc, lambda it: len(it) == 1))
        assert items[0]["kwargs"]["detectors"] == ["det2"]
        # Without the key the lock refuses, and the page says so.
        assert svc.client is not None
        refused = await svc.client.request("queue_clear")
        assert not refused["success"]
    finally:
        await page.get_by_role("button", name="Unlock").click()
        await page.get_by_test_id("lock-state").filter(has_text="Unlocked").wait_for()


async def test_the_console_shows_the_backlog_when_the_page_opens(stack: Any) -> None:
    svc, gw, b = stack
    await add(svc, "count", ["det3"], num=1)
    ctx = await b.new_context(base_url=gw.url)
    ctx.set_default_timeout(SLOW)
    await ctx.add_init_script(key_script(EXPERT_KEY))
    try:
        p = await ctx.new_page()
        await p.goto("/ui")  # opened after the item was added: its log line is in the backlog
        console = p.get_by_test_id("console")
        await console.filter(has_text="Item added").wait_for()
        everything = len((await console.inner_text()).splitlines())
        await p.get_by_role("searchbox", name="Search").fill("item added")
        await p.get_by_text(re.compile(r"^\d+ of \d+ lines$")).wait_for()
        lines = (await console.inner_text()).splitlines()
        assert lines and all("item added" in line.lower() for line in lines), lines
        assert len(lines) < everything
    finally:
        await ctx.close()


async def test_add_plans_from_a_spreadsheet(page: Any, stack: Any, tmp_path: Path) -> None:
    svc = stack[0]
    sheet = tmp_path / "plans.csv"
    sheet.write_text("plan_name,args,num\ncount,\"['det1']\",2\ncount,\"['det2']\",3\n")
    await page.get_by_label("Batch from a spreadsheet").set_input_files(sheet)
    await nums_become(svc, [2, 3])
    await row(page, 1).wait_for()


async def test_log_in_with_a_password(stack: Any, tmp_path: Path) -> None:
    svc, _, b = stack
    config = write_config(tmp_path, TOY)
    async with gateway_for(svc, "--http-config", str(config)) as gw:
        ctx = await b.new_context(base_url=gw.url)
        ctx.set_default_timeout(SLOW)
        try:
            p = await ctx.new_page()
            await p.goto("/ui")
            await p.get_by_role("textbox", name="User").fill("alice")
            await p.get_by_label("Password").fill("alice_password")
            await p.get_by_role("button", name="Log in").click()
            await p.get_by_test_id("who").filter(has_text="alice (advanced)").wait_for()
            # The status stream opens with the login's token (`?access_token=`).
            await p.get_by_test_id("manager-state").wait_for()
            await reset(svc)
            form = p.get_by_role("form", name="Plan form")
            await form.get_by_label("Plan").select_option("count")
            await form.get_by_label("detectors").select_option(["det4"])
            await form.get_by_role("button", name="Add to queue").click()
            items = await eventually(lambda: _items_where(svc, lambda it: len(it) == 1))
            assert items[0]["user"] == "alice"
        finally:
            await ctx.close()


async def test_a_login_outlives_its_short_lived_token(stack: Any, tmp_path: Path) -> None:
    svc, _, b = stack
    config = write_config(tmp_path, short_tokens(3))
    async with gateway_for(svc, "--http-config", str(config)) as gw:
        ctx = await b.new_context(base_url=gw.url)
        ctx.set_default_timeout(SLOW)
        try:
            p = await ctx.new_page()
            await p.goto("/ui")
            await p.get_by_role("textbox", name="User").fill("tom")
            await p.get_by_label("Password").fill("tom_password")
            await p.get_by_role("button", name="Log in").click()
            await p.get_by_test_id("who").filter(has_text="tom (user)").wait_for()
            token = "JSON.parse(localStorage.getItem('qserverAuth')).token"
            seen = {await p.evaluate(token)}

            async def renewed_twice() -> bool:
                seen.add(await p.evaluate(token))
                return len(seen) >= 3

            # Renewed at 80 % of its 3 s, twice: the token of the login has expired by then.
            await eventually(renewed_twice)
            await reset(svc)
            form = p.get_by_role("form", name="Plan form")
            await form.get_by_label("Plan").select_option("count")
            await form.get_by_label("detectors").select_option(["det5"])
            await form.get_by_role("button", name="Add to queue").click()
            items = await eventually(lambda: _items_where(svc, lambda it: len(it) == 1))
            assert items[0]["user"] == "tom"
        finally:
            await ctx.close()


async def test_the_documents_of_a_run_not_kept_are_a_clear_404(stack: Any) -> None:
    gw = stack[1]
    async with httpx.AsyncClient(base_url=gw.url) as http:
        path = "/api/runs/no-such-run/documents"
        assert (await http.get(path)).status_code == 401
        r = await http.get(path, headers={"Authorization": f"ApiKey {EXPERT_KEY}"})
        assert r.status_code == 404 and "no-such-run" in r.json()["detail"]
