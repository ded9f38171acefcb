"""Screenshots of each view of the web page, for docs/screenshots/ (ADR 26).

Run: `.venv/bin/python -m bench.webui_screenshots [OUT_DIR]` (starts its own nats-server,
services and gateway; needs `apt-get install chromium`). Opens the environment, runs a scan
(for the history's run view) and takes the pictures while a count with a noisy detector runs.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from bench.bench_webui import RENDERED, USER, own_stack
from qserver.client import Client
from tests.integration.webui_support import browser

OUT = Path(__file__).resolve().parents[1] / "docs" / "screenshots"


def plan(name: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    return {"item": {"item_type": "plan", "name": name, "args": list(args), "kwargs": kwargs}}


async def until(client: Client, pred: Any, timeout: float = 120.0) -> None:
    await client.wait_for(pred, timeout)


async def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    async with own_stack() as (client, url), browser() as b:
        await client.request("environment_open")
        await until(
            client, lambda s: s["worker_environment_exists"] and s["manager_state"] == "idle"
        )
        await client.request(
            "queue_item_add", {**plan("scan", ["det"], "motor", -5, 5, 41), **USER}
        )
        await client.request("queue_start")
        await until(client, lambda s: s["items_in_history"] >= 1 and s["manager_state"] == "idle")
        await client.request("console_output_update", {"last_msg_uid": "ALL"})
        running = plan("count", ["noisy_det", "det"], num=200, delay=0.2)
        await client.request("queue_item_add", {**running, **USER})
        for item in (
            plan("scan", ["det1", "det2"], "motor1", -1, 1, 11),
            plan("count", ["det1"], num=5),
            plan("grid_scan", ["det4"], "motor1", -1, 1, 5, "motor2", -1, 1, 5),
            plan("rel_scan", ["det"], "motor", -0.5, 0.5, 21),
        ):
            await client.request("queue_item_add", {**item, **USER})
        # A proposal waiting for review (ADR 30), beyond motor_limited's limits (-5, 5).
        proposed = plan("scan", ["det1"], "motor_limited", -7, 3, 11)
        await client.request("proposal_add", {**proposed, "note": "wider, past the edge", **USER})
        await client.request("queue_start")
        await until(client, lambda s: s["running_item_uid"] is not None)
        await asyncio.sleep(8)  # a few points on the live plot

        ctx = await b.new_context(viewport={"width": 1440, "height": 1100})
        page = await ctx.new_page()
        await page.goto(f"{url}/ui")
        await page.wait_for_function(RENDERED, arg=4, polling="raf", timeout=60_000)
        await page.locator('[data-index="1"]').click()
        await page.get_by_test_id("plot").first.wait_for(timeout=30_000)
        await asyncio.sleep(1)
        await page.screenshot(path=out / "webui-desktop.png")
        await page.get_by_role("region", name="Queue").screenshot(path=out / "webui-queue.png")
        await page.get_by_role("region", name="Running plan").screenshot(
            path=out / "webui-running.png"
        )
        form = page.get_by_role("form", name="Plan form")
        await form.get_by_label("Plan").select_option("scan")
        await form.get_by_label("detectors").select_option(["det1", "det2"])
        await form.get_by_label("args").fill("motor, -1, 1")
        await form.get_by_label("num").fill("2.5")  # an int: shown at the field
        await form.get_by_role("button", name="Add to queue").click()
        await page.get_by_test_id("form-error").wait_for()
        await page.get_by_role("region", name="Add plan").screenshot(path=out / "webui-editor.png")
        history = page.get_by_role("region", name="History")
        await history.get_by_role("button", name="#1 ", exact=False).first.click()
        await history.get_by_test_id("plot").wait_for()
        await history.screenshot(path=out / "webui-history.png")
        await page.get_by_role("region", name="Console").screenshot(path=out / "webui-console.png")
        proposals = page.get_by_role("region", name="Proposals", exact=True)
        await proposals.get_by_role("button", name="Inspect").first.click()
        await proposals.get_by_role("list", name="Limit violations").wait_for(timeout=60_000)
        await proposals.screenshot(path=out / "webui-proposals.png")
        await page.get_by_role("button", name="Clear queue").click()
        await page.get_by_role("dialog").wait_for()
        await page.screenshot(path=out / "webui-confirm.png")
        await page.get_by_role("dialog").get_by_role("button", name="Cancel").click()
        await ctx.close()

        phone = await b.new_context(
            viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True
        )
        page = await phone.new_page()
        await page.goto(f"{url}/ui")
        await page.wait_for_function(RENDERED, arg=4, polling="raf", timeout=60_000)
        await asyncio.sleep(1)
        await page.screenshot(path=out / "webui-phone.png")
        await phone.close()
        await client.request("queue_stop")
        await client.request("re_pause", {"option": "immediate"})
        await until(client, lambda s: s["re_state"] == "paused")
        await client.request("re_abort")
    for p in sorted(out.glob("webui-*.png")):
        print(p)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT))
